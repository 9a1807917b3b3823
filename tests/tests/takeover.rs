//! Take-over, resumable operations and drain across real conductor
//! processes (etcd + PostgreSQL, fake-hardware with injected step delays).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferric_common::db::Db;
use ferric_tests::cluster::{Cluster, Load};
use reqwest::Method;
use serde_json::{Value, json};

const TTL: u64 = 2;
/// Fence after 1.5 s without an acknowledged renewal (renewals every 0.67 s):
/// short enough for the 2 s TTL, long enough for a busy 2-core machine.
const FENCE: &[(&str, &str)] = &[("FERRIC_MEMBERSHIP__FENCE_MARGIN_MS", "500")];

/// (incarnation, event, detail, at) per node, from the operation log.
async fn history(cl: &Cluster, uuid: &str) -> Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> {
    let db = Db::connect(&cl.db_url, 1).await.unwrap();
    let h = db.history(uuid.parse().unwrap()).await.unwrap();
    db.close().await;
    h.into_iter().map(|e| (e.incarnation, e.event, e.detail, e.created_at)).collect()
}

/// No two incarnations acted on a node in overlapping time: the log, in
/// order, never returns to an incarnation after another one acted.
fn assert_no_overlap(uuid: &str, h: &[(String, String, String, chrono::DateTime<chrono::Utc>)]) {
    let mut seen: Vec<&str> = Vec::new();
    for (inc, ..) in h {
        if seen.last() != Some(&inc.as_str()) {
            assert!(
                !seen.contains(&inc.as_str()),
                "node {uuid}: incarnation {inc} acted again after another one: {h:?}"
            );
            seen.push(inc);
        }
    }
}

async fn to_available(cl: &Cluster, uuids: &[String]) {
    cl.drive(uuids, "manage", "manageable", Duration::from_secs(60)).await;
    cl.drive(uuids, "provide", "available", Duration::from_secs(60)).await;
}

async fn set_delay(cl: &Cluster, uuids: &[String], ms: u64) {
    for u in uuids {
        cl.ok(
            Method::PATCH,
            &format!("/v1/nodes/{u}"),
            Some(json!([{"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": ms}])),
        )
        .await;
    }
}

fn owner_counts(nodes: &BTreeMap<String, Value>) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (u, n) in nodes {
        m.entry(n["conductor"].as_str().unwrap_or("").to_string()).or_default().push(u.clone());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_deploy_every_deploy_finishes() {
    let n: usize = std::env::var("FERRIC_CHAOS_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut cl = Cluster::start(3, TTL, FENCE);
    cl.wait_conductors(3).await;
    let uuids = cl.create_nodes("d", n, json!({})).await;
    to_available(&cl, &uuids).await;
    // four deploy steps of 3.5 s each: every deploy is still running when
    // the last request has been accepted, even on a loaded machine (with
    // 2 s steps, 300 requests accepted 16 at a time on a busy 2-core
    // machine saw 40 of the victim's 108 deploys finish before the kill)
    set_delay(&cl, &uuids, 3500).await;
    cl.act(&uuids, "active").await;
    // kill the conductor that owns the most nodes (about a third), mid-deploy
    let before = cl.nodes().await;
    let by_owner = owner_counts(&before);
    let (victim_id, _) = by_owner.iter().max_by_key(|(id, v)| (v.len(), id.to_string())).unwrap();
    let victim: usize = victim_id.trim_start_matches('c').parse::<usize>().unwrap() - 1;
    let dead_inc = cl.status(victim).await.unwrap().incarnation;
    cl.conductors[victim].0.kill();
    let killed_at = chrono::Utc::now();
    let victims: Vec<String> =
        by_owner[victim_id].iter().filter(|u| before[*u]["provision_state"] == "deploying").cloned().collect();
    println!(
        "killed {victim_id} while {} of its {} nodes (of {n}) were deploying",
        victims.len(),
        by_owner[victim_id].len()
    );
    assert!(victims.len() * 4 >= n, "the kill must land mid-deploy for about a third of the nodes");

    cl.wait_all(&uuids, "active", Duration::from_secs(240)).await;
    // no node stays locked: a take-over of a node that was already active
    // when its owner died holds its lock for a (delayed) step after the last
    // deploy ended, so the locks are read once those have had their time
    let start = std::time::Instant::now();
    let after = loop {
        let after = cl.nodes().await;
        let locked: Vec<(&String, &Value)> =
            uuids.iter().map(|u| (u, &after[u]["reservation"])).filter(|(_, r)| !r.is_null()).collect();
        if locked.is_empty() {
            break after;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "still locked 30 s after every deploy ended: {locked:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for u in &uuids {
        let node = &after[u];
        assert_eq!(node["power_state"], "power on");
        assert_ne!(node["conductor"].as_str(), Some(victim_id.as_str()));
    }
    // each resumed node records which conductor finished it, and no node
    // was acted on by two conductors in overlapping time
    let mut resumed = 0;
    for u in &victims {
        let h = history(&cl, u).await;
        assert_no_overlap(u, &h);
        let done =
            h.iter().rev().find(|(_, e, d, _)| e == "done" && d.starts_with("deploying")).expect("deploy finished");
        if done.0 == dead_inc {
            // it was deploying when the nodes were read, and finished in the
            // moment before the kill (a loaded machine): never after it
            assert!(done.3 <= killed_at, "{u} finished by the killed conductor after the kill: {h:?}");
            continue;
        }
        if h.iter().any(|(i, e, _, _)| i == &dead_inc && e == "step") {
            resumed += 1;
            assert!(h.iter().any(|(i, e, _, _)| i != &dead_inc && (e == "take_over" || e == "resume")), "{u}: {h:?}");
        }
    }
    println!("{resumed} deploys started by the killed conductor were finished by another");
    assert!(resumed > 0);
    for u in uuids.iter().step_by(7) {
        assert_no_overlap(u, &history(&cl, u).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_under_load_fails_nothing() {
    let mut cl = Cluster::start(3, TTL, FENCE);
    cl.wait_conductors(3).await;
    let uuids = cl.create_nodes("r", 30, json!({})).await;
    to_available(&cl, &uuids).await;
    set_delay(&cl, &uuids, 300).await;
    let load = Load::start(&cl.api_url, uuids.clone());
    for u in &uuids {
        cl.ok(Method::PUT, &format!("/v1/nodes/{u}/states/provision"), Some(json!({"target": "active"}))).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held: Vec<String> = owner_counts(&cl.nodes().await).remove("c2").unwrap_or_default();
    assert!(!held.is_empty());

    let out = std::process::Command::new(ferric_tests::bin_dir().join("ferricctl"))
        .args(["--etcd-endpoints", &cl.etcd.endpoint, "--api", &cl.api_url, "conductor", "drain", "c2", "--wait"])
        .output()
        .expect("ferricctl");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "ferricctl drain failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("c2: draining") && text.contains("c2: drained and stopped"), "{text}");
    assert!(text.contains("nodes still held"), "progress is shown: {text}");
    // "drained and stopped" means the process is gone: out of the ring already
    assert!(!cl.member_http_urls().contains_key("c2"), "c2 still in the ring when ferricctl said it stopped");
    let status = cl.conductors[1].0.stop().expect("c2 was running");
    assert!(status.success(), "the drained conductor exits cleanly: {status}");

    cl.wait_all(&uuids, "active", Duration::from_secs(120)).await;
    let (ok, failed) = load.finish().await;
    println!("{ok} requests during the drain, {} failed", failed.len());
    assert!(failed.is_empty(), "requests failed during the drain: {failed:?}");
    let nodes = cl.nodes().await;
    for u in &held {
        let n = &nodes[u];
        assert_ne!(n["conductor"], "c2");
        assert_eq!(n["reservation"], Value::Null);
        let h = history(&cl, u).await;
        assert_no_overlap(u, &h);
        assert!(h.iter().any(|(i, e, _, _)| !i.starts_with("c2/") && e == "take_over"), "{u} was taken over: {h:?}");
    }
    let v = cl.ok(Method::GET, "/v1/conductors", None).await;
    assert_eq!(v["conductors"].as_array().unwrap().len(), 2, "c2 left the ring: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conductor_killed_during_a_take_over_is_completed_by_the_next() {
    let mut cl = Cluster::start(3, TTL, FENCE);
    cl.wait_conductors(3).await;
    let uuids = cl.create_nodes("t", 30, json!({})).await;
    to_available(&cl, &uuids).await;
    cl.drive(&uuids, "active", "active", Duration::from_secs(60)).await;
    // every take-over hook now takes 3 s
    set_delay(&cl, &uuids, 3000).await;
    let inc2 = cl.status(1).await.unwrap().incarnation;
    let c1_nodes = owner_counts(&cl.nodes().await).remove("c1").unwrap();
    cl.conductors[0].0.kill();
    // wait until c2 is in the middle of taking some of c1's nodes over
    let db = Db::connect(&cl.db_url, 1).await.unwrap();
    let start = Instant::now();
    loop {
        let mut mid = 0;
        for u in &c1_nodes {
            let n = db.get_node(u.parse().unwrap()).await.unwrap();
            if n.reservation.as_deref() == Some(inc2.as_str()) && n.conductor_affinity.as_deref() == Some("c1") {
                mid += 1;
            }
        }
        if mid > 0 {
            println!("c2 is taking over {mid} nodes; killing it");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "c2 never started a take-over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
    cl.conductors[1].0.kill();
    // c3 is alone now: it completes every take-over
    let db = Db::connect(&cl.db_url, 1).await.unwrap();
    let start = Instant::now();
    loop {
        let nodes = db.list_nodes(&Default::default()).await.unwrap();
        let pending =
            nodes.iter().filter(|n| n.conductor_affinity.as_deref() != Some("c3") || n.reservation.is_some()).count();
        if pending == 0 {
            for n in &nodes {
                assert_eq!(n.provision_state.as_str(), "active");
                if c1_nodes.contains(&n.uuid.to_string()) {
                    assert_eq!(n.driver_internal_info["fake_take_over"]["by"], "c3", "{}", n.uuid);
                }
            }
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{pending} nodes not taken over by c3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
    let view = cl.nodes().await;
    assert!(view.values().all(|n| n["conductor"] == "c3"));
    for u in &c1_nodes {
        assert_no_overlap(u, &history(&cl, u).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_conductor_fences_itself_before_its_lease_expires() {
    let etcd = ferric_tests::Etcd::start();
    let target: std::net::SocketAddr = etcd.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = ferric_tests::TcpProxy::start(target).await;
    let endpoints = vec![etcd.endpoint.clone(), proxy.endpoint(), etcd.endpoint.clone()];
    let cl = Cluster::start_with(etcd, endpoints, TTL, FENCE);
    cl.wait_conductors(3).await;
    let uuids = cl.create_nodes("f", 30, json!({})).await;
    to_available(&cl, &uuids).await;
    set_delay(&cl, &uuids, 1000).await;
    cl.act(&uuids, "active").await;
    let c2_nodes = owner_counts(&cl.nodes().await).remove("c2").unwrap_or_default();
    assert!(!c2_nodes.is_empty());
    let old_inc = cl.status(1).await.unwrap().incarnation;

    // cut c2 off from etcd (not from the database: the dangerous case)
    let cut_at = Instant::now();
    let cut_wall = chrono::Utc::now();
    proxy.cut();
    let fenced_after = loop {
        if cl.conductors[1].0.log_tail(400).contains("FENCED") {
            break cut_at.elapsed();
        }
        assert!(cut_at.elapsed() < Duration::from_secs(10), "c2 never fenced itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("c2 fenced itself {fenced_after:?} after the cut (TTL {TTL} s)");
    assert!(fenced_after < Duration::from_secs(TTL), "fencing must come before the lease can expire");

    // the survivors finish every deploy, c2's included
    cl.wait_all(&uuids, "active", Duration::from_secs(120)).await;
    let mut handed = 0;
    for u in &c2_nodes {
        let h = history(&cl, u).await;
        assert_no_overlap(u, &h);
        let last_c2 = h.iter().filter(|(i, ..)| *i == old_inc).map(|(.., at)| *at).max();
        let first_other = h.iter().filter(|(i, ..)| *i != old_inc && last_c2.is_some()).map(|(.., at)| *at).min();
        if let (Some(a), Some(b)) = (last_c2, first_other) {
            assert!(a < b, "{u}: c2 acted at {a} after another conductor at {b}");
            assert!(
                b >= cut_wall + chrono::Duration::milliseconds(fenced_after.as_millis() as i64),
                "{u}: taken before c2 fenced"
            );
            handed += 1;
        }
    }
    println!("{handed} of c2's nodes were handed over after it fenced");

    // healed: c2 comes back as a new incarnation
    proxy.restore();
    let start = Instant::now();
    loop {
        if let Some(s) = cl.status(1).await
            && s.incarnation != old_inc
            && s.state == "active"
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "c2 never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cl.wait_conductors(3).await;
}
