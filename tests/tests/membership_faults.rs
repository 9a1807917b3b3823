//! Faults of the membership (etcd) a fleet sees, against the real
//! processes: a watch that stalls without breaking, a member record that
//! disappears under a live conductor. Each test reproduces the fault and
//! checks that no node is ever acted on from a stale view.

use std::time::{Duration, Instant};

use ferric_tests::cluster::{Cluster, status};
use ferric_tests::{Etcd, TcpProxy};
use reqwest::Method;
use serde_json::{Value, json};

/// Lines of a process log that say a lock was cleared because its holder
/// was dead (this wording and the one before per-node clearing), naming
/// an incarnation of `conductor`.
fn clearings_of(log: &str, conductor: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("of a dead incarnation") && l.contains(&format!("dead={conductor}/")))
        .map(String::from)
        .collect()
}

/// Waits until every node is `active`, unlocked, and recorded (in the
/// database: the API does not show it) as served by the conductor the
/// API's ring names — its take-over is done. Returns the nodes as the API
/// shows them.
async fn wait_taken_over(
    cl: &Cluster,
    uuids: &[String],
    timeout: Duration,
) -> std::collections::BTreeMap<String, Value> {
    let db = ferric_common::db::Db::connect(&cl.db_url, 2).await.expect("the cluster's database");
    let start = Instant::now();
    loop {
        let all = cl.nodes().await;
        let mut pending = Vec::new();
        for u in uuids {
            let n = &all[u];
            let stored = db.get_node(u.parse().unwrap()).await.expect("a node");
            let affinity = stored.conductor_affinity.as_deref().unwrap_or_default().to_string();
            let done = n["provision_state"] == "active"
                && n["reservation"].is_null()
                && n["conductor"].as_str().is_some_and(|c| c == affinity);
            if !done {
                pending.push((
                    u.clone(),
                    n["provision_state"].clone(),
                    n["reservation"].clone(),
                    n["conductor"].clone(),
                    affinity,
                ));
            }
        }
        if pending.is_empty() {
            db.close().await;
            return all;
        }
        assert!(
            start.elapsed() < timeout,
            "{} nodes not taken over after {timeout:?} (uuid, state, lock, owner, affinity): {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The API's ring epoch (its `/readyz` reports it).
async fn api_epoch(cl: &Cluster) -> u64 {
    let v: Value = cl.client.get(format!("{}/readyz", cl.api_url)).send().await.unwrap().json().await.unwrap();
    v["ring_epoch"].as_u64().expect("ring_epoch")
}

/// c1's watch of the membership stalls — its connection to etcd stays open
/// and carries nothing (a member cut from its leader, a black-holed route)
/// — and a new conductor c3 joins meanwhile and takes over its share,
/// holding each node's lock for seconds. c1's ring still lacks c3, so to
/// c1 the locks c3 holds belong to an incarnation outside the ring. Before,
/// c1 cleared them as a dead incarnation's (every lock of that holder, on
/// any node) while c3 was working under them. Now c1 clears a lock only
/// when a linearizable read says its holder's member key is gone; its
/// stalled watch is detected by an unanswered progress request and the
/// ring re-read; and a request routed by the newer ring is acted on only
/// once c1 has caught up with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_watch_never_clears_a_live_conductors_locks() {
    const N: usize = 60;
    // a TTL long enough that c1's keep-alive, frozen with the watch,
    // reconnects before its lease could run out
    const TTL: u64 = 9;
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(etcd.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let endpoints = vec![proxy.endpoint(), etcd.endpoint.clone()];
    let mut cl = Cluster::start_with(etcd, endpoints, TTL, &[]);
    cl.wait_conductors(2).await;
    let uuids = cl.create_nodes("w", N, json!({})).await;
    let wait = Duration::from_secs(120);
    cl.drive(&uuids, "manage", "manageable", wait).await;
    cl.drive(&uuids, "provide", "available", wait).await;
    cl.drive(&uuids, "active", "active", wait).await;
    // from now on a take-over of a node (boot + deploy hooks) holds its
    // lock for 2 x 2.5 s
    for u in &uuids {
        cl.ok(
            Method::PATCH,
            &format!("/v1/nodes/{u}"),
            Some(json!([{"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": 2500}])),
        )
        .await;
    }
    let before = cl.nodes().await;
    let on_c1: Vec<String> = uuids.iter().filter(|u| before[*u]["conductor"] == "c1").cloned().collect();
    assert!(on_c1.len() > N / 4, "c1 owns too few nodes for the test: {}", on_c1.len());

    // c1's watch (and its keep-alive stream, which reconnects) stall
    let frozen = proxy.freeze();
    assert!(frozen >= 1, "c1 had no connection to etcd to freeze");
    let endpoint = cl.etcd.endpoint.clone();
    cl.add_conductor(&endpoint, TTL, &[]);
    cl.wait_conductors(3).await;
    let epoch = api_epoch(&cl).await;

    // a request for a node c1 keeps, routed by the ring with c3 in it
    let after = cl.nodes().await;
    let kept = on_c1.iter().find(|u| after[*u]["conductor"] == "c1").expect("c1 keeps some nodes").clone();
    cl.ok(
        Method::PATCH,
        &format!("/v1/nodes/{kept}"),
        Some(json!([{"op": "add", "path": "/extra/routed_by", "value": epoch}])),
    )
    .await;
    let c1_epoch = status(cl.conductors[0].1).await.expect("c1 answers").epoch;
    assert!(
        c1_epoch >= epoch,
        "c1 acted on a request routed by ring epoch {epoch} while its own ring was at epoch {c1_epoch}"
    );

    let all = wait_taken_over(&cl, &uuids, Duration::from_secs(120)).await;
    let to_c3 = uuids.iter().filter(|u| all[*u]["conductor"] == "c3").count();
    assert!(to_c3 > 0, "c3 took no node over");

    // nobody cleared a lock of c3, which never died
    for (p, _) in &cl.conductors {
        let wrong = clearings_of(&p.log_tail(usize::MAX), "c3");
        assert!(wrong.is_empty(), "{} cleared the locks of the live c3: {:?}", p.name, &wrong[..wrong.len().min(3)]);
    }
    // and c1 found out its watch had stalled and re-read the ring (by a
    // progress request, long before HTTP/2 keep-alives would have)
    let c1_log = cl.conductors[0].0.log_tail(usize::MAX);
    assert!(c1_log.contains("the watch stalled"), "c1 never detected its stalled watch");
    drop(proxy);
}

/// A live conductor's member record is deleted from etcd (an operator's
/// `etcdctl del`, a script gone wrong) while its lease is still renewed.
/// The others see it leave: the ring gives its nodes away and its locks
/// count as a dead incarnation's. Before, the conductor kept acting under
/// its old incarnation — two conductors on one node. Now it fences at once
/// and comes back as a new incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conductor_whose_member_record_disappears_fences_at_once() {
    let ttl = 6;
    let cl = Cluster::start(2, ttl, &[]);
    cl.wait_conductors(2).await;
    let before = status(cl.conductors[0].1).await.expect("c1 answers");
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &cl.etcd.endpoint, "del", "/ferric/conductors/c1"])
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    let deleted = Instant::now();
    // a new incarnation of c1 registers once the old one fenced
    let start = Instant::now();
    let renewed = loop {
        if let Some(s) = status(cl.conductors[0].1).await
            && s.incarnation != before.incarnation
            && s.state == "active"
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3 * ttl),
            "c1 still runs its old incarnation {} {:?} after its member record was deleted",
            before.incarnation,
            deleted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("c1 fenced and came back as {} {:?} after the deletion", renewed.incarnation, deleted.elapsed());
    let log = cl.conductors[0].0.log_tail(usize::MAX);
    assert!(log.contains("FENCED: our member record is gone"), "c1 did not say why it fenced");
    cl.wait_conductors(2).await;
}
