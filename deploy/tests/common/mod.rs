//! Shared by the boot tests: the fixtures and a QEMU runner.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Kernel, busybox ramdisk and GRUB loader (scripts/boot-fixtures.sh).
pub fn fixtures() -> PathBuf {
    let dir = repo_root().join("target/boot-fixtures");
    let out =
        Command::new(repo_root().join("scripts/boot-fixtures.sh")).arg(&dir).output().expect("run boot-fixtures.sh");
    assert!(out.status.success(), "scripts/boot-fixtures.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

pub fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map(|o| o.status.success()).unwrap_or(false)
}

pub fn require(tool: &str) {
    assert!(have(tool), "{tool} is missing: run scripts/deps.sh");
}

/// Boots `iso` as a CD in QEMU (TCG) and returns the serial console once
/// the ramdisk reported, or panics with the console after the deadline.
pub fn boot(iso: &Path, uefi: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-net",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-cdrom")
    .arg(iso)
    .args(["-boot", "d"]);
    if uefi {
        let vars = dir.path().join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF is missing: run scripts/deps.sh");
        cmd.args(["-machine", "q35"])
            .args(["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start qemu");
    let deadline = Instant::now() + Duration::from_secs(240);
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    loop {
        if read().contains("FERRIC-RAMDISK-UP") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            // the ramdisk powers off right after printing; read once more
            if read().contains("FERRIC-RAMDISK-UP") {
                break;
            }
            panic!("qemu exited ({status}) before the ramdisk ran; console:\n{}", read());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no FERRIC-RAMDISK-UP within 240 s; console:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let console = read();
    let tail: Vec<&str> = console.lines().rev().take(15).collect();
    eprintln!("console (last lines, newest first):\n{}", tail.join("\n"));
    console
}

pub fn qemu_available() -> bool {
    if have("qemu-system-x86_64") {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "qemu-system-x86_64 is missing under CI: scripts/deps.sh installs it");
    eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/deps.sh installs it)");
    false
}

/// Serves `app` on a free loopback port; returns its base URL and the
/// sender that stops it.
pub async fn serve(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    (base, stop)
}
