//! The mistakes an on-call engineer makes at 3 a.m., each refused at start
//! with one line that names what is wrong and what to do — never accepted
//! silently (each of these started without a word before and left the
//! cluster broken: one of them with two processes driving the same node).

use std::time::{Duration, Instant};

use ferric_tests::cluster::{Cluster, conductor_args};
use ferric_tests::{Ferric, Postgres, Process, free_port};

const TTL: u64 = 3;

/// Waits for `p` to exit on its own; returns its whole log.
async fn refused(mut p: Process) -> String {
    let start = Instant::now();
    while p.is_running() {
        assert!(start.elapsed() < Duration::from_secs(30), "{} kept running:\n{}", p.name, p.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.log_tail(100_000)
}

fn all_in_one_args(dir: &std::path::Path, db: &str) -> Vec<String> {
    [
        "all-in-one",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &dir.display().to_string(),
        "--database-url",
        db,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test]
async fn an_all_in_one_on_a_clusters_database_is_refused_and_the_other_way_round() {
    let cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log =
        refused(Process::start("aio", dir.path(), all_in_one_args(&dir.path().join("aio"), &cl.db_url), &[], None))
            .await;
    assert!(log.contains("belongs to a cluster with etcd membership"), "{log}");
    assert!(log.contains("this process uses in-process membership (ferric all-in-one)"), "names both: {log}");
    assert!(log.contains("give all-in-one a database of its own"), "says what to do: {log}");
    // the cluster's conductor kept its nodes: still the only member
    let v = cl.ok(reqwest::Method::GET, "/v1/conductors", None).await;
    assert_eq!(v["conductors"].as_array().unwrap().len(), 1);

    // a cluster conductor pointed at an all-in-one's database
    let pg = Postgres::start();
    let aio_db = pg.database("ferric_aio");
    let aio = Ferric::start(Some(&aio_db), &[]);
    let args = conductor_args(dir.path(), &cl.etcd.endpoint, &aio_db, 7, free_port(), TTL);
    let log = refused(Process::start("c7", dir.path(), args, &[], None)).await;
    assert!(log.contains("belongs to a cluster with in-process membership (ferric all-in-one)"), "{log}");
    assert!(log.contains("this database is an all-in-one's"), "{log}");
    drop(aio);
}

#[tokio::test]
async fn a_second_all_in_one_on_one_database_is_refused_while_the_first_runs() {
    let pg = Postgres::start();
    let db = pg.database("ferric_shared");
    let mut first = Ferric::start(Some(&db), &[]);
    let dir = tempfile::tempdir().unwrap();
    let log =
        refused(Process::start("second", dir.path(), all_in_one_args(&dir.path().join("second"), &db), &[], None))
            .await;
    assert!(log.contains("another ferric all-in-one") && log.contains("runs on this database"), "{log}");
    assert!(
        log.contains(&first.data_dir.path().canonicalize().unwrap().display().to_string()),
        "names the holder: {log}"
    );
    // a clean stop gives the database up: now the second one starts
    assert!(first.stop().is_some_and(|s| s.success()));
    let port = free_port();
    let mut args = all_in_one_args(&dir.path().join("second"), &db);
    args[2] = format!("127.0.0.1:{port}");
    let mut second = Process::start("second-again", dir.path(), args, &[], Some(port));
    assert!(second.is_running());
    second.stop();
}

#[tokio::test]
async fn a_conductor_without_the_clusters_database_is_refused() {
    let cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let dir = tempfile::tempdir().unwrap();
    // the forgotten --database-url: the conductor would get its own SQLite file
    let data = dir.path().join("c2");
    let args: Vec<String> = [
        "conductor",
        "--etcd-endpoints",
        &cl.etcd.endpoint,
        "--conductor-id",
        "c2",
        "--grpc-listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &data.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = refused(Process::start("c2", dir.path(), args.clone(), &[], None)).await;
    assert!(log.contains("its database is SQLite") && log.contains("--database-url postgres://"), "{log}");
    // allowed SQLite, but still not the cluster's database: refused at join
    let log =
        refused(Process::start("c2-lab", dir.path(), args, &[("FERRIC_MEMBERSHIP__ALLOW_SQLITE", "true")], None)).await;
    assert!(log.contains("is not the cluster's: member c1 works on database"), "{log}");
    let v = cl.ok(reqwest::Method::GET, "/v1/conductors", None).await;
    assert_eq!(v["conductors"].as_array().unwrap().len(), 1, "nobody joined: {v}");
    // an API process on the wrong database is refused the same way
    let api: Vec<String> = [
        "api",
        "--etcd-endpoints",
        &cl.etcd.endpoint,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &dir.path().join("api").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log =
        refused(Process::start("api2", dir.path(), api, &[("FERRIC_MEMBERSHIP__ALLOW_SQLITE", "true")], None)).await;
    assert!(log.contains("is not the cluster's"), "{log}");
}

#[tokio::test]
async fn two_processes_in_one_data_dir_are_refused() {
    let cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    // c2 in c1's data dir
    let mut args = conductor_args(cl.dir.path(), &cl.etcd.endpoint, &cl.db_url, 2, free_port(), TTL);
    let i = args.iter().position(|a| a == "--data-dir").unwrap();
    args[i + 1] = cl.dir.path().join("c1").display().to_string();
    let log = refused(Process::start("c2", cl.dir.path(), args, &[], None)).await;
    assert!(log.contains("is in use by ferric conductor (pid"), "names the holder: {log}");
    assert!(log.contains("needs a --data-dir of its own"), "{log}");
    // and an all-in-one in a running all-in-one's
    let first = Ferric::start(None, &[]);
    let log = refused(Process::start(
        "aio2",
        cl.dir.path(),
        all_in_one_args(first.data_dir.path(), &format!("sqlite://{}/other.sqlite", cl.dir.path().display())),
        &[],
        None,
    ))
    .await;
    assert!(log.contains("is in use by ferric all-in-one (pid"), "{log}");
}

#[tokio::test]
async fn advertised_urls_that_do_not_reach_the_conductor_are_refused() {
    let cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let dir = tempfile::tempdir().unwrap();
    // the README's `c1.example` style: an address that reaches nothing here
    let mut args = conductor_args(dir.path(), &cl.etcd.endpoint, &cl.db_url, 2, free_port(), TTL);
    args.extend(["--grpc-url".into(), format!("http://127.0.0.1:{}", free_port())]);
    let log = refused(Process::start("c2", dir.path(), args, &[], None)).await;
    assert!(
        log.contains("conductor.grpc_url http://127.0.0.1:") && log.contains("does not reach this conductor"),
        "{log}"
    );
    assert!(log.contains("set --grpc-url"), "{log}");
    // c1's gRPC address copied into c3's config: reaches another conductor
    let c1 = cl.status(0).await.unwrap();
    let mut args = conductor_args(dir.path(), &cl.etcd.endpoint, &cl.db_url, 3, free_port(), TTL);
    args.extend(["--grpc-url".into(), format!("http://127.0.0.1:{}", cl.conductors[0].1)]);
    let log = refused(Process::start("c3", dir.path(), args, &[], None)).await;
    assert!(log.contains(&format!("reaches another conductor (c1, incarnation {})", c1.incarnation)), "{log}");
    // an HTTP root URL that is not this conductor's
    let args = conductor_args(dir.path(), &cl.etcd.endpoint, &cl.db_url, 4, free_port(), TTL);
    let wrong = format!("http://127.0.0.1:{}/httpboot", free_port());
    let log =
        refused(Process::start("c4", dir.path(), args, &[("FERRIC_DEPLOY__HTTP_SERVER_URL", wrong.as_str())], None))
            .await;
    assert!(log.contains("deploy.http_server_url does not reach this conductor's HTTP root"), "{log}");
    let v = cl.ok(reqwest::Method::GET, "/v1/conductors", None).await;
    assert_eq!(v["conductors"].as_array().unwrap().len(), 1, "{v}");
}

/// A conductor that stops answering on its gRPC address (a firewall, a
/// dead route) while it stays in the ring: the API's 503 names it and the
/// address it tried.
#[tokio::test]
async fn a_503_names_the_conductor_it_could_not_reach() {
    use ferric_tests::TcpProxy;
    let etcd = ferric_tests::Etcd::start();
    let pg = Postgres::start();
    let db = pg.database("ferric_unreachable");
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_port();
    let proxy = TcpProxy::start(format!("127.0.0.1:{grpc}").parse().unwrap()).await;
    let mut args = conductor_args(dir.path(), &etcd.endpoint, &db, 1, grpc, 6);
    args.extend(["--grpc-url".into(), proxy.endpoint()]);
    let _c1 = Process::start("c1", dir.path(), args, &[], Some(grpc));
    let port = free_port();
    let api_args: Vec<String> = [
        "api",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--database-url",
        &db,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &dir.path().join("api").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _api = Process::start("api", dir.path(), api_args, &[("FERRIC_API__REQUEST_DEADLINE_MS", "3000")], Some(port));
    let api = ferric_tests::Api::new(&format!("http://127.0.0.1:{port}"));
    let start = Instant::now();
    while api.get("/v1/conductors").await["conductors"].as_array().map(|a| a.len()) != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = api.ok(reqwest::Method::POST, "/v1/nodes", Some(serde_json::json!({"driver": "fake-hardware"}))).await;
    let uuid = n["uuid"].as_str().unwrap().to_string();
    proxy.cut();
    let (s, body) = api.call(reqwest::Method::GET, &format!("/v1/nodes/{uuid}/validate"), None).await;
    assert_eq!(s, 503, "{body}");
    let fault = ferric_tests::Api::fault(&body);
    assert!(fault.contains(&format!("conductor c1 at {} could not be reached", proxy.endpoint())), "{fault}");
}

#[tokio::test]
async fn database_url_mistakes_are_one_clear_line_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // nothing listens there
    let port = free_port();
    let start = Instant::now();
    let log = refused(Process::start(
        "nobody",
        dir.path(),
        all_in_one_args(&dir.path().join("a"), &format!("postgres://ferric:secret@127.0.0.1:{port}/ferric")),
        &[("RUST_BACKTRACE", "0")],
        None,
    ))
    .await;
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert!(
        log.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port} (database ferric, user ferric)")),
        "{log}"
    );
    assert!(log.to_lowercase().contains("connection refused"), "{log}");
    assert!(!log.contains("pool timed out") && !log.contains("secret"), "{log}");
    // a typo in the scheme is not a SQLite file name
    let log = refused(Process::start(
        "typo",
        dir.path(),
        all_in_one_args(&dir.path().join("b"), "postgress://ferric@127.0.0.1/ferric"),
        &[("RUST_BACKTRACE", "0")],
        None,
    ))
    .await;
    assert!(log.contains("unknown scheme \"postgress\"") && log.contains("postgres://USER@HOST:PORT/DB"), "{log}");
    assert!(!dir.path().join("b/postgress:").exists());
    // a database that does not exist: PostgreSQL's words, not its source lines
    let pg = Postgres::start();
    let missing = format!("postgres://postgres@127.0.0.1:{}/nope", pg.port());
    let log = refused(Process::start(
        "missing",
        dir.path(),
        all_in_one_args(&dir.path().join("c"), &missing),
        &[("RUST_BACKTRACE", "0")],
        None,
    ))
    .await;
    assert!(log.contains("database \"nope\" does not exist"), "{log}");
    assert!(!log.contains(" line "), "{log}");
}

#[tokio::test]
async fn small_ones_flags_logs_and_lost_power_actions() {
    // --http-listen exists (the conductor's /metrics was only settable by env)
    let dir = tempfile::tempdir().unwrap();
    let (api_port, http_port) = (free_port(), free_port());
    let args: Vec<String> = [
        "all-in-one",
        "--listen",
        &format!("127.0.0.1:{api_port}"),
        "--http-listen",
        &format!("127.0.0.1:{http_port}"),
        "--data-dir",
        &dir.path().join("a").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut aio = Process::start("aio", dir.path(), args, &[], Some(api_port));
    let m = ferric_tests::http().get(format!("http://127.0.0.1:{http_port}/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    // no colour codes in a log that is not a terminal
    assert!(!aio.log_tail(10_000).contains('\u{1b}'), "ANSI escapes in a log file");
    // a power action lost with its conductor: stop, leave what a SIGKILL
    // mid-action leaves (target set, the dead incarnation's lock), restart
    let api = ferric_tests::Api::new(&format!("http://127.0.0.1:{api_port}"));
    let n = api
        .ok(reqwest::Method::POST, "/v1/nodes", Some(serde_json::json!({"driver": "fake-hardware", "name": "p"})))
        .await;
    let uuid: uuid::Uuid = n["uuid"].as_str().unwrap().parse().unwrap();
    aio.stop();
    let db =
        ferric_common::db::Db::connect(&format!("sqlite://{}/a/ferric.sqlite", dir.path().display()), 1).await.unwrap();
    let mut node = db.get_node(uuid).await.unwrap();
    node.target_power_state = Some("power on".into());
    db.save_node_locked(&node, &Default::default()).await.ok();
    assert!(matches!(
        db.reserve_node(uuid, &"conductor-x/dead".into()).await.unwrap(),
        ferric_common::db::LockOutcome::Acquired(_)
    ));
    let mut n2 = db.get_node(uuid).await.unwrap();
    n2.target_power_state = Some("power on".into());
    assert!(db.save_node_locked(&n2, &"conductor-x/dead".into()).await.unwrap());
    db.close().await;
    aio.spawn();
    let start = Instant::now();
    let n = loop {
        let n = api.node("p").await;
        if n["target_power_state"].is_null() && n["reservation"].is_null() {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the lost power action was never settled: {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(n["last_error"].as_str().unwrap_or_default().contains("The power action to 'power on' was lost"), "{n}");
    aio.stop();

    // ferric-api has no --lease-ttl (it never had a lease)
    let out = std::process::Command::new(ferric_tests::bin_dir().join("ferric-api"))
        .args(["--lease-ttl", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--lease-ttl"));
}

/// "ring changed" says who joined and who left; a conductor cut off from
/// etcd logs its trouble once, not on every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn ring_changes_name_members_and_etcd_trouble_is_logged_once() {
    use ferric_tests::{Etcd, TcpProxy};
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(etcd.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let direct = etcd.endpoint.clone();
    let mut cl = Cluster::start_with(
        etcd,
        vec![proxy.endpoint(), direct],
        TTL,
        &[("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "1000")],
    );
    cl.wait_conductors(2).await;
    cl.conductors[1].0.kill();
    let start = Instant::now();
    while !cl.conductors[0].0.log_tail(10_000).contains(r#"left=["c2"]"#) {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", cl.conductors[0].0.log_tail(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // c1 loses etcd for 4 s: it fences, retries many times, says so once
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.restore();
    cl.wait_conductors(1).await;
    let log = cl.conductors[0].0.log_tail(100_000);
    let keepalive = log.lines().filter(|l| l.contains("lease keep-alive")).count();
    assert!(keepalive <= 3, "{keepalive} keep-alive lines in 4 s:\n{log}");
    assert!(log.contains("FENCED"), "{log}");
}

fn ferricctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(ferric_tests::bin_dir().join("ferricctl")).args(args).output().expect("ferricctl")
}

/// Draining the last conductor: ferricctl refuses without --force; a
/// SIGTERM says at once that nobody can take the nodes and how long it
/// will wait, and a second SIGTERM stops at the next step boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn draining_the_last_conductor_is_loud_and_a_second_signal_stops_it() {
    let mut cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let out = ferricctl(&["--etcd-endpoints", &cl.etcd.endpoint, "--api", &cl.api_url, "conductor", "drain", "c1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused without --force");
    assert!(err.contains("c1 is the only active conductor") && err.contains("--force"), "{err}");
    // a slow deploy in flight
    let uuids = cl.create_nodes("s", 1, serde_json::json!({"fake_step_delay_ms": 1500})).await;
    cl.drive(&uuids, "manage", "manageable", Duration::from_secs(60)).await;
    cl.drive(&uuids, "provide", "available", Duration::from_secs(60)).await;
    cl.act(&uuids, "active").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cl.conductors[0].0.pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while !cl.conductors[0].0.log_tail(1000).contains("nobody can take this conductor's nodes") {
        assert!(start.elapsed() < Duration::from_secs(3), "not said at once:\n{}", cl.conductors[0].0.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cl.conductors[0].0.log_tail(1000).contains("waits up to 300 s"), "says how long");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cl.conductors[0].0.is_running(), "the first signal waits for a hand-off");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while cl.conductors[0].0.is_running() {
        assert!(start.elapsed() < Duration::from_secs(15), "a second signal did not stop it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // stopped at a step boundary: the deploy is still there to resume
    let n = cl.ok(reqwest::Method::GET, &format!("/v1/nodes/{}", uuids[0]), None).await;
    assert!(n["provision_state"] == "deploying" || n["provision_state"] == "active", "{n}");
    assert!(cl.conductors[0].0.log_tail(1000).contains("second signal: stopping now"));
    // it comes back and finishes the deploy
    cl.conductors[0].0.spawn();
    cl.wait_all(&uuids, "active", Duration::from_secs(60)).await;
}

/// ferricctl reads the cluster's settings from the members' records and
/// the servers' own configuration: with conductors on 2^12 partitions it
/// places every node where they do (it used to print its default 2^16
/// placement, silently wrong).
#[tokio::test]
async fn ferricctl_uses_the_clusters_ring_settings_and_configuration() {
    let cl = Cluster::start(2, TTL, &[("FERRIC_MEMBERSHIP__PARTITION_EXPONENT", "12")]);
    cl.wait_conductors(2).await;
    let uuids = cl.create_nodes("f", 12, serde_json::json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("ferric.toml");
    std::fs::write(
        &conf,
        format!("[membership]\netcd_endpoints = [\"{}\"]\n[api]\npublic_url = \"{}\"\n", cl.etcd.endpoint, cl.api_url),
    )
    .unwrap();
    let nodes = cl.nodes().await;
    for u in &uuids {
        let out = ferricctl(&["--config", &conf.display().to_string(), "node", "owner", u]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let owner = nodes[u]["conductor"].as_str().unwrap();
        assert!(text.contains(&format!("owner {owner} ")), "{u}: ferricctl says {text}, the API {owner}");
        assert!(text.contains("partition "), "{text}");
    }
    // the same through FERRIC_* variables, and ring show lists each HTTP root
    let out = std::process::Command::new(ferric_tests::bin_dir().join("ferricctl"))
        .env("FERRIC_MEMBERSHIP__ETCD_ENDPOINTS", &cl.etcd.endpoint)
        .env("FERRIC_API__PUBLIC_URL", &cl.api_url)
        .args(["ring", "show"])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (id, url) in cl.member_http_urls() {
        assert!(show.lines().any(|l| l.starts_with(&id) && l.contains(&url)), "{id} {url}:\n{show}");
    }
    assert!(show.contains("partitions 4096"), "{show}");
}

#[tokio::test]
async fn an_api_with_other_ring_settings_is_refused() {
    let cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let dir = tempfile::tempdir().unwrap();
    let api: Vec<String> = [
        "api",
        "--etcd-endpoints",
        &cl.etcd.endpoint,
        "--database-url",
        &cl.db_url,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        &dir.path().join("api").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log =
        refused(Process::start("api2", dir.path(), api, &[("FERRIC_MEMBERSHIP__PARTITION_EXPONENT", "12")], None))
            .await;
    assert!(log.contains("ring settings differ: member c1 uses [partition_exponent=16"), "{log}");
    assert!(log.contains("this API process [partition_exponent=12"), "{log}");
}

/// A second process with a running conductor's id (a cloned VM keeps its
/// host name; a unit file copied to a second host) would replace the
/// running incarnation's member record and drive the same nodes. It is
/// refused once the first one's lease has outlived its TTL, naming the id;
/// the first keeps its place. A conductor restarted right after a crash
/// with the same id waits for its dead incarnation's lease and joins.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_process_with_a_conductors_id_is_refused_and_a_restart_waits_its_turn() {
    let mut cl = Cluster::start(1, TTL, &[]);
    cl.wait_conductors(1).await;
    let first = cl.status(0).await.expect("c1 answers");
    let dir = tempfile::tempdir().unwrap();
    let args = conductor_args(dir.path(), &cl.etcd.endpoint, &cl.db_url, 1, free_port(), TTL);
    let started = Instant::now();
    let log = refused(Process::start("c1-clone", dir.path(), args, &[], None)).await;
    assert!(
        log.contains("conductor id c1 is registered by a live process")
            && log.contains(&first.incarnation)
            && log.contains("--conductor-id"),
        "{log}"
    );
    assert!(started.elapsed() >= Duration::from_secs(TTL), "refused before the lease's TTL passed");
    let now = cl.status(0).await.expect("c1 still answers");
    assert_eq!(now.incarnation, first.incarnation, "the clone replaced the running incarnation");
    let v = cl.ok(reqwest::Method::GET, "/v1/conductors", None).await;
    assert_eq!(v["conductors"].as_array().unwrap().len(), 1, "{v}");

    // SIGKILL and start again at once: it waits for the dead lease, then joins
    cl.conductors[0].0.kill();
    cl.conductors[0].0.spawn();
    let start = Instant::now();
    loop {
        if let Some(s) = cl.status(0).await
            && s.incarnation != first.incarnation
            && cl.conductors[0]
                .0
                .log_tail(200)
                .contains(&format!("conductor joined the ring id=c1 incarnation={}", s.incarnation))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restarted c1 never joined:\n{}",
            cl.conductors[0]
                .0
                .log_tail(200)
                .lines()
                .filter(|l| !l.trim_start().starts_with("at "))
                .take(60)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = cl.conductors[0].0.log_tail(200);
    assert!(log.contains("still registered by another incarnation: waiting for its lease to expire"), "{log}");

    // again, with a lease shorter than the wait for the dead one's: the
    // lease was granted before the wait and renewed by nothing, so it had
    // expired when the key freed and the start failed ("requested lease not
    // found"); it happened with equal TTLs on a loaded machine
    cl.conductors[0].0.kill();
    let dir = tempfile::tempdir().unwrap();
    let args = conductor_args(dir.path(), &cl.etcd.endpoint, &cl.db_url, 1, free_port(), 1);
    let mut short =
        Process::start("c1-short-lease", dir.path(), args, &[("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "300")], None);
    let start = Instant::now();
    loop {
        let log = short.log_tail(200);
        if log.contains("conductor joined the ring id=c1") {
            assert!(log.contains("waiting for its lease to expire"), "it did not have to wait:\n{log}");
            break;
        }
        assert!(short.is_running(), "c1 with a 1 s lease failed to start:\n{log}");
        assert!(start.elapsed() < Duration::from_secs(30), "c1 with a 1 s lease never joined:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    short.kill();
}

fn ferric_cmd(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(ferric_tests::ferric_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ferric");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Add a migration this binary does not know, as a newer Ferric would.
fn add_unknown_migration(sqlite: &std::path::Path) {
    let py = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO _sqlx_migrations \
              (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', 1, x'00', 1)\"); \
              c.commit()";
    let st = std::process::Command::new("python3").args(["-c", py]).arg(sqlite).status().expect("python3");
    assert!(st.success());
}

#[tokio::test]
async fn schema_changes_only_by_ferric_db_migrate_when_asked_and_an_unknown_schema_is_refused() {
    for backend in ["sqlite", "postgres"] {
        let dir = tempfile::tempdir().unwrap();
        let pg = (backend == "postgres").then(Postgres::start);
        let url = match &pg {
            Some(pg) => pg.database("schema"),
            None => format!("sqlite://{}/ferric.sqlite", dir.path().display()),
        };
        let data = dir.path().display().to_string();
        let db = ["--database-url", url.as_str(), "--data-dir", data.as_str()];
        // a fresh database: everything pending
        let (ok, out) = ferric_cmd(&[&["db", "status"][..], &db].concat(), &[]);
        assert!(ok, "{out}");
        let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
        assert_eq!(status["current"], false, "{backend}: {out}");
        assert_eq!(status["pending"][0][0], 1, "{backend}: {out}");
        let (ok, out) = ferric_cmd(&[&["db", "check"][..], &db].concat(), &[]);
        assert!(!ok && out.contains("behind this binary") && out.contains("ferric db migrate"), "{backend}: {out}");

        // a server that may not migrate refuses, naming the missing migrations and the cure
        let p = Process::start(
            &format!("no-migrate-{backend}"),
            dir.path(),
            all_in_one_args(&dir.path().join("a"), &url),
            &[("FERRIC_DATABASE__AUTO_MIGRATE", "false")],
            None,
        );
        let log = refused(p).await;
        assert!(log.contains("0001 (initial)") && log.contains("run `ferric db migrate`"), "{backend}: {log}");

        // the migration, once; then a check passes
        let (ok, out) = ferric_cmd(&[&["db", "migrate"][..], &db].concat(), &[]);
        assert!(ok && out.contains("applied migration 0001"), "{backend}: {out}");
        let (ok, out) = ferric_cmd(&[&["db", "migrate"][..], &db].concat(), &[]);
        assert!(ok && out.contains("already current"), "{backend}: {out}");
        let (ok, out) = ferric_cmd(&[&["db", "check", "--wait", "5"][..], &db].concat(), &[]);
        assert!(ok && out.contains("schema current"), "{backend}: {out}");

        if backend == "sqlite" {
            // a newer Ferric migrated it: refused everywhere, by name
            add_unknown_migration(&dir.path().join("ferric.sqlite"));
            let p = Process::start("newer-schema", dir.path(), all_in_one_args(&dir.path().join("b"), &url), &[], None);
            let log = refused(p).await;
            assert!(
                log.contains("newer than this binary") && log.contains("migration 9999"),
                "a schema from a newer Ferric must be refused: {log}"
            );
            let (ok, out) = ferric_cmd(&[&["db", "migrate"][..], &db].concat(), &[]);
            assert!(!ok && out.contains("migration 9999"), "{out}");
        }
    }
}
