//! The database layer behaves the same on SQLite and PostgreSQL: the same
//! suite runs against both.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferric_common::db::{
    AppliedCall, ClaimOutcome, Db, DbError, LockOutcome, NodeQuery, Paging, PartitionLockMode, PortQuery,
};
use ferric_common::ids::LockHolder;
use ferric_common::membership::{LocalMembership, Membership};
use ferric_common::model::{Allocation, AllocationState, Node, Port};
use ferric_common::partitions::{self, Settled, partition};
use ferric_common::ring::RingSettings;
use ferric_common::states::ProvisionState;
use ferric_tests::Postgres;
use serde_json::json;
use uuid::Uuid;

fn node(name: &str) -> Node {
    let mut n = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Enroll);
    n.name = Some(name.into());
    n
}

/// What a process with `exponent` does with the stored partitions at start
/// (alone: no other member).
async fn settle(db: &Db, exponent: u8) -> Settled {
    let settings = RingSettings { partition_exponent: exponent, ..RingSettings::default() };
    let membership = Membership::Local(Arc::new(LocalMembership::new(settings.clone())));
    partitions::settle(db, &membership, &settings).await.unwrap()
}

/// The nodes whose stored partition `exponent` does not give.
async fn stale(db: &Db, exponent: u8) -> Vec<Uuid> {
    let all = db.list_nodes(&NodeQuery::default()).await.unwrap();
    all.iter().filter(|n| n.ring_partition != partition(&n.uuid, exponent)).map(|n| n.uuid).collect()
}

async fn suite(db: Db) {
    // no node without a recorded partition exponent; the first start records it
    assert!(matches!(db.create_node(&node("early")).await, Err(DbError::PartitionExponent(_))));
    assert!(matches!(settle(&db, 16).await, Settled::Recomputed { checked: 0, changed: 0, .. }));
    assert_eq!(db.cluster_setting(partitions::EXPONENT_SETTING).await.unwrap().as_deref(), Some("16"));
    assert_eq!(settle(&db, 16).await, Settled::Current);

    // create / get / by name, JSON and timestamps round-trip
    let mut a = node("a");
    a.driver_info = json!({"k": "v", "nested": {"x": [1, 2]}}).as_object().unwrap().clone();
    a.traits = vec!["CUSTOM_X".into()];
    a.provision_updated_at = Some(Utc::now());
    db.create_node(&a).await.unwrap();
    let got = db.get_node(a.uuid).await.unwrap();
    assert_eq!(got.driver_info, a.driver_info);
    assert_eq!(got.traits, a.traits);
    assert_eq!(got.ring_partition, partition(&a.uuid, 16), "computed with the recorded exponent");
    assert_eq!(
        got.provision_updated_at.unwrap().timestamp_micros(),
        a.provision_updated_at.unwrap().timestamp_micros()
    );
    assert_eq!(db.get_node_by_name("a").await.unwrap().uuid, a.uuid);
    assert!(matches!(db.get_node(Uuid::new_v4()).await, Err(DbError::NotFound)));

    // unique constraints name the field
    assert!(matches!(db.create_node(&node("a")).await, Err(DbError::Duplicate { field: "name" })));
    let mut dup = node("b");
    dup.uuid = a.uuid;
    assert!(matches!(db.create_node(&dup).await, Err(DbError::Duplicate { field: "uuid" })));

    // locks: one holder at a time, conditional writes
    match db.reserve_node(a.uuid, &LockHolder::new("inc-1")).await.unwrap() {
        LockOutcome::Acquired(n) => assert_eq!(n.reservation.as_deref(), Some("inc-1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.reserve_node(a.uuid, &LockHolder::new("inc-2")).await.unwrap(), LockOutcome::Busy("inc-1".into()));
    assert_eq!(db.reserve_node(Uuid::new_v4(), &LockHolder::new("inc-2")).await.unwrap(), LockOutcome::NotFound);
    let mut changed = db.get_node(a.uuid).await.unwrap();
    changed.provision_state = ProvisionState::Verifying;
    changed.target_provision_state = Some(ProvisionState::Manageable);
    assert!(!db.save_node_locked(&changed, &LockHolder::new("inc-2")).await.unwrap(), "a non-holder cannot write");
    assert!(db.save_node_locked(&changed, &LockHolder::new("inc-1")).await.unwrap());
    let got = db.get_node(a.uuid).await.unwrap();
    assert_eq!(got.provision_state, ProvisionState::Verifying);
    assert_eq!(got.target_provision_state, Some(ProvisionState::Manageable));
    assert!(got.updated_at.is_some());
    assert!(!db.release_node(a.uuid, &LockHolder::new("inc-2")).await.unwrap());
    assert!(db.release_node(a.uuid, &LockHolder::new("inc-1")).await.unwrap());
    // a lock conditional on the state: refused once the node moved on
    assert_eq!(
        db.reserve_node_in_state(a.uuid, &LockHolder::new("inc-3"), "deploying").await.unwrap(),
        LockOutcome::Busy(LockHolder::default())
    );
    assert_eq!(db.get_node(a.uuid).await.unwrap().reservation, None);
    assert!(matches!(
        db.reserve_node_in_state(a.uuid, &LockHolder::new("inc-3"), "verifying").await.unwrap(),
        LockOutcome::Acquired(n) if n.reservation.as_deref() == Some("inc-3")
    ));
    assert!(db.release_node(a.uuid, &LockHolder::new("inc-3")).await.unwrap());
    // a dead incarnation's locks are cleared node by node, each only if
    // that incarnation still holds it
    let dead = LockHolder::new("dead");
    db.reserve_node(a.uuid, &dead).await.unwrap();
    let b = node("b");
    db.create_node(&b).await.unwrap();
    db.reserve_node(b.uuid, &dead).await.unwrap();
    assert_eq!(db.nodes_reserved_by(&dead).await.unwrap().len(), 2);
    assert!(db.release_node(b.uuid, &dead).await.unwrap());
    assert!(!db.release_node(b.uuid, &dead).await.unwrap(), "cleared twice");
    assert_eq!(db.get_node(b.uuid).await.unwrap().reservation, None);
    assert_eq!(db.get_node(a.uuid).await.unwrap().reservation, Some(dead.clone()), "another node's lock went too");
    assert!(db.release_node(a.uuid, &dead).await.unwrap());

    // list: filters, keyset paging, sorting
    for i in 0..7 {
        let mut n = node(&format!("p{i}"));
        n.resource_class = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
        n.description = Some(format!("rack_{i}%"));
        db.create_node(&n).await.unwrap();
    }
    let q = |rc: &str, limit: Option<i64>, marker: Option<Uuid>, key: &str, desc: bool| NodeQuery {
        resource_class: Some(rc.into()),
        paging: Paging { limit, marker, sort_key: key.into(), descending: desc },
        ..Default::default()
    };
    let even = db.list_nodes(&q("even", None, None, "id", false)).await.unwrap();
    assert_eq!(even.iter().map(|n| n.name.clone().unwrap()).collect::<Vec<_>>(), ["p0", "p2", "p4", "p6"]);
    let page1 = db.list_nodes(&q("even", Some(2), None, "name", true)).await.unwrap();
    let page2 = db.list_nodes(&q("even", Some(2), Some(page1[1].uuid), "name", true)).await.unwrap();
    let names: Vec<String> = page1.iter().chain(&page2).map(|n| n.name.clone().unwrap()).collect();
    assert_eq!(names, ["p6", "p4", "p2", "p0"]);
    assert!(matches!(
        db.list_nodes(&q("even", Some(2), Some(Uuid::new_v4()), "id", false)).await,
        Err(DbError::NotFound)
    ));
    let like = NodeQuery { description_contains: Some("k_3%".into()), ..Default::default() };
    assert_eq!(db.list_nodes(&like).await.unwrap().len(), 1, "LIKE wildcards in the filter are literal");
    let by_part = NodeQuery { partitions: Some(vec![partition(&a.uuid, 16)]), ..Default::default() };
    assert!(db.list_nodes(&by_part).await.unwrap().iter().any(|n| n.uuid == a.uuid));
    let none = NodeQuery { partitions: Some(vec![]), ..Default::default() };
    assert!(db.list_nodes(&none).await.unwrap().is_empty());

    // ports: unique MAC, cascade with the node
    let p = Port::new(Uuid::new_v4(), "52:54:00:00:00:01", b.uuid);
    db.create_port(&p).await.unwrap();
    let p2 = Port::new(Uuid::new_v4(), "52:54:00:00:00:01", b.uuid);
    assert!(matches!(db.create_port(&p2).await, Err(DbError::Duplicate { field: "address" })));
    let mut p3 = p.clone();
    p3.extra = json!({"switch": "sw1"}).as_object().unwrap().clone();
    db.update_port(&p3).await.unwrap();
    assert_eq!(db.get_port(p.uuid).await.unwrap().extra, p3.extra);
    let listed = db.list_ports(&PortQuery { node_uuid: Some(b.uuid), ..Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 1);
    db.reserve_node(b.uuid, &LockHolder::new("inc-9")).await.unwrap();
    assert!(!db.delete_node_locked(b.uuid, &LockHolder::new("inc-1"), None).await.unwrap(), "delete needs the lock");
    assert!(db.delete_node_locked(b.uuid, &LockHolder::new("inc-9"), None).await.unwrap());
    assert!(matches!(db.get_port(p.uuid).await, Err(DbError::NotFound)), "ports go with their node");

    // history keeps order
    db.record_history(a.uuid, "c1", "c1/1", "step", "deploying deploy.deploy").await.unwrap();
    db.record_history(a.uuid, "c2", "c2/1", "resume", "deploying at step 1").await.unwrap();
    let h = db.history(a.uuid).await.unwrap();
    assert_eq!(h.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["step", "resume"]);
    assert_eq!(h[1].conductor, "c2");

    // history retention: the newest `keep` per node stay, in batches; a
    // deleted node's history goes
    let mut c = node("hist");
    c.reservation = Some("inc-h".into());
    db.create_node(&c).await.unwrap();
    for i in 0..12 {
        db.record_history(c.uuid, "c1", "c1/1", "power", &format!("event {i}")).await.unwrap();
    }
    assert_eq!(db.prune_history(5, 4).await.unwrap(), 4, "one batch at a time");
    assert_eq!(db.prune_history(5, 1000).await.unwrap(), 3);
    assert_eq!(db.prune_history(5, 1000).await.unwrap(), 0);
    let kept: Vec<String> = db.history(c.uuid).await.unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(kept, ["event 7", "event 8", "event 9", "event 10", "event 11"], "the newest are kept, in order");
    assert_eq!(db.history(a.uuid).await.unwrap().len(), 2, "another node's history is not touched");
    assert!(db.delete_node_locked(c.uuid, &LockHolder::new("inc-h"), None).await.unwrap());
    assert!(db.history(c.uuid).await.unwrap().is_empty(), "a deleted node's history goes with it");
    db.record_history(c.uuid, "c1", "c1/1", "late", "written after the delete").await.unwrap();
    assert_eq!(db.prune_history(0, 1000).await.unwrap(), 1, "orphaned history is pruned even when all is kept");
    assert_eq!(db.history(a.uuid).await.unwrap().len(), 2);

    // an applied call is recorded with its change, in one transaction, or
    // not at all
    let d = node("calls");
    db.create_node(&d).await.unwrap();
    let holder = LockHolder::new("inc-c");
    let call = |id: &'static str, kind: &'static str| AppliedCall { id, node: d.uuid, kind, conductor: "c1" };
    let mut changed = d.clone();
    changed.extra = json!({"k": 1}).as_object().unwrap().clone();
    assert!(!db.save_node_applying(&changed, &holder, Some(&call("req-1", "update_node"))).await.unwrap());
    assert!(!db.call_applied("req-1").await.unwrap(), "a save that did not happen recorded its call");
    db.reserve_node(d.uuid, &holder).await.unwrap();
    assert!(db.save_node_applying(&changed, &holder, Some(&call("req-1", "update_node"))).await.unwrap());
    assert!(db.call_applied("req-1").await.unwrap());
    assert_eq!(db.get_node(d.uuid).await.unwrap().extra, changed.extra);
    // the same call again cannot be recorded twice, and writes nothing
    let mut again = changed.clone();
    again.extra = json!({"k": 2}).as_object().unwrap().clone();
    assert!(db.save_node_applying(&again, &holder, Some(&call("req-1", "update_node"))).await.is_err());
    assert_eq!(db.get_node(d.uuid).await.unwrap().extra, changed.extra, "a duplicate call's change was written");
    let port = Port::new(Uuid::new_v4(), "52:54:00:aa:bb:cc", d.uuid);
    db.create_port_applying(&port, Some(&call("req-2", "port"))).await.unwrap();
    assert!(db.call_applied("req-2").await.unwrap());
    assert!(matches!(
        db.delete_port_applying(Uuid::new_v4(), Some(&call("req-3", "port"))).await,
        Err(DbError::NotFound)
    ));
    assert!(!db.call_applied("req-3").await.unwrap());
    assert!(db.delete_node_locked(d.uuid, &holder, Some(&call("req-4", "destroy_node"))).await.unwrap());
    assert!(db.call_applied("req-4").await.unwrap(), "the delete's call outlives its node");
    assert_eq!(db.prune_applied_calls(Utc::now() - chrono::Duration::hours(1), 100).await.unwrap(), 0);
    assert_eq!(db.prune_applied_calls(Utc::now() + chrono::Duration::seconds(1), 2).await.unwrap(), 2, "in batches");
    assert_eq!(db.prune_applied_calls(Utc::now() + chrono::Duration::seconds(1), 100).await.unwrap(), 1);
    assert!(!db.call_applied("req-4").await.unwrap());

    // text with a NUL character is bad input on both backends (PostgreSQL
    // cannot store or compare it), in a write, a lookup and a filter;
    // JSON columns take it, escaped
    let mut nul = node("nul");
    nul.description = Some("a\0b".into());
    let invalid = |r: Result<(), DbError>| matches!(r, Err(e) if e.is_invalid_input());
    assert!(invalid(db.create_node(&nul).await), "a NUL in a text column is refused");
    assert!(matches!(db.get_node(nul.uuid).await, Err(DbError::NotFound)), "and nothing was written");
    assert!(invalid(db.get_node_by_name("n\0").await.map(|_| ())));
    let q = NodeQuery { driver: Some("\0".into()), ..Default::default() };
    assert!(invalid(db.list_nodes(&q).await.map(|_| ())));
    nul.description = None;
    nul.extra = json!({"k\0": "v\0"}).as_object().unwrap().clone();
    db.create_node(&nul).await.unwrap();
    assert_eq!(db.get_node(nul.uuid).await.unwrap().extra, nul.extra);
    assert!(!DbError::NotFound.is_invalid_input() && !DbError::Duplicate { field: "name" }.is_invalid_input());
}

/// Ring partitions: a save never writes one, a recompute rewrites every
/// node's and records its exponent in one transaction (or nothing), and a
/// creation waits for a recompute in progress and uses its exponent.
async fn partitions_suite(db: Db) {
    settle(&db, 16).await;
    for i in 0..25 {
        db.create_node(&node(&format!("r{i}"))).await.unwrap();
    }
    assert!(stale(&db, 16).await.is_empty());
    // a copy of a node read before a recompute, saved after it
    let first = db.get_node_by_name("r0").await.unwrap();
    let holder = LockHolder::new("inc-p");
    assert!(matches!(db.reserve_node(first.uuid, &holder).await.unwrap(), LockOutcome::Acquired(_)));
    let mut copy = db.get_node(first.uuid).await.unwrap();
    copy.ring_partition = 12345;
    copy.description = Some("saved".into());
    assert!(db.save_node_and_release(&copy, &holder).await.unwrap());
    let saved = db.get_node(first.uuid).await.unwrap();
    assert_eq!((saved.description.as_deref(), saved.ring_partition), (Some("saved"), first.ring_partition));

    // another exponent: every node checked, (nearly) every one changed
    match settle(&db, 12).await {
        Settled::Recomputed { checked: 25, changed, .. } => assert!(changed >= 20, "{changed}"),
        other => panic!("{other:?}"),
    }
    assert!(stale(&db, 12).await.is_empty());
    assert_eq!(db.cluster_setting(partitions::EXPONENT_SETTING).await.unwrap().as_deref(), Some("12"));
    assert_eq!(settle(&db, 12).await, Settled::Current);
    let n = node("after");
    db.create_node(&n).await.unwrap();
    assert_eq!(db.get_node(n.uuid).await.unwrap().ring_partition, partition(&n.uuid, 12));

    // a recompute in progress: a creation waits for it, then uses its exponent
    let mut lock = db.lock_partitions(PartitionLockMode::Exclusive).await.unwrap();
    let during = node("during");
    let creating = tokio::spawn({
        let (db, n) = (db.clone(), during.clone());
        async move { db.create_node(&n).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!creating.is_finished(), "a creation waits for the partition lock");
    let done = lock.recompute(10, 4).await.unwrap();
    assert_eq!(done.checked, 26, "in batches of 4");
    lock.record_exponent(10).await.unwrap();
    lock.commit().await.unwrap();
    creating.await.unwrap().unwrap();
    assert_eq!(db.get_node(during.uuid).await.unwrap().ring_partition, partition(&during.uuid, 10));
    assert!(stale(&db, 10).await.is_empty());

    // a recompute not committed changes nothing
    let mut lock = db.lock_partitions(PartitionLockMode::Exclusive).await.unwrap();
    lock.recompute(8, 1000).await.unwrap();
    drop(lock);
    assert!(stale(&db, 10).await.is_empty());
    assert_eq!(db.cluster_setting(partitions::EXPONENT_SETTING).await.unwrap().as_deref(), Some("10"));

    // the sample: the first and the last by id, each once
    let mut lock = db.lock_partitions(PartitionLockMode::Exclusive).await.unwrap();
    let all = db.list_nodes(&NodeQuery::default()).await.unwrap();
    let sample = lock.sample(3).await.unwrap();
    let names: Vec<Uuid> = sample.iter().map(|r| r.uuid).collect();
    let ends: Vec<Uuid> = all[..3].iter().chain(all[all.len() - 3..].iter().rev()).map(|n| n.uuid).collect();
    assert_eq!(names, ends);
    assert_eq!(lock.sample(100).await.unwrap().len(), all.len(), "a small table is sampled whole, once");
    lock.commit().await.unwrap();
}

#[tokio::test]
async fn partitions_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    partitions_suite(Db::connect(&format!("sqlite://{}/t.sqlite", dir.path().display()), 4).await.unwrap()).await;
}

#[tokio::test]
async fn partitions_on_postgres() {
    let pg = Postgres::start();
    let db = Db::connect(&pg.database("ferric_partitions"), 4).await.unwrap();
    partitions_suite(db.clone()).await;
    db.close().await;
}

/// A node an allocation of class `gold` may take.
fn free_node(name: &str) -> Node {
    let mut n = node(name);
    n.provision_state = ProvisionState::Available;
    n.resource_class = Some("gold".into());
    n.power_state = Some("power off".into());
    n
}

/// An allocation stored `allocating`.
async fn allocating(db: &Db, name: Option<&str>) -> Allocation {
    let mut a = Allocation::new(Uuid::new_v4(), Some("gold".into()));
    a.name = name.map(String::from);
    a.traits = vec!["CUSTOM_X".into()];
    db.create_allocation(&a, None).await.unwrap();
    a
}

/// Allocations take nodes with one transaction of conditional writes: never
/// two of them one node, never one of them a node that changed or that
/// its owner holds, and the node forgets an allocation with it.
async fn allocation_suite(db: Db) {
    let free = free_node("free");
    db.create_node(&free).await.unwrap();
    let first = allocating(&db, Some("host1")).await;
    let mut dup = Allocation::new(Uuid::new_v4(), Some("gold".into()));
    dup.name = Some("host1".into());
    assert!(matches!(db.create_allocation(&dup, None).await, Err(DbError::Duplicate { field: "name" })));

    // eight allocations claim the one free node at once: one gets it
    let mut racers = vec![first.clone()];
    for _ in 0..7 {
        racers.push(allocating(&db, None).await);
    }
    let mut set = tokio::task::JoinSet::new();
    for a in racers.clone() {
        let (db, n) = (db.clone(), free.clone());
        set.spawn(async move { (a.uuid, db.claim_node(&a, &n).await.unwrap()) });
    }
    let mut winners = Vec::new();
    while let Some(r) = set.join_next().await {
        let (uuid, outcome) = r.unwrap();
        match outcome {
            ClaimOutcome::Claimed => winners.push(uuid),
            other => assert_eq!(other, ClaimOutcome::NodeChanged),
        }
    }
    assert_eq!(winners.len(), 1, "one node went to {} allocations", winners.len());
    let winner = winners[0];
    let n = db.get_node(free.uuid).await.unwrap();
    assert_eq!(n.instance_uuid, Some(winner.to_string()));
    assert_eq!(n.allocation_uuid, Some(winner.to_string()));
    assert_eq!(n.instance_info["traits"], json!(["CUSTOM_X"]));
    let a = db.get_allocation(winner).await.unwrap();
    assert_eq!((a.state, a.node_uuid), (AllocationState::Active, Some(free.uuid)));
    for r in racers.iter().filter(|a| a.uuid != winner) {
        let a = db.get_allocation(r.uuid).await.unwrap();
        assert_eq!((a.state, a.node_uuid), (AllocationState::Allocating, None), "a loser was changed");
    }

    // an allocation no longer allocating claims nothing (and the node stays free)
    let spare = free_node("spare");
    db.create_node(&spare).await.unwrap();
    let late = allocating(&db, None).await;
    assert!(db.fail_allocation(late.uuid, "gave up").await.unwrap());
    assert!(!db.fail_allocation(late.uuid, "again").await.unwrap(), "failed twice");
    assert_eq!(db.claim_node(&late, &spare).await.unwrap(), ClaimOutcome::AllocationGone);
    assert_eq!(db.get_node(spare.uuid).await.unwrap().instance_uuid, None, "the node claim was not rolled back");
    let failed = db.get_allocation(late.uuid).await.unwrap();
    assert_eq!((failed.state, failed.last_error.as_deref()), (AllocationState::Error, Some("gave up")));
    // a node its owner holds, or one that changed since it was read, is not taken
    let next = allocating(&db, None).await;
    assert!(matches!(db.reserve_node(spare.uuid, &LockHolder::new("c1/x")).await.unwrap(), LockOutcome::Acquired(_)));
    assert_eq!(db.claim_node(&next, &spare).await.unwrap(), ClaimOutcome::NodeChanged);
    let locked = db.get_node(spare.uuid).await.unwrap();
    let mut renamed = locked.clone();
    renamed.resource_class = Some("silver".into());
    assert!(db.save_node_and_release(&renamed, &LockHolder::new("c1/x")).await.unwrap());
    assert_eq!(db.claim_node(&next, &spare).await.unwrap(), ClaimOutcome::NodeChanged, "claimed a node as it was");
    assert_eq!(db.get_allocation(next.uuid).await.unwrap().state, AllocationState::Allocating);

    // lists filter by state and node
    let q = ferric_common::db::AllocationQuery { state: Some(AllocationState::Allocating), ..Default::default() };
    assert_eq!(db.list_allocations(&q).await.unwrap().len(), 8);
    let q = ferric_common::db::AllocationQuery { node_uuid: Some(free.uuid), ..Default::default() };
    assert_eq!(db.list_allocations(&q).await.unwrap().iter().map(|a| a.uuid).collect::<Vec<_>>(), [winner]);

    // an allocation that holds a node is not deleted as a free one; the
    // node's save that forgets it deletes it in the same transaction
    assert!(!db.delete_free_allocation(winner, None).await.unwrap());
    assert!(db.delete_free_allocation(next.uuid, None).await.unwrap());
    let holder = LockHolder::new("c1/y");
    let LockOutcome::Acquired(held) = db.reserve_node(free.uuid, &holder).await.unwrap() else { panic!("lock") };
    let mut forgot = *held;
    forgot.instance_uuid = None;
    forgot.allocation_uuid = None;
    assert!(db.save_node_dropping_allocation(&forgot, &holder, &winner.to_string(), None).await.unwrap());
    assert!(matches!(db.get_allocation(winner).await, Err(DbError::NotFound)));
    // and a deleted node takes its allocation with it
    let claimer = allocating(&db, None).await;
    assert!(db.release_node(free.uuid, &holder).await.unwrap());
    let fresh = db.get_node(free.uuid).await.unwrap();
    assert_eq!(db.claim_node(&claimer, &fresh).await.unwrap(), ClaimOutcome::Claimed);
    let LockOutcome::Acquired(_) = db.reserve_node(free.uuid, &holder).await.unwrap() else { panic!("lock") };
    assert!(db.delete_node_locked(free.uuid, &holder, None).await.unwrap());
    assert!(matches!(db.get_allocation(claimer.uuid).await, Err(DbError::NotFound)));
}

#[tokio::test]
async fn same_behaviour_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/t.sqlite", dir.path().display()), 4).await.unwrap();
    suite(db.clone()).await;
    allocation_suite(db).await;
}

#[tokio::test]
async fn same_behaviour_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("ferric_db");
    let db = Db::connect(&url, 4).await.unwrap();
    suite(db.clone()).await;
    allocation_suite(db.clone()).await;
    db.close().await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.sqlite", dir.path().display());
    let db = Db::connect(&url, 1).await.unwrap();
    settle(&db, 16).await;
    db.create_node(&node("keep")).await.unwrap();
    db.close().await;
    let db = Db::connect(&url, 1).await.unwrap();
    assert!(db.get_node_by_name("keep").await.is_ok());
}
