//! Benchmark (not a test): SIGKILL the owner of a third of a fleet of
//! active virtual-media nodes and measure how long until every node it
//! held boots from media a live conductor serves, as a multiple of the
//! lease TTL, with the number of boot ISO builds and of BMC writes that
//! took.
//!
//!   cargo build --release --workspace --bins
//!   target/release/vmedia-takeover-bench [--nodes 1000] [--images 5] [--ttl 6] [--emulators 2]
//!       [--image-kib 600] [--concurrency 16]
//!
//! `--image-kib`: kernel + ramdisk size of each image. The emulator
//! downloads a whole ISO synchronously at every InsertMedia (real BMCs
//! stream it while booting), so on one machine the ISO size is emulator
//! CPU, not Ferric work. `--concurrency`: `conductor.takeover_concurrency`.
//!
//! Real etcd, PostgreSQL, 3 conductor processes and one API process on
//! loopback; the BMCs are sushy-tools emulators (`--emulators` processes
//! sharing the systems, each system one node). The fleet is deployed
//! through the API with the `ramdisk` deploy interface (each node boots a
//! boot ISO built from one of `--images` kernel/ramdisk pairs), so every
//! conductor already holds every ISO before the kill: the goal is no ISO
//! build and one BMC write per moved node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferric_common::db::{Db, NodeQuery};
use ferric_tests::cluster::Cluster;
use ferric_tests::redfish::{SushyLab, SushyOptions};
use reqwest::Method;
use serde_json::{Value, json};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A counter's value summed over every line of a Prometheus text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(roots: &HashMap<String, String>, id: &str) -> String {
    let base = roots[id].trim_end_matches("/httpboot");
    ferric_tests::http().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let nodes = arg("--nodes", 1000) as usize;
    let images = arg("--images", 5) as usize;
    let ttl = arg("--ttl", 6);
    let emulators = arg("--emulators", 2).max(1) as usize;
    let kib = arg("--image-kib", 600) as usize;
    let concurrency = arg("--concurrency", 16).to_string();
    let dir = tempfile::tempdir()?;
    let pairs: Vec<(String, String)> = (0..images)
        .map(|i| {
            let k = dir.path().join(format!("vmlinuz-{i}"));
            let r = dir.path().join(format!("initrd-{i}"));
            std::fs::write(&k, format!("kernel {i} ").repeat(kib * 1024 / 3 / 9)).unwrap();
            std::fs::write(&r, format!("ramdisk {i} ").repeat(kib * 1024 * 2 / 3 / 10)).unwrap();
            (format!("file://{}", k.display()), format!("file://{}", r.display()))
        })
        .collect();
    let per_lab = nodes.div_ceil(emulators);
    let labs: Vec<SushyLab> =
        (0..emulators).map(|_| SushyLab::start(SushyOptions { systems: per_lab, ..Default::default() })).collect();
    let env = [
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50"),
        ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "200"),
        ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "3600"),
        ("RUST_LOG", "warn"),
        ("FERRIC_CONDUCTOR__TAKEOVER_CONCURRENCY", concurrency.as_str()),
    ];
    let mut cl = Cluster::start(3, ttl, &env);
    cl.wait_conductors(3).await;

    // the fleet: created, cleaned, deployed through the API
    let setup = Instant::now();
    let mut uuids = Vec::new();
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let lab = &labs[i / per_lab];
            let (k, r) = &pairs[i % images];
            let body = json!({"driver": "redfish", "deploy_interface": "ramdisk", "name": format!("vm{i}"), "driver_info": lab.driver_info(i % per_lab),
                              "instance_info": {"kernel": k, "ramdisk": r}});
            let (c, url) = (cl.client.clone(), format!("{}/v1/nodes", cl.api_url));
            set.spawn(async move {
                let r = c.post(url).header("X-OpenStack-Ironic-API-Version", "1.115").json(&body).send().await.unwrap();
                anyhow::ensure!(r.status() == 201, "create: {}", r.status());
                Ok(r.json::<Value>().await?["uuid"].as_str().unwrap_or_default().to_string())
            });
        }
        while let Some(r) = set.join_next().await {
            uuids.push(r??);
        }
    }
    let long = Duration::from_secs(1800);
    cl.drive(&uuids, "manage", "manageable", long).await;
    cl.drive(&uuids, "provide", "available", long).await;
    cl.drive(&uuids, "active", "active", long).await;
    println!("fleet: {nodes} nodes deployed (ramdisk, {images} images) in {:.0} s", setup.elapsed().as_secs_f64());

    let all = cl.nodes().await;
    let mut by_owner: HashMap<String, usize> = HashMap::new();
    for n in all.values() {
        *by_owner.entry(n["conductor"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let (victim, held) =
        by_owner.iter().max_by_key(|(id, n)| (**n, id.to_string())).map(|(a, b)| (a.clone(), *b)).unwrap();
    let vi: usize = victim.trim_start_matches('c').parse::<usize>()? - 1;
    let roots: HashMap<String, String> = cl.member_http_urls().into_iter().collect();
    let survivors: Vec<String> = roots.keys().filter(|id| **id != victim).cloned().collect();
    let mut builds_before = 0.0;
    for s in &survivors {
        builds_before += counter(&metrics(&roots, s).await, "ferric_boot_iso_builds_total");
    }
    let mut seen_before = Vec::new();
    for lab in &labs {
        seen_before.push(lab.requests().await.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let db = Db::connect(&cl.db_url, 4).await?;
    let t0 = Instant::now();
    cl.conductors[vi].0.kill();
    let mut ring_moved = None;
    loop {
        if ring_moved.is_none() {
            let v = cl.ok(Method::GET, "/v1/conductors", None).await;
            if v["conductors"].as_array().map(|a| a.len()) == Some(2) {
                ring_moved = Some(t0.elapsed());
            }
        }
        let rows = db.list_nodes(&NodeQuery::default()).await?;
        let left = rows
            .iter()
            .filter(|n| n.conductor_affinity.as_deref() == Some(victim.as_str()) || n.reservation.is_some())
            .count();
        if left == 0 && ring_moved.is_some() {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "{left} nodes not taken over after 10 min");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = t0.elapsed();
    let ring_moved = ring_moved.expect("set");

    // what it cost
    let mut builds_after = 0.0;
    for s in &survivors {
        builds_after += counter(&metrics(&roots, s).await, "ferric_boot_iso_builds_total");
    }
    let (mut writes, mut reads) = (0usize, 0usize);
    let mut per_system: HashMap<String, usize> = HashMap::new();
    for (lab, before) in labs.iter().zip(&seen_before) {
        for r in lab.requests().await.split_off(*before) {
            if r.is_write() {
                writes += 1;
                *per_system.entry(r.path.split('/').nth(4).unwrap_or_default().to_string()).or_default() += 1;
            } else {
                reads += 1;
            }
        }
    }
    // every moved node's BMC holds a live conductor's URL
    let live: Vec<String> = survivors.iter().map(|s| roots[s].clone()).collect();
    let rows = db.list_nodes(&NodeQuery::default()).await?;
    let mut wrong = 0;
    for n in &rows {
        let url = n
            .driver_internal_info
            .get("vmedia")
            .and_then(|v| v.pointer("/cd/url"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !live.iter().any(|r| url.starts_with(r.as_str())) {
            wrong += 1;
        }
    }
    db.close().await;
    let t = ttl as f64;
    println!(
        "SIGKILL of {victim}, owner of {held} of {nodes} active virtual-media nodes, lease TTL {ttl} s \
         ({kib} KiB images, take-over concurrency {concurrency}, {emulators} emulator processes):"
    );
    println!(
        "  ring without {victim} (API view): {:.2} s = {:.2} x TTL",
        ring_moved.as_secs_f64(),
        ring_moved.as_secs_f64() / t
    );
    println!("  every node re-pointed:           {:.2} s = {:.2} x TTL", done.as_secs_f64(), done.as_secs_f64() / t);
    println!(
        "  re-pointing after the ring moved: {:.2} s for {held} nodes ({:.0} nodes/s)",
        (done - ring_moved).as_secs_f64(),
        held as f64 / (done - ring_moved).as_secs_f64().max(0.001)
    );
    println!("  boot ISO builds:                 {}", builds_after - builds_before);
    println!(
        "  BMC writes:                      {writes} for {held} moved nodes ({} systems written, max {} per system); {reads} reads",
        per_system.len(),
        per_system.values().max().copied().unwrap_or(0)
    );
    println!("  nodes whose CD URL is not a live root: {wrong}");
    Ok(())
}
