//! Test harness: real peers on loopback, started per test and stopped when
//! dropped.
//!
//! * [`Postgres`]: a throw-away PostgreSQL cluster (`initdb` + `pg_ctl`, as
//!   the `postgres` user when run as root), on a free port.
//! * [`Ferric`]: the real `ferric` binary in all-in-one mode, on a free
//!   port, with SQLite or a PostgreSQL URL; its log is printed when a test
//!   fails while it runs.
//! * [`swift::SwiftLab`]: a real OpenStack Swift (tempauth, tempurl).
//! * [`redfish::SushyLab`]: a real Redfish BMC (sushy-tools' emulator).
//! * [`ramdisk::RamdiskSim`]: simulated deploy ramdisks (the IPA agent
//!   protocol) for the machines of a Redfish emulator.
//! * [`otlp::Collector`]: an OTLP/gRPC trace receiver, what Ferric's spans
//!   are exported to.
//! * [`Baremetal`]: the real `baremetal` CLI (python-ironicclient) from the
//!   venv `scripts/deps.sh` creates (`FERRIC_TEST_VENV`).
//! * [`neutron::NetworkStub`]: the networking endpoint metalsmith's output
//!   asks for the instance's ports (it knows none).

pub mod cluster;
pub mod keystone;
pub mod neutron;
pub mod otlp;
pub mod ramdisk;
pub mod redfish;
pub mod swift;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// The directory of the workspace's built binaries (next to this test's
/// own executable: `target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    if dir.ends_with("deps") { dir.parent().expect("profile dir").to_path_buf() } else { dir.to_path_buf() }
}

pub fn ferric_bin() -> PathBuf {
    let p = bin_dir().join("ferric");
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        p.display()
    );
    p
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "{what} not ready after {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tcp_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

// ---- PostgreSQL -----------------------------------------------------------

pub struct Postgres {
    pub url: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_root: bool,
}

fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect("PostgreSQL server binaries not found under /usr/lib/postgresql (run scripts/deps.sh)")
}

/// A PostgreSQL server's TLS: its certificate and key (PEM files).
pub struct PgTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_inner(None)
    }

    /// A server with `ssl = on` that accepts TCP connections over TLS
    /// only (pg_hba: `hostssl`, and `hostnossl ... reject`).
    pub fn start_tls(tls: PgTls<'_>) -> Postgres {
        Postgres::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<PgTls<'_>>) -> Postgres {
        let bin = pg_bin_dir();
        let as_root = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new().prefix("ferric-pg").tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        let run = |cmd: String| {
            let out = if as_root {
                std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
                    .expect("chmod");
                Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &cmd]).output()
            } else {
                Command::new("sh").args(["-c", &cmd]).output()
            }
            .expect("run postgres tool");
            assert!(
                out.status.success(),
                "`{cmd}` failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let d = dir.path().display();
        run(format!(
            "{}/initdb -D {} -A trust -U postgres -E UTF8 --no-sync >/dev/null",
            bin.display(),
            data.display()
        ));
        let mut ssl = String::new();
        if let Some(tls) = tls {
            // the key must belong to the server's user and be private to it
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(tls.cert, &cert).expect("copy the server certificate");
            std::fs::copy(tls.key, &key).expect("copy the server key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
            if as_root {
                let out = Command::new("chown").args(["postgres"]).arg(&cert).arg(&key).output().expect("chown");
                assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("pg_hba.conf");
            ssl = format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display());
        }
        run(format!(
            "{}/pg_ctl -D {} -l {d}/postgres.log -w -o \"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off{ssl}\" start >/dev/null",
            bin.display(),
            data.display()
        ));
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Postgres { url, dir, bin, as_root }
    }

    /// A fresh database in this cluster.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port().to_string(),
                "-U",
                "postgres",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .expect("psql");
        assert!(out.status.success(), "create database: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|s| s.split('/').next()).and_then(|p| p.parse().ok()).expect("port in url")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let cmd = format!(
            "{}/pg_ctl -D {}/data -m immediate stop >/dev/null 2>&1",
            self.bin.display(),
            self.dir.path().display()
        );
        let _ = if self.as_root {
            Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", &cmd]).status()
        } else {
            Command::new("sh").args(["-c", &cmd]).status()
        };
    }
}

// ---- Ferric -------------------------------------------------------------

pub struct Ferric {
    pub endpoint: String,
    pub port: u16,
    pub process: Process,
    /// Last, so the process stops before its data goes.
    pub data_dir: tempfile::TempDir,
}

impl Ferric {
    /// Start `ferric all-in-one` on a free port; `database_url` None = SQLite
    /// in its data dir. `env` adds FERRIC_* settings.
    pub fn start(database_url: Option<&str>, env: &[(&str, &str)]) -> Ferric {
        let data_dir = tempfile::Builder::new().prefix("ferric-aio").tempdir().expect("tempdir");
        let port = free_port();
        let mut args = vec![
            "all-in-one".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.path().display().to_string(),
            "--conductor-id".into(),
            "conductor-1".into(),
        ];
        if let Some(u) = database_url {
            args.push("--database-url".into());
            args.push(u.into());
        }
        let process = Process::start("ferric", data_dir.path(), args, env, Some(port));
        Ferric { endpoint: format!("http://127.0.0.1:{port}"), port, process, data_dir }
    }

    /// SIGKILL the process (a crash), keeping its data dir.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and wait for a clean exit; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.process.stop()
    }

    /// Kill and start again with the same data dir and port (a crash and
    /// a restart).
    pub fn restart(&mut self) {
        self.restart_after(|_| {});
    }

    /// Kill, run `meanwhile` on the data dir (lose part of it, as a new
    /// pod with a fresh volume would), start again.
    pub fn restart_after(&mut self, meanwhile: impl FnOnce(&Path)) {
        self.process.kill();
        wait_until("port release", Duration::from_secs(10), || !tcp_open(self.port));
        meanwhile(self.data_dir.path());
        self.process.spawn();
    }
}

// ---- etcd -------------------------------------------------------------------

/// A single-member etcd (Debian's 3.4) on free loopback ports.
pub struct Etcd {
    pub endpoint: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: Option<EtcdTls>,
}

/// etcd's client TLS: its certificate and key, and the CA its clients'
/// certificates must come from (`--client-cert-auth`); clients use
/// `client_cert`/`client_key` (etcdctl for the readiness check).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new().prefix("ferric-etcd").tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut e = Etcd {
            endpoint: format!("http://127.0.0.1:{client_port}"),
            dir,
            client_port,
            peer_port,
            child: None,
            tls: None,
        };
        e.spawn();
        e
    }

    /// etcd serving its clients over TLS only, requiring a client
    /// certificate of `tls.ca`.
    pub fn start_tls(tls: EtcdTls) -> Etcd {
        let dir = tempfile::Builder::new().prefix("ferric-etcd").tempdir().expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut e = Etcd {
            endpoint: format!("https://127.0.0.1:{client_port}"),
            dir,
            client_port,
            peer_port,
            child: None,
            tls: Some(tls),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let c = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let mut server_tls: Vec<String> = Vec::new();
        let mut client_tls: Vec<String> = Vec::new();
        if let Some(t) = &self.tls {
            for (flag, p) in [("--cert-file", &t.cert), ("--key-file", &t.key), ("--trusted-ca-file", &t.ca)] {
                server_tls.extend([flag.to_string(), p.display().to_string()]);
            }
            server_tls.push("--client-cert-auth".into());
            for (flag, p) in [("--cacert", &t.ca), ("--cert", &t.client_cert), ("--key", &t.client_key)] {
                client_tls.extend([flag.to_string(), p.display().to_string()]);
            }
        }
        let p = format!("http://127.0.0.1:{}", self.peer_port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).expect("log");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--logger=zap", "--log-level=error", "--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
                "--initial-cluster",
                &format!("t={p}"),
            ])
            .args(&server_tls)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("etcd not found (run scripts/deps.sh)");
        self.child = Some(child);
        wait_until("etcd", Duration::from_secs(20), || {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &c, "endpoint", "health"])
                .args(&client_tls)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Stop etcd (SIGKILL) and start it again on the same data and ports.
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- any Ferric process -------------------------------------------------------

/// A `ferric <mode> ...` process with its own log; printed when a test
/// fails while it is alive.
pub struct Process {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Port to wait for after spawning, if any.
    ready_port: Option<u16>,
}

/// A fake kernel and ramdisk in `dir` (a BMC emulator boots nothing; the
/// bytes only have to travel) and their file:// URLs.
pub fn fake_boot_images(dir: &Path, tag: &str) -> (String, String) {
    let k = dir.join(format!("vmlinuz-{tag}"));
    let r = dir.join(format!("initrd-{tag}"));
    std::fs::write(&k, format!("kernel {tag} ").repeat(5000)).expect("write a fake kernel");
    std::fs::write(&r, format!("ramdisk {tag} ").repeat(9000)).expect("write a fake ramdisk");
    (format!("file://{}", k.display()), format!("file://{}", r.display()))
}

/// The file:// roots test servers accept: the temporary directory and the
/// workspace's target directory (boot fixtures), comma-separated.
pub fn test_file_roots() -> String {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let target = target.canonicalize().unwrap_or(target);
    format!("{},{}", std::env::temp_dir().display(), target.display())
}

impl Process {
    pub fn start(
        name: &str,
        log_dir: &Path,
        args: Vec<String>,
        env: &[(&str, &str)],
        ready_port: Option<u16>,
    ) -> Process {
        let mut p = Process {
            name: name.into(),
            args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
            ready_port,
        };
        p.spawn();
        p
    }

    pub fn spawn(&mut self) {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(ferric_bin());
        cmd.args(&self.args).stdout(logf.try_clone().expect("dup")).stderr(logf).env("RUST_LOG", "info");
        // tests hand out file:// images from temporary directories and the
        // boot fixtures; a test that checks the confinement sets its own
        cmd.env("FERRIC_IMAGE_CACHE__FILE_URL_ALLOWED_ROOTS", test_file_roots());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ferric"));
        if let Some(port) = self.ready_port {
            let start = Instant::now();
            while !tcp_open(port) {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    panic!("{} exited with {status} before listening:\n{}", self.name, self.log_tail(60));
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{} did not listen within 30 s", self.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sets (or replaces) an environment variable for the next [`Process::spawn`]
    /// (a restart with other settings).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- tail of {} ({}) ----\n{}", self.name, self.log.display(), self.log_tail(40));
        }
        self.kill();
    }
}

// ---- the baremetal CLI ------------------------------------------------------

pub fn venv() -> PathBuf {
    let v = std::env::var_os("FERRIC_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    assert!(
        v.join("bin/baremetal").exists(),
        "no baremetal CLI in {} — run scripts/deps.sh (scripts/test.sh does) or set FERRIC_TEST_VENV",
        v.display()
    );
    v
}

pub struct Baremetal {
    pub endpoint: String,
    bin: PathBuf,
    /// The `--os-auth-type ...` arguments (`none` unless given).
    auth: Vec<String>,
    /// Options put before every command (e.g. `--os-cacert`).
    options: Vec<String>,
}

impl Baremetal {
    pub fn new(endpoint: &str) -> Baremetal {
        Baremetal {
            endpoint: endpoint.to_string(),
            bin: venv().join("bin/baremetal"),
            auth: vec![],
            options: Vec::new(),
        }
    }

    /// The CLI as a user of an `http_basic` API.
    pub fn basic(endpoint: &str, user: &str, password: &str) -> Baremetal {
        let mut b = Baremetal::new(endpoint);
        b.auth = ["--os-auth-type", "http_basic", "--os-username", user, "--os-password", password]
            .map(String::from)
            .to_vec();
        b
    }

    /// The CLI with any other `--os-*` authentication arguments (a
    /// Keystone password login, say); `--os-endpoint` is added.
    pub fn with_auth(endpoint: &str, auth: &[&str]) -> Baremetal {
        let mut b = Baremetal::new(endpoint);
        b.auth = auth.iter().map(|a| a.to_string()).collect();
        b
    }

    /// Checks the API's certificate with the CA in `ca_file` (https).
    pub fn with_cacert(mut self, ca_file: &Path) -> Baremetal {
        self.options.extend(["--os-cacert".to_string(), ca_file.display().to_string()]);
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let auth =
            if self.auth.is_empty() { vec!["--os-auth-type".to_string(), "none".into()] } else { self.auth.clone() };
        // a Keystone login finds the API in Keystone's catalog, as in a
        // cloud (and `--os-endpoint` is ambiguous there)
        let endpoint: Vec<&str> =
            if auth.iter().any(|a| a == "password") { vec![] } else { vec!["--os-endpoint", &self.endpoint] };
        Command::new(&self.bin)
            .args(&auth)
            .args(endpoint)
            // no client-side retries: the test must see the server's answer
            .args(["--max-retries", "0"])
            .args(&self.options)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run baremetal")
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "baremetal {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run and insist on failure; returns stderr (the server's message and
    /// `(HTTP nnn)`).
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "baremetal {args:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `-f json` output parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("baremetal {args:?} printed no JSON ({e}): {out}"))
    }

    pub fn field(&self, node: &str, field: &str) -> String {
        self.ok(&["node", "show", node, "-f", "value", "-c", field]).trim().to_string()
    }

    /// Poll until the node reaches `state` (fails fast on `error` and
    /// `* failed`, as `--wait` does).
    pub fn wait_state(&self, node: &str, state: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let s = self.field(node, "provision_state");
            if s == state {
                return;
            }
            assert!(
                s != "error" && !s.ends_with(" failed"),
                "node {node} went to {s} while waiting for {state}: last_error={}",
                self.field(node, "last_error")
            );
            assert!(start.elapsed() < timeout, "node {node} still {s} after {timeout:?}, waiting for {state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A plain HTTP client for raw API checks (status codes, headers, bodies).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}

/// Decode Ironic's double-encoded error body.
pub fn error_body(body: &str) -> serde_json::Value {
    let outer: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let inner = outer["error_message"].as_str().unwrap_or_else(|| panic!("no error_message in {body}"));
    serde_json::from_str(inner).unwrap_or_else(|e| panic!("error_message is not JSON text ({e}): {inner}"))
}

// ---- a TCP proxy the harness can cut ------------------------------------------

/// Forwards loopback TCP to `target` until [`TcpProxy::cut`] drops every
/// connection and refuses new ones (a network partition), and
/// [`TcpProxy::restore`] heals it. [`TcpProxy::freeze`] stalls the
/// connections open at that moment — they stay open and carry nothing
/// more, either way, as a hung peer or a black-holed route would — while
/// new connections pass.
pub struct TcpProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Connections numbered up to this are frozen.
    frozen_upto: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered up to this carry nothing back to the client.
    replies_frozen_upto: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// How many connections were accepted (the newest one's number).
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to` until EOF, an error, or `frozen()` (then it
/// holds both sockets open and moves nothing until aborted).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen() {
            break;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            // look again now and then, so that a freeze stops a quiet stream too
            _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
        };
        if frozen() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if frozen() {
        let _keep_open = (from, to);
        std::future::pending::<()>().await;
    }
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frozen_upto = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let replies_frozen_upto = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c2, k2, f2, r2, a2) =
            (cut.clone(), conns.clone(), frozen_upto.clone(), replies_frozen_upto.clone(), accepted.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { return };
                if c2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let id = a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let (frozen, replies_frozen) = (f2.clone(), r2.clone());
                let h = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        let (ir, iw) = inbound.into_split();
                        let (or, ow) = outbound.into_split();
                        let upto = |a: &std::sync::atomic::AtomicU64| id <= a.load(std::sync::atomic::Ordering::SeqCst);
                        tokio::join!(
                            pump(ir, ow, || upto(&frozen)),
                            pump(or, iw, || upto(&frozen) || upto(&replies_frozen))
                        );
                    }
                });
                let mut k = k2.lock().expect("conns");
                k.retain(|h| !h.is_finished());
                k.push(h);
            }
        });
        TcpProxy { port, cut, frozen_upto, replies_frozen_upto, accepted, conns, accept }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The connections open now still carry requests to the server but no
    /// answer back to the client (a reply lost on its way); new ones pass.
    pub fn freeze_replies(&self) {
        let upto = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        self.replies_frozen_upto.store(upto, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection open now; new ones pass.
    pub fn drop_connections(&self) {
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    /// Stalls every connection open now (see the type's doc); new ones
    /// pass. Returns how many were frozen.
    pub fn freeze(&self) -> usize {
        let conns = self.conns.lock().expect("conns");
        let upto = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        self.frozen_upto.store(upto, std::sync::atomic::Ordering::SeqCst);
        conns.iter().filter(|h| !h.is_finished()).count()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ---- the REST API, raw ----------------------------------------------------------

/// The Ironic API of a running Ferric, at the newest microversion.
#[derive(Clone)]
pub struct Api {
    pub endpoint: String,
    pub client: reqwest::Client,
    /// Credentials sent with every call: `(header, value)`.
    pub auth: Option<(String, String)>,
}

impl Api {
    pub fn new(endpoint: &str) -> Api {
        Api { endpoint: endpoint.trim_end_matches('/').to_string(), client: http(), auth: None }
    }

    /// Calls as a user of an `http_basic` API.
    pub fn basic(endpoint: &str, user: &str, password: &str) -> Api {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Api { auth: Some(("Authorization".into(), format!("Basic {pair}"))), ..Api::new(endpoint) }
    }

    /// Calls with a Keystone token.
    pub fn token(endpoint: &str, token: &str) -> Api {
        Api { auth: Some(("X-Auth-Token".into(), token.to_string())), ..Api::new(endpoint) }
    }

    /// Status and body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.endpoint))
            .header("X-OpenStack-Ironic-API-Version", "1.115");
        if let Some((h, v)) = &self.auth {
            r = r.header(h.as_str(), v.as_str());
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Like `call`, insisting on a 2xx.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let (s, v) = self.call(method.clone(), path, body).await;
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        self.ok(reqwest::Method::GET, path, None).await
    }

    pub async fn node(&self, node: &str) -> serde_json::Value {
        self.get(&format!("/v1/nodes/{node}")).await
    }

    /// Creates a node and one port per MAC; returns the node's UUID.
    pub async fn create_node(&self, body: serde_json::Value, macs: &[&str]) -> String {
        let n = self.ok(reqwest::Method::POST, "/v1/nodes", Some(body)).await;
        let uuid = n["uuid"].as_str().expect("a node UUID").to_string();
        for mac in macs {
            let port = serde_json::json!({"address": mac, "node_uuid": uuid});
            self.ok(reqwest::Method::POST, "/v1/ports", Some(port)).await;
        }
        uuid
    }

    /// manage, then provide: the node ends `available`.
    pub async fn to_available(&self, node: &str, timeout: Duration) {
        self.provision(node, "manage").await;
        self.wait_state(node, "manageable", timeout).await;
        self.provision(node, "provide").await;
        self.wait_state(node, "available", timeout).await;
    }

    pub async fn provision(&self, node: &str, target: &str) {
        self.ok(
            reqwest::Method::PUT,
            &format!("/v1/nodes/{node}/states/provision"),
            Some(serde_json::json!({"target": target})),
        )
        .await;
    }

    /// A ramdisk's heartbeat with `token`; returns the status.
    pub async fn heartbeat(&self, node: &str, token: &str) -> u16 {
        let body = serde_json::json!({"callback_url": "https://127.0.0.1:9999", "agent_token": token, "agent_version": "10.0.0"});
        self.call(reqwest::Method::POST, &format!("/v1/heartbeat/{node}"), Some(body)).await.0
    }

    /// The error body's faultstring of a failed call.
    pub fn fault(body: &serde_json::Value) -> String {
        body.as_object()
            .and_then(|o| o.get("error_message"))
            .and_then(|m| m.as_str())
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|e| e["faultstring"].as_str().map(String::from))
            .unwrap_or_else(|| body.to_string())
    }

    /// Waits until the node is in `state` (fails fast on `error` and
    /// `* failed`, showing last_error) and no lock is held on it.
    pub async fn wait_state(&self, node: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let n = self.node(node).await;
            let s = n["provision_state"].as_str().unwrap_or_default().to_string();
            if s == state && n["reservation"].is_null() {
                return n;
            }
            assert!(
                s == state || (s != "error" && !s.ends_with(" failed")),
                "node {node} went to {s} while waiting for {state}: last_error={}",
                n["last_error"]
            );
            assert!(start.elapsed() < timeout, "node {node} still {s} after {timeout:?}, waiting for {state}: {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A file out of a FAT image, read by mtools' `mtype` (what a ramdisk
/// would find on its parameters floppy).
pub fn fat_file(image: &[u8], name: &str) -> String {
    let f = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(f.path(), image).expect("write image");
    let out = Command::new("mtype")
        .args(["-i", &f.path().display().to_string(), &format!("::{name}")])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtools (scripts/deps.sh installs it)");
    assert!(out.status.success(), "mtype: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `key=value` lines.
pub fn key_values(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
