//! A conductor's HTTP root is served by the conductor process and cleaned of
//! the artefacts of nodes it no longer drives (deleted, or owned by another
//! conductor after a rebalance), by its periodic task.

use std::path::Path;
use std::time::{Duration, Instant};

use ferric_tests::{Ferric, http};
use serde_json::json;

fn put(root: &Path, name: &str, body: &[u8]) {
    let p = root.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

async fn wait_gone(root: &Path, names: &[String], deadline: Duration) {
    let start = Instant::now();
    while names.iter().any(|n| root.join(n).exists()) {
        assert!(start.elapsed() < deadline, "not cleaned up within {deadline:?}: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn artefacts_of_deleted_nodes_are_reaped_and_the_root_is_served() {
    let http_port = ferric_tests::free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let f = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1"), ("FERRIC_CONDUCTOR__HTTP_LISTEN", listen.as_str())],
    );
    let c = http();
    let r = c
        .post(format!("{}/v1/nodes", f.endpoint))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .json(&json!({"driver": "fake-hardware", "name": "keeper"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let keeper = r.json::<serde_json::Value>().await.unwrap()["uuid"].as_str().unwrap().to_string();
    let ghost = uuid::Uuid::new_v4().to_string();

    let root = f.data_dir.path().join("httpboot");
    let (iso_k, iso_g) = ("a".repeat(64), "b".repeat(64));
    let kept = vec![
        format!("boot-{iso_k}.iso"),
        format!(".users/boot-{iso_k}.iso/{keeper}"),
        format!("floppy-{keeper}-{}.img", "1".repeat(32)),
    ];
    let ghosts = vec![
        format!("boot-{iso_g}.iso"),
        format!(".users/boot-{iso_g}.iso/{ghost}"),
        format!("floppy-{ghost}-{}.img", "2".repeat(32)),
    ];
    for n in kept.iter().chain(&ghosts) {
        put(&root, n, n.as_bytes());
    }

    // the conductor's HTTP listener serves the root
    let url = format!("http://127.0.0.1:{http_port}/httpboot");
    let r = c.get(format!("{url}/{}", kept[0])).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(r.text().await.unwrap(), kept[0]);
    assert_eq!(c.get(format!("{url}/{}", kept[1])).send().await.unwrap().status(), 404, "private marker served");
    // the plain path redirects to a fresh URL (the HTTP root's, here)
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let plain = format!("http://127.0.0.1:{http_port}/vmedia/{}", kept[0]);
    let r = no_redirects.get(&plain).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], format!("{url}/{}", kept[0]).as_str());
    assert_eq!(c.get(&plain).send().await.unwrap().text().await.unwrap(), kept[0], "followed");
    for missing in [format!("vmedia/{}", kept[1]), "vmedia/nope.iso".into(), "vmedia/a/../b".into()] {
        let r = no_redirects.get(format!("http://127.0.0.1:{http_port}/{missing}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }

    // the ghost node does not exist: its floppy, its use and so its ISO go
    wait_gone(&root, &ghosts, Duration::from_secs(10)).await;
    for n in &kept {
        assert!(root.join(n).exists(), "{n} of a node this conductor drives was removed");
    }
    // the conductor reports what it publishes
    let start = Instant::now();
    loop {
        let m = c.get(format!("http://127.0.0.1:{http_port}/metrics")).send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| l == "ferric_boot_isos_published{publisher=\"http\"} 1")
            && m.lines().any(|l| l == "ferric_floppies_published{publisher=\"http\"} 1")
            && m.contains("ferric_image_cache_bytes 0")
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "metrics never showed 1 ISO and 1 floppy:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // delete the keeper: its artefacts go too
    let r = c
        .delete(format!("{}/v1/nodes/{keeper}", f.endpoint))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_gone(&root, &kept, Duration::from_secs(10)).await;
}

/// A conductor configured for Swift: creates its container at start-up,
/// redirects /vmedia/<name> to a temp URL signed on the spot, reports the
/// published ISOs, and leaves other conductors' uses in the shared
/// container alone.
#[tokio::test]
async fn a_conductor_publishing_to_swift() {
    let lab = ferric_tests::swift::SwiftLab::start();
    let cfg = lab.config();
    let http_port = ferric_tests::free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let auth_url = cfg.auth_url.clone();
    let f = Ferric::start(
        None,
        &[
            ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1"),
            ("FERRIC_CONDUCTOR__HTTP_LISTEN", listen.as_str()),
            ("FERRIC_DEPLOY__USE_HTTP_WEB_SERVER_FOR_IMAGES", "false"),
            ("FERRIC_SWIFT__AUTH_URL", auth_url.as_str()),
            ("FERRIC_SWIFT__USER", "test:tester"),
            ("FERRIC_SWIFT__KEY", "testing"),
            ("FERRIC_SWIFT__TEMP_URL_KEY", ferric_tests::swift::TEMP_URL_KEY),
            ("FERRIC_SWIFT__SET_TEMP_URL_KEY", "true"),
            ("FERRIC_SWIFT__SWIFT_ILO_CONTAINER", cfg.swift_ilo_container.as_str()),
        ],
    );
    let c = http();
    let (storage, token) = lab.token().await;
    let container = format!("{storage}/{}", cfg.swift_ilo_container);
    let r = c.head(&container).header("X-Auth-Token", &token).send().await.unwrap();
    assert_eq!(r.status(), 204, "the conductor created its container");

    // an ISO and another conductor's use of it, put there directly
    let iso = format!("boot-{}.iso", "c".repeat(64));
    let other_node = uuid::Uuid::new_v4();
    let marker = format!(".users/{iso}/{other_node}");
    for (name, body) in [(iso.as_str(), "iso bytes"), (marker.as_str(), "x")] {
        let r = c.put(format!("{container}/{name}")).header("X-Auth-Token", &token).body(body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{name}");
    }

    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let plain = format!("http://127.0.0.1:{http_port}/vmedia/{iso}");
    let r = no_redirects.get(&plain).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&container) && location.contains("temp_url_sig="), "{location}");
    assert_eq!(c.get(&location).send().await.unwrap().text().await.unwrap(), "iso bytes", "temp URL, no token");

    let start = Instant::now();
    loop {
        let m = c.get(format!("http://127.0.0.1:{http_port}/metrics")).send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| l == "ferric_boot_isos_published{publisher=\"swift\"} 1") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no swift ISO count in the metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // two more periodic rounds: the node is unknown here, but the use in a
    // shared container is not this conductor's to drop
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = c.head(format!("{container}/{marker}")).header("X-Auth-Token", &token).send().await.unwrap();
    assert_eq!(r.status(), 200, "a use in the shared container was dropped");
    drop(f);
}
