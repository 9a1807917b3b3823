//! Virtual-media boot end to end: a real `ferric all-in-one` drives a real
//! Redfish BMC (the sushy-tools emulator) — the BMC downloads the boot ISO
//! and the parameters floppy from the conductor's HTTP root, boots once
//! from CD, the test plays the ramdisk (it reads the token from the floppy
//! the BMC fetched), and the node ends booting from disk or from a boot
//! ISO, as configured. Undeploy ejects and releases.

use std::time::Duration;

use ferric_tests::redfish::{SushyLab, SushyOptions};
use ferric_tests::{Api, Ferric, fake_boot_images, fat_file, free_port, key_values};
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn start_ferric(env: &[(&str, &str)]) -> (Ferric, u16) {
    let http_port = free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let mut all = vec![
        ("FERRIC_CONDUCTOR__HTTP_LISTEN", listen.as_str()),
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
        ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "100"),
    ];
    all.extend_from_slice(env);
    (Ferric::start(None, &all), http_port)
}

async fn fetch(url: &str) -> Vec<u8> {
    let r = ferric_tests::http().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.unwrap().to_vec()
}

fn root_files(ferric: &Ferric) -> Vec<String> {
    let root = ferric.data_dir.path().join("httpboot");
    let mut out: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

fn users(ferric: &Ferric, iso: &str) -> usize {
    let dir = ferric.data_dir.path().join("httpboot/.users").join(iso);
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn a_deploy_boots_the_ramdisk_from_virtual_media_and_the_instance_from_disk() {
    let lab = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
    let (ferric, http_port) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = fake_boot_images(dir.path(), "deploy");
    let mut info = lab.driver_info(0);
    info["deploy_kernel"] = kernel.into();
    info["deploy_ramdisk"] = ramdisk.into();
    info["fake_wait_after"] = "deploy.deploy".into();
    let mac = "52:54:00:00:00:00";
    let node = api
        .create_node(
            json!({"driver": "redfish", "name": "vm0", "deploy_interface": "fake", "driver_info": info,
               "instance_info": {"image_source": "http://example.invalid/disk.img"}}),
            &[mac],
        )
        .await;
    let uuid = lab.systems[0].clone();
    api.to_available(&node, WAIT).await;
    assert_eq!(api.node(&node).await["power_state"], "power off", "cleaning powered it off through the BMC");
    let writes_before = lab.writes_for(&uuid).await.len();

    // deploy: the ramdisk's media are published, inserted, booted once
    api.provision(&node, "active").await;
    let n = api.wait_state(&node, "wait call-back", WAIT).await;
    let rec = &n["driver_internal_info"]["vmedia"];
    assert_eq!(rec["phase"], "ramdisk", "{n}");
    let cd_url = rec["cd"]["url"].as_str().unwrap().to_string();
    let floppy_url = rec["removable"]["url"].as_str().unwrap().to_string();
    let root = format!("http://127.0.0.1:{http_port}/httpboot/");
    assert!(cd_url.starts_with(&root) && floppy_url.starts_with(&root), "{cd_url} {floppy_url}");
    let cd = lab.media(&uuid, "Cd").await;
    assert_eq!(cd["Image"], cd_url.as_str());
    assert_eq!(cd["Inserted"], true);
    assert_eq!(lab.media(&uuid, "Floppy").await["Image"], floppy_url.as_str());
    // the BMC holds exactly the bytes the conductor serves
    let iso = lab.media_bytes(&uuid, "Cd").await.expect("the BMC downloaded the ISO");
    assert_eq!(iso, fetch(&cd_url).await);
    assert_eq!(&iso[0x8001..0x8006], b"CD001", "an ISO 9660 image");
    let floppy = lab.media_bytes(&uuid, "Floppy").await.expect("the BMC downloaded the floppy");
    assert_eq!(floppy, fetch(&floppy_url).await);
    assert_eq!(floppy.len(), 1_474_560);
    let p = key_values(&fat_file(&floppy, "parameters.txt"));
    assert_eq!(p["ipa-api-url"], ferric.endpoint);
    assert_eq!(p["boot_method"], "vmedia");
    assert_eq!(p["BOOTIF"], mac);
    let token = p["ipa-agent-token"].clone();
    assert_eq!(token.len(), 43);
    // boot once from CD: sushy-tools keeps it as Continuous, which Ferric noticed
    let system = lab.get(&lab.system_path(0)).await;
    assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Cd");
    assert_eq!(system["PowerState"], "On");
    assert_eq!(n["driver_internal_info"]["redfish_boot_once_ignored"], "Cd");
    assert!(!n.to_string().contains(&token), "the token is not readable through the API");
    let writes: Vec<String> =
        lab.writes_for(&uuid).await[writes_before..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    let inserts = writes.iter().filter(|w| w.ends_with("VirtualMedia.InsertMedia")).count();
    assert_eq!(inserts, 2, "one insert per slot: {writes:?}");

    // the ramdisk: its token came with the floppy, so lookup hands out none
    let lookup = api.get(&format!("/v1/lookup?addresses={mac}")).await;
    assert_eq!(lookup["config"]["agent_token"], "******");
    assert_eq!(lookup["node"]["uuid"], node.as_str());
    assert_eq!(api.heartbeat(&node, &token).await, 202);
    let n = api.wait_state(&node, "active", WAIT).await;

    // called back: the ramdisk media were ejected and released, the
    // one-time override reset, the instance boots from disk for good
    for dev in ["Cd", "Floppy"] {
        let d = lab.media(&uuid, dev).await;
        assert_eq!(d["Inserted"], false, "{dev}: {d}");
    }
    let system = lab.get(&lab.system_path(0)).await;
    assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Hdd");
    assert_eq!(system["Boot"]["BootSourceOverrideEnabled"], "Continuous");
    assert_eq!(system["PowerState"], "On");
    assert!(n["driver_internal_info"].get("redfish_boot_once_ignored").is_none(), "{n}");
    assert_eq!(n["driver_internal_info"]["vmedia"]["phase"], "instance");
    assert_eq!(root_files(&ferric), Vec::<String>::new(), "the last user released the deploy ISO and the floppy");
    assert_eq!(ferric_tests::http().get(&cd_url).send().await.unwrap().status(), 404);

    // undeploy powers off through the BMC; the node comes back available
    api.provision(&node, "deleted").await;
    api.wait_state(&node, "available", WAIT).await;
    assert_eq!(lab.get(&lab.system_path(0)).await["PowerState"], "Off");
}

#[tokio::test]
async fn ramdisk_instances_share_one_boot_iso_until_the_last_undeploy() {
    let lab = SushyLab::start(SushyOptions { systems: 2, ..Default::default() });
    let (ferric, _) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = fake_boot_images(dir.path(), "instance");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let node = api.create_node(
            json!({"driver": "redfish", "deploy_interface": "ramdisk", "name": format!("disk-less-{i}"), "driver_info": lab.driver_info(i),
                   "instance_info": {"kernel": kernel, "ramdisk": ramdisk, "ramdisk_kernel_arguments": "console=ttyS0"}}),
            &[&format!("52:54:00:00:01:0{i}")],
        )
        .await;
        api.to_available(&node, WAIT).await;
        api.provision(&node, "active").await;
        nodes.push(node);
    }
    let mut urls = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let n = api.wait_state(node, "active", WAIT).await;
        let cd = &n["driver_internal_info"]["vmedia"]["cd"];
        let url = cd["url"].as_str().unwrap().to_string();
        let uuid = &lab.systems[i];
        assert_eq!(lab.media(uuid, "Cd").await["Image"], url.as_str());
        assert_eq!(lab.media_bytes(uuid, "Cd").await.unwrap(), fetch(&url).await);
        let system = lab.get(&lab.system_path(i)).await;
        assert_eq!(system["Boot"]["BootSourceOverrideTarget"], "Cd", "the instance boots from its ISO");
        assert_eq!(system["PowerState"], "On");
        assert!(lab.media_bytes(uuid, "Floppy").await.is_none(), "no parameters for an instance");
        urls.push((url, cd["name"].as_str().unwrap().to_string()));
    }
    assert_eq!(urls[0], urls[1], "one content-addressed ISO for both");
    let iso = urls[0].1.clone();
    assert_eq!(root_files(&ferric), vec![iso.clone()]);
    assert_eq!(users(&ferric, &iso), 2);

    // a reboot re-attaches first: the ISO is in place, so only the reset is
    // written to the BMC
    let before = lab.writes_for(&lab.systems[0]).await.len();
    api.ok(Method::PUT, &format!("/v1/nodes/{}/states/power", nodes[0]), Some(json!({"target": "rebooting"}))).await;
    let start = std::time::Instant::now();
    while !api.node(&nodes[0]).await["target_power_state"].is_null() {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes: Vec<String> =
        lab.writes_for(&lab.systems[0]).await[before..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(writes[0].ends_with("ComputerSystem.Reset"), "{writes:?}");

    // undeploy: ejected, use released; the last one deletes the ISO
    api.provision(&nodes[0], "deleted").await;
    api.wait_state(&nodes[0], "available", WAIT).await;
    assert_eq!(lab.media(&lab.systems[0], "Cd").await["Inserted"], false);
    assert_eq!(lab.media(&lab.systems[1], "Cd").await["Inserted"], true, "the other node keeps booting from it");
    assert_eq!(users(&ferric, &iso), 1);
    assert_eq!(root_files(&ferric), vec![iso.clone()]);
    api.provision(&nodes[1], "deleted").await;
    api.wait_state(&nodes[1], "available", WAIT).await;
    assert_eq!(lab.media(&lab.systems[1], "Cd").await["Inserted"], false);
    assert_eq!(root_files(&ferric), Vec::<String>::new());
}

#[tokio::test]
async fn validation_names_what_is_missing() {
    let lab = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
    let (ferric, _) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let validate = |v: Value, iface: &str| {
        let r = v[iface].clone();
        (r["result"].as_bool().unwrap_or(true), r["reason"].as_str().unwrap_or_default().to_string())
    };

    // no deploy kernel
    let mut info = lab.driver_info(0);
    info["deploy_ramdisk"] = "file:///nonexistent/initrd".into();
    let n = api
        .create_node(
            json!({"driver": "redfish", "name": "no-kernel", "deploy_interface": "fake", "driver_info": info}),
            &["52:54:00:00:02:01"],
        )
        .await;
    let v = api.get(&format!("/v1/nodes/{n}/validate")).await;
    let (ok, reason) = validate(v.clone(), "deploy");
    assert!(!ok && reason.contains("driver_info.deploy_kernel"), "the deploy boots a ramdisk: {v}");
    assert!(!reason.contains("driver_info.deploy_ramdisk,") && !reason.ends_with("deploy_ramdisk"), "{reason}");
    assert!(validate(v.clone(), "boot").0, "the BMC and its virtual media are fine: {v}");
    assert!(validate(v.clone(), "power").0, "{v}");
    api.to_available(&n, WAIT).await;
    let (s, body) =
        api.call(Method::PUT, &format!("/v1/nodes/{n}/states/provision"), Some(json!({"target": "active"}))).await;
    assert_eq!(s, 400, "{body}");
    assert!(
        Api::fault(&body).contains("Failed to validate deploy")
            && Api::fault(&body).contains("driver_info.deploy_kernel"),
        "{body}"
    );

    // no BMC address: power and management name the field
    let n = api
        .create_node(json!({"driver": "redfish", "name": "no-address", "driver_info": {}}), &["52:54:00:00:02:02"])
        .await;
    let v = api.get(&format!("/v1/nodes/{n}/validate")).await;
    let (ok, reason) = validate(v.clone(), "power");
    assert!(!ok && reason.contains("driver_info.redfish_address is required"), "{v}");
    let (s, body) =
        api.call(Method::PUT, &format!("/v1/nodes/{n}/states/provision"), Some(json!({"target": "manage"}))).await;
    assert_eq!(s, 400, "{body}");
    assert!(Api::fault(&body).contains("redfish_address"), "{body}");

    // a BMC nobody answers at: boot validation says so
    let mut info = lab.driver_info(0);
    info["redfish_address"] = format!("http://127.0.0.1:{}", free_port()).into();
    info["deploy_kernel"] = "file:///k".into();
    info["deploy_ramdisk"] = "file:///r".into();
    let n = api
        .create_node(json!({"driver": "redfish", "name": "unreachable", "driver_info": info}), &["52:54:00:00:02:03"])
        .await;
    let v = api.get(&format!("/v1/nodes/{n}/validate")).await;
    let (ok, reason) = validate(v.clone(), "boot");
    assert!(!ok && reason.contains("unreachable"), "{v}");

    // the ramdisk deploy without an instance kernel
    let n = api.create_node(
        json!({"driver": "redfish", "deploy_interface": "ramdisk", "name": "no-instance", "driver_info": lab.driver_info(0),
                                "instance_info": {"ramdisk": "file:///r"}}),
        &["52:54:00:00:02:04"],
    )
    .await;
    let v = api.get(&format!("/v1/nodes/{n}/validate")).await;
    let (ok, reason) = validate(v.clone(), "deploy");
    assert!(!ok && reason.contains("instance_info.kernel"), "{v}");
    assert!(!reason.contains("instance_info.ramdisk,") && !reason.ends_with("instance_info.ramdisk"), "{reason}");
}

#[tokio::test]
async fn ilo_is_redfish_with_hpe_names_against_the_emulator() {
    // the emulator answers at iLO's fixed /redfish/v1/Systems/1 when system 0
    // is called "1" (it redirects a name to the system)
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        auth: Some(("Administrator".into(), "secret".into())),
        first_system_name: Some("1".into()),
        ..Default::default()
    });
    let (ferric, _) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = fake_boot_images(dir.path(), "ilo");
    let node = api
        .create_node(
            json!({"driver": "ilo", "deploy_interface": "ramdisk", "name": "proliant",
               "driver_info": {"ilo_address": lab.url, "ilo_username": "Administrator", "ilo_password": "secret"},
               "instance_info": {"kernel": kernel, "ramdisk": ramdisk}}),
            &["52:54:00:00:03:01"],
        )
        .await;
    let n = api.node(&node).await;
    assert_eq!(n["boot_interface"], "ilo-virtual-media");
    assert_eq!(n["driver_info"]["ilo_password"], "******");
    api.to_available(&node, WAIT).await;
    api.provision(&node, "active").await;
    let n = api.wait_state(&node, "active", WAIT).await;
    let url = n["driver_internal_info"]["vmedia"]["cd"]["url"].as_str().unwrap().to_string();
    let uuid = &lab.systems[0];
    assert_eq!(lab.media(uuid, "Cd").await["Image"], url.as_str());
    assert_eq!(lab.media_bytes(uuid, "Cd").await.unwrap(), fetch(&url).await);
    // iLO's InsertMedia carries the image only
    let reqs = lab.requests().await;
    assert!(reqs.iter().any(|r| r.path.ends_with("VirtualMedia.InsertMedia")), "{reqs:?}");
    assert!(reqs.iter().all(|r| r.auth != "none" || r.path == "/redfish/v1/"), "{reqs:?}");
    api.provision(&node, "deleted").await;
    api.wait_state(&node, "available", WAIT).await;
    assert_eq!(lab.media(uuid, "Cd").await["Inserted"], false);
}

/// `[redfish] eject_media_after`: `callback` ejects the ramdisk media as
/// soon as the ramdisk calls back, `active` when the instance's boot is
/// prepared, `never` leaves them until the node is torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn eject_media_after_callback_active_or_never() {
    tokio::join!(eject_case("callback"), eject_case("active"), eject_case("never"));
}

async fn eject_case(policy: &str) {
    {
        let lab = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
        let (ferric, _) = start_ferric(&[("FERRIC_REDFISH__EJECT_MEDIA_AFTER", policy)]);
        let api = Api::new(&ferric.endpoint);
        let dir = tempfile::tempdir().unwrap();
        let (kernel, ramdisk) = fake_boot_images(dir.path(), policy);
        let mut info = lab.driver_info(0);
        info["deploy_kernel"] = kernel.into();
        info["deploy_ramdisk"] = ramdisk.into();
        info["fake_wait_after"] = "deploy.deploy".into();
        let node = api
            .create_node(
                json!({"driver": "redfish", "deploy_interface": "fake", "driver_info": info}),
                &["52:54:00:00:04:01"],
            )
            .await;
        api.to_available(&node, WAIT).await;
        // slow steps from here on, so the test can look between them
        api.ok(
            Method::PATCH,
            &format!("/v1/nodes/{node}"),
            Some(json!([{"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": 1500}])),
        )
        .await;
        api.provision(&node, "active").await;
        api.wait_state(&node, "wait call-back", WAIT).await;
        let uuid = lab.systems[0].clone();
        let token = key_values(&fat_file(&lab.media_bytes(&uuid, "Floppy").await.unwrap(), "parameters.txt"))
            ["ipa-agent-token"]
            .clone();
        assert_eq!(api.heartbeat(&node, &token).await, 202);
        // during write_image (1.5 s): ejected only with `callback`
        let start = std::time::Instant::now();
        loop {
            let n = api.node(&node).await;
            if n["deploy_step"]["step"] == "write_image" {
                break;
            }
            assert!(start.elapsed() < WAIT, "never reached write_image: {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inserted = lab.media(&uuid, "Cd").await["Inserted"] == true;
        assert_eq!(inserted, policy != "callback", "{policy}: CD inserted while the image is written");
        api.wait_state(&node, "active", WAIT).await;
        let inserted = lab.media(&uuid, "Cd").await["Inserted"] == true;
        let floppy = lab.media(&uuid, "Floppy").await["Inserted"] == true;
        assert_eq!((inserted, floppy), (policy == "never", policy == "never"), "{policy}: media once active");
        assert_eq!(lab.get(&lab.system_path(0)).await["Boot"]["BootSourceOverrideTarget"], "Hdd", "{policy}");
        api.ok(
            Method::PATCH,
            &format!("/v1/nodes/{node}"),
            Some(json!([{"op": "remove", "path": "/driver_info/fake_step_delay_ms"}])),
        )
        .await;
        api.provision(&node, "deleted").await;
        api.wait_state(&node, "available", WAIT).await;
        assert_eq!(lab.media(&uuid, "Cd").await["Inserted"], false, "{policy}: torn down");
        assert_eq!(lab.media(&uuid, "Floppy").await["Inserted"], false, "{policy}: torn down");
        assert_eq!(root_files(&ferric), Vec::<String>::new(), "{policy}: everything released");
    }
}

/// A conductor that comes back with an emptied HTTP root (a new pod with
/// a fresh volume, the same conductor id) rebuilds its nodes' media: the
/// content-addressed ISO reappears under the very URL the BMC holds, so
/// the BMC is not written; a waiting node's floppy gets a new name (one
/// write) and carries the same token.
#[tokio::test]
async fn a_restart_with_an_emptied_http_root_rebuilds_without_rewriting_bmcs() {
    let lab = SushyLab::start(SushyOptions { systems: 2, ..Default::default() });
    let (mut ferric, _) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = fake_boot_images(dir.path(), "restart");
    let a = api.create_node(
        json!({"driver": "redfish", "deploy_interface": "ramdisk", "driver_info": lab.driver_info(0), "instance_info": {"kernel": kernel, "ramdisk": ramdisk}}),
        &["52:54:00:00:05:01"],
    )
    .await;
    let mut info = lab.driver_info(1);
    info["deploy_kernel"] = kernel.clone().into();
    info["deploy_ramdisk"] = ramdisk.clone().into();
    info["fake_wait_after"] = "deploy.deploy".into();
    let b = api
        .create_node(
            json!({"driver": "redfish", "deploy_interface": "fake", "driver_info": info}),
            &["52:54:00:00:05:02"],
        )
        .await;
    for n in [&a, &b] {
        api.to_available(n, WAIT).await;
        api.provision(n, "active").await;
    }
    api.wait_state(&a, "active", WAIT).await;
    api.wait_state(&b, "wait call-back", WAIT).await;
    let (sa, sb) = (lab.systems[0].clone(), lab.systems[1].clone());
    let iso_a = lab.media_bytes(&sa, "Cd").await.unwrap();
    let url_a = lab.media(&sa, "Cd").await["Image"].as_str().unwrap().to_string();
    let token =
        key_values(&fat_file(&lab.media_bytes(&sb, "Floppy").await.unwrap(), "parameters.txt"))["ipa-agent-token"]
            .clone();
    let before = lab.requests().await.len();

    ferric.restart_after(|data| std::fs::remove_dir_all(data.join("httpboot")).unwrap());
    let start = std::time::Instant::now();
    while ferric_tests::http().get(&url_a).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(start.elapsed() < WAIT, "the ISO never came back at {url_a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fetch(&url_a).await, iso_a, "rebuilt byte for byte, under the same name");
    let start = std::time::Instant::now();
    loop {
        let fl = lab.media(&sb, "Floppy").await["Image"].as_str().unwrap_or_default().to_string();
        if ferric_tests::http().get(&fl).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(start.elapsed() < WAIT, "the waiting node's floppy was not republished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = lab.requests().await.split_off(before);
    let writes = |s: &str| {
        after.iter().filter(|r| r.is_write() && r.path.contains(s)).map(|r| r.path.clone()).collect::<Vec<_>>()
    };
    assert_eq!(writes(&sa), Vec::<String>::new(), "the ISO URL did not change: no BMC write");
    let wb = writes(&sb);
    assert_eq!(wb.len(), 1, "{wb:?}");
    assert!(wb[0].ends_with("/VirtualMedia/Floppy/Actions/VirtualMedia.InsertMedia"), "{wb:?}");
    let again =
        key_values(&fat_file(&lab.media_bytes(&sb, "Floppy").await.unwrap(), "parameters.txt"))["ipa-agent-token"]
            .clone();
    assert_eq!(again, token);
    // and the ramdisk's heartbeat still finishes the deploy
    assert_eq!(api.heartbeat(&b, &token).await, 202);
    api.wait_state(&b, "active", WAIT).await;
}

/// A BMC without a floppy or USB slot: the ramdisk's parameters and token
/// go on the kernel command line of a per-node ISO (its name as
/// unguessable as the token in it), and the ramdisk's heartbeat with that
/// token finishes the deploy.
#[tokio::test]
async fn without_a_removable_slot_the_parameters_ride_on_a_per_node_iso() {
    let lab = SushyLab::start(SushyOptions { systems: 2, removable_slot: false, ..Default::default() });
    let (ferric, _) = start_ferric(&[]);
    let api = Api::new(&ferric.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = fake_boot_images(dir.path(), "cd-only");
    let mut tokens = Vec::new();
    let mut isos = Vec::new();
    for i in 0..2 {
        let mut info = lab.driver_info(i);
        info["deploy_kernel"] = kernel.clone().into();
        info["deploy_ramdisk"] = ramdisk.clone().into();
        info["fake_wait_after"] = "deploy.deploy".into();
        let node = api
            .create_node(
                json!({"driver": "redfish", "deploy_interface": "fake", "driver_info": info}),
                &[&format!("52:54:00:00:06:0{i}")],
            )
            .await;
        api.to_available(&node, WAIT).await;
        api.provision(&node, "active").await;
        let n = api.wait_state(&node, "wait call-back", WAIT).await;
        assert!(n["driver_internal_info"]["vmedia"].get("removable").is_none(), "{n}");
        let iso = lab.media_bytes(&lab.systems[i], "Cd").await.unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &iso).unwrap();
        let cfg_path = dir.path().join(format!("isolinux-{i}.cfg"));
        let out = std::process::Command::new("xorriso")
            .args(["-osirrox", "on", "-indev", &f.path().display().to_string(), "-extract", "/isolinux/isolinux.cfg"])
            .arg(&cfg_path)
            .output()
            .expect("xorriso");
        assert!(out.status.success(), "xorriso: {}", String::from_utf8_lossy(&out.stderr));
        let cfg = std::fs::read_to_string(&cfg_path).unwrap();
        let token = cfg
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ipa-agent-token="))
            .unwrap_or_else(|| panic!("no token on the command line: {cfg}"))
            .to_string();
        assert!(
            cfg.contains("boot_method=vmedia") && cfg.contains(&format!("ipa-api-url={}", ferric.endpoint)),
            "{cfg}"
        );
        assert_eq!(token.len(), 43);
        tokens.push((node, token));
        isos.push(n["driver_internal_info"]["vmedia"]["cd"]["name"].as_str().unwrap().to_string());
    }
    assert_ne!(isos[0], isos[1], "one ISO per node when the parameters are on it");
    for (node, token) in &tokens {
        assert_eq!(api.heartbeat(node, token).await, 202);
        api.wait_state(node, "active", WAIT).await;
    }
    assert_eq!(root_files(&ferric), Vec::<String>::new());
}
