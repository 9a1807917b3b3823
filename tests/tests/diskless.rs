//! Diskless instances (the `ramdisk` deploy) on emulated Redfish BMCs:
//! many nodes share one content-addressed boot ISO per distinct image,
//! counted exactly, until the last undeploy; and a reboot of an active
//! diskless node whose owner just died boots media from a live conductor —
//! the media are re-pointed before the reset, never after.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ferric_tests::cluster::Cluster;
use ferric_tests::redfish::{SushyLab, SushyOptions};
use ferric_tests::{Api, Ferric, fake_boot_images, free_port};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

/// Runs `f` for every item, at most `width` at once.
async fn each<T, F, Fut>(items: &[T], width: usize, f: F)
where
    T: Clone + Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for chunk in items.chunks(width) {
        let mut set = tokio::task::JoinSet::new();
        for it in chunk {
            set.spawn(f(it.clone()));
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    }
}

/// Boot ISOs in an HTTP root, with their marker count and `usage-count`.
fn isos(root: &Path) -> BTreeMap<String, (usize, Option<String>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.starts_with("boot-") && name.ends_with(".iso")) {
            continue;
        }
        let markers = std::fs::read_dir(root.join(".users").join(&name)).map(|d| d.count()).unwrap_or(0);
        let side: Option<Value> = std::fs::read(root.join(".meta").join(format!("{name}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let count = side.and_then(|s| s["metadata"]["usage-count"].as_str().map(String::from));
        out.insert(name, (markers, count));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_diskless_nodes_share_three_boot_isos_until_the_last_undeploy() {
    // 200 (the acceptance size, ~3 min on 2 cores) behind the variable
    let n: usize = std::env::var("FERRIC_DISKLESS_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let lab = SushyLab::start(SushyOptions { systems: n, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let pairs =
        [fake_boot_images(dir.path(), "a"), fake_boot_images(dir.path(), "b"), fake_boot_images(dir.path(), "c")];
    let http = format!("127.0.0.1:{}", free_port());
    let ferric = Ferric::start(
        None,
        &[
            ("FERRIC_CONDUCTOR__HTTP_LISTEN", http.as_str()),
            ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
            ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "100"),
        ],
    );
    let api = std::sync::Arc::new(Api::new(&ferric.endpoint));
    let started = Instant::now();
    let mut nodes: Vec<(usize, String)> = Vec::new();
    for i in 0..n {
        let (k, r) = &pairs[i % 3];
        let body = json!({"driver": "redfish", "deploy_interface": "ramdisk", "name": format!("dl{i}"),
                          "driver_info": lab.driver_info(i), "instance_info": {"kernel": k, "ramdisk": r}});
        nodes.push((i, api.create_node(body, &[&format!("52:54:00:10:{:02x}:{:02x}", i / 256, i % 256)]).await));
    }
    let uuids: Vec<String> = nodes.iter().map(|(_, u)| u.clone()).collect();
    let a = api.clone();
    each(&uuids, 16, move |u| {
        let a = a.clone();
        async move { a.to_available(&u, WAIT).await }
    })
    .await;
    let a = api.clone();
    each(&uuids, 16, move |u| {
        let a = a.clone();
        async move {
            a.provision(&u, "active").await;
            a.wait_state(&u, "active", WAIT).await;
        }
    })
    .await;
    eprintln!("{n} diskless nodes active {:?} after the first create", started.elapsed());

    // every BMC has the CD of its pair inserted, from this conductor's root
    let root = ferric.data_dir.path().join("httpboot");
    let by_pair: Vec<usize> = (0..3).map(|p| (0..n).filter(|i| i % 3 == p).count()).collect();
    let mut iso_of_pair: HashMap<usize, String> = HashMap::new();
    for (i, _) in &nodes {
        let cd = lab.media(&lab.systems[*i], "Cd").await;
        assert_eq!(cd["Inserted"], true, "node {i}: {cd}");
        let url = cd["Image"].as_str().unwrap();
        let name = url.rsplit('/').next().unwrap().to_string();
        assert!(name.starts_with("boot-") && url.starts_with(&format!("http://{http}/httpboot/")), "{url}");
        let prev = iso_of_pair.insert(i % 3, name.clone());
        assert!(prev.is_none_or(|p| p == name), "nodes of one pair share one ISO");
    }
    let held = isos(&root);
    assert_eq!(held.len(), 3, "exactly one ISO per distinct kernel/ramdisk: {held:?}");
    for (p, want) in by_pair.iter().enumerate() {
        let (markers, count) = &held[&iso_of_pair[&p]];
        assert_eq!(*markers, *want, "pair {p}: users");
        assert_eq!(count.as_deref(), Some(want.to_string().as_str()), "pair {p}: usage-count metadata");
    }
    eprintln!("usage counts {:?}", held.values().map(|(m, _)| *m).collect::<Vec<_>>());

    let a = api.clone();
    each(&uuids, 16, move |u| {
        let a = a.clone();
        async move {
            a.provision(&u, "deleted").await;
            a.wait_state(&u, "available", WAIT).await;
        }
    })
    .await;
    assert!(isos(&root).is_empty(), "the last undeploy of each image deleted its ISO: {:?}", isos(&root));
    let markers: usize = std::fs::read_dir(root.join(".users"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).map(|f| f.count()).unwrap_or(1))
        .sum();
    assert_eq!(markers, 0, "no usage marker left");
    for (i, _) in &nodes {
        let cd = lab.media(&lab.systems[*i], "Cd").await;
        assert_ne!(cd["Inserted"], true, "node {i}: undeploy ejects: {cd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reboot_right_after_the_owner_died_boots_media_from_a_live_conductor() {
    const TTL: u64 = 3;
    const NODES: usize = 12;
    let lab = SushyLab::start(SushyOptions { systems: NODES, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let (k, r) = fake_boot_images(dir.path(), "x");
    let env = [
        ("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "700"),
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
        ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "200"),
    ];
    let mut cl = Cluster::start(3, TTL, &env);
    cl.wait_conductors(3).await;
    let api = Api::new(&cl.api_url);
    let mut system_of = HashMap::new();
    for i in 0..NODES {
        let body = json!({"driver": "redfish", "deploy_interface": "ramdisk", "driver_info": lab.driver_info(i),
                          "instance_info": {"kernel": k, "ramdisk": r}});
        let u = api.create_node(body, &[&format!("52:54:00:20:00:{i:02x}")]).await;
        system_of.insert(u, lab.systems[i].clone());
    }
    let uuids: Vec<String> = system_of.keys().cloned().collect();
    cl.drive(&uuids, "manage", "manageable", WAIT).await;
    cl.drive(&uuids, "provide", "available", WAIT).await;
    cl.drive(&uuids, "active", "active", WAIT).await;

    let nodes = cl.nodes().await;
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (u, n) in &nodes {
        by_owner.entry(n["conductor"].as_str().unwrap().to_string()).or_default().push(u.clone());
    }
    let (victim_id, moved) = by_owner.into_iter().max_by_key(|(id, v)| (v.len(), id.clone())).unwrap();
    let victim: usize = victim_id.trim_start_matches('c').parse().unwrap();
    let mark = lab.requests().await.len();

    // the owner dies; reboots are asked at once, before the ring noticed
    cl.conductors[victim - 1].0.kill();
    let mut set = tokio::task::JoinSet::new();
    for u in moved.clone() {
        let url = format!("{}/v1/nodes/{u}/states/power", cl.api_url);
        set.spawn(async move {
            let start = Instant::now();
            loop {
                let resp = ferric_tests::http()
                    .put(&url)
                    .header("X-OpenStack-Ironic-API-Version", "1.115")
                    .json(&json!({"target": "rebooting"}))
                    .send()
                    .await
                    .unwrap();
                let s = resp.status().as_u16();
                // 409: the new owner holds the node (taking it over): ask again
                if s == 202 {
                    return (u, start.elapsed());
                }
                assert!(s == 409 || s == 503, "{u}: reboot answered {s}: {}", resp.text().await.unwrap_or_default());
                assert!(start.elapsed() < WAIT, "{u}: reboot not accepted in {WAIT:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        let (u, took) = r.unwrap();
        eprintln!("{u}: reboot accepted {took:?} after the SIGKILL");
    }
    let db = ferric_common::db::Db::connect(&cl.db_url, 2).await.unwrap();
    for u in &moved {
        let start = Instant::now();
        loop {
            let n = db.get_node(u.parse().unwrap()).await.unwrap();
            if n.target_power_state.is_none() && n.reservation.is_none() && n.power_state.as_deref() == Some("power on")
            {
                break;
            }
            assert!(start.elapsed() < WAIT, "{u}: reboot not done: {:?} {:?}", n.power_state, n.target_power_state);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    db.close().await;

    let live = cl.member_http_urls();
    assert!(!live.contains_key(&victim_id));
    let after = lab.requests().await.split_off(mark);
    for u in &moved {
        let system = &system_of[u];
        let cd = lab.media(system, "Cd").await;
        let url = cd["Image"].as_str().unwrap_or_default().to_string();
        assert!(
            live.values().any(|root| url.starts_with(root.as_str())),
            "{u}: the CD {url} is not on a live conductor"
        );
        // what the BMC downloaded is what the live conductor serves
        let served = ferric_tests::http().get(&url).send().await.unwrap().bytes().await.unwrap().to_vec();
        assert_eq!(lab.media_bytes(system, "Cd").await.as_ref(), Some(&served), "{u}");
        // the media were re-pointed before the reset that boots them
        let mine: Vec<&ferric_tests::redfish::BmcRequest> =
            after.iter().filter(|r| r.is_write() && r.path.contains(system.as_str())).collect();
        let insert = mine.iter().position(|r| r.path.ends_with("/VirtualMedia.InsertMedia"));
        let reset = mine.iter().position(|r| r.path.ends_with("/ComputerSystem.Reset"));
        let (Some(insert), Some(reset)) = (insert, reset) else {
            panic!("{u}: expected an InsertMedia and a Reset: {mine:?}");
        };
        assert!(insert < reset, "{u}: the node was reset before its media moved: {mine:?}");
    }
}

#[tokio::test]
async fn a_diskless_instance_gets_its_config_drive_on_the_removable_medium() {
    let lab = SushyLab::start(SushyOptions { systems: 2, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let (k, r) = fake_boot_images(dir.path(), "cd");
    let http = format!("127.0.0.1:{}", free_port());
    let ferric = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__HTTP_LISTEN", http.as_str()), ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50")],
    );
    let api = Api::new(&ferric.endpoint);
    let body = |i: usize, boot: &str| {
        json!({"driver": "redfish", "deploy_interface": "ramdisk", "boot_interface": boot, "name": format!("cd{i}"),
               "driver_info": lab.driver_info(i), "instance_info": {"kernel": k, "ramdisk": r}})
    };
    let n = api.create_node(body(0, "redfish-virtual-media"), &["52:54:00:30:00:01"]).await;
    api.to_available(&n, WAIT).await;
    let provision = |target: Value| {
        let (api, n) = (&api, n.clone());
        async move { api.call(reqwest::Method::PUT, &format!("/v1/nodes/{n}/states/provision"), Some(target)).await }
    };
    // a URL: only an agent would fetch it, and none runs
    let (s, v) = provision(json!({"target": "active", "configdrive": "http://example.invalid/cd.img"})).await;
    assert_eq!(s, 400, "{v}");
    assert!(Api::fault(&v).contains("a config drive URL is fetched by a deploy ramdisk's agent"), "{v}");

    let user_data = "#cloud-config\nhostname: diskless-ferric\n";
    let (s, v) = provision(
        json!({"target": "active", "configdrive": {"user_data": user_data, "meta_data": {"hostname": "dl"}}}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let node = api.wait_state(&n, "active", WAIT).await;
    let system = &lab.systems[0];
    let fl = lab.media(system, "Floppy").await;
    assert_eq!(fl["Inserted"], true, "{fl}");
    let url = fl["Image"].as_str().unwrap();
    assert!(url.contains("/configdrive-") && url.starts_with(&format!("http://{http}/httpboot/")), "{url}");
    let image = lab.media_bytes(system, "Floppy").await.unwrap();
    let text = String::from_utf8_lossy(&image);
    assert!(
        text.contains("config-2") && text.contains("hostname: diskless-ferric"),
        "a config-2 ISO with the user data"
    );
    assert!(text.contains(&n), "meta_data carries the node's uuid");
    assert_eq!(lab.media(system, "Cd").await["Inserted"], true);
    assert!(
        !node["driver_internal_info"].to_string().contains("diskless-ferric"),
        "the record names the config drive, never its content"
    );
    // undeploy ejects both and deletes the config drive
    api.provision(&n, "deleted").await;
    api.wait_state(&n, "available", WAIT).await;
    assert_ne!(lab.media(system, "Floppy").await["Inserted"], true);
    let left: Vec<String> = std::fs::read_dir(ferric.data_dir.path().join("httpboot"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|f| f.starts_with("configdrive-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // network boot has no medium to put it on: refused, with the reason
    let p = api.create_node(body(1, "pxe"), &["52:54:00:30:00:02"]).await;
    api.to_available(&p, WAIT).await;
    let (s, v) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{p}/states/provision"),
            Some(json!({"target": "active", "configdrive": {"user_data": "x"}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(Api::fault(&v).contains("reaches a diskless instance on a virtual medium"), "{v}");
}
