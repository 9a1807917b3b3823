//! Benchmark (not a test): how long start-up takes to recompute the ring
//! partitions of a fleet after `membership.partition_exponent` changed, on
//! SQLite and PostgreSQL (docs/ring.md has the numbers).
//!
//!   cargo build --release -p ferric-tests --bin partition-bench
//!   target/release/partition-bench [--nodes 100000]
//!
//! Per backend: a fresh database, partitions recorded at 2^16, `--nodes`
//! nodes created through `Db::create_node` (8 at a time), then what a
//! process starting with 2^12 does ([`partitions::settle`]): recompute every
//! partition; what the next process does: check the sample; and what a
//! process does on a database that records no exponent but whose
//! partitions are right: read every node, write none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferric_common::db::{Db, NodeQuery};
use ferric_common::membership::{LocalMembership, Membership};
use ferric_common::model::Node;
use ferric_common::partitions::{self, EXPONENT_SETTING, Settled};
use ferric_common::ring::RingSettings;
use ferric_common::states::ProvisionState;
use ferric_tests::Postgres;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn settle(db: &Db, exponent: u8) -> anyhow::Result<(Settled, Duration)> {
    let settings = RingSettings { partition_exponent: exponent, ..RingSettings::default() };
    let membership = Membership::Local(Arc::new(LocalMembership::new(settings.clone())));
    let t = Instant::now();
    let s = partitions::settle(db, &membership, &settings).await.map_err(anyhow::Error::msg)?;
    Ok((s, t.elapsed()))
}

async fn run(backend: &str, url: &str, nodes: usize) -> anyhow::Result<()> {
    let db = Db::connect(url, 8).await?;
    settle(&db, 16).await?;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..8 {
        let db = db.clone();
        set.spawn(async move {
            for _ in (w..nodes).step_by(8) {
                let mut n = Node::new(uuid::Uuid::new_v4(), "fake-hardware", ProvisionState::Active);
                n.power_state = Some("power on".into());
                db.create_node(&n).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let created = t.elapsed();
    println!(
        "{backend}: {nodes} nodes created in {:.1} s ({:.0}/s)",
        created.as_secs_f64(),
        nodes as f64 / created.as_secs_f64()
    );

    let (s, took) = settle(&db, 12).await?;
    println!("{backend}: 2^16 -> 2^12, recompute: {s:?} in {:.2} s", took.as_secs_f64());
    let (s, took) = settle(&db, 12).await?;
    println!("{backend}: next start, sample check only: {s:?} in {:.1} ms", took.as_secs_f64() * 1000.0);
    db.delete_cluster_setting_if(EXPONENT_SETTING, "12").await?;
    let (s, took) = settle(&db, 12).await?;
    println!("{backend}: unrecorded, every node right: {s:?} in {:.2} s", took.as_secs_f64());
    let wrong = db
        .list_nodes(&NodeQuery::default())
        .await?
        .iter()
        .filter(|n| n.ring_partition != partitions::partition(&n.uuid, 12))
        .count();
    anyhow::ensure!(wrong == 0, "{wrong} nodes with another partition");
    db.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes = arg("--nodes", 100_000) as usize;
    let dir = tempfile::tempdir()?;
    run("sqlite", &format!("sqlite://{}/bench.sqlite", dir.path().display()), nodes).await?;
    let pg = Postgres::start();
    run("postgres", &pg.database("partition_bench"), nodes).await?;
    Ok(())
}
