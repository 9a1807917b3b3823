//! The all-in-one API keeps rendered `GET /v1/nodes/{node}` answers
//! (api-server/src/node_cache.rs); these tests check that a kept answer is
//! never staler than a direct read, against a real all-in-one on SQLite and
//! on PostgreSQL: every GET after a change returned sees it, while readers
//! hammer the same node so that an answer is kept at every moment, and
//! changes the conductor makes on its own (a power action) show up too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferric_tests::{Api, Ferric, Postgres};
use reqwest::Method;
use serde_json::{Value, json};

/// PATCHes made (and checked) by the writer.
const WRITES: u64 = 150;

fn counter(node: &Value) -> u64 {
    node["extra"]["counter"].as_u64().unwrap_or(0)
}

/// Sum of a counter over its label sets in a Prometheus text answer.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn every_read_after_a_change_sees_it(ferric: &Ferric) {
    let api = Api::new(&ferric.endpoint);
    let node = api.ok(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "cached"}))).await;
    let uuid = node["uuid"].as_str().expect("uuid").to_string();

    // readers: each one's successive reads never go back in time
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let api = api.clone();
        let stop = stop.clone();
        let path = if r % 2 == 0 { uuid.clone() } else { "cached".to_string() };
        readers.push(tokio::spawn(async move {
            let (mut last, mut reads) = (0, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let n = api.node(&path).await;
                let c = counter(&n);
                assert!(c >= last, "reader {r}: counter {c} after {last}: an older answer came back");
                last = c;
                reads += 1;
            }
            reads
        }));
    }

    for i in 1..=WRITES {
        api.ok(
            Method::PATCH,
            &format!("/v1/nodes/{uuid}"),
            Some(json!([{"op": "add", "path": "/extra/counter", "value": i}])),
        )
        .await;
        // the PATCH answered: every read from now on sees it, by UUID and by name
        assert_eq!(counter(&api.node(&uuid).await), i, "GET by UUID after PATCH {i}");
        assert_eq!(counter(&api.node("cached").await), i, "GET by name after PATCH {i}");
        // another version and a field set are answers of their own
        let (s, v) = api.call(Method::GET, &format!("/v1/nodes/{uuid}?fields=uuid,extra"), None).await;
        assert_eq!(s, 200);
        assert_eq!(counter(&v), i, "GET with fields= after PATCH {i}");
    }
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    assert!(reads > 0);

    // a change the conductor makes on its own, after the API answered
    api.ok(Method::PUT, &format!("/v1/nodes/{uuid}/states/power"), Some(json!({"target": "power on"}))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = api.node(&uuid).await;
        if n["power_state"] == "power on" && n["target_power_state"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the power action never showed: {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // and a delete: the name is gone at once
    api.ok(Method::DELETE, &format!("/v1/nodes/{uuid}"), None).await;
    let (s, _) = api.call(Method::GET, "/v1/nodes/cached", None).await;
    assert_eq!(s, 404, "a deleted node is not served from the cache");

    // the cache was in use: readers hit it between the writes
    let text = api.client.get(format!("{}/metrics", ferric.endpoint)).send().await.unwrap().text().await.unwrap();
    let hits = metric(&text, "ferric_api_node_cache_hits_total");
    let misses = metric(&text, "ferric_api_node_cache_misses_total");
    assert!(hits > 0.0, "no GET was answered from the cache ({misses} misses): {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_node_is_never_staler_than_the_database_sqlite() {
    let ferric = Ferric::start(None, &[]);
    every_read_after_a_change_sees_it(&ferric).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_node_is_never_staler_than_the_database_postgres() {
    let pg = Postgres::start();
    let url = pg.database("ferric_node_cache");
    let ferric = Ferric::start(Some(&url), &[]);
    every_read_after_a_change_sees_it(&ferric).await;
}
