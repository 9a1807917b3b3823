//! Take-over of virtual-media nodes for real: 3 conductor processes on etcd
//! and PostgreSQL, every node's BMC a system of one Redfish emulator. The
//! owner of ≥ 50 active nodes booted from boot ISOs and ≥ 20 nodes waiting
//! for their ramdisk is SIGKILLed. Afterwards every moved node's BMC holds
//! media a live conductor serves (HTTP root: rebuilt there, same bytes;
//! Swift: the same shared object), each waiting node's floppy carries the
//! token its ramdisk already has — so its heartbeat, now to the new owner,
//! finishes the deploy — and the BMCs saw exactly the writes a re-point
//! needs: one InsertMedia per slot that pointed at the dead conductor,
//! none where the media were already right, nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use ferric_common::db::{Db, NodeQuery};
use ferric_tests::cluster::Cluster;
use ferric_tests::redfish::{SushyLab, SushyOptions};
use ferric_tests::swift::SwiftLab;
use ferric_tests::{fat_file, key_values};
use reqwest::Method;
use serde_json::{Value, json};

const TTL: u64 = 3;
const SYSTEMS: usize = 270;
const ACTIVE: usize = 50;
const WAITING: usize = 20;
const WAIT: Duration = Duration::from_secs(120);

fn images(dir: &std::path::Path, tag: &str) -> (String, String) {
    let k = dir.join(format!("vmlinuz-{tag}"));
    let r = dir.join(format!("initrd-{tag}"));
    std::fs::write(&k, format!("kernel {tag} ").repeat(4000)).unwrap();
    std::fs::write(&r, format!("ramdisk {tag} ").repeat(7000)).unwrap();
    (format!("file://{}", k.display()), format!("file://{}", r.display()))
}

/// Everything the test looks at, per node, at one moment.
#[derive(Debug, Clone)]
struct Seen {
    cd_url: Option<String>,
    floppy_url: Option<String>,
    cd_bytes: Option<Vec<u8>>,
    token: Option<String>,
}

async fn seen(lab: &SushyLab, system: &str) -> Seen {
    let cd = lab.media(system, "Cd").await;
    let fl = lab.media(system, "Floppy").await;
    let url = |d: &Value| (d["Inserted"] == true).then(|| d["Image"].as_str().unwrap_or_default().to_string());
    let floppy = lab.media_bytes(system, "Floppy").await;
    Seen {
        cd_url: url(&cd),
        floppy_url: url(&fl),
        cd_bytes: lab.media_bytes(system, "Cd").await,
        token: floppy.map(|f| key_values(&fat_file(&f, "parameters.txt"))["ipa-agent-token"].clone()),
    }
}

enum Publisher {
    HttpRoot,
    Swift(SwiftLab),
}

async fn take_over_virtual_media(publisher: Publisher) {
    let lab = SushyLab::start(SushyOptions { systems: SYSTEMS, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let (dk, dr) = images(dir.path(), "deploy");
    let pairs = [images(dir.path(), "a"), images(dir.path(), "b")];
    let swift_env: Vec<(String, String)> = match &publisher {
        Publisher::HttpRoot => Vec::new(),
        Publisher::Swift(s) => {
            let c = s.config();
            vec![
                ("FERRIC_DEPLOY__USE_HTTP_WEB_SERVER_FOR_IMAGES".into(), "false".into()),
                ("FERRIC_SWIFT__AUTH_URL".into(), c.auth_url),
                ("FERRIC_SWIFT__USER".into(), c.user),
                ("FERRIC_SWIFT__KEY".into(), c.key.expose().to_string()),
                ("FERRIC_SWIFT__TEMP_URL_KEY".into(), c.temp_url_key.expose().to_string()),
                ("FERRIC_SWIFT__SET_TEMP_URL_KEY".into(), "true".into()),
                ("FERRIC_SWIFT__SWIFT_ILO_CONTAINER".into(), c.swift_ilo_container),
            ]
        }
    };
    let mut env: Vec<(&str, &str)> = vec![
        ("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "700"),
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
        ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "200"),
        // what the BMCs receive is counted below: no power sync (a GET of
        // every node's system, every 60 s) may fall into it — on a loaded
        // machine the run outlasts one period
        ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "0"),
    ];
    env.extend(swift_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut cl = Cluster::start(3, TTL, &env);
    cl.wait_conductors(3).await;

    // one node per emulated system; only the victim's will be deployed
    let mut node_of = BTreeMap::new();
    for chunk in (0..SYSTEMS).collect::<Vec<_>>().chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (k, r) = &pairs[i % 2];
            let mut info = lab.driver_info(i);
            info["deploy_kernel"] = dk.clone().into();
            info["deploy_ramdisk"] = dr.clone().into();
            let body = json!({"driver": "redfish", "deploy_interface": "ramdisk", "name": format!("n{i}"), "driver_info": info,
                              "instance_info": {"kernel": k, "ramdisk": r}});
            let (c, url) = (cl.client.clone(), format!("{}/v1/nodes", cl.api_url));
            set.spawn(async move {
                let r = c.post(url).header("X-OpenStack-Ironic-API-Version", "1.115").json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                (i, r.json::<Value>().await.unwrap()["uuid"].as_str().unwrap().to_string())
            });
        }
        while let Some(r) = set.join_next().await {
            let (i, uuid) = r.unwrap();
            node_of.insert(uuid, i);
        }
    }
    let nodes = cl.nodes().await;
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (u, n) in &nodes {
        by_owner.entry(n["conductor"].as_str().unwrap().to_string()).or_default().push(u.clone());
    }
    let (victim_id, owned) = by_owner.iter().max_by_key(|(id, v)| (v.len(), id.to_string())).unwrap();
    assert!(owned.len() >= ACTIVE + WAITING, "the busiest conductor owns only {} nodes", owned.len());
    let victim_id = victim_id.clone();
    let victim: usize = victim_id.trim_start_matches('c').parse::<usize>().unwrap() - 1;
    let active: Vec<String> = owned[..ACTIVE].to_vec();
    let waiting: Vec<String> = owned[ACTIVE..ACTIVE + WAITING].to_vec();
    for u in &waiting {
        cl.ok(
            Method::PATCH,
            &format!("/v1/nodes/{u}"),
            Some(json!([{"op": "replace", "path": "/deploy_interface", "value": "fake"},
                        {"op": "add", "path": "/driver_info/fake_wait_after", "value": "deploy.deploy"}])),
        )
        .await;
    }
    let deployed: Vec<String> = active.iter().chain(&waiting).cloned().collect();
    cl.drive(&deployed, "manage", "manageable", WAIT).await;
    cl.drive(&deployed, "provide", "available", WAIT).await;
    cl.act(&deployed, "active").await;
    cl.wait_all(&active, "active", WAIT).await;
    cl.wait_all(&waiting, "wait call-back", WAIT).await;

    // what the BMCs hold now, and where
    let roots = cl.member_http_urls();
    let victim_root = roots[&victim_id].clone();
    let mut before = HashMap::new();
    for u in &deployed {
        let s = seen(&lab, &lab.systems[node_of[u]]).await;
        assert!(s.cd_url.is_some(), "{u} has no CD inserted");
        if waiting.contains(u) {
            assert!(s.token.as_ref().is_some_and(|t| t.len() == 43), "{u}: {s:?}");
        }
        if matches!(publisher, Publisher::HttpRoot) {
            assert!(s.cd_url.as_ref().unwrap().starts_with(&victim_root), "{u}: {s:?} not from {victim_root}");
        }
        before.insert(u.clone(), s);
    }
    let requests_before = lab.requests().await.len();

    // the owner dies
    cl.conductors[victim].0.kill();
    let start = Instant::now();
    let db = Db::connect(&cl.db_url, 2).await.unwrap();
    let moved: HashSet<uuid::Uuid> = deployed.iter().map(|u| u.parse().unwrap()).collect();
    loop {
        let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
        let pending = rows
            .iter()
            .filter(|n| moved.contains(&n.uuid))
            .filter(|n| n.conductor_affinity.as_deref() == Some(victim_id.as_str()) || n.reservation.is_some())
            .count();
        if pending == 0 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{pending} nodes not taken over after {:?}", start.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    let live: BTreeMap<String, String> = cl.member_http_urls();
    assert!(!live.contains_key(&victim_id));

    // the BMCs: only the moved nodes' systems were touched, each slot
    // written at most once, and only with InsertMedia
    let after = lab.requests().await.split_off(requests_before);
    let moved_systems: HashSet<&str> = deployed.iter().map(|u| lab.systems[node_of[u]].as_str()).collect();
    for r in &after {
        let system = r.path.split('/').nth(4).unwrap_or_default();
        assert!(
            r.path == "/redfish/v1/" || moved_systems.contains(system),
            "a node that did not move was touched: {r:?}"
        );
    }
    let mut writes: HashMap<&str, Vec<String>> = HashMap::new();
    for r in after.iter().filter(|r| r.is_write()) {
        let system = r.path.split('/').nth(4).unwrap_or_default();
        writes.entry(system).or_default().push(r.path.clone());
    }
    for w in writes.values().flatten() {
        assert!(w.ends_with("/Actions/VirtualMedia.InsertMedia"), "only media are re-pointed: {w}");
    }
    for (system, w) in &writes {
        let unique: HashSet<&String> = w.iter().collect();
        assert_eq!(unique.len(), w.len(), "system {system} written twice: {w:?}");
    }

    let mut rebuilt = 0;
    for u in &deployed {
        let system = &lab.systems[node_of[u]];
        let now = seen(&lab, system).await;
        let was = &before[u];
        let cd = now.cd_url.clone().expect("a CD inserted");
        let node_writes = writes.get(system.as_str()).map(Vec::len).unwrap_or(0);
        match &publisher {
            Publisher::HttpRoot => {
                assert!(live.values().any(|root| cd.starts_with(root.as_str())), "{u}: {cd} is not a live root");
                let expected = if waiting.contains(u) { 2 } else { 1 };
                assert_eq!(node_writes, expected, "{u}: every slot pointed at the dead conductor");
                rebuilt += 1;
            }
            Publisher::Swift(_) => {
                // the shared object, its temp URL still valid: nothing to write
                assert_eq!(now.cd_url, was.cd_url, "{u}");
                assert_eq!(node_writes, 0, "{u}: media already in the right place got a BMC write");
            }
        }
        // what the BMC holds downloads, and is the very ISO it had
        let served = ferric_tests::http().get(&cd).send().await.unwrap();
        assert_eq!(served.status(), 200, "{cd}");
        let served = served.bytes().await.unwrap().to_vec();
        assert_eq!(Some(&served), now.cd_bytes.as_ref(), "{u}: the BMC holds what is served");
        assert_eq!(now.cd_bytes, was.cd_bytes, "{u}: rebuilt byte for byte");
        if waiting.contains(u) {
            assert_eq!(now.token, was.token, "{u}: the floppy carries the token the ramdisk holds");
            let fl = now.floppy_url.clone().expect("a floppy inserted");
            if matches!(publisher, Publisher::HttpRoot) {
                assert!(live.values().any(|root| fl.starts_with(root.as_str())), "{u}: {fl}");
            }
            assert_eq!(ferric_tests::http().get(&fl).send().await.unwrap().status(), 200, "{fl}");
        }
    }
    eprintln!("{} nodes taken over in {took:?}; {rebuilt} re-pointed", deployed.len());

    // the ramdisks call back with the tokens they have: the new owners
    // accept them and finish the deploys
    for u in &waiting {
        let token = before[u].token.clone().unwrap();
        let (s, v) = cl
            .req(
                Method::POST,
                &format!("/v1/heartbeat/{u}"),
                Some(
                    json!({"callback_url": "https://127.0.0.1:9999", "agent_token": token, "agent_version": "10.0.0"}),
                ),
            )
            .await;
        assert_eq!(s, 202, "{u}: {v}");
    }
    cl.wait_all(&waiting, "active", WAIT).await;
    let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
    for n in rows.iter().filter(|n| moved.contains(&n.uuid)) {
        assert!(n.reservation.is_none(), "{} still locked", n.uuid);
        assert_ne!(n.conductor_affinity.as_deref(), Some(victim_id.as_str()));
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_owner_re_points_virtual_media_at_the_new_owners() {
    take_over_virtual_media(Publisher::HttpRoot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_swift_the_moved_nodes_media_are_already_right() {
    take_over_virtual_media(Publisher::Swift(SwiftLab::start())).await;
}

/// Clean-up after a move: a drained conductor keeps serving its media
/// until its nodes are re-pointed and never deletes them while draining;
/// when it comes back, it drops what moved away for good (affinity on a
/// live conductor that keeps the node) and keeps — and re-points — what
/// the ring gives back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_conductor_reaps_only_what_moved_away_when_it_returns() {
    const N: usize = 24;
    let lab = SushyLab::start(SushyOptions { systems: N, ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let (k, r) = images(dir.path(), "drain");
    let env = [
        ("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "700"),
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
        ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1"),
    ];
    let mut cl = Cluster::start(2, TTL, &env);
    cl.wait_conductors(2).await;
    let mut uuids = Vec::new();
    for i in 0..N {
        let v = cl
            .ok(
                Method::POST,
                "/v1/nodes",
                Some(json!({"driver": "redfish", "deploy_interface": "ramdisk", "driver_info": lab.driver_info(i), "instance_info": {"kernel": k, "ramdisk": r}})),
            )
            .await;
        uuids.push(v["uuid"].as_str().unwrap().to_string());
    }
    cl.drive(&uuids, "manage", "manageable", WAIT).await;
    cl.drive(&uuids, "provide", "available", WAIT).await;
    cl.drive(&uuids, "active", "active", WAIT).await;
    let c1_root = cl.dir.path().join("c1/httpboot");
    let markers = |root: &std::path::Path| -> HashSet<String> {
        let mut out = HashSet::new();
        if let Ok(isos) = std::fs::read_dir(root.join(".users")) {
            for iso in isos.flatten() {
                for m in std::fs::read_dir(iso.path()).unwrap().flatten() {
                    out.insert(m.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    };
    let db = Db::connect(&cl.db_url, 2).await.unwrap();
    let affinity = |rows: &[ferric_common::model::Node], id: &str| -> HashSet<String> {
        rows.iter().filter(|n| n.conductor_affinity.as_deref() == Some(id)).map(|n| n.uuid.to_string()).collect()
    };
    let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
    let on_c1 = affinity(&rows, "c1");
    assert!(!on_c1.is_empty() && on_c1.len() < N, "both conductors serve some: {}", on_c1.len());
    assert_eq!(markers(&c1_root), on_c1, "c1's root counts exactly its nodes as users");

    // drain c1: every node moves to c2, whose take-over re-points the BMCs
    let out = std::process::Command::new(ferric_tests::bin_dir().join("ferricctl"))
        .args(["--etcd-endpoints", &cl.etcd.endpoint, "--api", &cl.api_url, "conductor", "drain", "c1", "--wait"])
        .output()
        .expect("ferricctl");
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    assert!(cl.conductors[0].0.stop().is_some_and(|s| s.success()));
    let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
    assert_eq!(affinity(&rows, "c2").len(), N);
    assert_eq!(markers(&c1_root), on_c1, "nothing was deleted while draining");
    let c2_root = cl.member_http_urls()["c2"].clone();
    for u in &uuids {
        let n = rows.iter().find(|n| n.uuid.to_string() == *u).unwrap();
        let url = n.driver_internal_info["vmedia"]["cd"]["url"].as_str().unwrap();
        assert!(url.starts_with(&c2_root), "{u}: {url}");
    }

    // c1 returns (same data dir): the ring gives it a share again
    cl.conductors[0].0.spawn();
    cl.wait_conductors(2).await;
    let start = Instant::now();
    let (back, stayed) = loop {
        let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
        let nodes = cl.nodes().await;
        let owned_by_c1: HashSet<String> =
            nodes.iter().filter(|(_, n)| n["conductor"] == "c1").map(|(u, _)| u.clone()).collect();
        let back = affinity(&rows, "c1");
        let settled = rows.iter().all(|n| n.reservation.is_none()) && back == owned_by_c1 && !back.is_empty();
        if settled && markers(&c1_root) == back {
            break (back, affinity(&rows, "c2"));
        }
        assert!(
            start.elapsed() < WAIT,
            "c1 never settled: affinity {back:?}, owned {owned_by_c1:?}, markers {:?}",
            markers(&c1_root)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(back.len() + stayed.len(), N);
    // every BMC holds a URL of the conductor its node is with, and it downloads
    let roots = cl.member_http_urls();
    let rows = db.list_nodes(&NodeQuery::default()).await.unwrap();
    for n in &rows {
        let with = n.conductor_affinity.clone().unwrap();
        let url = n.driver_internal_info["vmedia"]["cd"]["url"].as_str().unwrap();
        assert!(url.starts_with(&roots[with.as_str()]), "{}: {url} is not {with}'s", n.uuid);
        let system = n.driver_info["redfish_system_id"].as_str().unwrap().rsplit('/').next().unwrap();
        assert_eq!(lab.media(system, "Cd").await["Image"], url);
        assert_eq!(ferric_tests::http().get(url).send().await.unwrap().status(), 200, "{url}");
    }
    db.close().await;
}
