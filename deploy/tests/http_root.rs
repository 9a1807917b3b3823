//! The HTTP root publisher and its server, and the shared-ISO / floppy
//! bookkeeping on top of it: served over real HTTP on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferric_deploy::publish::Store;
use ferric_deploy::publish::artefacts::{Artefacts, USAGE_COUNT, boot_iso_name};
use ferric_deploy::publish::http::{HttpRootStore, router};
use uuid::Uuid;

struct Server {
    base: String,
    root: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve() -> Server {
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest_service("/httpboot", router(root.path().to_path_buf()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server { base: format!("http://{addr}/httpboot"), root, stop, task }
}

impl Server {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
    fn store(&self) -> Arc<HttpRootStore> {
        Arc::new(HttpRootStore::new(self.root.path(), &self.base).unwrap())
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A raw request line, so `..` and `%2e` reach the server unnormalised.
async fn raw_get(base: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base.trim_start_matches("http://").split('/').next().unwrap();
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn serves_objects_with_range_and_refuses_traversal_listing_and_private_files() {
    let srv = serve().await;
    let store = srv.store();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.put_bytes("iso/a.iso", body.clone(), None).await.unwrap();
    let url = store.url("iso/a.iso", Duration::from_secs(60)).unwrap();
    assert_eq!(url, format!("{}/iso/a.iso", srv.base));
    let c = client();

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    let r = c.get(&url).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[100..200]);
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(c.post(&url).send().await.unwrap().status(), 405);

    // a file outside the root, a symlink to it inside, private objects
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), srv.root.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), srv.root.path().join("linkdir")).unwrap();
    store.put_bytes(".users/x/y", b"private".to_vec(), None).await.unwrap();
    store.put_bytes("f.img", b"floppy".to_vec(), Some(Duration::from_secs(600))).await.unwrap();
    let parent_name = srv.root.path().file_name().unwrap().to_str().unwrap().to_string();
    for path in [
        "/httpboot/../secret".to_string(),
        "/httpboot/iso/../iso/a.iso".to_string(),
        "/httpboot/%2e%2e/secret".to_string(),
        "/httpboot/%2E%2E%2Fsecret".to_string(),
        "/httpboot/iso%2fa.iso".to_string(),
        "/httpboot/iso%5ca.iso".to_string(),
        "/httpboot/iso/a.iso%00".to_string(),
        format!("/httpboot/..%2f..%2f{parent_name}%2fiso%2fa.iso"),
        "/httpboot/link".to_string(),
        "/httpboot/linkdir/secret".to_string(),
        "/httpboot/".to_string(),
        "/httpboot/iso".to_string(),
        "/httpboot/iso/".to_string(),
        "/httpboot/.users/x/y".to_string(),
        "/httpboot/.meta/f.img.json".to_string(),
        "/httpboot/%2emeta/f.img.json".to_string(),
        "/httpboot/nope".to_string(),
        "/httpboot/iso/a.iso/".to_string(),
    ] {
        assert_eq!(raw_get(&srv.base, &path).await, 404, "{path}");
    }
    assert_eq!(raw_get(&srv.base, "/httpboot/iso/a.iso").await, 200);
    assert_eq!(raw_get(&srv.base, "/httpboot/f.img").await, 200);
    assert!(store.url(".users/x/y", Duration::from_secs(1)).is_err(), "no URL for private objects");
    for bad in ["", "a//b", "../x", "a/./b", "a\\b", "/abs"] {
        assert!(store.put_bytes(bad, vec![1], None).await.is_err(), "{bad:?} accepted");
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn partial_writes_and_builds_of_a_killed_process_are_removed_at_start() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("sub")).unwrap();
    for leftover in [".tmp-0123", "sub/.tmp-4567"] {
        std::fs::write(root.path().join(leftover), b"half an iso").unwrap();
    }
    std::fs::write(root.path().join("sub/kept.iso"), b"whole").unwrap();
    std::fs::write(scratch.path().join(".build-89ab-boot-x.iso"), b"half").unwrap();
    std::fs::write(scratch.path().join(".tmp-iso-cdef"), b"half").unwrap();
    let store = Arc::new(HttpRootStore::new(root.path(), "http://127.0.0.1:1/httpboot").unwrap());
    let _a = Artefacts::new(store.clone(), Duration::from_secs(1), Duration::from_secs(1), scratch.path().into());
    let mut left = walk(root.path());
    left.sort();
    assert_eq!(left, vec![root.path().join("sub/kept.iso").display().to_string()]);
    assert!(walk(scratch.path()).is_empty());
    assert_eq!(store.list("").await.unwrap(), vec!["sub/kept.iso"]);
}

#[tokio::test]
async fn floppies_expire_after_their_ttl() {
    let srv = serve().await;
    let store = srv.store();
    let a = Artefacts::new(
        store.clone(),
        // long enough that a loaded machine reads it back within its life
        Duration::from_secs(4),
        Duration::from_secs(60),
        srv.root.path().join(".scratch"),
    );
    let node = Uuid::new_v4();
    let published = std::time::Instant::now();
    let f1 = a.publish_floppy(node, b"floppy one".to_vec()).await.unwrap();
    let f2 = a.publish_floppy(node, b"floppy two".to_vec()).await.unwrap();
    assert_ne!(f1.name, f2.name, "a fresh name per deploy");
    assert!(f1.name.starts_with(&format!("floppy-{node}-")) && f1.name.len() > 50, "{}", f1.name);
    let c = client();
    assert_eq!(c.get(&f1.url).send().await.unwrap().bytes().await.unwrap().as_ref(), b"floppy one");
    assert_eq!(a.expire().await.unwrap(), 0, "nothing expired yet");
    a.remove_floppy(&f2.name).await.unwrap();
    assert_eq!(c.get(&f2.url).send().await.unwrap().status(), 404);

    tokio::time::sleep(Duration::from_millis(5100).saturating_sub(published.elapsed())).await;
    // past its TTL it is gone for readers before any clean-up pass ran
    assert_eq!(c.get(&f1.url).send().await.unwrap().status(), 404);
    assert!(!store.exists(&f1.name).await.unwrap());
    assert_eq!(a.expire().await.unwrap(), 1);
    let left: Vec<_> = walk(srv.root.path());
    assert!(left.is_empty(), "expiry left files behind: {left:?}");
    srv.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn one_iso_per_image_shared_by_its_nodes_and_deleted_by_the_last_release() {
    let srv = serve().await;
    let store = srv.store();
    let a = Arc::new(Artefacts::new(
        store.clone(),
        Duration::from_secs(600),
        Duration::from_secs(600),
        srv.root.path().join(".scratch"),
    ));
    let builds = Arc::new(AtomicUsize::new(0));
    let ids = ["a".repeat(64), "b".repeat(64)];
    let nodes: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();

    // 100 nodes on 2 images, acquiring concurrently
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (a, builds, id, node) = (a.clone(), builds.clone(), ids[i % 2].clone(), *node);
        tasks.push(tokio::spawn(async move {
            let content = format!("iso {id}");
            a.acquire_boot_iso(node, &id, move |path| {
                builds.fetch_add(1, Ordering::SeqCst);
                std::fs::write(path, content).map_err(|e| e.to_string())
            })
            .await
            .unwrap()
        }));
    }
    let mut urls = std::collections::BTreeSet::new();
    for t in tasks {
        urls.insert(t.await.unwrap().url);
    }
    assert_eq!(builds.load(Ordering::SeqCst), 2, "one build per image");
    assert_eq!(urls.len(), 2);
    let isos: Vec<String> = store.list("boot-").await.unwrap();
    assert_eq!(isos, vec![boot_iso_name(&ids[0]), boot_iso_name(&ids[1])]);
    for id in &ids {
        assert_eq!(a.boot_iso_users(id).await.unwrap().len(), 50);
        assert_eq!(store.metadata(&boot_iso_name(id), USAGE_COUNT).await.unwrap().as_deref(), Some("50"));
        let body = client().get(a.boot_iso_url(id).unwrap()).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, format!("iso {id}"));
    }

    let inv = a.inventory().await.unwrap();
    assert_eq!(inv.boot_isos, ids.to_vec());
    assert_eq!(inv.uses.len(), 100);
    assert!(inv.floppies.is_empty());

    // a retried acquire does not count twice; releasing twice neither
    let never = |_: &std::path::Path| -> Result<(), String> { panic!("no rebuild for a published ISO") };
    a.acquire_boot_iso(nodes[0], &ids[0], never).await.unwrap();
    assert_eq!(a.boot_iso_users(&ids[0]).await.unwrap().len(), 50);
    assert_eq!(a.release_boot_iso(nodes[0], &ids[0]).await.unwrap(), 49);
    assert_eq!(a.release_boot_iso(nodes[0], &ids[0]).await.unwrap(), 49);
    assert_eq!(store.metadata(&boot_iso_name(&ids[0]), USAGE_COUNT).await.unwrap().as_deref(), Some("49"));

    // release the rest of image a: deleted with the last one; b untouched
    let rest: Vec<Uuid> = nodes.iter().enumerate().filter(|(i, _)| i % 2 == 0).skip(1).map(|(_, n)| *n).collect();
    for (k, node) in rest.iter().enumerate() {
        let left = a.release_boot_iso(*node, &ids[0]).await.unwrap();
        assert_eq!(left, 48 - k);
        assert_eq!(store.exists(&boot_iso_name(&ids[0])).await.unwrap(), left > 0);
    }
    assert_eq!(client().get(a.boot_iso_url(&ids[0]).unwrap()).send().await.unwrap().status(), 404);
    assert_eq!(a.boot_iso_users(&ids[1]).await.unwrap().len(), 50);
    assert!(store.exists(&boot_iso_name(&ids[1])).await.unwrap());

    // a failed build leaves neither an ISO nor a use behind
    let id = "c".repeat(64);
    let err = a.acquire_boot_iso(nodes[0], &id, |_| Err("no kernel".into())).await.unwrap_err().to_string();
    assert!(err.contains("no kernel"), "{err}");
    assert!(a.boot_iso_users(&id).await.unwrap().is_empty());
    assert!(!store.exists(&boot_iso_name(&id)).await.unwrap());
    assert!(a.acquire_boot_iso(nodes[0], "XYZ", never).await.is_err(), "bad content id refused");
    srv.shutdown().await;
}
