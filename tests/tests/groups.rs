//! Moves between conductor groups and hardware types (issue 19, scenario
//! 4), against the real processes: conductors in two groups, or enabling
//! different hardware types, on real etcd and PostgreSQL.
//!
//! A PATCH of `conductor_group` or `driver` is sent to the node's owner as
//! stored, which applies it under the node's lock; the node's new owner
//! finds it on its next take-over pass and takes it over. Before 3dc311b
//! the API sent the update to the new owner, which refused a node it did
//! not own yet (NOT_OWNER), and the client got a 503 at the request
//! deadline (the first two tests, run on that routing: 503 after 30 s).
//! A node nobody owns as stored (its group's last conductor is gone) is
//! moved by its owner as moved; a move while an operation is in flight is
//! refused with 409, as Ironic refuses it.

use std::time::{Duration, Instant};

use ferric_common::db::Db;
use ferric_tests::cluster::Cluster;
use ferric_tests::redfish::{SushyLab, SushyOptions};
use ferric_tests::{Api, Etcd, Postgres, free_port};
use reqwest::Method;
use serde_json::{Value, json};

/// A PATCH the forwarder can place answers within this; one it cannot
/// answers 503 at the API's request deadline (30 s in the cluster).
const ANSWERED: Duration = Duration::from_secs(10);

/// A refusal "at once" comes before this: the forwarder, when nobody
/// serves a node, waits 3 s for a conductor to join before it says so.
const AT_ONCE: Duration = Duration::from_millis(2500);

/// How long a state change through a conductor, or a take-over pass
/// (every `conductor.takeover_interval_ms`, 1 s), may take on a loaded
/// machine.
const WAIT: Duration = Duration::from_secs(20);

/// A cluster whose conductor `c{i+1}` is in conductor group `groups[i].0`
/// and enables the hardware types `groups[i].1`.
fn cluster(ttl: u64, groups: &[(&str, &str)]) -> Cluster {
    let etcd = Etcd::start();
    let pg = Postgres::start();
    let db_url = pg.database("ferric_groups");
    let endpoints = vec![etcd.endpoint.clone(); groups.len()];
    let conductors = groups
        .iter()
        .map(|(group, hw)| {
            let env = vec![
                ("FERRIC_CONDUCTOR__CONDUCTOR_GROUP".to_string(), group.to_string()),
                ("FERRIC_CONDUCTOR__ENABLED_HARDWARE_TYPES".to_string(), hw.to_string()),
            ];
            (free_port(), env)
        })
        .collect();
    Cluster::start_full(etcd, endpoints, pg, db_url.clone(), &db_url, ttl, &[], conductors)
}

/// A client that waits longer than the API's request deadline, so that a
/// PATCH the forwarder gives up on is seen as the API's answer (a 503),
/// not as a client timeout.
fn patient() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(45)).build().expect("http client")
}

/// PATCH a node; (status, body, how long the answer took).
async fn patch(cl: &Cluster, uuid: &str, ops: Value) -> (u16, Value, Duration) {
    let start = Instant::now();
    let resp = patient()
        .patch(format!("{}/v1/nodes/{uuid}", cl.api_url))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .json(&ops)
        .send()
        .await
        .expect("the API answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), start.elapsed())
}

/// Moves a node with `ops`: the PATCH must answer 200, with the node as it
/// is now, long before the request deadline; returns that node.
async fn move_node(cl: &Cluster, uuid: &str, ops: Value) -> Value {
    let (s, n, took) = patch(cl, uuid, ops.clone()).await;
    assert_eq!(s, 200, "PATCH {uuid} {ops} answered {s} after {took:?}: {n}");
    assert!(took < ANSWERED, "PATCH {uuid} {ops} took {took:?}");
    n
}

fn to_group(group: &str) -> Value {
    json!([{"op": "replace", "path": "/conductor_group", "value": group}])
}

/// Waits until the API names one of `owners` as the node's conductor and
/// the database records that conductor as the one that took it over
/// (`conductor_affinity`) with the node unlocked; returns the node.
async fn wait_taken_over(cl: &Cluster, db: &Db, uuid: &str, owners: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let n = cl.ok(Method::GET, &format!("/v1/nodes/{uuid}"), None).await;
        let stored = db.get_node(uuid.parse().unwrap()).await.expect("the node");
        let affinity = stored.conductor_affinity.as_deref().unwrap_or_default().to_string();
        let owner = n["conductor"].as_str().unwrap_or_default();
        if owners.contains(&owner) && affinity == owner && n["reservation"].is_null() {
            return n;
        }
        assert!(
            start.elapsed() < WAIT,
            "node {uuid} not taken over by one of {owners:?} after {WAIT:?}: conductor {owner:?}, affinity \
             {affinity:?}, lock {}, group {}",
            n["reservation"],
            n["conductor_group"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(api: &Api, uuid: &str, verb: &str, state: &str) {
    api.provision(uuid, verb).await;
    api.wait_state(uuid, state, WAIT).await;
}

/// Every interface the node's owner validates passes.
async fn validates(cl: &Cluster, uuid: &str, interfaces: &[&str]) {
    let v = cl.ok(Method::GET, &format!("/v1/nodes/{uuid}/validate"), None).await;
    for i in interfaces {
        assert_eq!(v[*i]["result"], true, "{uuid}: {i} does not validate: {v}");
    }
}

/// Nodes move to a group and back with `PATCH conductor_group`: each PATCH
/// answers 200 (not 503 at the deadline), the node is then owned by a
/// conductor of its new group, which takes it over (an active node's boot
/// is regenerated by it) and drives it afterwards. A move to a group no
/// conductor serves is refused at once with Ironic's "No valid host".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_move_between_groups_and_their_new_owners_drive_them() {
    let cl = cluster(6, &[("", "fake-hardware"), ("", "fake-hardware"), ("rack2", "fake-hardware")]);
    cl.wait_conductors(3).await;
    let api = Api::new(&cl.api_url);
    let db = Db::connect(&cl.db_url, 2).await.expect("the cluster's database");
    let uuids = cl.create_nodes("g", 6, json!({})).await;
    cl.drive(&uuids, "manage", "manageable", WAIT).await;
    cl.drive(&uuids, "provide", "available", WAIT).await;
    // two of them carry an instance: their boot is what a take-over redoes
    cl.drive(&uuids[2..4], "active", "active", WAIT).await;
    for u in &uuids {
        wait_taken_over(&cl, &db, u, &["c1", "c2"]).await;
    }

    // to rack2: two available nodes and two active ones
    for u in &uuids[..4] {
        let n = move_node(&cl, u, to_group("rack2")).await;
        assert_eq!(n["conductor_group"], "rack2", "{n}");
        assert_eq!(n["conductor"], "c3", "{n}");
    }
    for u in &uuids[..4] {
        let n = wait_taken_over(&cl, &db, u, &["c3"]).await;
        if n["provision_state"] == "active" {
            assert_eq!(n["driver_internal_info"]["fake_take_over"]["by"], "c3", "c3 did not take over the boot: {n}");
        }
    }
    // the new owner drives them: validation, manage and provide, undeploy
    for u in &uuids[..4] {
        validates(&cl, u, &["boot", "deploy", "management", "power"]).await;
    }
    for u in &uuids[..2] {
        drive(&api, u, "manage", "manageable").await;
        drive(&api, u, "provide", "available").await;
    }
    for u in &uuids[2..4] {
        drive(&api, u, "deleted", "available").await;
    }
    for u in &uuids[..4] {
        let stored = db.get_node(u.parse().unwrap()).await.unwrap();
        assert_eq!(stored.conductor_affinity.as_deref(), Some("c3"), "{u} was driven by another conductor");
    }
    let untouched = cl.nodes().await;
    for u in &uuids[4..] {
        assert_eq!(untouched[u]["conductor_group"], "", "{u} moved without being asked");
    }

    // and back, one of each kind (the other stays in rack2)
    cl.drive(&uuids[2..3], "active", "active", WAIT).await;
    for u in [&uuids[0], &uuids[2]] {
        let n = move_node(&cl, u, to_group("")).await;
        assert_eq!(n["conductor_group"], "", "{n}");
        assert!(n["conductor"] == "c1" || n["conductor"] == "c2", "{n}");
        let n = wait_taken_over(&cl, &db, u, &["c1", "c2"]).await;
        if n["provision_state"] == "active" {
            assert_eq!(n["driver_internal_info"]["fake_take_over"]["by"], n["conductor"], "{n}");
        }
        validates(&cl, u, &["boot", "deploy", "management", "power"]).await;
    }
    drive(&api, &uuids[0], "manage", "manageable").await;
    drive(&api, &uuids[2], "deleted", "available").await;
    let back = cl.nodes().await;
    assert_eq!(back[&uuids[1]]["conductor"], "c3", "a node nobody moved changed hands");

    // to a group nobody serves: refused at once, nothing changes
    let start = Instant::now();
    let (s, body, took) = patch(&cl, &uuids[4], to_group("nowhere")).await;
    assert_eq!(s, 400, "{body}");
    assert!(Api::fault(&body).contains("No valid host"), "{body}");
    assert!(took < AT_ONCE, "the refusal took {took:?}");
    let n = cl.ok(Method::GET, &format!("/v1/nodes/{}", uuids[4]), None).await;
    assert_eq!(n["conductor_group"], "", "{n}");
    eprintln!("moves checked in {:?}", start.elapsed());
    db.close().await;
}

/// A node's driver changes to a hardware type that only another conductor
/// enables: its owner (which does not know the new type) applies the
/// change, the conductor that enables the type takes the node over and
/// drives it through a real Redfish BMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_only_another_conductor_enables_moves_the_node_to_it() {
    let lab = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
    let cl = cluster(6, &[("", "fake-hardware"), ("", "redfish")]);
    cl.wait_conductors(2).await;
    let api = Api::new(&cl.api_url);
    let db = Db::connect(&cl.db_url, 2).await.expect("the cluster's database");
    let uuid = cl.create_nodes("d", 1, json!({})).await.remove(0);
    drive(&api, &uuid, "manage", "manageable").await;
    wait_taken_over(&cl, &db, &uuid, &["c1"]).await;

    let n = move_node(
        &cl,
        &uuid,
        json!([
            {"op": "replace", "path": "/driver", "value": "redfish"},
            {"op": "replace", "path": "/driver_info", "value": lab.driver_info(0)},
            {"op": "replace", "path": "/automated_clean", "value": false},
        ]),
    )
    .await;
    assert_eq!(n["driver"], "redfish", "{n}");
    assert_eq!(n["conductor"], "c2", "{n}");
    // interfaces not named in the PATCH are the new type's defaults
    assert_eq!(n["power_interface"], "redfish", "{n}");
    assert_eq!(n["management_interface"], "redfish", "{n}");
    wait_taken_over(&cl, &db, &uuid, &["c2"]).await;
    validates(&cl, &uuid, &["management", "power"]).await;
    drive(&api, &uuid, "provide", "available").await;
    // c2 drives the machine's BMC
    let before = lab.writes_for(&lab.systems[0]).await.len();
    api.ok(Method::PUT, &format!("/v1/nodes/{uuid}/states/power"), Some(json!({"target": "power on"}))).await;
    let start = Instant::now();
    while api.node(&uuid).await["power_state"] != "power on" {
        assert!(start.elapsed() < WAIT, "the node never powered on: {}", api.node(&uuid).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lab.writes_for(&lab.systems[0]).await.len() > before, "the BMC was not asked to power on");
    let stored = db.get_node(uuid.parse().unwrap()).await.unwrap();
    assert_eq!(stored.conductor_affinity.as_deref(), Some("c2"));

    // and back to the type c1 serves
    let n = move_node(
        &cl,
        &uuid,
        json!([
            {"op": "replace", "path": "/driver", "value": "fake-hardware"},
            {"op": "replace", "path": "/driver_info", "value": {}},
        ]),
    )
    .await;
    assert_eq!(n["conductor"], "c1", "{n}");
    assert_eq!(n["power_interface"], "fake", "{n}");
    wait_taken_over(&cl, &db, &uuid, &["c1"]).await;
    drive(&api, &uuid, "manage", "manageable").await;

    // a type no conductor of the group enables: refused at once
    let (s, body, took) = patch(&cl, &uuid, json!([{"op": "replace", "path": "/driver", "value": "ilo"}])).await;
    assert_eq!(s, 400, "{body}");
    assert!(Api::fault(&body).contains("No valid host"), "{body}");
    assert!(took < AT_ONCE, "the refusal took {took:?}");
    db.close().await;
}

/// A move while an operation is in flight is refused at once with 409, as
/// Ironic refuses updates during a transition — a deploy that runs (its
/// conductor holds the lock) and one that waits for its ramdisk (nobody
/// does) — and changes nothing: the deploys finish where they started.
/// Once they are over, the same moves are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_during_a_transition_is_refused_and_changes_nothing() {
    let cl = cluster(6, &[("", "fake-hardware"), ("rack2", "fake-hardware")]);
    cl.wait_conductors(2).await;
    let api = Api::new(&cl.api_url);
    let db = Db::connect(&cl.db_url, 2).await.expect("the cluster's database");
    let waiting = cl.create_nodes("w", 1, json!({"fake_wait_after": "deploy.deploy"})).await.remove(0);
    let running = cl.create_nodes("r", 1, json!({})).await.remove(0);
    for u in [&waiting, &running] {
        drive(&api, u, "manage", "manageable").await;
        drive(&api, u, "provide", "available").await;
    }
    // from now on every step of `running` takes 1.5 s
    cl.ok(
        Method::PATCH,
        &format!("/v1/nodes/{running}"),
        Some(json!([{"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": 1500}])),
    )
    .await;
    api.provision(&waiting, "active").await;
    api.wait_state(&waiting, "wait call-back", WAIT).await;
    api.provision(&running, "active").await;
    let start = Instant::now();
    while cl.ok(Method::GET, &format!("/v1/nodes/{running}"), None).await["provision_state"] != "deploying" {
        assert!(start.elapsed() < WAIT, "the deploy never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (u, what) in [(&waiting, "waiting for its ramdisk"), (&running, "deploying")] {
        let (s, body, took) = patch(&cl, u, to_group("rack2")).await;
        assert_eq!(s, 409, "a move of a node {what}: {body}");
        assert!(Api::fault(&body).contains("state transition is in progress"), "{body}");
        // (not NODE_LOCKED after the lock's retries: the running deploy holds it)
        assert!(took < AT_ONCE, "the refusal of a move of a node {what} took {took:?}");
        let n = cl.ok(Method::GET, &format!("/v1/nodes/{u}"), None).await;
        assert_eq!(n["conductor_group"], "", "a node {what} moved: {n}");
        assert_eq!(n["conductor"], "c1", "{n}");
    }
    // a PATCH of other fields of a waiting node is still applied
    cl.ok(
        Method::PATCH,
        &format!("/v1/nodes/{waiting}"),
        Some(json!([{"op": "add", "path": "/extra/note", "value": "still here"}])),
    )
    .await;

    // the ramdisk of the waiting one calls back; both deploys end on c1
    let lookup: Value = cl
        .client
        .get(format!("{}/v1/lookup?node_uuid={waiting}", cl.api_url))
        .header("X-OpenStack-Ironic-API-Version", "1.62")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = lookup["config"]["agent_token"].as_str().expect("an agent token").to_string();
    assert_eq!(api.heartbeat(&waiting, &token).await, 202);
    for u in [&waiting, &running] {
        api.wait_state(u, "active", WAIT).await;
        let stored = db.get_node(u.parse().unwrap()).await.unwrap();
        assert_eq!(stored.conductor_affinity.as_deref(), Some("c1"), "{u}");
        assert_eq!(stored.conductor_group, "", "{u}");
    }

    // over: now they move, and c2 takes their boot over
    for u in [&waiting, &running] {
        let n = move_node(&cl, u, to_group("rack2")).await;
        assert_eq!(n["conductor"], "c2", "{n}");
    }
    for u in [&waiting, &running] {
        let n = wait_taken_over(&cl, &db, u, &["c2"]).await;
        assert_eq!(n["driver_internal_info"]["fake_take_over"]["by"], "c2", "{n}");
        assert_eq!(n["provision_state"], "active", "{n}");
    }
    db.close().await;
}

/// The last conductor of a group is gone for good (its nodes have no
/// owner; every action on them is refused with "No valid host"): moving
/// its nodes to a group that has conductors is what an operator does, and
/// it must work — the node's new owner applies the move, since the old
/// group has nobody to apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_of_a_group_without_conductors_can_be_moved_out() {
    let ttl = 3;
    let mut cl = cluster(ttl, &[("", "fake-hardware"), ("rack2", "fake-hardware")]);
    cl.wait_conductors(2).await;
    let api = Api::new(&cl.api_url);
    let db = Db::connect(&cl.db_url, 2).await.expect("the cluster's database");
    let uuids = cl.create_nodes("s", 2, json!({})).await;
    cl.drive(&uuids, "manage", "manageable", WAIT).await;
    cl.drive(&uuids[1..], "provide", "available", WAIT).await;
    cl.drive(&uuids[1..], "active", "active", WAIT).await;
    for u in &uuids {
        move_node(&cl, u, to_group("rack2")).await;
        wait_taken_over(&cl, &db, u, &["c2"]).await;
    }

    // rack2's only conductor dies and stays dead
    cl.conductors[1].0.kill();
    cl.wait_conductors(1).await;
    let (s, body) = cl.req(Method::GET, &format!("/v1/nodes/{}/validate", uuids[0]), None).await;
    assert_eq!(s, 400, "an action on a node without a conductor: {body}");

    for u in &uuids {
        let n = move_node(&cl, u, to_group("")).await;
        assert_eq!(n["conductor"], "c1", "{n}");
        let n = wait_taken_over(&cl, &db, u, &["c1"]).await;
        if n["provision_state"] == "active" {
            assert_eq!(n["driver_internal_info"]["fake_take_over"]["by"], "c1", "{n}");
        }
    }
    drive(&api, &uuids[0], "provide", "available").await;
    drive(&api, &uuids[1], "deleted", "available").await;
    db.close().await;
}
