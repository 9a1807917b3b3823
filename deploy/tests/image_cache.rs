//! The source image cache against a real HTTP server on loopback that
//! counts requests and can delay, fail and truncate.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use ferric_deploy::image::cache::{ATTEMPTS, CacheOptions, Checksum, ImageCache, ImageError, ImageSource};
use futures_util::StreamExt as _;
use md5::Digest as _;

#[derive(Default)]
struct Served {
    files: Mutex<HashMap<String, Vec<u8>>>,
    hits: Mutex<HashMap<String, usize>>,
    /// requests to answer with 503 before succeeding, per name
    fail_first: Mutex<HashMap<String, usize>>,
    delay_ms: AtomicUsize,
    /// requests being answered now, and the most there ever were
    active: AtomicUsize,
    max_active: AtomicUsize,
    /// names whose body stalls after its first half until `release`
    stall: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Served {
    fn hits(&self, name: &str) -> usize {
        self.hits.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

async fn serve_file(State(s): State<Arc<Served>>, UrlPath(name): UrlPath<String>) -> axum::response::Response {
    *s.hits.lock().unwrap().entry(name.clone()).or_default() += 1;
    let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_active.fetch_max(now, Ordering::SeqCst);
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    s.active.fetch_sub(1, Ordering::SeqCst);
    let stall = s.stall.lock().unwrap().get(&name).cloned();
    if let Some(release) = stall {
        let body = s.files.lock().unwrap().get(&name).cloned().unwrap_or_default();
        let (first, rest) = body.split_at(body.len() / 2);
        let (first, rest) = (bytes::Bytes::copy_from_slice(first), bytes::Bytes::copy_from_slice(rest));
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
            futures_util::stream::once(async move {
                release.notified().await;
                Ok::<_, std::io::Error>(rest)
            }),
        );
        let mut resp = axum::body::Body::from_stream(stream).into_response();
        resp.headers_mut().insert(axum::http::header::CONTENT_LENGTH, body.len().into());
        return resp;
    }
    {
        let mut ff = s.fail_first.lock().unwrap();
        if let Some(n) = ff.get_mut(&name)
            && *n > 0
        {
            *n -= 1;
            return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        }
    }
    match s.files.lock().unwrap().get(&name) {
        Some(b) => b.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "no such image").into_response(),
    }
}

struct Server {
    base: String,
    served: Arc<Served>,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Server {
    let served = Arc::new(Served::default());
    let app = axum::Router::new().route("/img/{name}", axum::routing::get(serve_file)).with_state(served.clone());
    let (base, stop) = common::serve(app).await;
    Server { base, served, stop }
}

impl Server {
    fn add(&self, name: &str, bytes: Vec<u8>) -> String {
        self.served.files.lock().unwrap().insert(name.to_string(), bytes);
        format!("{}/img/{name}", self.base)
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn src(url: &str, checksum: Option<&str>) -> ImageSource {
    ImageSource { url: url.to_string(), checksum: checksum.map(|c| Checksum::parse(c).unwrap()) }
}

/// The cache in `dir`, bounded to `max_bytes`, with the 30 s download
/// timeout the tests use unless they test timeouts.
fn open(dir: &std::path::Path, max_bytes: u64) -> ImageCache {
    ImageCache::open(dir, max_bytes, Duration::from_secs(30)).unwrap()
}

/// Every file under `dir` (content, index, temp).
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["sha256", "index", "tmp"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            out.push(format!("{sub}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_coalescing_and_verification() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 100 << 20);
    let kernel = bytes(300_000, 1);
    let url = srv.add("kernel", kernel.clone());

    let a = cache.fetch(&src(&url, None)).await.unwrap();
    assert_eq!(std::fs::read(&a.path).unwrap(), kernel);
    assert_eq!(a.sha256, sha256(&kernel));
    assert_eq!(a.size, 300_000);
    let b = cache.fetch(&src(&url, None)).await.unwrap();
    assert_eq!(b.path, a.path);
    assert_eq!(srv.served.hits("kernel"), 1, "a hit needs no request");
    assert_eq!(cache.stats().hits, 1);

    // 20 concurrent fetches of a slow image: one request
    srv.served.delay_ms.store(300, Ordering::SeqCst);
    let ramdisk = bytes(1_000_000, 2);
    let rurl = srv.add("ramdisk", ramdisk.clone());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, s) = (cache.clone(), src(&rurl, Some(&format!("sha256:{}", sha256(&ramdisk)))));
        tasks.push(tokio::spawn(async move { cache.fetch(&s).await.unwrap() }));
    }
    let mut paths = std::collections::BTreeSet::new();
    for t in tasks {
        paths.insert(t.await.unwrap().path);
    }
    srv.served.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(srv.served.hits("ramdisk"), 1, "concurrent fetches share one download");
    assert_eq!(paths.len(), 1);

    // every checksum kind verifies; same content under another URL is one file
    let copy = srv.add("copy-of-kernel", kernel.clone());
    let md5 = hex::encode(md5::Md5::digest(&kernel));
    let sha512 = hex::encode(sha2::Sha512::digest(&kernel));
    for ck in [format!("md5:{md5}"), md5.clone(), format!("sha512:{sha512}"), sha512.clone(), sha256(&kernel)] {
        let got = cache.fetch(&src(&copy, Some(&ck))).await.unwrap_or_else(|e| panic!("{ck}: {e}"));
        assert_eq!(got.path, a.path, "content-addressed");
    }

    // a SHA-256 the cache holds is a hit whatever the URL: no request
    let mirror = srv.add("mirror-of-kernel", kernel.clone());
    let got = cache.fetch(&src(&mirror, Some(&format!("sha256:{}", sha256(&kernel))))).await.unwrap();
    assert_eq!(got.path, a.path);
    assert_eq!(srv.served.hits("mirror-of-kernel"), 0, "content already cached");

    // a mismatch of any kind is an error and leaves nothing behind
    let before = files(dir.path());
    let evil = srv.add("evil", bytes(5000, 3));
    for (algorithm, bad) in [("sha256", "0".repeat(64)), ("md5", "1".repeat(32)), ("sha512", "2".repeat(128))] {
        let e = cache.fetch(&src(&evil, Some(&format!("{algorithm}:{bad}")))).await.unwrap_err();
        assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&bad) && text.contains(algorithm) && text.contains(&evil), "{e}");
        assert!(!e.is_retryable());
        assert_eq!(files(dir.path()), before, "a failed {algorithm} verification left files");
    }
    assert_eq!(srv.served.hits("evil"), 3, "a mismatch is not retried");

    // 404, bad scheme, bad checksum strings
    let e = cache.fetch(&src(&format!("{}/img/missing", srv.base), None)).await.unwrap_err();
    assert_eq!(e, ImageError::Http { url: format!("{}/img/missing", srv.base), status: 404 });
    assert!(e.to_string().contains("404") && e.to_string().contains("/img/missing"));
    for url in ["ftp://x/y", "file://relative/path", "file:///a/../etc/passwd", "glance://uuid"] {
        assert!(matches!(cache.fetch(&src(url, None)).await, Err(ImageError::BadUrl { .. })), "{url}");
    }
    for ck in ["sha256:xyz", "sha1:0123", "12345", "md5:", &format!("sha256:{md5}")] {
        assert!(matches!(Checksum::parse(ck), Err(ImageError::BadChecksum(_))), "{ck}");
    }
    let _ = srv.stop.send(());
}

#[tokio::test]
async fn retries_server_errors_and_refuses_truncated_bodies() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 100 << 20);
    let img = bytes(10_000, 4);
    let url = srv.add("flaky", img.clone());
    srv.served.fail_first.lock().unwrap().insert("flaky".into(), 2);
    let got = cache.fetch(&src(&url, None)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), img);
    assert_eq!(srv.served.hits("flaky"), 3, "two 503s, then 200");

    let url = srv.add("down", img.clone());
    srv.served.fail_first.lock().unwrap().insert("down".into(), 100);
    let e = cache.fetch(&src(&url, None)).await.unwrap_err();
    assert_eq!(e, ImageError::Http { url: url.clone(), status: 503 });
    assert!(e.is_retryable());
    assert_eq!(srv.served.hits("down"), ATTEMPTS as usize, "bounded attempts");

    // a server that promises 100000 bytes and sends 1000
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_url = format!("http://{}/short", raw.local_addr().unwrap());
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = raw.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n").await;
            let _ = s.write_all(&[7u8; 1000]).await;
            let _ = s.shutdown().await;
        }
    });
    let e = cache.fetch(&src(&raw_url, None)).await.unwrap_err();
    assert!(matches!(e, ImageError::Transfer { .. }) && e.to_string().contains(&raw_url), "{e}");
    assert!(e.is_retryable());
    assert_eq!(accepts.load(Ordering::SeqCst), ATTEMPTS as usize, "a short body is retried, a bounded number of times");
    server.abort();
    let left: Vec<String> = files(dir.path()).into_iter().filter(|f| !f.contains(&got.sha256)).collect();
    assert!(left.iter().all(|f| !f.starts_with("tmp/")), "a partial download stayed: {left:?}");
    assert_eq!(left.iter().filter(|f| f.starts_with("sha256/")).count(), 0, "a truncated image was cached: {left:?}");
    let _ = srv.stop.send(());
}

#[tokio::test]
async fn evicts_least_recently_used_unpinned_images_and_survives_a_restart() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 250_000);
    let urls: Vec<String> = (0..4).map(|i| srv.add(&format!("i{i}"), bytes(100_000, 10 + i as u8))).collect();

    let pinned = cache.fetch(&src(&urls[0], None)).await.unwrap(); // kept alive: pinned
    drop(cache.fetch(&src(&urls[1], None)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(cache.fetch(&src(&urls[2], None)).await.unwrap());
    // 300 KB > 250 KB: the least recently used unpinned one (i1) went
    assert_eq!(cache.stats().evictions, 1);
    assert!(pinned.path.exists(), "a pinned image was evicted");
    drop(cache.fetch(&src(&urls[1], None)).await.unwrap());
    assert_eq!(srv.served.hits("i1"), 2, "i1 had been evicted");
    assert_eq!(srv.served.hits("i2"), 1);
    assert!(cache.stats().bytes <= 250_000 + 100_000, "{:?}", cache.stats());

    // an image larger than the whole bound is served, then evicted once unused
    let big_url = srv.add("big", bytes(400_000, 99));
    let big = cache.fetch(&src(&big_url, None)).await.unwrap();
    assert_eq!(big.size, 400_000);
    assert!(big.path.exists());
    let big_path = big.path.clone();
    drop(big);
    assert!(!big_path.exists(), "over-bound image kept after its last use");

    // restart: entries and index found again, a leftover temp file removed
    let kept: Vec<String> = files(dir.path()).into_iter().filter(|f| f.starts_with("sha256/")).collect();
    drop(pinned);
    drop(cache);
    std::fs::write(dir.path().join("tmp/leftover"), b"partial").unwrap();
    let cache = open(dir.path(), 250_000);
    assert!(!dir.path().join("tmp/leftover").exists());
    assert_eq!(cache.stats().images, kept.len());
    let before = srv.served.hits("i0");
    cache.fetch(&src(&urls[0], None)).await.unwrap();
    assert_eq!(srv.served.hits("i0"), before, "found again after a restart, no download");

    // file:// sources
    let local = dir.path().join("local.img");
    std::fs::write(&local, bytes(2048, 5)).unwrap();
    let f = cache.fetch(&src(&format!("file://{}", local.display()), Some(&sha256(&bytes(2048, 5))))).await.unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), bytes(2048, 5));
    let e = cache.fetch(&src(&format!("file://{}/nope", dir.path().display()), None)).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let _ = srv.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_download_fails_every_waiter_and_the_next_fetch_tries_again() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 100 << 20);
    let img = bytes(50_000, 6);
    let url = srv.add("broken", img.clone());
    srv.served.fail_first.lock().unwrap().insert("broken".into(), 100);
    srv.served.delay_ms.store(50, Ordering::SeqCst);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, s) = (cache.clone(), src(&url, None));
            tokio::spawn(async move { cache.fetch(&s).await })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e, ImageError::Http { url: url.clone(), status: 503 });
    }
    assert_eq!(srv.served.hits("broken"), ATTEMPTS as usize, "one download for all waiters");
    assert_eq!(cache.stats().downloads, 1);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

    // the source recovers: a later fetch downloads again
    srv.served.fail_first.lock().unwrap().clear();
    let got = cache.fetch(&src(&url, None)).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), img);
    assert_eq!(srv.served.hits("broken"), ATTEMPTS as usize + 1);
    let _ = srv.stop.send(());
}

#[tokio::test]
async fn unreachable_and_slow_servers_are_clear_retryable_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path(), 100 << 20, Duration::from_millis(300)).unwrap();

    // nothing listens on the port
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/kernel", closed.local_addr().unwrap());
    drop(closed);
    let e = cache.fetch(&src(&url, None)).await.unwrap_err();
    assert!(matches!(e, ImageError::Transfer { .. }) && e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&url) && e.to_string().contains("refused"), "{e}");

    // a server slower than the download timeout
    let srv = server().await;
    srv.served.delay_ms.store(5_000, Ordering::SeqCst);
    let url = srv.add("slow", bytes(1000, 7));
    let e = cache.fetch(&src(&url, None)).await.unwrap_err();
    assert!(matches!(e, ImageError::Transfer { .. }) && e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&url) && e.to_string().contains("timed out"), "{e}");
    assert_eq!(srv.served.hits("slow"), ATTEMPTS as usize);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    let _ = srv.stop.send(());
}

#[tokio::test]
async fn use_order_survives_a_restart() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let (a, b) = (srv.add("a", bytes(100_000, 20)), srv.add("b", bytes(100_000, 21)));
    drop(cache.fetch(&src(&a, None)).await.unwrap());
    // apart enough for any file system's mtime resolution
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(cache.fetch(&src(&b, None)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(cache.fetch(&src(&a, None)).await.unwrap()); // a hit: a is now the more recent
    drop(cache);

    // room for one: the one used least recently before the restart goes
    let cache = open(dir.path(), 150_000);
    assert_eq!(
        cache.stats(),
        ferric_deploy::image::cache::CacheStats { hits: 0, downloads: 0, evictions: 1, bytes: 100_000, images: 1 }
    );
    drop(cache.fetch(&src(&a, None)).await.unwrap());
    assert_eq!(srv.served.hits("a"), 1, "a was kept");
    drop(cache.fetch(&src(&b, None)).await.unwrap());
    assert_eq!(srv.served.hits("b"), 2, "b was evicted");
    let _ = srv.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_larger_than_the_cache_reaches_every_waiter_then_goes() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 50_000);
    srv.served.delay_ms.store(100, Ordering::SeqCst);
    let url = srv.add("huge", bytes(200_000, 30));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (cache, s) = (cache.clone(), src(&url, None));
            tokio::spawn(async move { cache.fetch(&s).await.unwrap() })
        })
        .collect();
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(srv.served.hits("huge"), 1);
    for img in &held {
        assert_eq!(std::fs::metadata(&img.path).unwrap().len(), 200_000, "pinned while held");
    }
    let path = held[0].path.clone();
    held.truncate(1);
    assert!(path.exists(), "one user left: still pinned");
    drop(held);
    assert!(!path.exists(), "evicted once unused");
    assert_eq!(cache.stats().bytes, 0);
    let _ = srv.stop.send(());
}

#[tokio::test]
async fn file_sources_only_under_the_allowed_roots_by_their_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("ok.img"), bytes(4096, 1)).unwrap();
    std::fs::write(outside.join("secret"), b"root:x:0:0").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("link.img")).unwrap();
    let options = CacheOptions {
        max_bytes: 1 << 20,
        download_timeout: Duration::from_secs(30),
        max_concurrent_downloads: 2,
        file_roots: Some(vec![root.clone()]),
    };
    let cache = ImageCache::open_with(dir.path().join("cache"), options).unwrap();
    let url = |p: &std::path::Path| format!("file://{}", p.display());

    let ok = cache.fetch(&src(&url(&root.join("ok.img")), None)).await.unwrap();
    assert_eq!(std::fs::read(&ok.path).unwrap(), bytes(4096, 1));
    for (path, what) in [(outside.join("secret"), "a file outside"), (root.join("link.img"), "a link out of the root")]
    {
        let e = cache.fetch(&src(&url(&path), None)).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImageError::BadUrl { .. }), "{what}: {e:?}");
        assert!(
            msg.contains(&outside.join("secret").display().to_string()) && msg.contains("file_url_allowed_roots"),
            "{msg}"
        );
        assert!(msg.contains(&root.display().to_string()), "the message lists the roots: {msg}");
        assert_eq!(cache.check_allowed(&src(&url(&path), None)).await.unwrap_err(), e, "validation says the same");
    }
    // `..` cannot climb out either (refused before any path is resolved)
    let climb = format!("file://{}/../elsewhere/secret", root.display());
    assert!(cache.fetch(&src(&climb, None)).await.is_err());
    assert_eq!(cache.stats().images, 1, "nothing from outside was copied in");
    cache.check_allowed(&src(&url(&root.join("ok.img")), None)).await.unwrap();
    cache.check_allowed(&src("https://images.example/x.img", None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_wait_for_a_slot() {
    let srv = server().await;
    srv.served.delay_ms.store(300, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let options = CacheOptions {
        max_bytes: 10 << 20,
        download_timeout: Duration::from_secs(30),
        max_concurrent_downloads: 2,
        file_roots: None,
    };
    let cache = ImageCache::open_with(dir.path(), options).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6u8 {
        let url = srv.add(&format!("s{i}"), bytes(10_000, i));
        let cache = cache.clone();
        set.spawn(async move { cache.fetch(&src(&url, None)).await.map(|c| c.size) });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 10_000);
    }
    assert_eq!(cache.stats().downloads, 6);
    assert_eq!(srv.served.max_active.load(Ordering::SeqCst), 2, "at most two downloads at once");
    let _ = srv.stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_flight_counts_against_the_bound_from_its_start() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1_000_000);
    let old_url = srv.add("old", bytes(600_000, 1));
    let old = cache.fetch(&src(&old_url, None)).await.unwrap();
    let old_path = old.path.clone();
    drop(old);
    assert!(old_path.exists());
    let new_url = srv.add("new", bytes(600_000, 2));
    let release = Arc::new(tokio::sync::Notify::new());
    srv.served.stall.lock().unwrap().insert("new".into(), release.clone());
    let fetch = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.fetch(&src(&new_url, None)).await.map(|c| c.size) })
    };
    // half of the new image is on disk and its body stalls: the old image
    // must already have made room (600 KB held + 600 KB coming > 1 MB)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while old_path.exists() {
        assert!(std::time::Instant::now() < deadline, "the old image was not evicted while the new one downloads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.stats().evictions, 1);
    release.notify_one();
    assert_eq!(fetch.await.unwrap().unwrap(), 600_000);
    assert_eq!(cache.stats().bytes, 600_000);
    let _ = srv.stop.send(());
}
