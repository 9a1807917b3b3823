//! Allocations on a real 3-conductor cluster (etcd, PostgreSQL, separate
//! processes): many created at once never get one node twice and never
//! fail while a matching node is free; and allocations whose conductor is
//! killed mid-way are finished by the conductors that remain.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ferric_common::db::{Db, LockOutcome};
use ferric_common::ids::LockHolder;
use ferric_tests::cluster::{Cluster, status};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const TTL: u64 = 8;
const WAIT: Duration = Duration::from_secs(120);

async fn create_nodes(cl: &Cluster, prefix: &str, n: usize, rc: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let body = json!({"driver": "fake-hardware", "name": format!("{prefix}{i}"), "resource_class": rc});
        let v = cl.ok(Method::POST, "/v1/nodes", Some(body)).await;
        out.push(v["uuid"].as_str().expect("uuid").to_string());
    }
    cl.drive(&out, "manage", "manageable", WAIT).await;
    cl.drive(&out, "provide", "available", WAIT).await;
    out
}

/// Creates `n` allocations of class `rc` at once, named `{prefix}{i}`;
/// returns their UUIDs.
async fn allocate_at_once(cl: &Cluster, n: usize, rc: &str, prefix: &str) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (c, url) = (cl.client.clone(), format!("{}/v1/allocations", cl.api_url));
        let body = json!({"resource_class": rc, "name": format!("{prefix}{i}")});
        set.spawn(async move {
            let r =
                c.post(url).header("X-OpenStack-Ironic-API-Version", "1.60").json(&body).send().await.expect("request");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or_default())
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        let (s, v) = r.expect("task");
        assert_eq!(s, 201, "allocation create: {v}");
        assert_eq!(v["state"], "allocating", "{v}");
        out.push(v["uuid"].as_str().expect("uuid").to_string());
    }
    out
}

/// Waits until none of `uuids` is `allocating`; returns them by UUID.
async fn settled(cl: &Cluster, uuids: &[String]) -> BTreeMap<String, Value> {
    let start = Instant::now();
    loop {
        let v = cl.ok(Method::GET, "/v1/allocations?limit=1000", None).await;
        let all: BTreeMap<String, Value> = v["allocations"]
            .as_array()
            .expect("allocations")
            .iter()
            .map(|a| (a["uuid"].as_str().unwrap().to_string(), a.clone()))
            .filter(|(u, _)| uuids.contains(u))
            .collect();
        assert_eq!(all.len(), uuids.len(), "allocations went missing");
        let pending = all.values().filter(|a| a["state"] == "allocating").count();
        if pending == 0 {
            return all;
        }
        assert!(start.elapsed() < WAIT, "{pending} allocations still allocating after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The allocations ended with `active` ones on distinct nodes of `nodes`,
/// each node naming its allocation, and the rest `error` with a reason;
/// returns the number active.
async fn check_outcome(cl: &Cluster, done: &BTreeMap<String, Value>, nodes: &[String]) -> usize {
    let mut given = BTreeSet::new();
    let mut active = 0;
    for (uuid, a) in done {
        match a["state"].as_str() {
            Some("active") => {
                active += 1;
                let node = a["node_uuid"].as_str().expect("an active allocation has a node").to_string();
                assert!(nodes.contains(&node), "allocation {uuid} got {node}, not one of the class");
                assert!(given.insert(node.clone()), "node {node} was given twice");
                let n = cl.ok(Method::GET, &format!("/v1/nodes/{node}"), None).await;
                assert_eq!(
                    (n["allocation_uuid"].as_str(), n["instance_uuid"].as_str()),
                    (Some(uuid.as_str()), Some(uuid.as_str()))
                );
            }
            Some("error") => {
                let why = a["last_error"].as_str().unwrap_or_default();
                assert!(why.starts_with(&format!("Failed to process allocation {uuid}: ")), "{a}");
                assert!(a["node_uuid"].is_null(), "{a}");
            }
            other => panic!("allocation {uuid} ended {other:?}: {a}"),
        }
    }
    active
}

/// One cluster, two scenarios: the race (50 allocations at once for 40
/// matching nodes) and the take-over (allocations kept `allocating` by
/// locked nodes while their conductor is killed). Light take-over passes
/// are switched off (`takeover_interval_ms`), so only a ring change finds
/// the killed conductor's allocations, and allocations wait for a locked
/// node up to 600 × 100 ms.
#[tokio::test(flavor = "multi_thread")]
async fn allocations_race_and_outlive_their_conductor() {
    let env = [
        ("FERRIC_CONDUCTOR__LOCK_ATTEMPTS", "600"),
        ("FERRIC_CONDUCTOR__LOCK_RETRY_INTERVAL_MS", "100"),
        ("FERRIC_CONDUCTOR__TAKEOVER_INTERVAL_MS", "600000"),
    ];
    let mut cl = Cluster::start(3, TTL, &env);
    cl.wait_conductors(3).await;

    // the race: 40 of the class, 5 of another, 50 allocations at once
    let gold = create_nodes(&cl, "gold-", 40, "gold").await;
    let silver = create_nodes(&cl, "silver-", 5, "silver").await;
    let race = allocate_at_once(&cl, 50, "gold", "race-").await;
    let done = settled(&cl, &race).await;
    let active = check_outcome(&cl, &done, &gold).await;
    assert_eq!(active, 40, "an allocation failed while a node was free (or a node was lost)");
    for (uuid, a) in done.iter().filter(|(_, a)| a["state"] == "error") {
        let why = a["last_error"].as_str().unwrap_or_default();
        // nothing was free when it looked, or everything it tried was taken meanwhile
        let reasons =
            ["no available nodes match the resource class gold.", "all nodes were filtered out during reservation."];
        assert!(reasons.iter().any(|r| why.ends_with(r)), "{uuid}: {why}");
    }
    for n in &silver {
        let n = cl.ok(Method::GET, &format!("/v1/nodes/{n}"), None).await;
        assert!(n["allocation_uuid"].is_null(), "a silver node was allocated: {n}");
    }
    // deleting an allocation frees its node for the next one
    let (freed, a) = done.iter().find(|(_, a)| a["state"] == "active").expect("an active allocation");
    let node = a["node_uuid"].as_str().unwrap().to_string();
    let (s, _) = cl.req(Method::DELETE, &format!("/v1/allocations/{freed}"), None).await;
    assert_eq!(s, 204);
    let n = cl.ok(Method::GET, &format!("/v1/nodes/{node}"), None).await;
    assert_eq!((n["allocation_uuid"].clone(), n["instance_uuid"].clone()), (Value::Null, Value::Null));
    let again = allocate_at_once(&cl, 1, "gold", "again-").await;
    let done = settled(&cl, &again).await;
    assert_eq!(done[&again[0]]["node_uuid"], node.as_str(), "the freed node was not given again");

    // the take-over: 6 nodes locked by c1's incarnation keep the
    // allocations of their class `allocating` until c1 is killed (its
    // locks are then cleared by the nodes' new owners)
    let held = create_nodes(&cl, "held-", 6, "held").await;
    let c1 = status(cl.conductors[0].1).await.expect("c1's status");
    let db = Db::connect(&cl.db_url, 2).await.expect("database");
    let holder = LockHolder::new(c1.incarnation.clone());
    for n in &held {
        let outcome = db.reserve_node(Uuid::parse_str(n).unwrap(), &holder).await.expect("lock");
        assert!(matches!(outcome, LockOutcome::Acquired(_)), "locking {n}");
    }
    // allocations until c1 processes some (the ring spreads them)
    let mut waiting = Vec::new();
    let c1_has = |log: &str, w: &[String]| w.iter().filter(|u| log.contains(u.as_str())).count();
    for round in 0..40 {
        waiting.extend(allocate_at_once(&cl, 3, "held", &format!("held-{round}-")).await);
        if c1_has(&cl.conductors[0].0.log_tail(100_000), &waiting) > 0 {
            break;
        }
    }
    let log = cl.conductors[0].0.log_tail(100_000);
    let on_c1: Vec<String> = waiting.iter().filter(|u| log.contains(u.as_str())).cloned().collect();
    assert!(!on_c1.is_empty(), "c1 processed none of {} allocations", waiting.len());
    // they are all still waiting for the locked nodes
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = cl.ok(Method::GET, "/v1/allocations?state=allocating&limit=1000", None).await;
    let allocating: BTreeSet<&str> =
        v["allocations"].as_array().unwrap().iter().filter_map(|a| a["uuid"].as_str()).collect();
    assert!(waiting.iter().all(|u| allocating.contains(u.as_str())), "an allocation did not wait for the locks");
    cl.conductors[0].0.kill();
    let done = settled(&cl, &waiting).await;
    let active = check_outcome(&cl, &done, &held).await;
    assert_eq!(active, waiting.len().min(held.len()), "allocations failed while held nodes were free: {done:?}");
    for u in &on_c1 {
        assert!(["active", "error"].contains(&done[u]["state"].as_str().unwrap()), "c1's allocation {u}");
    }
    db.close().await;
}
