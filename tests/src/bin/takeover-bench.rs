//! Benchmark (not a test): SIGKILL one of 3 conductors and measure how long
//! until every node it held is owned and taken over by the others, as a
//! multiple of the lease TTL.
//!
//!   cargo build --release --workspace --bins
//!   target/release/takeover-bench [--nodes 3000] [--ttl 6]
//!
//! Real etcd, PostgreSQL and conductor processes on loopback. The fleet is
//! written straight into the database as `active` nodes whose affinity is
//! their current owner (an existing, settled fleet), so the measurement is
//! the take-over alone.

use std::time::{Duration, Instant};

use ferric_common::db::{Db, NodeRef};
use ferric_common::membership::etcd::EtcdMembership;
use ferric_common::model::Node;
use ferric_common::ring::RingSettings;
use ferric_common::states::ProvisionState;
use ferric_tests::cluster::Cluster;
use reqwest::Method;
use tokio_util_shim::CancellationToken;

mod tokio_util_shim {
    pub use tokio_util::sync::CancellationToken;
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes = arg("--nodes", 3000) as usize;
    let ttl = arg("--ttl", 6);
    let mut cl = Cluster::start(3, ttl, &[]);
    cl.wait_conductors(3).await;
    let cancel = CancellationToken::new();
    let membership = EtcdMembership::start(
        vec![cl.etcd.endpoint.clone()],
        RingSettings::default(),
        Default::default(),
        cancel.clone(),
    )
    .await?;
    let ring = membership.current();
    let db = Db::connect(&cl.db_url, 8).await?;
    let started = Instant::now();
    for _ in 0..nodes {
        let mut n = Node::new(uuid::Uuid::new_v4(), "fake-hardware", ProvisionState::Active);
        n.power_state = Some("power on".into());
        n.conductor_affinity = ring.owner(n.uuid.as_bytes(), "", "fake-hardware").map(|m| m.id.clone());
        db.create_node(&n).await?;
    }
    println!("fleet: {nodes} active nodes written in {:.1} s", started.elapsed().as_secs_f64());
    let victim = "c2";
    let held = db.count_nodes_with(NodeRef::Affinity, victim).await?;
    // let the conductors settle (their first passes find nothing to do)
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t0 = Instant::now();
    cl.conductors[1].0.kill();
    let mut ring_moved = None;
    loop {
        if ring_moved.is_none() {
            let v = cl.ok(Method::GET, "/v1/conductors", None).await;
            if v["conductors"].as_array().map(|a| a.len()) == Some(2) {
                ring_moved = Some(t0.elapsed());
            }
        }
        let left = db.count_nodes_with(NodeRef::Affinity, victim).await?;
        if left == 0 && ring_moved.is_some() {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "{left} nodes still held by {victim} after 10 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = t0.elapsed();
    let ring_moved = ring_moved.expect("set");
    let ttl_s = ttl as f64;
    println!("SIGKILL of {victim} holding {held} of {nodes} nodes, lease TTL {ttl} s:");
    println!(
        "  ring without {victim} (API view): {:.2} s = {:.2} x TTL",
        ring_moved.as_secs_f64(),
        ring_moved.as_secs_f64() / ttl_s
    );
    println!(
        "  every node taken over:           {:.2} s = {:.2} x TTL",
        done.as_secs_f64(),
        done.as_secs_f64() / ttl_s
    );
    println!(
        "  take-over after the ring moved:  {:.2} s for {held} nodes ({:.0} nodes/s)",
        (done - ring_moved).as_secs_f64(),
        held as f64 / (done - ring_moved).as_secs_f64().max(0.001)
    );
    cancel.cancel();
    db.close().await;
    Ok(())
}
