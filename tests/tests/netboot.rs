//! Network boot end to end against a real `ferric all-in-one` (and a real
//! cluster for take-over): the public `ipxe_config` script through a node's
//! life, by node UUID and by MAC, for unknown nodes and MACs; the per-MAC
//! PXE configs (BIOS pxelinux, UEFI GRUB) in the conductor's TFTP root;
//! iPXE with Swift temporary URLs from a real Swift; QEMU booting the
//! deploy ramdisk through `boot.ipxe` + the dynamic script, and by PXE from
//! the embedded TFTP server; the files following their nodes to a new
//! owner after a SIGKILL, and leaving the interim owners once they move
//! back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferric_tests::cluster::Cluster;
use ferric_tests::{Api, Ferric, free_port};
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A kernel and ramdisk that only have to travel, and their file:// URLs.
fn images(dir: &Path, tag: &str) -> (String, String, Vec<u8>, Vec<u8>) {
    let k = dir.join(format!("vmlinuz-{tag}"));
    let r = dir.join(format!("initrd-{tag}"));
    let (kb, rb) =
        (format!("kernel {tag} ").repeat(7000).into_bytes(), format!("ramdisk {tag} ").repeat(11000).into_bytes());
    std::fs::write(&k, &kb).unwrap();
    std::fs::write(&r, &rb).unwrap();
    (format!("file://{}", k.display()), format!("file://{}", r.display()), kb, rb)
}

fn start_ferric(env: &[(&str, &str)]) -> Ferric {
    let http = format!("127.0.0.1:{}", free_port());
    let mut all =
        vec![("FERRIC_CONDUCTOR__HTTP_LISTEN", http.as_str()), ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1")];
    all.extend_from_slice(env);
    Ferric::start(None, &all)
}

/// Status, headers and body of a GET.
async fn get_raw(url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = ferric_tests::http().get(url).send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.bytes().await.unwrap().to_vec())
}

/// The script for `query` (`node_uuid=...` / `port_address=...`): it must
/// be a 200 text/plain attachment starting `#!ipxe`.
async fn script(ferric: &Ferric, query: &str) -> String {
    let url = format!("{}/v1/drivers/fake-hardware/vendor_passthru/ipxe_config?{query}", ferric.endpoint);
    let (s, h, body) = get_raw(&url).await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(s, 200, "{url}: {body}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"), "{h:?}");
    assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment"), "{h:?}");
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    body
}

/// The URL after `word` on the script's line starting with `word`.
fn url_after(script: &str, word: &str) -> String {
    let line =
        script.lines().find(|l| l.starts_with(&format!("{word} "))).unwrap_or_else(|| panic!("no {word}: {script}"));
    line.split_whitespace().find(|w| w.starts_with("http")).unwrap().to_string()
}

async fn download(url: &str) -> Vec<u8> {
    let (s, _, body) = get_raw(url).await;
    assert_eq!(s, 200, "{url}");
    body
}

async fn lookup_token(api: &Api, mac: &str) -> String {
    let v = api.get(&format!("/v1/lookup?addresses={mac}")).await;
    v["config"]["agent_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_ipxe_script_follows_the_node_through_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let (dk, dr, dkb, drb) = images(dir.path(), "deploy");
    let (ik, ir, ikb, _) = images(dir.path(), "instance");
    let ferric = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let ipxe_root = ferric.data_dir.path().join("httpboot/ipxe");

    // a node whose deploy waits for its ramdisk, then boots from disk
    let mac = "52:54:00:a0:00:01";
    let a = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": "ipxe", "deploy_interface": "fake",
               "driver_info": {"deploy_kernel": dk, "deploy_ramdisk": dr, "fake_wait_after": "deploy.deploy"}}),
            &[mac],
        )
        .await;
    let by_uuid = format!("node_uuid={a}");
    let s = script(&ferric, &by_uuid).await;
    assert!(s.contains(&format!("node {a} is enroll")) && s.contains("exit 1"), "{s}");
    api.to_available(&a, WAIT).await;
    let s = script(&ferric, &by_uuid).await;
    assert!(s.contains("is available: no boot configuration"), "{s}");

    api.provision(&a, "active").await;
    api.wait_state(&a, "wait call-back", WAIT).await;
    let s = script(&ferric, &by_uuid).await;
    assert!(s.contains("booting its ramdisk"), "{s}");
    let kernel_line = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
    for want in
        ["initrd=deploy_ramdisk", &format!("ipa-api-url={}", ferric.endpoint), "boot_method=ipxe", "BOOTIF=${mac}"]
    {
        assert!(kernel_line.contains(want), "{want} missing: {kernel_line}");
    }
    assert!(!s.to_lowercase().contains("token"), "no agent token in a network-booted ramdisk's script: {s}");
    assert_eq!(download(&url_after(&s, "kernel")).await, dkb, "the deploy kernel, from the conductor's HTTP root");
    assert_eq!(download(&url_after(&s, "initrd")).await, drb);
    assert!(ipxe_root.join(&a).join("deploy_kernel").is_file());
    // the same script by MAC, however the MAC is written
    for form in [mac.to_string(), mac.to_uppercase(), mac.replace(':', "-")] {
        assert_eq!(script(&ferric, &format!("port_address={form}")).await, s, "{form}");
    }
    // the ramdisk comes up, looks itself up (its token comes from there), heartbeats
    let token = lookup_token(&api, mac).await;
    assert_eq!(token.len(), 43);
    assert_eq!(api.heartbeat(&a, &token).await, 202);
    api.wait_state(&a, "active", WAIT).await;
    let s = script(&ferric, &by_uuid).await;
    // [deploy] default_boot_mode is uefi: leave iPXE for the next boot device
    assert!(s.contains("booting from its local disk") && s.ends_with("\nexit\n"), "{s}");
    assert!(!ipxe_root.join(&a).exists(), "the ramdisk's files are gone once the node boots from disk");

    // a netbooted instance (ramdisk deploy): its kernel and ramdisk
    let b = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": "ipxe", "deploy_interface": "ramdisk",
               "driver_info": {"deploy_kernel": dk, "deploy_ramdisk": dr},
               "instance_info": {"kernel": ik, "ramdisk": ir, "ramdisk_kernel_arguments": "ferric.test=netboot"}}),
            &["52:54:00:a0:00:02"],
        )
        .await;
    api.to_available(&b, WAIT).await;
    api.provision(&b, "active").await;
    api.wait_state(&b, "active", WAIT).await;
    let s = script(&ferric, &format!("node_uuid={b}")).await;
    assert!(s.contains("booting its instance") && s.contains("ferric.test=netboot"), "{s}");
    assert!(s.contains("initrd=ramdisk") && s.contains("initrd --name ramdisk "), "{s}");
    assert_eq!(download(&url_after(&s, "kernel")).await, ikb, "the instance kernel");
    api.provision(&b, "deleted").await;
    api.wait_state(&b, "available", WAIT).await;
    assert!(script(&ferric, &format!("node_uuid={b}")).await.contains("is available"));
    assert!(!ipxe_root.join(&b).exists(), "undeploy removes the instance's files");

    // unknown nodes and MACs: explained on the console, 200
    let nobody = uuid::Uuid::new_v4();
    let s = script(&ferric, &format!("node_uuid={nobody}")).await;
    assert!(s.contains(&format!("no node {nobody} is enrolled")) && s.contains("exit 1"), "{s}");
    let s = script(&ferric, "port_address=52:54:00:ff:ff:ff").await;
    assert!(s.contains("no node has a port with MAC 52:54:00:ff:ff:ff"), "{s}");
    // malformed requests: 400; an unknown hardware type: 404
    let base = format!("{}/v1/drivers/fake-hardware/vendor_passthru/ipxe_config", ferric.endpoint);
    for (q, want) in [
        ("", "needs node_uuid"),
        ("?port_address=nope", "is not a MAC"),
        ("?node_uuid=x", "is not a UUID"),
        (&format!("?node_uuid={a}&port_address={mac}") as &str, "not both"),
    ] {
        let (st, _, body) = get_raw(&format!("{base}{q}")).await;
        let body = String::from_utf8_lossy(&body).to_string();
        assert_eq!(st, 400, "{q}: {body}");
        assert!(body.contains(want), "{q}: {body}");
    }
    let (st, _, _) =
        get_raw(&format!("{}/v1/drivers/idrac/vendor_passthru/ipxe_config?node_uuid={a}", ferric.endpoint)).await;
    assert_eq!(st, 404);

    // a Swift image without [ipxe] use_swift is refused with its reason
    let c = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": "ipxe", "deploy_interface": "fake",
               "driver_info": {"deploy_kernel": "swift://images/k", "deploy_ramdisk": dr}}),
            &["52:54:00:a0:00:03"],
        )
        .await;
    api.to_available(&c, WAIT).await;
    let (st, body) =
        api.call(Method::PUT, &format!("/v1/nodes/{c}/states/provision"), Some(json!({"target": "active"}))).await;
    assert_eq!(st, 400, "{body}");
    assert!(Api::fault(&body).contains("only [ipxe] use_swift = true boots"), "{body}");

    // the static entry script chains by MAC
    let (st, _, body) = get_raw(&format!("{}/boot.ipxe", ferric.endpoint)).await;
    assert_eq!(st, 200);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(&format!(
            "chain {}/v1/drivers/redfish/vendor_passthru/ipxe_config?port_address=${{mac}}",
            ferric.endpoint
        )),
        "{body}"
    );
    // every script is counted by kind
    let (_, _, m) = get_raw(&format!("{}/metrics", ferric.endpoint)).await;
    let m = String::from_utf8(m).unwrap();
    for kind in ["ramdisk", "instance", "local", "error", "unknown"] {
        assert!(m.contains(&format!("ferric_ipxe_scripts_total{{kind=\"{kind}\"}}")), "{kind} not counted:\n{m}");
    }
}

#[tokio::test]
async fn the_public_ipxe_endpoint_is_rate_limited_per_client() {
    let ferric = start_ferric(&[("FERRIC_IPXE__RATE_LIMIT_PER_SEC", "0.01"), ("FERRIC_IPXE__RATE_LIMIT_BURST", "3")]);
    let url =
        format!("{}/v1/drivers/redfish/vendor_passthru/ipxe_config?port_address=52:54:00:00:00:09", ferric.endpoint);
    for _ in 0..3 {
        assert_eq!(get_raw(&url).await.0, 200);
    }
    let (st, _, body) = get_raw(&url).await;
    assert_eq!(st, 429, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("Too many iPXE script requests from 127.0.0.1"));
    // the rest of the API is not limited
    assert_eq!(get_raw(&format!("{}/v1/nodes", ferric.endpoint)).await.0, 200);
}

fn tftp_root(ferric: &Ferric) -> PathBuf {
    ferric.data_dir.path().join("tftpboot")
}

#[tokio::test]
async fn pxe_writes_per_mac_configs_for_bios_and_uefi_and_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (dk, dr, dkb, _) = images(dir.path(), "deploy");
    let ferric = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let root = tftp_root(&ferric);
    assert!(root.join("pxelinux.cfg/default").is_file(), "the default config: boot from disk");
    let boot_ipxe = std::fs::read_to_string(root.join("boot.ipxe")).unwrap();
    assert!(boot_ipxe.contains(&format!("chain {}/v1/drivers/", ferric.endpoint)), "{boot_ipxe}");
    if Path::new("/usr/lib/PXELINUX/pxelinux.0").is_file() {
        assert!(root.join("pxelinux.0").is_file() && root.join("ldlinux.c32").is_file());
    }

    let info = json!({"deploy_kernel": dk, "deploy_ramdisk": dr, "fake_wait_after": "deploy.deploy"});
    let bios = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": "pxe", "deploy_interface": "fake", "driver_info": info,
               "properties": {"capabilities": "boot_mode:bios"}}),
            &["52:54:00:b0:00:01", "52:54:00:b0:00:02"],
        )
        .await;
    let uefi = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": "pxe", "deploy_interface": "fake", "driver_info": info,
               "properties": {"capabilities": "boot_mode:uefi"}}),
            &["52:54:00:b0:00:03"],
        )
        .await;
    for n in [&bios, &uefi] {
        api.to_available(n, WAIT).await;
        api.provision(n, "active").await;
    }
    api.wait_state(&bios, "wait call-back", WAIT).await;
    api.wait_state(&uefi, "wait call-back", WAIT).await;
    for mac in ["01-52-54-00-b0-00-01", "01-52-54-00-b0-00-02"] {
        let cfg = std::fs::read_to_string(root.join("pxelinux.cfg").join(mac)).unwrap();
        assert!(cfg.contains(&format!("KERNEL {bios}/deploy_kernel")) && cfg.contains("IPAPPEND 2"), "{cfg}");
        assert!(cfg.contains("boot_method=pxe") && cfg.contains(&format!("ipa-api-url={}", ferric.endpoint)), "{cfg}");
        assert!(!root.join("grub").join(format!("grub.cfg-{mac}")).exists());
    }
    assert_eq!(std::fs::read(root.join(&bios).join("deploy_kernel")).unwrap(), dkb);
    let grub = std::fs::read_to_string(root.join("grub/grub.cfg-01-52-54-00-b0-00-03")).unwrap();
    assert!(
        grub.contains(&format!("linux /{uefi}/deploy_kernel")) && grub.contains("BOOTIF=01-52-54-00-b0-00-03"),
        "{grub}"
    );
    assert!(grub.contains(&format!("initrd /{uefi}/deploy_ramdisk")), "{grub}");
    assert!(!root.join("pxelinux.cfg/01-52-54-00-b0-00-03").exists());

    for (n, mac) in [(&bios, "52:54:00:b0:00:01"), (&uefi, "52:54:00:b0:00:03")] {
        let token = lookup_token(&api, mac).await;
        assert_eq!(api.heartbeat(n, &token).await, 202);
        api.wait_state(n, "active", WAIT).await;
    }
    for f in
        ["pxelinux.cfg/01-52-54-00-b0-00-01", "pxelinux.cfg/01-52-54-00-b0-00-02", "grub/grub.cfg-01-52-54-00-b0-00-03"]
    {
        assert!(!root.join(f).exists(), "{f}: an active local-boot node has no PXE config (it boots from disk)");
    }
    assert!(!root.join(&bios).exists() && !root.join(&uefi).exists());

    // a PXE node without ports cannot be deployed, and says why
    let lonely = api.create_node(
        json!({"driver": "fake-hardware", "boot_interface": "pxe", "deploy_interface": "fake", "driver_info": info}),
        &[],
    )
    .await;
    api.to_available(&lonely, WAIT).await;
    let (st, body) =
        api.call(Method::PUT, &format!("/v1/nodes/{lonely}/states/provision"), Some(json!({"target": "active"}))).await;
    assert_eq!(st, 400, "{body}");
    assert!(Api::fault(&body).contains("has no port"), "{body}");
}

#[tokio::test]
async fn with_use_swift_ipxe_downloads_temp_urls_and_no_conductor_holds_a_file() {
    let lab = ferric_tests::swift::SwiftLab::start();
    let c = lab.config();
    let (storage, token) = lab.token().await;
    let http = ferric_tests::http();
    // the operator's images, in the account iPXE signs for
    let r = http
        .post(&storage)
        .header("x-auth-token", &token)
        .header("x-account-meta-temp-url-key", c.temp_url_key.expose())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http.put(format!("{storage}/images")).header("x-auth-token", &token).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (kb, rb) = (b"swift kernel ".repeat(5000), b"swift ramdisk ".repeat(8000));
    for (name, bytes) in [("deploy/vmlinuz", &kb), ("deploy/initrd", &rb)] {
        let r = http
            .put(format!("{storage}/images/{name}"))
            .header("x-auth-token", &token)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let ferric = start_ferric(&[
        ("FERRIC_IPXE__USE_SWIFT", "true"),
        ("FERRIC_SWIFT__AUTH_URL", &c.auth_url),
        ("FERRIC_SWIFT__USER", &c.user),
        ("FERRIC_SWIFT__KEY", c.key.expose()),
        ("FERRIC_SWIFT__TEMP_URL_KEY", c.temp_url_key.expose()),
    ]);
    let api = Api::new(&ferric.endpoint);
    let n = api.create_node(
        json!({"driver": "fake-hardware", "boot_interface": "ipxe", "deploy_interface": "fake",
               "driver_info": {"deploy_kernel": "swift://images/deploy/vmlinuz", "deploy_ramdisk": "swift://images/deploy/initrd",
                               "fake_wait_after": "deploy.deploy"}}),
        &["52:54:00:c0:00:01"],
    )
    .await;
    api.to_available(&n, WAIT).await;
    api.provision(&n, "active").await;
    api.wait_state(&n, "wait call-back", WAIT).await;
    let s = script(&ferric, "port_address=52:54:00:c0:00:01").await;
    let (k, r) = (url_after(&s, "kernel"), url_after(&s, "initrd"));
    for u in [&k, &r] {
        assert!(u.starts_with(&storage) && u.contains("temp_url_sig=") && u.contains("temp_url_expires="), "{u}");
    }
    assert_eq!(download(&k).await, kb, "iPXE downloads the kernel from Swift, unauthenticated");
    assert_eq!(download(&r).await, rb);
    assert!(!ferric.data_dir.path().join("httpboot/ipxe").join(&n).exists(), "no conductor copy");
    let cache = ferric.data_dir.path().join("image-cache");
    let cached = std::fs::read_dir(&cache)
        .map(|d| d.flatten().filter(|e| e.file_type().unwrap().is_file()).count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "nothing was downloaded into the image cache");
    // a tampered signature is refused by Swift: the URL is really signed
    let bad = k.replace("temp_url_sig=", "temp_url_sig=0");
    assert_eq!(get_raw(&bad).await.0, 401);
}

// ---- QEMU ---------------------------------------------------------------

fn qemu_available() -> bool {
    let have =
        Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]).output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var("CI").is_err(), "qemu-system-x86_64 is missing under CI: scripts/deps.sh installs it");
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/deps.sh installs it)");
    }
    have
}

/// Kernel and busybox ramdisk that print FERRIC-RAMDISK-UP and the kernel
/// command line (scripts/boot-fixtures.sh).
fn fixtures() -> PathBuf {
    let dir = repo_root().join("target/boot-fixtures");
    let out = Command::new(repo_root().join("scripts/boot-fixtures.sh")).arg(&dir).output().expect("boot-fixtures.sh");
    assert!(out.status.success(), "scripts/boot-fixtures.sh: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// Boots a BIOS machine from the network (slirp with the host's loopback
/// as its gateway, so the guest's firmware reaches 127.0.0.1 as the test
/// does) and returns the console once the ramdisk reported.
fn netboot_vm(mac: &str, bootfile: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "512", "-smp", "1", "-nographic", "-monitor", "none", "-no-reboot", "-boot", "n"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-netdev")
        .arg(format!("user,id=n0,net=127.0.0.0/8,host=127.0.0.1,dhcpstart=127.0.0.15,bootfile={bootfile}"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={mac}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    let deadline = started + Duration::from_secs(240);
    loop {
        let up = read().contains("FERRIC-RAMDISK-UP");
        if up || child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = read();
            assert!(text.contains("FERRIC-RAMDISK-UP"), "no ramdisk within {:?}; console:\n{text}", started.elapsed());
            eprintln!("the ramdisk came up {:?} after QEMU started", started.elapsed());
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn qemu_ferric(extra: &[(&str, &str)]) -> Ferric {
    let mut env = vec![("FERRIC_REDFISH__KERNEL_APPEND_PARAMS", "console=ttyS0 panic=5")];
    env.extend_from_slice(extra);
    start_ferric(&env)
}

async fn deploy_to_wait(api: &Api, boot: &str, mac: &str) -> String {
    let fx = fixtures();
    let info = json!({"deploy_kernel": format!("file://{}", fx.join("vmlinuz").display()),
                      "deploy_ramdisk": format!("file://{}", fx.join("initrd").display()),
                      "fake_wait_after": "deploy.deploy"});
    let n = api
        .create_node(
            json!({"driver": "fake-hardware", "boot_interface": boot, "deploy_interface": "fake", "driver_info": info,
               "properties": {"capabilities": "boot_mode:bios"}}),
            &[mac],
        )
        .await;
    api.to_available(&n, WAIT).await;
    api.provision(&n, "active").await;
    api.wait_state(&n, "wait call-back", WAIT).await;
    n
}

fn cmdline(console: &str) -> String {
    console.lines().find(|l| l.contains("FERRIC-RAMDISK-UP")).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_boots_the_deploy_ramdisk_through_boot_ipxe_and_the_dynamic_script() {
    if !qemu_available() {
        return;
    }
    let ferric = qemu_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let mac = "52:54:00:d0:00:01";
    let n = deploy_to_wait(&api, "ipxe", mac).await;
    let bootfile = format!("{}/boot.ipxe", ferric.endpoint);
    let console = tokio::task::spawn_blocking(move || netboot_vm(mac, &bootfile)).await.unwrap();
    assert!(console.contains("Ferric: fetching the boot script of 52:54:00:d0:00:01"), "{console}");
    // (iPXE wraps its console at 80 columns)
    assert!(console.contains(&format!("Ferric: node {n} is wait call-back: booting its")), "{console}");
    let line = cmdline(&console);
    for want in [
        "boot_method=ipxe",
        &format!("ipa-api-url={}", ferric.endpoint),
        &format!("BOOTIF={mac}"),
        "initrd=deploy_ramdisk",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
}

/// A free UDP port on 127.0.0.1.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_boots_the_deploy_ramdisk_by_pxe_from_the_embedded_tftp_server() {
    if !qemu_available() {
        return;
    }
    let pxelinux = Path::new("/usr/lib/PXELINUX/pxelinux.0");
    if !pxelinux.is_file() {
        assert!(std::env::var("CI").is_err(), "pxelinux is missing under CI: scripts/deps.sh installs it");
        eprintln!("SKIPPED: /usr/lib/PXELINUX/pxelinux.0 is missing (apt-get install pxelinux)");
        return;
    }
    let tftp = format!("127.0.0.1:{}", free_udp_port());
    let ferric = qemu_ferric(&[("FERRIC_PXE__TFTP_LISTEN", tftp.as_str())]);
    let api = Api::new(&ferric.endpoint);
    let mac = "52:54:00:d0:00:02";
    deploy_to_wait(&api, "pxe", mac).await;
    let bootfile = format!("tftp://{tftp}/pxelinux.0");
    let console = tokio::task::spawn_blocking(move || netboot_vm(mac, &bootfile)).await.unwrap();
    let line = cmdline(&console);
    for want in ["boot_method=pxe", &format!("ipa-api-url={}", ferric.endpoint), "BOOTIF=01-52-54-00-d0-00-02"] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
}

// ---- take-over ----------------------------------------------------------

/// Every per-node file in conductor `c{i}`'s roots: node uuid → (PXE config
/// MACs, has an iPXE directory).
fn files_of(cl: &Cluster, i: usize) -> BTreeMap<String, (Vec<String>, bool)> {
    let data = cl.dir.path().join(format!("c{i}"));
    let mut out: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    for e in std::fs::read_dir(data.join("tftpboot/pxelinux.cfg")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some(node) = text.lines().next().and_then(|l| l.strip_prefix("# written by Ferric for node ")) {
            out.entry(node.to_string()).or_default().0.push(e.file_name().to_string_lossy().to_string());
            let kernel = text.lines().find_map(|l| l.trim().strip_prefix("KERNEL ")).unwrap();
            assert!(data.join("tftpboot").join(kernel).is_file(), "c{i}: {kernel} named by a config is missing");
        }
    }
    for e in std::fs::read_dir(data.join("httpboot/ipxe")).into_iter().flatten().flatten() {
        out.entry(e.file_name().to_string_lossy().to_string()).or_default().1 = true;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_boot_files_follow_their_nodes_to_the_new_owner_and_leave_the_interim_ones() {
    const TTL: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    let (dk, dr, dkb, _) = images(dir.path(), "deploy");
    let env = [("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "700"), ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1")];
    let mut cl = Cluster::start(3, TTL, &env);
    cl.wait_conductors(3).await;
    let api = Api::new(&cl.api_url);
    let mut nodes = Vec::new();
    for i in 0..18 {
        let boot = if i % 2 == 0 { "pxe" } else { "ipxe" };
        let info = json!({"deploy_kernel": dk, "deploy_ramdisk": dr, "fake_wait_after": "deploy.deploy"});
        let body = json!({"driver": "fake-hardware", "boot_interface": boot, "deploy_interface": "fake", "driver_info": info,
                          "properties": {"capabilities": "boot_mode:bios"}});
        nodes.push(api.create_node(body, &[&format!("52:54:00:e0:00:{i:02x}")]).await);
    }
    cl.drive(&nodes, "manage", "manageable", WAIT).await;
    cl.drive(&nodes, "provide", "available", WAIT).await;
    cl.act(&nodes, "active").await;
    cl.wait_all(&nodes, "wait call-back", WAIT).await;

    let owner_of = |all: &BTreeMap<String, Value>| -> HashMap<String, String> {
        all.iter().map(|(u, n)| (u.clone(), n["conductor"].as_str().unwrap().to_string())).collect()
    };
    let before = owner_of(&cl.nodes().await);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for o in before.values() {
        *count.entry(o.as_str()).or_default() += 1;
    }
    let (victim_id, held) =
        count.iter().max_by_key(|(id, n)| (**n, id.to_string())).map(|(a, b)| (a.to_string(), *b)).unwrap();
    let victim: usize = victim_id.trim_start_matches('c').parse().unwrap();
    assert!(held >= 4, "{victim_id} holds only {held} nodes");
    let moved: Vec<String> = before.iter().filter(|(_, o)| **o == victim_id).map(|(u, _)| u.clone()).collect();
    let victim_files = files_of(&cl, victim);
    for u in &moved {
        assert!(victim_files.contains_key(u), "{u}: no files on its owner {victim_id}");
    }

    cl.conductors[victim - 1].0.kill();
    let start = Instant::now();
    let placed = |cl: &Cluster, owners: &HashMap<String, String>| -> Vec<String> {
        let mut missing = Vec::new();
        let per: HashMap<usize, BTreeMap<String, (Vec<String>, bool)>> =
            (1..=3).filter(|i| *i != victim).map(|i| (i, files_of(cl, i))).collect();
        for u in &moved {
            let Some(o) = owners.get(u).filter(|o| **o != victim_id) else {
                missing.push(u.clone());
                continue;
            };
            let i: usize = o.trim_start_matches('c').parse().unwrap();
            if !per[&i].contains_key(u) {
                missing.push(u.clone());
            }
        }
        missing
    };
    loop {
        let owners = owner_of(&cl.nodes().await);
        let missing = placed(&cl, &owners);
        if missing.is_empty() {
            break;
        }
        assert!(start.elapsed() < WAIT, "{} nodes' files not in their new owner's roots: {missing:?}", missing.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} nodes' network-boot files rebuilt on their new owners {:?} after the SIGKILL",
        moved.len(),
        start.elapsed()
    );
    // the new owners serve what the nodes boot: same bytes, scripts pointing at them
    let owners = owner_of(&cl.nodes().await);
    for (k, u) in moved.iter().enumerate() {
        let i: usize = owners[u].trim_start_matches('c').parse().unwrap();
        let data = cl.dir.path().join(format!("c{i}"));
        let (_, ipxe) = &files_of(&cl, i)[u];
        if *ipxe {
            let url = format!("{}/v1/drivers/fake-hardware/vendor_passthru/ipxe_config?node_uuid={u}", cl.api_url);
            let s = String::from_utf8(download(&url).await).unwrap();
            assert_eq!(download(&url_after(&s, "kernel")).await, dkb, "{u}: script {s}");
        } else {
            assert_eq!(std::fs::read(data.join("tftpboot").join(u).join("deploy_kernel")).unwrap(), dkb, "{u} ({k})");
        }
    }

    // the victim comes back: the ring gives it its nodes again, it places
    // them in its own roots, and the interim owners' copies go
    cl.conductors[victim - 1].0.spawn();
    cl.wait_conductors(3).await;
    let start = Instant::now();
    loop {
        let owners = owner_of(&cl.nodes().await);
        let mine = files_of(&cl, victim);
        let interim: Vec<(usize, String)> = (1..=3)
            .filter(|i| *i != victim)
            .flat_map(|i| files_of(&cl, i).into_keys().filter(|u| moved.contains(u)).map(move |u| (i, u)))
            .collect();
        let back = moved.iter().all(|u| owners[u] == victim_id && mine.contains_key(u));
        if back && interim.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "after the return: back={back}, interim copies left {interim:?}; owners {:?}",
            moved.iter().map(|u| &owners[u]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("moved back and interim copies removed {:?} after the restart", start.elapsed());
}
