//! Faults a fleet sees every week, against the real processes: each test
//! reproduces one and checks that no node is stranded by it.

use std::time::{Duration, Instant};

use ferric_tests::cluster::Cluster;
use ferric_tests::{Api, Etcd, Ferric, Postgres, TcpProxy};
use reqwest::Method;
use serde_json::{Value, json};

/// Nodes that reach `state` and are unlocked (one listing a round), within `timeout`; panics
/// naming the nodes that did not (their state, lock and last error).
async fn wait_settled(api: &Api, uuids: &[String], state: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let (s, all) = api.call(Method::GET, "/v1/nodes/detail?limit=1000", None).await;
        let by_uuid: std::collections::HashMap<&str, &Value> = all["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| Some((n["uuid"].as_str()?, n))).collect())
            .unwrap_or_default();
        let mut pending = Vec::new();
        for u in uuids {
            let n = by_uuid.get(u.as_str()).copied().unwrap_or(&Value::Null);
            if s != 200 || n["provision_state"] != state || !n["reservation"].is_null() {
                pending.push((
                    u.clone(),
                    n["provision_state"].clone(),
                    n["reservation"].clone(),
                    n["last_error"].clone(),
                ));
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{} of {} nodes not {state} and unlocked after {timeout:?}: {:?}",
            pending.len(),
            uuids.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every step of the fake deploys sleeps this long, so that a deploy (a
/// handful of steps) is still running when the database goes away even on
/// a loaded 2-core machine.
const STEP_MS: u64 = 1000;

/// A query waits 2 s for a connection, so a 6 s cut outlasts it 3 times;
/// take-over passes (and so the own-lock reaper) every 500 ms.
const OUTAGE_ENV: [(&str, &str); 3] = [
    ("FERRIC_DATABASE__ACQUIRE_TIMEOUT_SECS", "2"),
    ("FERRIC_DATABASE__MAX_CONNECTIONS", "20"),
    ("FERRIC_CONDUCTOR__TAKEOVER_INTERVAL_MS", "500"),
];

/// A fresh PostgreSQL with database `name`, and a proxy in front of it the
/// test can cut: (server, its URL, the proxy, the URL through the proxy).
async fn proxied_database(name: &str) -> (Postgres, String, TcpProxy, String) {
    let pg = Postgres::start();
    let url = pg.database(name);
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let through_proxy = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    (pg, url, proxy, through_proxy)
}

/// Waits until at least `n` nodes are `deploying` (at most 60 s).
async fn wait_deploying(api: &Api, n: usize) {
    let start = Instant::now();
    loop {
        let all = api.get("/v1/nodes/detail?limit=1000").await;
        let deploying = all["nodes"].as_array().unwrap().iter().filter(|n| n["provision_state"] == "deploying").count();
        if deploying >= n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "only {deploying} nodes deploying, waiting for {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PostgreSQL outage longer than the pool's acquire timeout while
/// deploys run. Every save in that window fails; the operations stop with
/// their records in place. Once the database is back, every deploy must
/// finish and no node may stay locked by the (live) conductor that was
/// running it. Before the own-lock reaper this left every in-flight node
/// in `deploying`, reserved for good, refusing every action with 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_during_deploys_strands_no_node_all_in_one() {
    const N: usize = 30;
    let (_pg, _url, proxy, through_proxy) = proxied_database("faults_outage").await;
    let ferric = Ferric::start(Some(&through_proxy), &OUTAGE_ENV);
    let api = Api::new(&ferric.endpoint);
    let mut uuids = Vec::new();
    for i in 0..N {
        let n = api
            .ok(
                Method::POST,
                "/v1/nodes",
                Some(json!({"driver": "fake-hardware", "name": format!("n{i}"),
                            "driver_info": {"fake_step_delay_ms": STEP_MS}})),
            )
            .await;
        uuids.push(n["uuid"].as_str().unwrap().to_string());
    }
    for (verb, state) in [("manage", "manageable"), ("provide", "available")] {
        for u in &uuids {
            api.ok(Method::PUT, &format!("/v1/nodes/{u}/states/provision"), Some(json!({"target": verb}))).await;
        }
        wait_settled(&api, &uuids, state, Duration::from_secs(120)).await;
    }
    let mut set = tokio::task::JoinSet::new();
    for u in &uuids {
        let (api, path) = (api.clone(), format!("/v1/nodes/{u}/states/provision"));
        set.spawn(async move { api.ok(Method::PUT, &path, Some(json!({"target": "active"}))).await });
    }
    set.join_all().await;
    wait_deploying(&api, N / 2).await;

    // the database goes away for 3x the pool's acquire timeout
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // the API says so, with an Ironic error and a 503, and loses nothing
    let (s, body) = api.call(Method::GET, &format!("/v1/nodes/{}", uuids[0]), None).await;
    assert_eq!(s, 503, "GET during the outage: {body}");
    assert!(body["error_message"].is_string(), "not an Ironic error body: {body}");
    // what the database driver said is for the log, not for clients
    assert!(body.to_string().contains("The database is unavailable"), "{body}");
    assert!(!body.to_string().contains("sqlx") && !body.to_string().contains("SSLRequest"), "{body}");
    proxy.restore();
    let back = Instant::now();

    wait_settled(&api, &uuids, "active", Duration::from_secs(120)).await;
    eprintln!("{N} deploys active and unlocked {:?} after the database came back", back.elapsed());
    drop(ferric);
}

/// The same outage under 100 deploys on three conductors (and the API),
/// all reaching PostgreSQL through one proxy: etcd stays up, so every
/// conductor stays in the ring and keeps its nodes, and only its own
/// reaper can free the locks its failed saves left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_during_100_deploys_on_3_conductors_strands_no_node() {
    const N: usize = 100;
    let (pg, url, proxy, through_proxy) = proxied_database("faults_cluster").await;
    let etcd = Etcd::start();
    let endpoints = vec![etcd.endpoint.clone(); 3];
    let cl = Cluster::start_on(etcd, endpoints, pg, url, &through_proxy, 3, &OUTAGE_ENV);
    cl.wait_conductors(3).await;
    let uuids = cl.create_nodes("d", N, json!({"fake_step_delay_ms": STEP_MS})).await;
    let wait = Duration::from_secs(180);
    cl.drive(&uuids, "manage", "manageable", wait).await;
    cl.drive(&uuids, "provide", "available", wait).await;
    cl.act(&uuids, "active").await;
    wait_deploying(&Api::new(&cl.api_url), N / 2).await;
    let all = cl.nodes().await;
    let owners: std::collections::BTreeSet<&str> = uuids.iter().filter_map(|u| all[u]["conductor"].as_str()).collect();
    assert_eq!(owners.len(), 3, "the nodes are not spread over the three conductors: {owners:?}");

    // readiness: every conductor is ready, then not (naming the database)
    // while it cannot reach it, then ready again; liveness stays ok
    let bases: Vec<String> = cl
        .member_http_urls()
        .values()
        .map(|u| u.trim_end_matches('/').trim_end_matches("/httpboot").to_string())
        .collect();
    assert_eq!(bases.len(), 3);
    let probe = |path: &'static str| {
        let (c, bases) = (cl.client.clone(), bases.clone());
        async move {
            let mut out = Vec::new();
            for b in &bases {
                let r = c.get(format!("{b}{path}")).send().await.unwrap();
                let status = r.status().as_u16();
                out.push((status, r.text().await.unwrap()));
            }
            out
        }
    };
    for (s, body) in probe("/readyz").await {
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["ready"] == true && v["joined"] == true && v["database"] == "ok", "{v}");
    }

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let api = Api::new(&cl.api_url);
    let (s, body) = api.call(Method::GET, "/v1/nodes?limit=1", None).await;
    assert_eq!(s, 503, "a node list during the outage: {body}");
    for (s, body) in probe("/readyz").await {
        assert_eq!(s, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["ready"] == false && v["joined"] == true && v["database"] != "ok", "{v}");
    }
    for (s, body) in probe("/healthz").await {
        assert_eq!((s, body.as_str()), (200, "ok"));
    }
    proxy.restore();
    let back = Instant::now();

    wait_settled(&api, &uuids, "active", wait).await;
    for (s, body) in probe("/readyz").await {
        assert_eq!(s, 200, "ready again once the database is back: {body}");
    }
    eprintln!("{N} deploys on 3 conductors active and unlocked {:?} after the database came back", back.elapsed());
    // every conductor kept its nodes: nothing was taken over
    let after = cl.nodes().await;
    for u in &uuids {
        assert_eq!(after[u]["conductor"], all[u]["conductor"], "{u} moved");
    }
}

async fn wait_node(api: &Api, node: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let n = api.node(node).await;
        if ok(&n) {
            return n;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A PATCH that read the node before a clean failed must not undo what the
/// failure did: the failed clean puts the node in maintenance (so it is
/// not handed out again), and a PATCH of an unrelated field that waited
/// for the lock meanwhile wrote its stale `maintenance: false` back — the
/// quarantined node could be deployed. And concurrent PATCHes of different
/// keys of one field all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patch_never_undoes_what_happened_since_it_read_the_node() {
    let ferric = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__LOCK_ATTEMPTS", "100"), ("FERRIC_CONDUCTOR__LOCK_RETRY_INTERVAL_MS", "100")],
    );
    let api = Api::new(&ferric.endpoint);
    let n = api
        .ok(
            Method::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware", "name": "racer",
                        "driver_info": {"fake_step_delay_ms": 2000,
                                        "fake_fail_step": "deploy.erase_devices_metadata"}})),
        )
        .await;
    let uuid = n["uuid"].as_str().unwrap().to_string();
    api.ok(Method::PUT, "/v1/nodes/racer/states/provision", Some(json!({"target": "manage"}))).await;
    wait_node(&api, "racer", "manageable", Duration::from_secs(30), |n| n["provision_state"] == "manageable").await;
    api.ok(Method::PUT, "/v1/nodes/racer/states/provision", Some(json!({"target": "provide"}))).await;
    wait_node(&api, "racer", "the failing clean step running", Duration::from_secs(30), |n| {
        n["clean_step"]["step"] == "erase_devices_metadata"
    })
    .await;
    // read now (maintenance off), applied once the failed clean let go
    let patched = api
        .ok(
            Method::PATCH,
            &format!("/v1/nodes/{uuid}"),
            Some(json!([{"op": "add", "path": "/extra/note", "value": "patched during the clean"}])),
        )
        .await;
    assert_eq!(patched["extra"]["note"], "patched during the clean");
    let n = api.node(&uuid).await;
    assert_eq!(n["provision_state"], "clean failed", "{n}");
    assert_eq!(n["maintenance"], true, "the PATCH took the failed node out of maintenance: {n}");
    assert_eq!(n["fault"], "clean failure", "{n}");
    assert_eq!(n["extra"]["note"], "patched during the clean");

    // 20 PATCHes at once, each adding its own key to `extra`
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (api, uuid) = (api.clone(), uuid.clone());
        set.spawn(async move {
            api.call(
                Method::PATCH,
                &format!("/v1/nodes/{uuid}"),
                Some(json!([{"op": "add", "path": format!("/extra/k{i}"), "value": i}])),
            )
            .await
        });
    }
    while let Some(r) = set.join_next().await {
        let (s, body) = r.unwrap();
        assert_eq!(s, 200, "{body}");
    }
    let extra = api.node(&uuid).await["extra"].clone();
    let missing: Vec<usize> = (0..20).filter(|i| extra[format!("k{i}")] != json!(i)).collect();
    assert!(missing.is_empty(), "concurrent PATCHes lost keys {missing:?}: {extra}");
    assert_eq!(extra["note"], "patched during the clean");
    // a removal is a change too, and removes only what it names
    api.ok(Method::PATCH, &format!("/v1/nodes/{uuid}"), Some(json!([{"op": "remove", "path": "/extra/k0"}]))).await;
    let extra = api.node(&uuid).await["extra"].clone();
    assert!(extra.get("k0").is_none() && extra["k1"] == 1, "{extra}");
    drop(ferric);
}

/// A config drive bigger than gRPC's default 4 MiB message reaches the
/// conductor (Ironic takes up to 64 MiB): the provision request carries it
/// to the owner, and the node holding it in `instance_info` travels back.
/// Before, the request failed at the gRPC layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_drive_larger_than_grpcs_default_message_deploys() {
    use base64::Engine as _;
    let ferric = Ferric::start(None, &[]);
    let api = Api::new(&ferric.endpoint);
    let n = api.ok(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "cd"}))).await;
    let uuid = n["uuid"].as_str().unwrap().to_string();
    for (verb, state) in [("manage", "manageable"), ("provide", "available")] {
        api.ok(Method::PUT, "/v1/nodes/cd/states/provision", Some(json!({"target": verb}))).await;
        wait_node(&api, "cd", state, Duration::from_secs(30), |n| n["provision_state"] == state).await;
    }
    // 6 MiB that do not compress, gzipped and base64-encoded: 8 MiB of text
    let mut raw = vec![0u8; 6 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in raw.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let configdrive = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    assert!(configdrive.len() > 8 * 1024 * 1024);
    let (s, body) = api
        .call(
            Method::PUT,
            &format!("/v1/nodes/{uuid}/states/provision"),
            Some(json!({"target": "active", "configdrive": configdrive})),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    wait_node(&api, &uuid, "active", Duration::from_secs(60), |n| n["provision_state"] == "active").await;
    drop(ferric);
}

/// Scenario 9 (load that grows with the fleet): every step of every
/// operation writes a history row, and nothing deleted them — a fleet's
/// `node_history` grew without bound, and a deleted node's rows stayed.
#[tokio::test]
async fn node_history_is_kept_to_its_limit_and_goes_with_its_node() {
    let f = Ferric::start(
        None,
        &[
            ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1"),
            ("FERRIC_CONDUCTOR__NODE_HISTORY_MAX_ENTRIES", "4"),
            ("FERRIC_CONDUCTOR__NODE_HISTORY_CLEANUP_INTERVAL_SECS", "1"),
        ],
    );
    let api = Api::new(&f.endpoint);
    let a = api.create_node(json!({"name": "hist-a", "driver": "fake-hardware"}), &[]).await;
    let b = api.create_node(json!({"name": "hist-b", "driver": "fake-hardware"}), &[]).await;
    for n in [&a, &b] {
        api.to_available(n, Duration::from_secs(30)).await;
        for target in ["power on", "power off", "power on", "power off"] {
            api.ok(Method::PUT, &format!("/v1/nodes/{n}/states/power"), Some(json!({"target": target}))).await;
            let start = Instant::now();
            while !api.node(n).await["target_power_state"].is_null() {
                assert!(start.elapsed() < Duration::from_secs(10), "power action did not finish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let db = ferric_common::db::Db::connect(&format!("sqlite://{}/ferric.sqlite", f.data_dir.path().display()), 1)
        .await
        .unwrap();
    let uuid = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    let start = Instant::now();
    loop {
        let (ha, hb) = (db.history(uuid(&a)).await.unwrap(), db.history(uuid(&b)).await.unwrap());
        if ha.len() == 4 && hb.len() == 4 {
            // the newest stay: the last power action is the last entry
            assert_eq!(ha.last().unwrap().event, "power", "{ha:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "history not pruned to 4 per node: {} and {} entries",
            ha.len(),
            hb.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.ok(Method::DELETE, &format!("/v1/nodes/{b}"), None).await;
    assert!(db.history(uuid(&b)).await.unwrap().is_empty(), "a deleted node's history stayed");
    assert_eq!(db.history(uuid(&a)).await.unwrap().len(), 4);
    db.close().await;
}

/// Scenario 11 (retries that are not idempotent): the API's call reaches
/// the conductor, which applies it, but the reply is lost on the way back
/// (the connection carried the request, then died); the API sends the call
/// again. Before, the second attempt met the first one's effect: a deploy
/// or a power action found the node locked by the operation it had started
/// (409 for an action that was running), a delete found no node (404 for
/// a node it had deleted). Now every call carries an id the conductor
/// records with its change, and the call that comes again is answered as
/// applied — once, whoever receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_reply_was_lost_is_answered_as_applied_not_refused() {
    let grpc = ferric_tests::free_port();
    let proxy = TcpProxy::start(format!("127.0.0.1:{grpc}").parse().unwrap()).await;
    let etcd = Etcd::start();
    let endpoints = vec![etcd.endpoint.clone()];
    let pg = Postgres::start();
    let db_url = pg.database("faults_lost_reply");
    let via_proxy = vec![("FERRIC_CONDUCTOR__GRPC_URL".to_string(), proxy.endpoint())];
    let cl = Cluster::start_full(etcd, endpoints, pg, db_url.clone(), &db_url, 6, &[], vec![(grpc, via_proxy)]);
    cl.wait_conductors(1).await;
    let api = Api::new(&cl.api_url);
    // each step and power action holds the node (and its lock) long
    // enough for the retry
    let uuids = cl.create_nodes("lost", 2, json!({"fake_step_delay_ms": 1500})).await;
    cl.drive(&uuids, "manage", "manageable", Duration::from_secs(60)).await;
    cl.drive(&uuids, "provide", "available", Duration::from_secs(60)).await;

    // sends `method path body` with every reply of the connection it goes
    // over lost, until `applied` sees the change made; then the connection
    // dies and the API sends the call again
    let lose_the_reply = |method: Method, path: String, body: Option<Value>, applied: fn(&Value) -> bool| {
        let (api, proxy) = (api.clone(), &proxy);
        async move {
            proxy.freeze_replies();
            let sent = {
                let (api, path, method) = (api.clone(), path.clone(), method.clone());
                tokio::spawn(async move { api.call(method, &path, body).await })
            };
            let node_path = path.split("/states").next().unwrap().to_string();
            let start = Instant::now();
            loop {
                let (_, n) = api.call(Method::GET, &node_path, None).await;
                if applied(&n) {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "{method} {path} was never applied: {n}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            proxy.drop_connections();
            sent.await.unwrap()
        }
    };

    let deploy = format!("/v1/nodes/{}/states/provision", uuids[0]);
    let (s, body) =
        lose_the_reply(Method::PUT, deploy, Some(json!({"target": "active"})), |n| n["provision_state"] == "deploying")
            .await;
    assert_eq!(s, 202, "a deploy that was applied came back as {s}: {body}");

    // a slow BMC: the reboot holds the node's lock for seconds
    cl.ok(
        Method::PATCH,
        &format!("/v1/nodes/{}", uuids[1]),
        Some(json!([{"op": "add", "path": "/driver_info/fake_power_delay_ms", "value": 3000}])),
    )
    .await;
    let power = format!("/v1/nodes/{}/states/power", uuids[1]);
    let (s, body) = lose_the_reply(Method::PUT, power, Some(json!({"target": "rebooting"})), |n| {
        n["target_power_state"] == "power on"
    })
    .await;
    assert_eq!(s, 202, "a power action that was applied came back as {s}: {body}");
    wait_node(&api, &uuids[1], "rebooted", Duration::from_secs(30), |n| n["target_power_state"].is_null()).await;
    let db = ferric_common::db::Db::connect(&cl.db_url, 1).await.unwrap();
    let h = db.history(uuids[1].parse().unwrap()).await.unwrap();
    let reboots = h.iter().filter(|e| e.event == "power" && e.detail == "rebooting").count();
    assert_eq!(reboots, 1, "the machine was rebooted {reboots} times for one request: {h:?}");
    db.close().await;

    let delete = format!("/v1/nodes/{}", uuids[1]);
    let (s, body) = lose_the_reply(Method::DELETE, delete, None, |n| {
        n["error_message"].as_str().is_some_and(|m| m.contains("could not be found"))
    })
    .await;
    assert_eq!(s, 204, "a delete that was applied came back as {s}: {body}");

    // the deploy ran once and finished
    wait_node(&api, &uuids[0], "active", Duration::from_secs(60), |n| n["provision_state"] == "active").await;
    let db = ferric_common::db::Db::connect(&cl.db_url, 1).await.unwrap();
    let h = db.history(uuids[0].parse().unwrap()).await.unwrap();
    let accepted = h.iter().filter(|e| e.event == "provision" && e.detail.starts_with("active")).count();
    assert_eq!(accepted, 1, "the deploy was accepted {accepted} times: {h:?}");
    db.close().await;
}

/// Rows of the `nodes` table PostgreSQL has read so far (by sequential and
/// index scans), from its statistics.
fn node_rows_read(db_url: &str) -> i64 {
    let out = std::process::Command::new("psql")
        .args([
            db_url,
            "-Atc",
            "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'nodes'",
        ])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a row count")
}

/// Scenario 9 (load that grows with the fleet, not with the work): the
/// take-over pass read every node a conductor owns every second, whether
/// or not anything had changed — an idle fleet of 100,000 nodes made every
/// conductor re-read its share each second. Now a full pass runs on a ring
/// change (or when the last one left work, or as a rare safety net), and
/// the passes in between find what needs doing through indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_conductor_reads_what_needs_doing_not_every_node_it_owns() {
    const N: usize = 150;
    let pg = Postgres::start();
    let db_url = pg.database("faults_idle");
    // a table of a few hundred rows is read whole whatever the query (the
    // cheaper plan): have PostgreSQL plan as it does for a fleet-sized one,
    // through the indexes, so what is read is what the queries ask for
    let out = std::process::Command::new("psql")
        .args([&db_url, "-Atc", "ALTER DATABASE faults_idle SET enable_seqscan = off"])
        .output()
        .expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    let etcd = Etcd::start();
    let endpoints = vec![etcd.endpoint.clone()];
    let cl = Cluster::start_on(
        etcd,
        endpoints,
        pg,
        db_url.clone(),
        &db_url,
        6,
        &[
            ("FERRIC_CONDUCTOR__TAKEOVER_INTERVAL_MS", "200"),
            ("FERRIC_CONDUCTOR__TAKEOVER_FULL_INTERVAL_SECS", "3600"),
            ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "0"),
        ],
    );
    cl.wait_conductors(1).await;
    let uuids = cl.create_nodes("idle", N, json!({})).await;
    // the light passes take the new nodes over (they have no affinity yet)
    let db = ferric_common::db::Db::connect(&cl.db_url, 1).await.unwrap();
    let start = Instant::now();
    loop {
        let q = ferric_common::db::NodeQuery { affinity: Some(None), ..Default::default() };
        let left = db.list_nodes(&q).await.unwrap().len();
        if left == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{left} new nodes never taken over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
    assert_eq!(uuids.len(), N);
    // ten idle seconds: 50 light passes. (With statistics, as autovacuum
    // keeps them: without, the planner guesses that a filter on the
    // conductor group — every node's — is as selective as one on a missing
    // affinity.)
    let out = std::process::Command::new("psql").args([&cl.db_url, "-Atc", "ANALYZE nodes"]).output().expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    // an idle backend reports what it read within 10 s: let the reads
    // before the window land before it
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = node_rows_read(&cl.db_url);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let read = node_rows_read(&cl.db_url) - before;
    eprintln!("an idle conductor owning {N} nodes read {read} node rows in 10 s");
    assert!(read < N as i64, "an idle conductor read {read} node rows in 10 s: it reads every node it owns");
}

/// Scenario 9 (load that grows with the fleet): the power sync read one BMC
/// after another, each bounded by 30 s: a round over a fleet took the sum
/// of its BMCs' answers. Now it reads `power_sync_workers` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_power_sync_reads_bmcs_in_parallel_under_its_bound() {
    let f = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1"), ("FERRIC_CONDUCTOR__POWER_SYNC_WORKERS", "4")],
    );
    let api = Api::new(&f.endpoint);
    for i in 0..12 {
        api.create_node(
            json!({"name": format!("slow-bmc-{i}"), "driver": "fake-hardware",
                   "driver_info": {"fake_power_delay_ms": 1000}}),
            &[],
        )
        .await;
    }
    let gauge = |text: &str| -> Option<f64> {
        text.lines().find(|l| l.starts_with("ferric_power_sync_concurrency "))?.split_whitespace().nth(1)?.parse().ok()
    };
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(40) {
        let text = api.client.get(format!("{}/metrics", f.endpoint)).send().await.unwrap().text().await.unwrap();
        if let Some(v) = gauge(&text) {
            seen.push(v);
            if seen.iter().filter(|v| **v == 4.0).count() >= 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(seen.iter().all(|v| *v <= 4.0), "the power sync read more BMCs at once than its bound: {seen:?}");
    assert!(
        seen.iter().filter(|v| **v == 4.0).count() >= 2,
        "the power sync never read 4 slow BMCs at once (serial?): {seen:?}"
    );
}

/// Scenario 6 (a conductor that reaches etcd but not the database): one
/// conductor of three loses its database connection while etcd and the
/// others are fine. Before, it kept its lease and its place in the ring:
/// its nodes stayed its own, every request for them failed and every
/// deploy on them stood still until its connection came back. Now it
/// fences itself once it has not reached the database for
/// `conductor.database_unreachable_fence_secs` while the others say they
/// do; the ring gives its nodes to them, and every deploy finishes while
/// it is still cut off. When the database answers it again, it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conductor_cut_from_the_database_while_others_reach_it_leaves_the_ring() {
    const N: usize = 30;
    let pg = Postgres::start();
    let url = pg.database("faults_db_partition");
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let c1_url = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let etcd = Etcd::start();
    let endpoints = vec![etcd.endpoint.clone(); 3];
    let env = [
        ("FERRIC_CONDUCTOR__DATABASE_UNREACHABLE_FENCE_SECS", "4"),
        ("FERRIC_DATABASE__HEALTH_CHECK_INTERVAL_MS", "500"),
        ("FERRIC_DATABASE__ACQUIRE_TIMEOUT_SECS", "2"),
        ("FERRIC_CONDUCTOR__TAKEOVER_INTERVAL_MS", "500"),
    ];
    let conductors = vec![
        (ferric_tests::free_port(), vec![("FERRIC_DATABASE__URL".to_string(), c1_url)]),
        (ferric_tests::free_port(), Vec::new()),
        (ferric_tests::free_port(), Vec::new()),
    ];
    let cl = Cluster::start_full(etcd, endpoints, pg, url.clone(), &url, 6, &env, conductors);
    cl.wait_conductors(3).await;
    let api = Api::new(&cl.api_url);
    let uuids = cl.create_nodes("p", N, json!({"fake_step_delay_ms": STEP_MS})).await;
    let wait = Duration::from_secs(120);
    cl.drive(&uuids, "manage", "manageable", wait).await;
    cl.drive(&uuids, "provide", "available", wait).await;
    cl.act(&uuids, "active").await;
    wait_deploying(&api, N / 2).await;
    let all = cl.nodes().await;
    let on_c1 = uuids.iter().filter(|u| all[*u]["conductor"] == "c1").count();
    assert!(on_c1 > 0, "c1 owns none of the nodes");

    // c1 alone loses the database; etcd and the others are fine
    proxy.cut();
    let cut = Instant::now();
    wait_settled(&api, &uuids, "active", Duration::from_secs(120)).await;
    eprintln!("{N} deploys ({on_c1} of them on c1) active {:?} after c1 lost the database", cut.elapsed());
    cl.wait_conductors(2).await;
    let log = cl.conductors[0].0.log_tail(usize::MAX);
    assert!(log.contains("FENCED: the database has not answered"), "c1 did not say why it left the ring");

    // the database answers c1 again: it rejoins
    proxy.restore();
    cl.wait_conductors(3).await;
}
