//! End to end through a conductor's media services: kernel and ramdisk
//! served over HTTP on loopback → the image cache (checksums verified) → a
//! boot ISO published in the conductor's HTTP root, shared by the nodes
//! that use it → downloaded by URL as a BMC would → booted in QEMU. And
//! the parameters floppy the same way, read back with mtools.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{boot, fixtures, qemu_available, require, serve};
use ferric_common::config::Config;
use ferric_deploy::image::cache::{Checksum, ImageSource};
use ferric_deploy::media::Media;
use ferric_deploy::publish::http::router;
use sha2::Digest;
use uuid::Uuid;

fn source(base: &str, fx: &Path, name: &str) -> ImageSource {
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(fx.join(name)).unwrap()));
    ImageSource { url: format!("{base}/{name}"), checksum: Some(Checksum::Sha256(sha)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_iso_from_http_sources_published_downloaded_and_booted() {
    require("mtype");
    let fx = fixtures();
    let data = tempfile::tempdir().unwrap();
    let (images_url, stop_images) =
        serve(axum::Router::new().fallback_service(tower_http::services::ServeDir::new(&fx))).await;

    let mut cfg = Config { data_dir: data.path().to_path_buf(), ..Config::default() };
    cfg.deploy.uefi_loader = fx.join("BOOTX64.EFI");
    let (root_url, stop_root) =
        serve(axum::Router::new().nest_service("/httpboot", router(cfg.http_server_root()))).await;
    std::fs::create_dir_all(cfg.http_server_root()).unwrap();
    let media = Media::from_config(&cfg, &format!("{root_url}/httpboot")).await.unwrap();
    assert_eq!(media.publisher, "http");

    let kernel = source(&images_url, &fx, "vmlinuz");
    let ramdisk = source(&images_url, &fx, "initrd");
    let params = "console=ttyS0 panic=1 ferric.test=media";
    let nodes: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut first = None;
    for n in &nodes {
        let (id, published) = media.acquire_boot_iso(*n, &kernel, &ramdisk, params).await.unwrap();
        let first = first.get_or_insert_with(|| (id.clone(), published.clone()));
        assert_eq!(first.0, id, "one content id for one image");
        assert_eq!(first.1.url, published.url);
    }
    let (id, published) = first.unwrap();
    assert_eq!(media.images.stats().downloads, 2, "kernel and ramdisk downloaded once each");
    assert_eq!(media.artefacts.boot_iso_users(&id).await.unwrap().len(), 3);
    assert!(published.url.starts_with(&format!("{root_url}/httpboot/boot-{id}.iso")), "{}", published.url);

    // a bad checksum is refused before anything is built
    let bad = ImageSource { url: kernel.url.clone(), checksum: Some(Checksum::Sha256("0".repeat(64))) };
    let e = media.acquire_boot_iso(Uuid::new_v4(), &bad, &ramdisk, params).await.unwrap_err();
    assert!(!e.is_retryable() && e.to_string().contains("checksum mismatch"), "{e}");

    // what a BMC does: GET the URL
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::new();
    let iso = c.get(&published.url).send().await.unwrap();
    assert_eq!(iso.status(), 200);
    let iso_path = data.path().join("downloaded.iso");
    std::fs::write(&iso_path, iso.bytes().await.unwrap()).unwrap();

    // the parameters floppy, published and read back
    let mut p = BTreeMap::new();
    p.insert("ipa-agent-token".to_string(), "tok-123".to_string());
    p.insert("ipa-api-url".to_string(), "http://10.0.2.2:6385".to_string());
    let floppy = media.publish_parameters_floppy(nodes[0], &p).await.unwrap();
    let img = data.path().join("floppy.img");
    std::fs::write(&img, c.get(&floppy.url).send().await.unwrap().bytes().await.unwrap()).unwrap();
    let out = std::process::Command::new("mtype").arg("-i").arg(&img).arg("::/parameters.txt").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ipa-agent-token=tok-123\nipa-api-url=http://10.0.2.2:6385\n");
    assert!(media.publish_parameters_floppy(nodes[0], &BTreeMap::from([("a b".into(), "c".into())])).await.is_err());

    if qemu_available() {
        let console = tokio::task::spawn_blocking(move || boot(&iso_path, false)).await.unwrap();
        let line = console.lines().find(|l| l.contains("FERRIC-RAMDISK-UP")).unwrap();
        assert!(line.contains("ferric.test=media"), "{line}");
    }

    // the last of the three releases deletes the ISO
    for (k, n) in nodes.iter().enumerate() {
        assert_eq!(media.release_boot_iso(*n, &id).await.unwrap(), 2 - k);
    }
    assert_eq!(c.get(&published.url).send().await.unwrap().status(), 404);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = (stop_images.send(()), stop_root.send(()));
}
