//! A real OpenStack Swift on loopback (Debian's packages: proxy with
//! tempauth + tempurl, account/container/object servers, memcached),
//! started by scripts/swift-lab.sh on free ports and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_common::config::SwiftConfig;

use crate::free_port;

pub const TEMP_URL_KEY: &str = "ferric-test-temp-url-key";

pub struct SwiftLab {
    dir: tempfile::TempDir,
    pub proxy: u16,
    memcached: u16,
    script: PathBuf,
    env: Vec<(String, String)>,
}

impl SwiftLab {
    pub fn start() -> SwiftLab {
        assert!(
            Command::new("sh").args(["-c", "command -v swift-proxy-server"]).status().unwrap().success(),
            "swift-proxy-server is missing: scripts/deps.sh installs Debian's swift packages"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("scripts/swift-lab.sh");
        let (proxy, memcached) = (free_port(), free_port());
        let env = vec![
            ("SWIFT_LAB".to_string(), dir.path().display().to_string()),
            ("SWIFT_PROXY_PORT".to_string(), proxy.to_string()),
            ("SWIFT_ACCOUNT_PORT".to_string(), free_port().to_string()),
            ("SWIFT_CONTAINER_PORT".to_string(), free_port().to_string()),
            ("SWIFT_OBJECT_PORT".to_string(), free_port().to_string()),
            ("SWIFT_MEMCACHED_PORT".to_string(), memcached.to_string()),
        ];
        let lab = SwiftLab { dir, proxy, memcached, script, env };
        let out = lab.run("start");
        assert!(
            out.status.success(),
            "swift-lab.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            lab.logs()
        );
        lab
    }

    fn run(&self, what: &str) -> std::process::Output {
        Command::new(&self.script).arg(what).envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["proxy", "account", "container", "object", "memcached"] {
            let p = self.dir.path().join(format!("log/{f}.log"));
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            s.push_str(&format!("--- {f}.log (newest first)\n{}\n", tail.join("\n")));
        }
        s
    }

    pub fn config(&self) -> SwiftConfig {
        SwiftConfig {
            auth_url: format!("http://127.0.0.1:{}/auth/v1.0", self.proxy),
            user: "test:tester".into(),
            key: "testing".into(),
            temp_url_key: TEMP_URL_KEY.into(),
            set_temp_url_key: true,
            swift_ilo_container: format!("ferric-{}", &uuid::Uuid::new_v4().to_string()[..8]),
            ..SwiftConfig::default()
        }
    }

    /// Drops every tempauth token (they live only in memcached).
    pub fn flush_tokens(&self) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.memcached)).unwrap();
        s.write_all(b"flush_all\r\n").unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"OK"), "memcached: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
}

impl Drop for SwiftLab {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}

impl SwiftLab {
    /// (storage URL, token) for checking what a test's subject did.
    pub async fn token(&self) -> (String, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/auth/v1.0", self.proxy))
            .header("X-Auth-User", "test:tester")
            .header("X-Auth-Key", "testing")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let h = r.headers();
        (h["x-storage-url"].to_str().unwrap().to_string(), h["x-auth-token"].to_str().unwrap().to_string())
    }
}
