//! The ramdisk simulator (`ferric_tests::ramdisk`) against real peers: the
//! sushy-tools Redfish emulator (its notifications, or polled), and a
//! stand-in for the Ironic API written here that answers only `/`,
//! `/v1/lookup` and `/v1/heartbeat` — the test then drives each agent as a
//! conductor would, with the requests Ironic 39 sends.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use ferric_tests::free_port;
use ferric_tests::ramdisk::{EmulatorConfig, Faults, LogEvent, RamdiskSim, SimConfig, command_overlaps, lab_mac};
use ferric_tests::redfish::{SushyLab, SushyOptions};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

const CONDUCTOR_UA: &str = "ferric-conductor/0.1.0 (conductor c1; incarnation 7)";
const MIB: usize = 1024 * 1024;

// ---- small servers -----------------------------------------------------------

/// An axum server on a free loopback port, stopped when dropped.
struct Server {
    url: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(router: Router) -> Server {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = s.cancelled() => {}
            r = axum::serve(listener, router) => r.expect("serve"),
        }
    });
    Server { url: format!("http://127.0.0.1:{port}"), stop }
}

/// Static files over HTTP (the conductor's HTTP root: media and images).
async fn files(map: HashMap<String, Vec<u8>>) -> Server {
    let map = Arc::new(map);
    let router = Router::new()
        .route(
            "/{name}",
            get(|State(m): State<Arc<HashMap<String, Vec<u8>>>>, Path(name): Path<String>| async move {
                match m.get(&name) {
                    Some(b) => (StatusCode::OK, b.clone()),
                    None => (StatusCode::NOT_FOUND, b"no such file".to_vec()),
                }
            }),
        )
        .with_state(map);
    serve(router).await
}

// ---- a stand-in for the Ironic API ------------------------------------------

#[derive(Debug, Clone)]
struct Heartbeat {
    uuid: String,
    version: String,
    body: Value,
}

struct NodeDef {
    uuid: String,
    mac: String,
    /// The token the media carry (lookup then says "******"); None: every
    /// lookup issues a fresh one.
    media_token: Option<String>,
    current_token: Option<String>,
}

#[derive(Default)]
struct IronicState {
    nodes: Vec<NodeDef>,
    lookups: Vec<(String, String)>,
    heartbeats: Vec<Heartbeat>,
    sessions: HashMap<String, String>,
    /// `pass_deploy_info` bodies by node.
    deploy_infos: Vec<(String, Value)>,
}

#[derive(Clone)]
struct Ironic {
    st: Arc<Mutex<IronicState>>,
    first: tokio::sync::mpsc::UnboundedSender<Heartbeat>,
}

struct IronicLab {
    server: Server,
    ironic: Ironic,
    first: tokio::sync::mpsc::UnboundedReceiver<Heartbeat>,
    /// First heartbeats received while waiting for another node's.
    early: Vec<Heartbeat>,
}

fn version_of(h: &HeaderMap) -> String {
    h.get("x-openstack-ironic-api-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn ironic_error(code: StatusCode, msg: &str) -> (StatusCode, axum::Json<Value>) {
    let inner = json!({ "faultstring": msg, "faultcode": "Client", "debuginfo": null }).to_string();
    (code, axum::Json(json!({ "error_message": inner })))
}

async fn ironic(nodes: Vec<NodeDef>) -> IronicLab {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ironic = Ironic { st: Arc::new(Mutex::new(IronicState { nodes, ..Default::default() })), first: tx };
    let router = Router::new()
        .route(
            "/",
            get(|| async {
                axum::Json(json!({
                    "name": "OpenStack Ironic API",
                    "versions": [{ "id": "v1", "version": "1.99", "min_version": "1.1", "status": "CURRENT" }],
                    "default_version": { "id": "v1", "version": "1.99", "min_version": "1.1", "status": "CURRENT" },
                }))
            }),
        )
        .route(
            "/v1/lookup",
            get(|State(s): State<Ironic>, h: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                let addresses = q.get("addresses").cloned().unwrap_or_default();
                let mut st = s.st.lock().unwrap();
                st.lookups.push((addresses.clone(), version_of(&h)));
                let Some(n) = st.nodes.iter_mut().find(|n| addresses.split(',').any(|a| a == n.mac)) else {
                    return ironic_error(StatusCode::NOT_FOUND, "Resource could not be found.");
                };
                let uuid = n.uuid.clone();
                let token = match &n.media_token {
                    Some(_) => "******".to_string(),
                    None => {
                        let t = format!("{}{}", uuid::Uuid::new_v4().simple(), &uuid::Uuid::new_v4().simple().to_string()[..11]);
                        n.current_token = Some(t.clone());
                        t
                    }
                };
                let body = json!({
                        "node": { "uuid": uuid, "properties": {}, "instance_info": {}, "driver_internal_info": { "agent_secret_token": "******" } },
                        "config": { "heartbeat_timeout": 300, "agent_token": token, "agent_token_required": true,
                                    "agent_md5_checksum_enable": true, "permitted_image_formats": ["raw", "gpt", "qcow2", "iso"] },
                });
                // a lookup starts an agent session: its first heartbeat is news
                st.sessions.remove(&uuid);
                (StatusCode::OK, axum::Json(body))
            }),
        )
        .route(
            "/v1/heartbeat/{uuid}",
            post(|State(s): State<Ironic>, Path(uuid): Path<String>, h: HeaderMap, axum::Json(body): axum::Json<Value>| async move {
                let hb = Heartbeat { uuid: uuid.clone(), version: version_of(&h), body: body.clone() };
                let mut st = s.st.lock().unwrap();
                st.heartbeats.push(hb.clone());
                let Some(n) = st.nodes.iter().find(|n| n.uuid == uuid) else {
                    return ironic_error(StatusCode::NOT_FOUND, "Resource could not be found.");
                };
                let expected = n.media_token.clone().or(n.current_token.clone());
                let token = body["agent_token"].as_str().map(str::to_string);
                if token.is_none() || token != expected {
                    return ironic_error(StatusCode::BAD_REQUEST, "Invalid or missing agent token received.");
                }
                // the first heartbeat after a lookup: the conductor takes it from here
                if let std::collections::hash_map::Entry::Vacant(e) = st.sessions.entry(uuid) {
                    e.insert(body["callback_url"].to_string());
                    let _ = s.first.send(hb);
                }
                (StatusCode::ACCEPTED, axum::Json(Value::Null))
            }),
        )
        .route(
            "/v1/nodes/{uuid}/vendor_passthru/pass_deploy_info",
            post(|State(s): State<Ironic>, Path(uuid): Path<String>, axum::Json(body): axum::Json<Value>| async move {
                s.st.lock().unwrap().deploy_infos.push((uuid, body));
                (StatusCode::ACCEPTED, axum::Json(Value::Null))
            }),
        )
        .with_state(ironic.clone());
    IronicLab { server: serve(router).await, ironic, first: rx, early: Vec::new() }
}

impl IronicLab {
    /// The first heartbeat of the next agent session of a node.
    async fn first_heartbeat(&mut self, uuid: &str) -> Heartbeat {
        if let Some(i) = self.early.iter().position(|h| h.uuid == uuid) {
            return self.early.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.first.recv()).await {
                Ok(Some(hb)) if hb.uuid == uuid => return hb,
                Ok(Some(other)) => self.early.push(other),
                _ => {
                    let st = self.ironic.st.lock().unwrap();
                    panic!(
                        "no heartbeat from {uuid} within 20 s; the API saw lookups {:?} and {} heartbeats",
                        st.lookups,
                        st.heartbeats.len()
                    )
                }
            }
        }
    }

    fn heartbeats(&self, uuid: &str) -> usize {
        self.ironic.st.lock().unwrap().heartbeats.iter().filter(|h| h.uuid == uuid).count()
    }

    fn lookups(&self) -> Vec<(String, String)> {
        self.ironic.st.lock().unwrap().lookups.clone()
    }
}

fn node(uuid: &str, mac: String, media_token: Option<&str>) -> NodeDef {
    NodeDef { uuid: uuid.into(), mac, media_token: media_token.map(str::to_string), current_token: None }
}

// ---- media and images --------------------------------------------------------

/// A whole-disk image: an MBR with this disk signature and one partition,
/// then bytes that differ everywhere.
fn disk_image(size: usize, signature: u32, seed: u32) -> Vec<u8> {
    let mut img: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(97)) >> 24) as u8)
        .collect();
    img[..512].fill(0);
    img[440..444].copy_from_slice(&signature.to_le_bytes());
    let e = &mut img[446..462];
    e[0] = 0x80;
    e[4] = 0x83;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&((size as u32 / 512).saturating_sub(2048).max(1)).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}

/// The parameters floppy, as Ferric builds it: FAT12, label `ir-vfd-dev`.
fn floppy(params: &[(&str, &str)]) -> Vec<u8> {
    let mut disk = std::io::Cursor::new(vec![0u8; 1_474_560]);
    fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().volume_label(*b"ir-vfd-dev ")).expect("format");
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).expect("fat");
        let mut f = fs.root_dir().create_file("parameters.txt").expect("create");
        for (k, v) in params {
            writeln!(f, "{k}={v}").unwrap();
        }
    }
    disk.into_inner()
}

/// A CD with the kernel command line where Ferric's boot ISOs have it:
/// `/isolinux/isolinux.cfg` (BIOS) and `/EFI/BOOT/grub.cfg` (UEFI).
fn iso(cmdline: &str) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("isolinux")).unwrap();
    std::fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
    std::fs::write(
        root.join("isolinux/isolinux.cfg"),
        format!("DEFAULT boot\nPROMPT 0\nLABEL boot\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND {cmdline}\n"),
    )
    .unwrap();
    let quoted: Vec<String> = cmdline.split_whitespace().map(|p| format!("'{p}'")).collect();
    std::fs::write(
        root.join("EFI/BOOT/grub.cfg"),
        format!(
            "set timeout=0\nmenuentry 'boot' {{\n  linux ($root)/vmlinuz {}\n  initrd ($root)/initrd\n}}\n",
            quoted.join(" ")
        ),
    )
    .unwrap();
    std::fs::write(root.join("vmlinuz"), b"not a kernel").unwrap();
    let out = d.path().join("cd.iso");
    let r = std::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "FERRIC_BOOT", "-o"])
        .arg(&out)
        .arg(&root)
        .output()
        .expect("xorriso (scripts/deps.sh installs it)");
    assert!(r.status.success(), "xorriso: {}", String::from_utf8_lossy(&r.stderr));
    std::fs::read(out).unwrap()
}

fn qcow2_of(raw: &[u8]) -> Option<Vec<u8>> {
    let d = tempfile::tempdir().unwrap();
    let (src, dst) = (d.path().join("disk.raw"), d.path().join("disk.qcow2"));
    std::fs::write(&src, raw).unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&src)
        .arg(&dst)
        .output()
        .ok()?;
    out.status.success().then(|| std::fs::read(&dst).unwrap())
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn md5(b: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(b))
}

fn token43(seed: char) -> String {
    std::iter::repeat_n(seed, 43).collect()
}

// ---- the BMC, as a conductor uses it -----------------------------------------

fn bmc() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        })
        .clone()
}

async fn bmc_write(lab: &SushyLab, method: reqwest::Method, path: &str, body: Value) {
    let mut r = bmc().request(method.clone(), format!("{}{path}", lab.url)).json(&body);
    if let Some((u, p)) = &lab.options.auth {
        r = r.basic_auth(u, Some(p));
    }
    let resp = r.send().await.expect("BMC request");
    let status = resp.status();
    assert!(status.is_success(), "{method} {path}: {status} {}", resp.text().await.unwrap_or_default());
}

/// What a conductor's virtual-media boot does: media in, boot from CD, on.
async fn boot_ramdisk(lab: &SushyLab, i: usize, cd: &str, floppy: Option<&str>) {
    let s = lab.system_path(i);
    let insert = |dev: &str, url: &str| {
        (
            format!("{s}/VirtualMedia/{dev}/Actions/VirtualMedia.InsertMedia"),
            json!({ "Image": url, "Inserted": true, "WriteProtected": true }),
        )
    };
    let (p, b) = insert("Cd", cd);
    bmc_write(lab, reqwest::Method::POST, &p, b).await;
    if let Some(f) = floppy {
        let (p, b) = insert("Floppy", f);
        bmc_write(lab, reqwest::Method::POST, &p, b).await;
    }
    boot_device(lab, i, "Cd").await;
    reset(lab, i, "On").await;
}

async fn boot_device(lab: &SushyLab, i: usize, target: &str) {
    let body = json!({ "Boot": { "BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": "Continuous" } });
    bmc_write(lab, reqwest::Method::PATCH, &lab.system_path(i), body).await;
}

async fn reset(lab: &SushyLab, i: usize, kind: &str) {
    let path = format!("{}/Actions/ComputerSystem.Reset", lab.system_path(i));
    bmc_write(lab, reqwest::Method::POST, &path, json!({ "ResetType": kind })).await;
    // a conductor reads the state back (the emulator applies it on a read)
    let _ = lab.get(&lab.system_path(i)).await;
}

async fn power_state(lab: &SushyLab, i: usize) -> String {
    lab.get(&lab.system_path(i)).await["PowerState"].as_str().unwrap_or("").to_string()
}

// ---- the agent, as a conductor uses it ---------------------------------------

struct AgentApi {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl AgentApi {
    fn new(callback_url: &str, token: &str, ca: Option<&str>) -> AgentApi {
        static PLAIN: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |ca: Option<&str>| {
            let mut b = reqwest::Client::builder().user_agent(CONDUCTOR_UA).timeout(Duration::from_secs(20));
            if let Some(pem) = ca {
                b = b.tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()]);
            }
            b.build().unwrap()
        };
        let http = match ca {
            Some(_) => build(ca),
            None => PLAIN.get_or_init(|| build(None)).clone(),
        };
        AgentApi { http, url: callback_url.to_string(), token: token.to_string() }
    }

    async fn run(&self, name: &str, params: Value, wait: bool) -> (u16, Value) {
        let url = format!("{}/v1/commands/?wait={wait}&agent_token={}", self.url, self.token);
        let r = self.http.post(url).json(&json!({ "name": name, "params": params })).send().await.expect("command");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn list(&self) -> Result<Vec<Value>, reqwest::Error> {
        let r = self.http.get(format!("{}/v1/commands/?agent_token={}", self.url, self.token)).send().await?;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await?;
        Ok(v["commands"].as_array().cloned().unwrap_or_default())
    }

    /// Polls the command list until the newest `name` is no longer RUNNING.
    async fn follow(&self, short: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.list().await.expect("list commands");
            if let Some(c) = list.iter().rev().find(|c| c["command_name"] == short)
                && c["command_status"] != "RUNNING"
            {
                return c.clone();
            }
            assert!(Instant::now() < deadline, "{short} still running: {list:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn node_params(uuid: &str) -> Value {
    json!({ "node": { "uuid": uuid, "driver_internal_info": {}, "instance_info": {}, "properties": {} }, "ports": [] })
}

fn write_image_params(uuid: &str, image_info: Value) -> Value {
    let mut p = node_params(uuid);
    p["step"] = json!({ "interface": "deploy", "step": "write_image", "priority": 80, "argsinfo": null,
                        "args": { "image_info": image_info, "configdrive": null } });
    p["deploy_version"] = json!({ "generic_hardware_manager": "1.2" });
    p
}

fn sim_config(port: u16, lab: &SushyLab) -> SimConfig {
    SimConfig {
        listen: format!("127.0.0.1:{port}"),
        emulators: vec![EmulatorConfig::from_lab(lab)],
        disk_size_bytes: 8 * MIB as u64,
        boot_delay_ms: 50,
        heartbeat_interval_ms: Some(200),
        heartbeat_retry_ms: Some(100),
        forced_heartbeat_min_ms: 50,
        lookup_interval_ms: 100,
        lookup_max_interval_ms: 500,
        download_retries: 0,
        download_retry_interval_ms: 100,
        http_timeout_ms: 5000,
        ..Default::default()
    }
}

/// Prints the simulator's log when a test fails while it runs.
struct LogOnPanic<'a>(&'a RamdiskSim);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.0.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- tail of the ramdisk-sim log ----\n{}", lines[lines.len().saturating_sub(80)..].join("\n"));
        }
    }
}

fn events<'a>(log: &'a [LogEvent], machine: &str, event: &str) -> Vec<&'a LogEvent> {
    log.iter().filter(|e| e.machine == machine && e.event == event).collect()
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heartbeats of a node stop: none arrives in a window of several intervals.
async fn assert_heartbeats_stop(api: &IronicLab, uuid: &str) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = api.heartbeats(uuid);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(api.heartbeats(uuid), before, "{uuid} still heartbeats");
}

// ---- the tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_disk_deploy_driven_as_a_conductor_then_the_instance_boots() {
    let port = free_port();
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        notify_url: Some(format!("http://127.0.0.1:{port}/notify")),
        ..Default::default()
    });
    let machine = lab.systems[0].clone();
    let node_uuid = "4f1a6d8e-0000-4000-8000-000000000001";
    let token = token43('a');
    let mut api = ironic(vec![node(node_uuid, lab_mac(0), Some(&token))]).await;
    let image = disk_image(3 * MIB, 0x1234_abcd, 1);
    let media = files(HashMap::from([
        ("boot.iso".to_string(), iso("boot_method=vmedia")),
        (
            "params.img".to_string(),
            floppy(&[
                ("ipa-api-url", &api.server.url),
                ("ipa-agent-token", &token),
                ("BOOTIF", &lab_mac(0)),
                ("boot_method", "vmedia"),
            ]),
        ),
        ("disk.raw".to_string(), image.clone()),
    ]))
    .await;
    let sim = RamdiskSim::start(sim_config(port, &lab)).await.expect("simulator");
    let _dump = LogOnPanic(&sim);

    boot_ramdisk(&lab, 0, &format!("{}/boot.iso", media.url), Some(&format!("{}/params.img", media.url))).await;
    let hb = api.first_heartbeat(node_uuid).await;

    // what the agent said, at the versions a real IPA uses against 1.99
    assert_eq!(hb.version, "1.68");
    assert_eq!(hb.body["callback_url"], sim.callback_url(&machine, false));
    assert_eq!(hb.body["agent_token"], token.as_str(), "the floppy's token (lookup said ******)");
    assert_eq!(hb.body["agent_version"], "10.0.0");
    assert!(hb.body.get("agent_status").is_none() && hb.body.get("agent_verify_ca").is_none(), "{}", hb.body);
    let log = sim.log();
    let params = events(&log, &machine, "params");
    assert_eq!(params[0].str("source"), Some("cd /EFI/BOOT/grub.cfg + floppy (ir-vfd-dev)"), "{params:?}");
    let lookups = api.lookups();
    assert!(lookups.iter().all(|(addr, v)| addr == &lab_mac(0) && v == "1.62"), "{lookups:?}");

    let agent = AgentApi::new(hb.body["callback_url"].as_str().unwrap(), &token, None);
    // the token guards the commands, not the status
    let anon = reqwest::Client::new();
    for url in [format!("{}/v1/commands/", agent.url), format!("{}/v1/commands/?agent_token=wrong", agent.url)] {
        let r = anon.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{url}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["faultstring"], "401 Unauthorized: Token invalid.", "{v}");
    }
    let r = anon
        .post(format!("{}/v1/commands/?agent_token=wrong", agent.url))
        .json(&json!({"name": "deploy.get_deploy_steps", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let status: Value = anon.get(format!("{}/v1/status", agent.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["version"], "10.0.0");
    assert!(agent.list().await.unwrap().is_empty(), "a fresh boot has no commands");

    // deploy.get_deploy_steps (wait=true)
    let (code, steps) = agent.run("deploy.get_deploy_steps", node_params(node_uuid), true).await;
    assert_eq!(code, 200);
    assert_eq!(steps["command_status"], "SUCCEEDED", "{steps}");
    assert_eq!(steps["command_name"], "get_deploy_steps");
    assert_eq!(steps["command_result"]["hardware_manager_version"], json!({ "generic_hardware_manager": "1.2" }));
    let generic = steps["command_result"]["deploy_steps"]["GenericHardwareManager"].as_array().unwrap();
    assert!(generic.iter().any(|s| s["step"] == "write_image" && s["interface"] == "deploy"), "{generic:?}");

    // deploy.execute_deploy_step write_image (wait=false), followed to its end
    let info = json!({ "id": "img-1", "urls": [format!("{}/disk.raw", media.url)], "disk_format": "raw",
                       "image_type": "whole-disk", "stream_raw_images": true,
                       "os_hash_algo": "sha256", "os_hash_value": sha256(&image) });
    let (code, started) = agent.run("deploy.execute_deploy_step", write_image_params(node_uuid, info), false).await;
    assert_eq!(code, 200);
    assert_eq!(started["command_status"], "RUNNING", "{started}");
    let done = agent.follow("execute_deploy_step").await;
    assert_eq!(done["command_status"], "SUCCEEDED", "{done}");
    assert_eq!(done["id"], started["id"]);
    assert_eq!(done["command_result"]["deploy_step"]["step"], "write_image", "the step is echoed");
    assert_eq!(
        done["command_result"]["deploy_result"]["result"],
        "prepare_image: image (img-1) written to device /dev/sda root_uuid=0x1234abcd"
    );
    let disk = std::fs::read(sim.disk_path(&machine)).unwrap();
    assert_eq!(disk.len(), 8 * MIB, "the disk keeps its size");
    assert!(disk[..image.len()] == image[..], "the disk holds the image");

    // standby.get_partition_uuids: a whole disk's root is its MBR signature
    let (_, uuids) = agent.run("standby.get_partition_uuids", json!({}), true).await;
    assert_eq!(uuids["command_result"], json!({ "root uuid": "0x1234abcd" }), "{uuids}");

    // image.install_bootloader, slowed down: a second command meanwhile is refused
    let m = ferric_tests::ramdisk::Faults {
        command_delay_ms: [("image.install_bootloader".to_string(), 500)].into(),
        ..Default::default()
    };
    sim.set_faults(&machine, m).unwrap();
    let (_, ib) = agent
        .run("image.install_bootloader", json!({ "root_uuid": "0x1234abcd", "target_boot_mode": "uefi" }), false)
        .await;
    assert_eq!(ib["command_status"], "RUNNING");
    let (code, busy) = agent.run("standby.get_partition_uuids", json!({}), true).await;
    assert_eq!(code, 409, "{busy}");
    assert_eq!(busy["faultstring"], "Agent is busy: executing command install_bootloader");
    assert_eq!(agent.follow("install_bootloader").await["command_status"], "SUCCEEDED");
    sim.set_faults(&machine, Faults::default()).unwrap();
    let (code, unknown) = agent.run("nosuch.thing", json!({}), true).await;
    assert_eq!((code, unknown["faultstring"].as_str()), (404, Some("Not found: Extension with id nosuch not found.")));

    // standby.power_off: the agent powers its machine off through the BMC
    let (_, off) = agent.run("standby.power_off", json!({}), false).await;
    assert_eq!(off["command_name"], "power_off");
    wait_for("the machine is off", Duration::from_secs(10), async || power_state(&lab, 0).await == "Off").await;
    assert_heartbeats_stop(&api, node_uuid).await;
    assert!(agent.list().await.is_err(), "a machine that is off does not answer");
    let st = sim.status(&machine).unwrap();
    assert!(!st.powered_on && st.agent == "none", "{st:?}");

    // the instance boots from the disk: no agent, the log says what it found
    boot_device(&lab, 0, "Hdd").await;
    reset(&lab, 0, "On").await;
    let mut boots = Vec::new();
    wait_for("the instance boot", Duration::from_secs(10), async || {
        boots = sim.events(&machine).into_iter().filter(|e| e.event == "boot").collect();
        boots.len() == 2
    })
    .await;
    assert_eq!(boots[1].str("target"), Some("instance"));
    assert_eq!(boots[1].fields["disk"]["root_uuid"], "0x1234abcd");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.status(&machine).unwrap().agent, "none");

    // the log: every command with the conductor's User-Agent and its times
    let log = sim.log();
    let cmds = events(&log, &machine, "command");
    let names: Vec<&str> = cmds.iter().filter_map(|e| e.str("name")).collect();
    for n in [
        "deploy.get_deploy_steps",
        "deploy.execute_deploy_step",
        "standby.get_partition_uuids",
        "image.install_bootloader",
        "standby.power_off",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    for c in &cmds {
        assert_eq!(c.str("user_agent"), Some(CONDUCTOR_UA), "{c:?}");
        assert!(c.str("started_at").is_some() && c.str("ended_at").is_some(), "{c:?}");
    }
    assert!(command_overlaps(&log).is_empty(), "{:?}", command_overlaps(&log));
    assert!(events(&log, &machine, "heartbeat").iter().all(|h| h.u64("status") == Some(202)));
    let lookup = events(&log, &machine, "lookup");
    assert_eq!(lookup[0].str("token"), Some("masked"));
    assert_eq!(events(&log, &machine, "request").iter().filter(|r| r.u64("status") == Some(401)).count(), 3);
    assert!(std::fs::read_to_string(sim.log_path()).unwrap().lines().count() >= log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_fails_clearly_and_a_ramdisk_dying_mid_download_goes_silent() {
    let port = free_port();
    let lab = SushyLab::start(SushyOptions {
        systems: 2,
        notify_url: Some(format!("http://127.0.0.1:{port}/notify")),
        ..Default::default()
    });
    let (m0, m1) = (lab.systems[0].clone(), lab.systems[1].clone());
    let (n0, n1) = ("4f1a6d8e-0000-4000-8000-00000000000a", "4f1a6d8e-0000-4000-8000-00000000000b");
    let (t0, t1) = (token43('b'), token43('c'));
    let mut api = ironic(vec![node(n0, lab_mac(0), Some(&t0)), node(n1, lab_mac(1), Some(&t1))]).await;
    let image = disk_image(2 * MIB, 0xcafe_f00d, 2);
    let params = |t: &str, i: usize| {
        floppy(&[("ipa-api-url", &api.server.url), ("ipa-agent-token", t), ("BOOTIF", &lab_mac(i))])
    };
    // the same image as qcow2, where qemu-img is installed (scripts/deps.sh)
    let qcow2 = qcow2_of(&image);
    let mut served = HashMap::from([
        ("boot.iso".to_string(), iso("boot_method=vmedia")),
        ("p0.img".to_string(), params(&t0, 0)),
        ("p1.img".to_string(), params(&t1, 1)),
        ("disk.raw".to_string(), image.clone()),
    ]);
    if let Some(q) = &qcow2 {
        served.insert("disk.qcow2".to_string(), q.clone());
    }
    let media = files(served).await;
    let mut cfg = sim_config(port, &lab);
    cfg.faults.insert(m1.clone(), Faults { die_during_download: true, ..Default::default() });
    let sim = RamdiskSim::start(cfg).await.expect("simulator");
    let _dump = LogOnPanic(&sim);
    let cd = format!("{}/boot.iso", media.url);
    boot_ramdisk(&lab, 0, &cd, Some(&format!("{}/p0.img", media.url))).await;
    boot_ramdisk(&lab, 1, &cd, Some(&format!("{}/p1.img", media.url))).await;
    let hb0 = api.first_heartbeat(n0).await;
    let hb1 = api.first_heartbeat(n1).await;
    let a0 = AgentApi::new(hb0.body["callback_url"].as_str().unwrap(), &t0, None);
    let a1 = AgentApi::new(hb1.body["callback_url"].as_str().unwrap(), &t1, None);
    let url = format!("{}/disk.raw", media.url);

    // a checksum that does not match: FAILED, saying both checksums
    let wrong = sha256(b"some other image");
    let info = json!({ "id": "img-2", "urls": [url], "disk_format": "raw", "stream_raw_images": false,
                       "os_hash_algo": "sha256", "os_hash_value": wrong });
    let (_, r) = a0.run("deploy.execute_deploy_step", write_image_params(n0, info), false).await;
    assert_eq!(r["command_status"], "RUNNING");
    let failed = a0.follow("execute_deploy_step").await;
    assert_eq!(failed["command_status"], "FAILED", "{failed}");
    let err = &failed["command_error"];
    assert_eq!(err["type"], "ImageChecksumError", "{err}");
    assert_eq!(err["message"], "Error verifying image checksum");
    let details = err["details"].as_str().unwrap();
    assert!(details.contains(&wrong) && details.contains(&sha256(&image)), "{details}");
    assert!(failed["command_result"].is_null());
    // the same image with a right md5 `checksum` (the algorithm by its length)
    let info = json!({ "id": "img-2", "urls": [url], "disk_format": "raw", "checksum": md5(&image) });
    a0.run("deploy.execute_deploy_step", write_image_params(n0, info), false).await;
    assert_eq!(a0.follow("execute_deploy_step").await["command_status"], "SUCCEEDED");
    assert!(std::fs::read(sim.disk_path(&m0)).unwrap()[..image.len()] == image[..]);
    match &qcow2 {
        Some(q) => {
            std::fs::write(sim.disk_path(&m0), vec![0x5au8; 8 * MIB]).unwrap();
            let info = json!({ "id": "img-2-qcow2", "urls": [format!("{}/disk.qcow2", media.url)], "disk_format": "qcow2",
                               "os_hash_algo": "sha512", "os_hash_value": hex::encode(sha2::Sha512::digest(q)) });
            a0.run("deploy.execute_deploy_step", write_image_params(n0, info), false).await;
            let r = a0.follow("execute_deploy_step").await;
            assert_eq!(r["command_status"], "SUCCEEDED", "{r}");
            let disk = std::fs::read(sim.disk_path(&m0)).unwrap();
            assert!(disk[..image.len()] == image[..], "qcow2 converted onto the disk");
            assert!(disk[disk.len() - MIB..].iter().all(|b| *b == 0), "the old metadata at the end is gone");
        }
        None => eprintln!("qemu-img not found: the qcow2 case is not checked"),
    }
    // a deploy_version the agent does not have
    let mut p = write_image_params(n0, json!({}));
    p["deploy_version"] = json!({ "generic_hardware_manager": "1.1" });
    a0.run("deploy.execute_deploy_step", p, false).await;
    let mismatch = a0.follow("execute_deploy_step").await;
    assert_eq!(mismatch["command_status"], "CLEAN_VERSION_MISMATCH", "{mismatch}");

    // lost heartbeats (the control API): the API sees a gap, the log says so
    let ctl: Value = reqwest::Client::new()
        .post(format!("{}/control/{m0}", sim.url()))
        .json(&json!({ "lose_heartbeats": 3 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ctl["faults"]["lose_heartbeats"], 3, "{ctl}");
    wait_for("3 heartbeats lost", Duration::from_secs(5), async || {
        events(&sim.log(), &m0, "heartbeat_lost").len() == 3
    })
    .await;

    // the ramdisk dies in the middle of the download: no answers, no heartbeats
    let info = json!({ "id": "img-3", "urls": [url], "disk_format": "raw", "stream_raw_images": true, "checksum": sha256(&image) });
    let (_, r) = a1.run("deploy.execute_deploy_step", write_image_params(n1, info), false).await;
    assert_eq!(r["command_status"], "RUNNING");
    wait_for("the crash", Duration::from_secs(10), async || sim.status(&m1).unwrap().agent == "crashed").await;
    assert!(a1.list().await.is_err(), "a crashed ramdisk does not answer");
    assert_heartbeats_stop(&api, n1).await;
    let log = sim.log();
    assert_eq!(events(&log, &m1, "agent_crash").len(), 1);
    let frozen = events(&log, &m1, "command");
    assert_eq!(frozen.last().unwrap().str("status"), Some("RUNNING"), "{frozen:?}");
    assert!(frozen.last().unwrap().str("interrupted").is_some());

    // a power cycle boots a new agent: a new lookup, an empty command list
    reset(&lab, 1, "ForceRestart").await;
    let again = api.first_heartbeat(n1).await;
    assert_eq!(again.body["callback_url"], hb1.body["callback_url"]);
    assert!(a1.list().await.unwrap().is_empty(), "every boot starts with no commands");
    assert_eq!(sim.status(&m1).unwrap().boot, 2);
    let log = sim.log();
    assert!(events(&log, &m1, "power_off").iter().any(|e| e.str("reason") == Some("power cycle")), "{log:?}");
    assert!(command_overlaps(&log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cd_only_machine_over_tls_with_a_looked_up_token_cleans_its_disk_found_by_polling() {
    // no removable slot (parameters on the ISO's command line), basic auth,
    // no notifications: the simulator polls
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        auth: Some(("admin".into(), "secret".into())),
        removable_slot: false,
        ..Default::default()
    });
    let machine = lab.systems[0].clone();
    let node_uuid = "4f1a6d8e-0000-4000-8000-0000000000c1";
    let mut api = ironic(vec![node(node_uuid, lab_mac(0), None)]).await;
    let cmdline =
        format!("ipa-api-url={} BOOTIF=01-{} boot_method=vmedia", api.server.url, lab_mac(0).replace(':', "-"));
    let media = files(HashMap::from([("cd.iso".to_string(), iso(&cmdline))])).await;
    let mut cfg = sim_config(free_port(), &lab);
    cfg.tls = true;
    cfg.poll_interval_ms = Some(200);
    let sim = RamdiskSim::start(cfg).await.expect("simulator");
    let _dump = LogOnPanic(&sim);

    // a BIOS machine: isolinux's command line
    let legacy = json!({ "Boot": { "BootSourceOverrideTarget": "Cd", "BootSourceOverrideMode": "Legacy" } });
    bmc_write(&lab, reqwest::Method::PATCH, &lab.system_path(0), legacy).await;
    boot_ramdisk(&lab, 0, &format!("{}/cd.iso", media.url), None).await;
    let hb = api.first_heartbeat(node_uuid).await;
    assert_eq!(hb.body["callback_url"], sim.callback_url(&machine, true));
    let ca = hb.body["agent_verify_ca"].as_str().expect("agent_verify_ca");
    assert_eq!(Some(ca.to_string()), sim.ca_pem());
    let token = hb.body["agent_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 43, "the token the lookup issued");
    let log = sim.log();
    let params = events(&log, &machine, "params");
    assert_eq!(params[0].str("source"), Some("cd /isolinux/isolinux.cfg"), "{params:?}");
    assert_eq!(events(&log, &machine, "lookup").last().unwrap().str("token"), Some("issued"));

    // the conductor verifies the agent with the CA of its heartbeat
    let agent = AgentApi::new(hb.body["callback_url"].as_str().unwrap(), &token, Some(ca));
    let (_, steps) = agent.run("clean.get_clean_steps", node_params(node_uuid), true).await;
    let generic = steps["command_result"]["clean_steps"]["GenericHardwareManager"].as_array().unwrap().clone();
    let prio = |name: &str| generic.iter().find(|s| s["step"] == name).map(|s| s["priority"].clone());
    assert_eq!(prio("erase_devices_metadata"), Some(json!(99)));
    assert_eq!(prio("erase_devices"), Some(json!(10)));
    assert!(generic.iter().all(|s| s["interface"] == "deploy" || s["interface"] == "raid"));

    // a disk with data on it, then automated cleaning
    let disk = sim.disk_path(&machine);
    std::fs::write(&disk, vec![0xa5u8; 8 * MIB]).unwrap();
    let clean = |step: &str, prio: u32| {
        let mut p = node_params(node_uuid);
        p["step"] = json!({ "step": step, "priority": prio, "interface": "deploy", "reboot_requested": false, "abortable": true });
        p["clean_version"] = json!({ "generic_hardware_manager": "1.2" });
        p
    };
    agent.run("clean.execute_clean_step", clean("erase_devices_metadata", 99), false).await;
    let r = agent.follow("execute_clean_step").await;
    assert_eq!(r["command_status"], "SUCCEEDED", "{r}");
    assert_eq!(r["command_result"]["clean_step"]["step"], "erase_devices_metadata");
    let d = std::fs::read(&disk).unwrap();
    assert!(d[..MIB].iter().all(|b| *b == 0) && d[d.len() - MIB..].iter().all(|b| *b == 0) && d[MIB] == 0xa5);
    agent.run("clean.execute_clean_step", clean("erase_devices", 10), false).await;
    let r = agent.follow("execute_clean_step").await;
    assert_eq!(r["command_result"]["clean_result"], json!({ "/dev/sda": null }), "{r}");
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 0));

    // the conductor collects the ramdisk's logs: a base64 tar.gz
    let (_, logs) = agent.run("log.collect_system_logs", json!({}), true).await;
    let b64 = logs["command_result"]["system_logs"].as_str().expect("system_logs");
    use base64::Engine as _;
    let gz = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut names = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert!(!s.is_empty());
    }
    assert!(names.contains(&"journal".to_string()), "{names:?}");

    // off through the BMC: the poll notices, the heartbeats stop
    reset(&lab, 0, "ForceOff").await;
    wait_for("the poll sees the power off", Duration::from_secs(5), async || !sim.status(&machine).unwrap().powered_on)
        .await;
    assert_heartbeats_stop(&api, node_uuid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_config_and_stops_on_sigterm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("sim.jsonl");
    let config = json!({
        "listen": format!("127.0.0.1:{port}"),
        "emulators": [{ "url": "http://127.0.0.1:9", "systems": [{ "id": "m-1", "macs": ["52:54:00:aa:bb:cc"] }] }],
        "disks_dir": dir.path().join("disks"),
        "log_path": log,
        "faults": { "m-1": { "lose_heartbeats": 2 } },
    });
    let path = dir.path().join("sim.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramdisk-sim"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ramdisk-sim");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), format!("http://127.0.0.1:{port}"));
    let http = reqwest::Client::new();
    let st: Value = http.get(format!("{}/control/m-1", line.trim())).send().await.unwrap().json().await.unwrap();
    assert_eq!(st["faults"]["lose_heartbeats"], 2, "{st}");
    assert_eq!(st["agent"], "none");
    assert_eq!(http.get(format!("{}/control/nope", line.trim())).send().await.unwrap().status(), 404);
    // a notification for a machine that is off and stays off: answered at once
    let r = http
        .put(format!("{}/notify", line.trim()))
        .json(&json!({ "uuid": "m-1", "name": "fake-1", "power_state": "Off", "boot_device": "Cd" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "ramdisk-sim ignores SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(std::fs::metadata(&log).is_ok());
}

#[test]
fn overlapping_commands_of_two_conductors_are_found() {
    let ev = |m: &str, ua: &str, s: &str, e: &str| -> LogEvent {
        serde_json::from_value(json!({
            "ts": e, "machine": m, "boot": 1, "event": "command", "name": "deploy.execute_deploy_step",
            "user_agent": ua, "started_at": s, "ended_at": e,
        }))
        .unwrap()
    };
    let ok = vec![
        ev("m", "c1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z"),
        ev("m", "c2", "2026-01-01T00:00:05Z", "2026-01-01T00:00:09Z"),
        ev("n", "c1", "2026-01-01T00:00:01Z", "2026-01-01T00:00:04Z"),
    ];
    assert!(command_overlaps(&ok).is_empty());
    let mut bad = ok.clone();
    bad.push(ev("m", "c2", "2026-01-01T00:00:04Z", "2026-01-01T00:00:06Z"));
    let found = command_overlaps(&bad);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("\"c1\"") && found[0].contains("\"c2\""));
}

/// Many machines in one simulator (`FERRIC_SIM_MACHINES`, default 60): every
/// one boots, looks up, heartbeats and answers a command; every one stops
/// when powered off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_machines_in_one_process() {
    let n: usize = std::env::var("FERRIC_SIM_MACHINES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let port = free_port();
    let lab = SushyLab::start(SushyOptions {
        systems: n,
        notify_url: Some(format!("http://127.0.0.1:{port}/notify")),
        ..Default::default()
    });
    let uuids: Vec<String> = (0..n).map(|i| format!("4f1a6d8e-0000-4000-9000-{i:012x}")).collect();
    let mut api = ironic((0..n).map(|i| node(&uuids[i], lab_mac(i), None)).collect()).await;
    let media = files(HashMap::from([
        ("boot.iso".to_string(), iso("boot_method=vmedia")),
        ("params.img".to_string(), floppy(&[("ipa-api-url", &api.server.url), ("boot_method", "vmedia")])),
    ]))
    .await;
    let mut cfg = sim_config(port, &lab);
    cfg.heartbeat_interval_ms = Some(1000);
    cfg.log_requests = false;
    let sim = RamdiskSim::start(cfg).await.expect("simulator");
    let _dump = LogOnPanic(&sim);
    let start = Instant::now();
    let lab = Arc::new(lab);
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut boots = tokio::task::JoinSet::new();
    for i in 0..n {
        let (lab, limit, media) = (lab.clone(), limit.clone(), media.url.clone());
        boots.spawn(async move {
            let _p = limit.acquire_owned().await.unwrap();
            boot_ramdisk(&lab, i, &format!("{media}/boot.iso"), Some(&format!("{media}/params.img"))).await;
        });
    }
    boots.join_all().await;
    let mut first = HashMap::new();
    while first.len() < n {
        let hb = tokio::time::timeout(Duration::from_secs(60), api.first.recv()).await.expect("heartbeats").unwrap();
        first.insert(hb.uuid.clone(), hb);
    }
    let booted = start.elapsed();
    // every agent answers, concurrently
    let mut calls = tokio::task::JoinSet::new();
    for (uuid, hb) in &first {
        let agent =
            AgentApi::new(hb.body["callback_url"].as_str().unwrap(), hb.body["agent_token"].as_str().unwrap(), None);
        let uuid = uuid.clone();
        calls.spawn(async move { agent.run("deploy.get_deploy_steps", node_params(&uuid), true).await });
    }
    for (code, r) in calls.join_all().await {
        assert_eq!((code, r["command_status"].as_str()), (200, Some("SUCCEEDED")), "{r}");
    }
    let mut offs = tokio::task::JoinSet::new();
    for i in 0..n {
        let (lab, limit) = (lab.clone(), limit.clone());
        offs.spawn(async move {
            let _p = limit.acquire_owned().await.unwrap();
            reset(&lab, i, "ForceOff").await;
        });
    }
    offs.join_all().await;
    wait_for("every agent stopped", Duration::from_secs(30), async || {
        lab.systems.iter().all(|m| sim.status(m).is_some_and(|s| s.agent == "none" && !s.powered_on))
    })
    .await;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?").to_string();
    eprintln!(
        "{n} machines: all heartbeating {booted:?} after the first boot request; {:?} in all; test process (simulator + stand-ins) {peak}",
        start.elapsed()
    );
}

/// The old iscsi deploy's ramdisk: media that ask for a target get one
/// (the disk file as LUN 1, through the simulator's tgtd), the API hears of
/// it in `pass_deploy_info`, a writer (qemu-img over libiscsi, as the
/// conductor does it) reaches the disk, and a power-off takes the target
/// away. A ramdisk that cannot export says so in `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iscsi_media_export_the_disk_and_say_where() {
    let port = free_port();
    let lab = SushyLab::start(SushyOptions {
        systems: 2,
        notify_url: Some(format!("http://127.0.0.1:{port}/notify")),
        ..Default::default()
    });
    let (n0, n1) = ("4f1a6d8e-0000-4000-8000-0000000000c0", "4f1a6d8e-0000-4000-8000-0000000000c1");
    let (t0, t1) = (token43('i'), token43('j'));
    let api = ironic(vec![node(n0, lab_mac(0), Some(&t0)), node(n1, lab_mac(1), Some(&t1))]).await;
    let iqn = format!("iqn.2008-10.org.openstack:{n0}");
    let params = |t: &str, i: usize, iqn: &str| {
        floppy(&[
            ("ipa-api-url", &api.server.url),
            ("ipa-agent-token", t),
            ("BOOTIF", &lab_mac(i)),
            ("iscsi_target_iqn", iqn),
            ("deploy_key", t),
        ])
    };
    let media = files(HashMap::from([
        ("boot.iso".to_string(), iso("boot_method=vmedia")),
        ("p0.img".to_string(), params(&t0, 0, &iqn)),
        ("p1.img".to_string(), params(&t1, 1, &format!("iqn.2008-10.org.openstack:{n1}"))),
    ]))
    .await;
    let mut cfg = sim_config(port, &lab);
    cfg.iscsi = true;
    cfg.faults
        .insert(lab.systems[1].clone(), Faults { iscsi_error: Some("no target for you".into()), ..Default::default() });
    let sim = RamdiskSim::start(cfg).await.expect("simulator with tgtd (apt-get install tgt; scripts/deps.sh does)");
    let _dump = LogOnPanic(&sim);
    let cd = format!("{}/boot.iso", media.url);
    boot_ramdisk(&lab, 0, &cd, Some(&format!("{}/p0.img", media.url))).await;
    boot_ramdisk(&lab, 1, &cd, Some(&format!("{}/p1.img", media.url))).await;
    let infos = || api.ironic.st.lock().unwrap().deploy_infos.clone();
    wait_for("pass_deploy_info of both", Duration::from_secs(20), async || infos().len() == 2).await;
    let all = infos();
    let info = &all.iter().find(|(u, _)| u == n0).expect("n0's pass_deploy_info").1;
    assert_eq!(info["iqn"], iqn.as_str(), "{info}");
    assert_eq!(info["key"], t0.as_str(), "the deploy key of the media");
    assert_eq!(info["address"], "127.0.0.1");
    assert!(info.get("error").is_none(), "{info}");
    let failed = &all.iter().find(|(u, _)| u == n1).expect("n1's pass_deploy_info").1;
    assert_eq!(failed["error"], "no target for you", "{failed}");
    assert_eq!(failed["key"], t1.as_str());
    assert!(failed.get("iqn").is_none());

    // a writer reaches the disk through the target
    let image = disk_image(3 * MIB, 0x1a2b_3c4d, 7);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image.raw");
    std::fs::write(&file, &image).unwrap();
    let url = format!("iscsi://127.0.0.1:{}/{iqn}/1", info["port"]);
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&file)
        .arg(&url)
        .output()
        .expect("qemu-img (apt-get install qemu-utils qemu-block-extra; scripts/deps.sh does)");
    assert!(out.status.success(), "qemu-img convert to {url}: {}", String::from_utf8_lossy(&out.stderr));
    let disk = std::fs::read(sim.disk_path(&lab.systems[0])).unwrap();
    assert!(disk[..image.len()] == image[..], "the image is on the machine's disk");

    // off: the target is gone
    reset(&lab, 0, "ForceOff").await;
    wait_for("the target to go", Duration::from_secs(10), async || {
        let out = std::process::Command::new("qemu-img").args(["info", &url]).output().unwrap();
        !out.status.success()
    })
    .await;
    let log = sim.log();
    assert_eq!(events(&log, &lab.systems[0], "iscsi_export").len(), 1);
    assert!(command_overlaps(&log).is_empty());
}
