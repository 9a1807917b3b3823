//! The Swift publisher against a real OpenStack Swift (Debian's packages:
//! proxy with tempauth + tempurl, account/container/object servers,
//! memcached) started on free loopback ports by scripts/swift-lab.sh for
//! this test binary and stopped when it ends.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferric_common::config::SwiftConfig;
use ferric_deploy::publish::Store;
use ferric_deploy::publish::artefacts::{Artefacts, USAGE_COUNT, boot_iso_name};
use ferric_deploy::publish::swift::{Digest, SwiftStore, temp_url_signature};
use ferric_tests::swift::{SwiftLab, TEMP_URL_KEY};
use uuid::Uuid;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Fails (never skips) when Swift cannot be started, naming the package.
fn require_swift_packages() {
    let missing: Vec<String> = [
        ("swift-ring-builder", "swift"),
        ("swift-proxy-server", "swift-proxy"),
        ("swift-account-server", "swift-account"),
        ("swift-container-server", "swift-container"),
        ("swift-object-server", "swift-object"),
        ("swift-object-expirer", "swift-object-expirer"),
        ("memcached", "memcached"),
        ("curl", "curl"),
    ]
    .iter()
    .filter(|(bin, _)| {
        !std::process::Command::new("sh").args(["-c", &format!("command -v {bin}")]).status().unwrap().success()
    })
    .map(|(bin, pkg)| format!("{bin} (Debian package {pkg})"))
    .collect();
    assert!(
        missing.is_empty(),
        "the Swift test needs a real Swift; missing: {}. Install: apt-get install -y --no-install-recommends \
         swift swift-proxy swift-account swift-container swift-object swift-object-expirer memcached curl \
         (scripts/deps.sh does)",
        missing.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_publisher_against_a_real_swift() {
    require_swift_packages();
    let started = std::time::Instant::now();
    let lab = SwiftLab::start();
    eprintln!("swift started in {:?}", started.elapsed());
    let cfg = lab.config();
    let store = SwiftStore::connect(&cfg).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", lab.logs()));
    let c = client();
    let (storage, tok) = lab.token().await;

    // the container was created
    let r = c.head(format!("{storage}/{}", cfg.swift_ilo_container)).header("X-Auth-Token", &tok).send().await.unwrap();
    assert_eq!(r.status(), 204, "container HEAD");

    // round trip of a 3 MB file through a temporary URL, no token
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("boot.iso");
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    store.put_file("boot-abc.iso", &file, None).await.unwrap();
    let url = store.url("boot-abc.iso", Duration::from_secs(60)).unwrap();
    assert!(url.contains("temp_url_sig=") && url.contains("temp_url_expires="), "{url}");
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "temp URL GET without a token");
    assert!(r.bytes().await.unwrap() == body, "downloaded bytes differ");
    // put-if-absent leaves an existing object alone, and says so
    let other = dir.path().join("other.iso");
    std::fs::write(&other, b"other bytes").unwrap();
    assert!(!store.put_file_if_absent("boot-abc.iso", &other).await.unwrap(), "boot-abc.iso exists");
    assert!(c.get(&url).send().await.unwrap().bytes().await.unwrap() == body, "an existing object was replaced");
    assert!(store.put_file_if_absent("boot-new.iso", &other).await.unwrap());
    let fresh = store.url("boot-new.iso", Duration::from_secs(60)).unwrap();
    assert_eq!(c.get(&fresh).send().await.unwrap().bytes().await.unwrap().as_ref(), b"other bytes");
    store.delete("boot-new.iso").await.unwrap();
    let r = c.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[10..20]);
    // a tampered signature, a signature for another object, a past expiry: 401
    let tampered = url.replace("temp_url_sig=", "temp_url_sig=0");
    assert_eq!(c.get(&tampered).send().await.unwrap().status(), 401);
    let path = format!("/v1/AUTH_test/{}/boot-abc.iso", cfg.swift_ilo_container);
    let past = 1_000_000_000u64;
    let sig = temp_url_signature(TEMP_URL_KEY.as_bytes(), "GET", past, &path, Digest::Sha256);
    let expired =
        format!("{storage}/{}/boot-abc.iso?temp_url_sig={sig}&temp_url_expires={past}", cfg.swift_ilo_container);
    assert_eq!(c.get(&expired).send().await.unwrap().status(), 401);
    // a URL handed out for 2 s carries that expiry and stops working after
    // it (no GET races the expiry: a loaded machine may take longer than 2 s
    // between two lines, so only what holds whatever the timing is asserted)
    let before = unix_now();
    let short = store.url("boot-abc.iso", Duration::from_secs(2)).unwrap();
    let after = unix_now();
    let expires = query_u64(&short, "temp_url_expires");
    assert!((before + 2..=after + 3).contains(&expires), "expiry {expires} not 2-3 s after {before}..{after}: {short}");
    wait_until_past(expires).await;
    assert_eq!(c.get(&short).send().await.unwrap().status(), 401, "expired temp URL");

    // names that need percent-encoding: the URL carries them encoded, the
    // signature covers them decoded (Swift signs PATH_INFO)
    let odd = "odd dir/ä b+c%20&d=e?f#g.iso";
    store.put_file(odd, &file, None).await.unwrap();
    assert!(store.exists(odd).await.unwrap());
    assert_eq!(store.list("odd dir/").await.unwrap(), vec![odd]);
    let odd_url = store.url(odd, Duration::from_secs(60)).unwrap();
    assert!(odd_url.contains("/odd%20dir/%C3%A4%20b%2Bc%2520%26d%3De%3Ff%23g.iso?"), "{odd_url}");
    let r = c.get(&odd_url).send().await.unwrap();
    assert_eq!(r.status(), 200, "temp URL of an encoded name: {odd_url}");
    assert!(r.bytes().await.unwrap() == body, "downloaded bytes differ (encoded name)");
    store.delete(odd).await.unwrap();
    assert!(!store.exists(odd).await.unwrap());
    assert_eq!(c.get(&odd_url).send().await.unwrap().status(), 404);

    // SHA-1 signed URLs for old clusters
    let sha1 = SwiftStore::connect(&SwiftConfig { temp_url_digest: "sha1".into(), ..cfg.clone() }).await.unwrap();
    let url1 = sha1.url("boot-abc.iso", Duration::from_secs(60)).unwrap();
    let sig_len = url1.split("temp_url_sig=").nth(1).unwrap().split('&').next().unwrap().len();
    assert_eq!(sig_len, 40, "{url1}");
    assert_eq!(c.get(&url1).send().await.unwrap().status(), 200);

    // X-Delete-After: Swift records the deadline (read back, so no race with
    // a slow machine), and the object is gone once it passes, for the store
    // and for readers
    let before = unix_now();
    store.put_bytes("floppy-x.img", b"params".to_vec(), Some(Duration::from_secs(3))).await.unwrap();
    let after = unix_now();
    let furl = store.url("floppy-x.img", Duration::from_secs(60)).unwrap();
    let r = c
        .head(format!("{storage}/{}/floppy-x.img", cfg.swift_ilo_container))
        .header("X-Auth-Token", &tok)
        .send()
        .await
        .unwrap();
    let delete_at: u64 = r
        .headers()
        .get("x-delete-at")
        .unwrap_or_else(|| panic!("no X-Delete-At on an object put with a lifetime: {:?}", r.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((before + 3..=after + 3).contains(&delete_at), "X-Delete-At {delete_at} not 3 s after {before}..{after}");
    wait_until_past(delete_at).await;
    assert!(!store.exists("floppy-x.img").await.unwrap());
    assert_eq!(c.get(&furl).send().await.unwrap().status(), 404);

    // metadata: each set keeps the others and the expiry
    store.put_bytes("meta.bin", b"m".to_vec(), Some(Duration::from_secs(600))).await.unwrap();
    store.set_metadata("meta.bin", "usage-count", "3").await.unwrap();
    store.set_metadata("meta.bin", "owner", "c1").await.unwrap();
    store.set_metadata("meta.bin", "usage-count", "4").await.unwrap();
    assert_eq!(store.metadata("meta.bin", "usage-count").await.unwrap().as_deref(), Some("4"));
    assert_eq!(store.metadata("meta.bin", "owner").await.unwrap().as_deref(), Some("c1"));
    assert_eq!(store.metadata("meta.bin", "nothing").await.unwrap(), None);
    store.set_metadata("meta.bin", "label", "grüße ✓").await.unwrap();
    store.set_metadata("meta.bin", "usage-count", "5").await.unwrap();
    assert_eq!(store.metadata("meta.bin", "label").await.unwrap().as_deref(), Some("grüße ✓"), "non-ASCII kept");
    assert!(store.set_metadata("meta.bin", "bad", "a\nb").await.is_err());
    assert!(store.set_metadata("meta.bin", "bad key", "v").await.is_err());
    let r = c
        .head(format!("{storage}/{}/meta.bin", cfg.swift_ilo_container))
        .header("X-Auth-Token", &tok)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-delete-at"), "metadata update dropped the expiry: {:?}", r.headers());
    assert!(store.set_metadata("absent", "k", "v").await.is_err());

    // list by prefix, delete (idempotent)
    for n in ["p/a", "p/b", "q/c", ".users/boot-1.iso/n1"] {
        store.put_bytes(n, vec![1], None).await.unwrap();
    }
    assert_eq!(store.list("p/").await.unwrap(), vec!["p/a", "p/b"]);
    assert_eq!(store.list(".users/").await.unwrap(), vec![".users/boot-1.iso/n1"]);
    store.delete("p/a").await.unwrap();
    store.delete("p/a").await.unwrap();
    assert_eq!(store.list("p/").await.unwrap(), vec!["p/b"]);

    // paging with marker (pages of 2 here; Swift's are up to 10 000),
    // markers that need encoding included
    for n in ["pg/ä 1", "pg/ä 2", "pg/b&3", "pg/b&4", "pg/c"] {
        store.put_bytes(n, vec![3], None).await.unwrap();
    }
    let paged = SwiftStore::connect(&cfg).await.unwrap().with_listing_page(2);
    assert_eq!(paged.list("pg/").await.unwrap(), vec!["pg/b&3", "pg/b&4", "pg/c", "pg/ä 1", "pg/ä 2"]);
    assert_eq!(paged.list("pg/b").await.unwrap(), vec!["pg/b&3", "pg/b&4"]);
    assert_eq!(paged.list("none/").await.unwrap(), Vec::<String>::new());

    // a 4xx is an error naming the method, the object and Swift's answer
    let e = store.set_metadata("p/b", "big", &"x".repeat(300)).await.unwrap_err().to_string();
    assert!(e.contains("POST") && e.contains("p/b") && e.contains("400") && e.contains("longer than"), "{e}");

    // names and private objects
    assert!(store.url(".users/boot-1.iso/n1", Duration::from_secs(60)).is_err());
    for bad in ["", "a//b", "../x", "a/./b"] {
        assert!(store.put_bytes(bad, vec![1], None).await.is_err(), "{bad:?} accepted");
    }

    // tokens lost (memcached flushed): the store re-authenticates by itself
    lab.flush_tokens();
    assert!(store.exists("p/b").await.unwrap());
    store.put_bytes("after-reauth", vec![2], None).await.unwrap();

    // a fixed storage URL and token instead of tempauth
    let (storage_url, auth_token) = lab.token().await;
    let fixed = SwiftConfig { auth_url: String::new(), storage_url, auth_token: auth_token.into(), ..cfg.clone() };
    let fixed_store = SwiftStore::connect(&fixed).await.unwrap();
    assert!(fixed_store.exists("p/b").await.unwrap());
    let e = SwiftStore::connect(&SwiftConfig { auth_token: "AUTH_tknope".into(), ..fixed.clone() })
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("401"), "{e}");

    // nothing listening: 3 attempts with backoff, then an error saying so
    let dead = SwiftConfig {
        storage_url: format!("http://127.0.0.1:{}/v1/AUTH_test", ferric_tests::free_port()),
        request_timeout_secs: 2,
        ..fixed.clone()
    };
    let t = std::time::Instant::now();
    let e = SwiftStore::connect(&dead).await.err().unwrap().to_string();
    assert!(e.contains("after 3 attempts") && e.contains("refused"), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(600), "no backoff: {:?}", t.elapsed());

    // wrong credentials: a clear error
    let bad = SwiftStore::connect(&SwiftConfig { key: "wrong".into(), ..cfg.clone() }).await.err().unwrap().to_string();
    assert!(bad.contains("auth") && bad.contains("401"), "{bad}");

    // shared boot ISOs, their uses counted by marker objects, over Swift
    let store: Arc<dyn Store> = Arc::new(store);
    let a = Arc::new(
        Artefacts::new(store.clone(), Duration::from_secs(600), Duration::from_secs(600), dir.path().join("scratch"))
            // long enough for the checks inside it on a loaded machine
            .with_deletion_grace(Duration::from_secs(6)),
    );
    let ids = ["d".repeat(64), "e".repeat(64)];
    let nodes: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (a, id, node, builds) = (a.clone(), ids[i % 2].clone(), *node, builds.clone());
        let content = format!("iso {id}");
        tasks.push(tokio::spawn(async move {
            a.acquire_boot_iso(node, &id, move |p| {
                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::fs::write(p, content).map_err(|e| e.to_string())
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        let published = t.await.unwrap();
        assert_eq!(c.get(&published.url).send().await.unwrap().status(), 200);
    }
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(store.list("boot-d").await.unwrap(), vec![boot_iso_name(&ids[0])]);
    // an ISO in use is never written again (a write races the BMCs'
    // reads, which Swift can answer 404): no usage-count POST, no re-upload,
    // no cancelling of a deletion nobody scheduled. X-Timestamp moves with
    // every PUT and POST.
    let x_timestamp = |name: String| {
        let (c, url) = (c.clone(), format!("{storage}/{}/{name}", cfg.swift_ilo_container));
        let token = lab.token();
        async move {
            let r = c.head(url).header("X-Auth-Token", token.await.1).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-timestamp"].to_str().unwrap().to_string()
        }
    };
    let stamps = [x_timestamp(boot_iso_name(&ids[0])).await, x_timestamp(boot_iso_name(&ids[1])).await];
    for id in &ids {
        assert_eq!(a.boot_iso_users(id).await.unwrap().len(), 10);
        assert_eq!(store.metadata(&boot_iso_name(id), USAGE_COUNT).await.unwrap(), None);
    }
    let never = |_: &Path| -> Result<(), String> { panic!("the ISO exists: no rebuild") };
    for n in &nodes {
        // the evens acquire again (a retried step); the odds anew
        a.acquire_boot_iso(*n, &ids[0], never).await.unwrap();
    }
    let later = Uuid::new_v4();
    a.acquire_boot_iso(later, &ids[0], never).await.unwrap();
    assert_eq!(a.boot_iso_users(&ids[0]).await.unwrap().len(), 21);
    assert_eq!(a.release_boot_iso(later, &ids[0]).await.unwrap(), 20);
    let odds: Vec<Uuid> = nodes.iter().skip(1).step_by(2).copied().collect();
    for (k, n) in odds.iter().enumerate() {
        assert_eq!(a.release_boot_iso(*n, &ids[0]).await.unwrap(), 19 - k);
    }
    assert_eq!(a.boot_iso_users(&ids[0]).await.unwrap().len(), 10);
    let evens: Vec<Uuid> = nodes.iter().step_by(2).copied().collect();
    for (k, n) in evens.iter().enumerate().take(9) {
        assert_eq!(a.release_boot_iso(*n, &ids[0]).await.unwrap(), 9 - k);
    }
    assert_eq!(
        [x_timestamp(boot_iso_name(&ids[0])).await, x_timestamp(boot_iso_name(&ids[1])).await],
        stamps,
        "a boot ISO in use was written to"
    );
    assert_eq!(a.release_boot_iso(evens[9], &ids[0]).await.unwrap(), 0);
    // the container is shared by conductors: the last release schedules the
    // deletion, an acquire in the grace period cancels it
    let iso0 = boot_iso_name(&ids[0]);
    let delete_at = |tok: String| {
        let (c, url) = (c.clone(), format!("{storage}/{}/{iso0}", cfg.swift_ilo_container));
        async move {
            let r = c.head(url).header("X-Auth-Token", tok).send().await.unwrap();
            r.headers().get("x-delete-at").map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert!(store.exists(&iso0).await.unwrap(), "kept for the grace period");
    assert!(delete_at(lab.token().await.1).await.is_some(), "deletion scheduled");
    a.acquire_boot_iso(nodes[0], &ids[0], never).await.unwrap();
    assert_eq!(delete_at(lab.token().await.1).await, None, "an acquire cancels the deletion");
    assert_eq!(a.boot_iso_users(&ids[0]).await.unwrap(), vec![nodes[0]]);
    assert_eq!(a.release_boot_iso(nodes[0], &ids[0]).await.unwrap(), 0);
    let deadline: u64 = delete_at(lab.token().await.1).await.expect("deletion scheduled again").parse().unwrap();
    wait_until_past(deadline).await;
    assert!(!store.exists(&iso0).await.unwrap(), "deleted once the grace passed");
    let built = builds.load(std::sync::atomic::Ordering::SeqCst);
    let counter = builds.clone();
    let again = a
        .acquire_boot_iso(nodes[0], &ids[0], move |p| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::fs::write(p, "rebuilt").map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), built + 1, "gone, so rebuilt");
    assert_eq!(c.get(&again.url).send().await.unwrap().text().await.unwrap(), "rebuilt");
    assert!(store.exists(&boot_iso_name(&ids[1])).await.unwrap());

    // a floppy through the artefacts layer carries X-Delete-After
    let f = a.publish_floppy(nodes[0], b"token".to_vec()).await.unwrap();
    let r = c
        .head(format!("{storage}/{}/{}", cfg.swift_ilo_container, f.name))
        .header("X-Auth-Token", &lab.token().await.1)
        .send()
        .await
        .unwrap();
    let delete_at: u64 = r.headers()["x-delete-at"].to_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 590..=now + 610).contains(&delete_at), "floppy expiry {delete_at} vs now {now}");
    assert_eq!(c.get(&f.url).send().await.unwrap().bytes().await.unwrap().as_ref(), b"token");

    // what /vmedia/<name> redirects to: a temp URL signed now
    let fresh = a.fresh_url(&f.name).await.unwrap().unwrap();
    assert!(fresh.contains("temp_url_sig="), "{fresh}");
    assert_eq!(c.get(&fresh).send().await.unwrap().bytes().await.unwrap().as_ref(), b"token");
    assert_eq!(a.fresh_url("floppy-missing.img").await.unwrap(), None);
    assert!(a.fresh_url(".users/x").await.is_err());
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn query_u64(url: &str, key: &str) -> u64 {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {url}"))
        .parse()
        .unwrap()
}

/// Sleeps until the wall clock is past `deadline` (a Unix second) by a margin,
/// so a check after it holds whatever the load.
async fn wait_until_past(deadline: u64) {
    while unix_now() <= deadline + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
