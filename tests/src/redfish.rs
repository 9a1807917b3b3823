//! A real Redfish BMC for tests: the sushy-tools emulator (`sushy-emulator`
//! from the venv `scripts/deps.sh` creates) with its fake driver, N systems,
//! a fresh state directory, on a free loopback port, stopped when dropped.
//!
//! Its Python config (a Flask pyfile, executed by the emulator) adds what
//! tests need to observe a BMC from the outside, without changing how it
//! answers Ferric:
//!
//! * power changes take effect at once (the fake driver delays them by a
//!   random 1–11 s; notes/test-peers.md §3.4);
//! * every request that reaches the BMC is recorded (method, path, auth
//!   kind): `GET /lab/requests` — how tests count BMC writes;
//! * `GET /lab/media/<system>/<device>`: the bytes the emulator downloaded
//!   into a virtual media slot at InsertMedia (what the machine would boot);
//! * optionally ([`SushyOptions::sessions`]) a DMTF SessionService, which
//!   sushy-tools lacks: `POST /redfish/v1/SessionService/Sessions` with the
//!   basic-auth credentials answers 201 with `X-Auth-Token` and `Location`,
//!   requests with a live token pass, `DELETE <Location>` logs out, and
//!   `POST /lab/expire-sessions` drops every session (a BMC restart).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, venv};

#[derive(Debug, Clone)]
pub struct SushyOptions {
    pub systems: usize,
    /// Basic-auth user and password (bcrypt in an htpasswd file).
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with a self-signed certificate (TLS 1.2 only, as
    /// sushy-tools does); [`SushyLab::ca`] is its certificate.
    pub tls: bool,
    /// Add a SessionService (needs `auth`).
    pub sessions: bool,
    /// Virtual media devices: `true` = Cd and Floppy (the default), `false`
    /// = Cd only (a BMC without a removable slot).
    pub removable_slot: bool,
    /// The name of system 0 (default `fake-0`). The emulator redirects
    /// `/redfish/v1/Systems/<name>` to the system, so `"1"` makes it answer
    /// at iLO's fixed `/redfish/v1/Systems/1`.
    pub first_system_name: Option<String>,
    /// Turns on the emulator's `external_notifier` for every system: it
    /// then PUTs the whole system dict to this URL, synchronously, on every
    /// state write (notes/test-peers.md §3.9) — how a ramdisk simulator
    /// ([`crate::ramdisk::RamdiskSim::notify_url`]) learns of a boot. The
    /// URL must answer while the lab is used: a refused PUT fails the BMC
    /// request that caused it.
    pub notify_url: Option<String>,
}

impl Default for SushyOptions {
    fn default() -> Self {
        SushyOptions {
            systems: 2,
            auth: None,
            tls: false,
            sessions: false,
            removable_slot: true,
            first_system_name: None,
            notify_url: None,
        }
    }
}

/// One request as the BMC saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcRequest {
    pub method: String,
    pub path: String,
    /// `basic`, `token` or `none`.
    pub auth: String,
}

impl BmcRequest {
    /// A request that changes the BMC's state (not a read, not a login).
    pub fn is_write(&self) -> bool {
        self.method != "GET" && self.method != "HEAD" && !self.path.starts_with("/redfish/v1/SessionService")
    }
}

pub struct SushyLab {
    /// `http(s)://127.0.0.1:<port>`, what goes into `redfish_address`.
    pub url: String,
    pub port: u16,
    /// System UUIDs, in order.
    pub systems: Vec<String>,
    pub options: SushyOptions,
    child: Option<Child>,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

const CONFIG: &str = r#"
import json as _json, secrets as _secrets, threading as _threading, time as _time
import flask as _flask
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = @PORT@
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_STATE_DIR = '@STATE@'
SUSHY_EMULATOR_FAKE_SYSTEMS = [
    {'uuid': '@PREFIX@%012x' % i, 'name': (@NAME0@ if i == 0 else 'fake-%d' % i), 'power_state': 'Off', 'external_notifier': @NOTIFIER@,
     'nics': [{'mac': '52:54:00:%02x:%02x:%02x' % ((i >> 16) & 255, (i >> 8) & 255, i & 255),
               'ip': '127.0.0.%d' % (2 + i % 250)}]}
    for i in range(@SYSTEMS@)
]
@EXTRA@
import sushy_tools.emulator.resources.systems.fakedriver as _fd
class _NoDelay:
    @staticmethod
    def randint(a, b):
        return 0
_fd.random = _NoDelay

# sushy-tools 2.2 opens an SQLite connection per state access and never
# closes it (memoize.PersistentDict.connection: `with sqlite3.connect()`
# commits, it does not close): a fleet of systems runs the emulator out of
# file descriptors within minutes. The same connection, closed after use.
import contextlib as _contextlib, sqlite3 as _sqlite3
from sushy_tools.emulator import memoize as _memoize
@_contextlib.contextmanager
def _closing_connection(self):
    if not self._dbpath:
        raise TypeError('Dict is not yet persistent')
    # and a longer wait for the database lock than sqlite3's 5 s: a busy
    # fleet makes the emulator answer 500 "database is locked" otherwise
    conn = _sqlite3.connect(self._dbpath, timeout=60)
    try:
        with conn:
            conn.execute("pragma journal_mode=wal")
            yield conn.cursor()
    finally:
        conn.close()
_memoize.PersistentDict.connection = _closing_connection

from sushy_tools.emulator import main as _main
if not getattr(_main, '_ferric_lab', False):
    _main._ferric_lab = True
    _lock = _threading.Lock()
    _requests = []
    _sessions = {}
    _USER, _PASS = @CREDS@

    @_main.app.before_request
    def _record():
        r = _flask.request
        if r.path.startswith('/lab/'):
            return None
        # the basic-auth middleware consumes the Authorization header and
        # leaves the user it authenticated
        auth = 'token' if r.headers.get('X-Auth-Token') else ('basic' if r.environ.get('HTTP_X_USER') else 'none')
        with _lock:
            _requests.append({'method': r.method, 'path': r.path, 'auth': auth})
        return None

    @_main.app.route('/lab/requests', methods=['GET'])
    def _lab_requests():
        with _lock:
            return _flask.Response(_json.dumps(_requests), mimetype='application/json')

    @_main.app.route('/lab/media/<identity>/<device>', methods=['GET'])
    def _lab_media(identity, device):
        import traceback as _tb
        try:
            info = _main.app.vmedia._get_device(identity, device)
            path = info.get('_local_file')
            # EjectMedia deletes the file but keeps its name in the stored state
            if not info.get('Inserted') or not path or not __import__('os').path.exists(path):
                return _flask.Response('nothing inserted', status=404)
            with open(path, 'rb') as f:
                return _flask.Response(f.read(), mimetype='application/octet-stream')
        except Exception:
            return _flask.Response(_tb.format_exc(), status=500)

    if @SESSIONS@:
        @_main.app.route('/redfish/v1/SessionService', methods=['GET'])
        def _session_service():
            return {'@odata.id': '/redfish/v1/SessionService', 'Id': 'SessionService', 'ServiceEnabled': True,
                    'Sessions': {'@odata.id': '/redfish/v1/SessionService/Sessions'}}

        @_main.app.route('/redfish/v1/SessionService/Sessions', methods=['POST'])
        def _login():
            body = _flask.request.get_json(force=True, silent=True) or {}
            if body.get('UserName') != _USER or body.get('Password') != _PASS:
                return ({'error': {'code': 'Base.1.8.GeneralError', 'message': 'Invalid credentials',
                                   '@Message.ExtendedInfo': [{'MessageId': 'Base.1.8.NoValidSession'}]}}, 401)
            token, sid = _secrets.token_hex(16), _secrets.token_hex(4)
            with _lock:
                _sessions[token] = sid
            loc = '/redfish/v1/SessionService/Sessions/' + sid
            return ({'@odata.id': loc, 'Id': sid, 'UserName': _USER}, 201, {'X-Auth-Token': token, 'Location': loc})

        @_main.app.route('/redfish/v1/SessionService/Sessions/<sid>', methods=['DELETE'])
        def _logout(sid):
            with _lock:
                for t in [t for t, s in _sessions.items() if s == sid]:
                    del _sessions[t]
            return ('', 204)

        @_main.app.route('/lab/expire-sessions', methods=['POST'])
        def _expire():
            with _lock:
                _sessions.clear()
            return ('', 204)

        _orig_call = _main.RedfishAuthMiddleware.__call__
        def _call(self, env, start_response):
            path = env.get('PATH_INFO', '')
            token = env.get('HTTP_X_AUTH_TOKEN')
            if path.startswith('/lab/') or path.rstrip('/') == '/redfish/v1/SessionService/Sessions' and env.get('REQUEST_METHOD') == 'POST':
                return self.app(env, start_response)
            if token is not None:
                with _lock:
                    ok = token in _sessions
                if ok:
                    return self.app(env, start_response)
                # an unknown or expired token: 401 as a BMC answers it
                start_response('401 Unauthorized', [('Content-Type', 'application/json')])
                return [_json.dumps({'error': {'code': 'Base.1.8.GeneralError', 'message': 'session expired',
                                               '@Message.ExtendedInfo': [{'MessageId': 'Base.1.8.NoValidSession'}]}}).encode()]
            return _orig_call(self, env, start_response)
        _main.RedfishAuthMiddleware.__call__ = _call
    else:
        _orig_call = _main.RedfishAuthMiddleware.__call__
        def _call(self, env, start_response):
            if env.get('PATH_INFO', '').startswith('/lab/'):
                return self.app(env, start_response)
            return _orig_call(self, env, start_response)
        _main.RedfishAuthMiddleware.__call__ = _call
"#;

impl SushyLab {
    pub fn start(options: SushyOptions) -> SushyLab {
        let dir = tempfile::Builder::new().prefix("ferric-sushy").tempdir().expect("tempdir");
        let port = free_port();
        // a per-lab uuid prefix, so systems of two labs never collide
        let prefix = format!("{}-", &uuid::Uuid::new_v4().to_string()[..23]);
        let mut extra = String::new();
        if let Some((user, pass)) = &options.auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new(venv().join("bin/python"))
                .args([
                    "-c",
                    "import bcrypt,sys;print(sys.argv[1]+':'+bcrypt.hashpw(sys.argv[2].encode(),bcrypt.gensalt(rounds=4)).decode())",
                    user,
                    pass,
                ])
                .output()
                .expect("python for bcrypt");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
            extra.push_str(&format!("SUSHY_EMULATOR_AUTH_FILE = '{}'\n", htpasswd.display()));
        }
        if options.tls {
            // a CA of the lab's own and a server certificate it signed (what a
            // BMC with an operator-issued certificate looks like)
            let d = dir.path();
            let (crt, key) = (d.join("tls.crt"), d.join("tls.key"));
            let sh = format!(
                "set -e; cd {d}; \
                 openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ferric-lab-ca -keyout ca.key -out ca.crt; \
                 openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout tls.key -out tls.csr; \
                 printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf; \
                 openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out tls.crt",
                d = d.display()
            );
            let out = Command::new("sh").args(["-c", &sh]).output().expect("openssl");
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            extra.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                crt.display(),
                key.display()
            ));
        }
        if let Some(url) = &options.notify_url {
            extra.push_str(&format!("EXTERNAL_NOTIFICATION_URL = {url:?}\n"));
        }
        if !options.removable_slot {
            extra.push_str(
                "SUSHY_EMULATOR_VMEDIA_DEVICES = {'Cd': {'Name': 'Virtual CD', 'MediaTypes': ['CD', 'DVD']}}\n",
            );
        }
        let creds = match &options.auth {
            Some((u, p)) => format!("({u:?}, {p:?})"),
            None => "(None, None)".into(),
        };
        let config = CONFIG
            .replace("@PORT@", &port.to_string())
            .replace("@STATE@", &dir.path().join("state").display().to_string())
            .replace("@PREFIX@", &prefix)
            .replace("@SYSTEMS@", &options.systems.to_string())
            .replace("@EXTRA@", &extra)
            .replace("@CREDS@", &creds)
            .replace("@NOTIFIER@", if options.notify_url.is_some() { "True" } else { "False" })
            .replace("@SESSIONS@", if options.sessions { "True" } else { "False" })
            .replace("@NAME0@", &format!("{:?}", options.first_system_name.clone().unwrap_or_else(|| "fake-0".into())));
        let conf = dir.path().join("emulator.conf");
        std::fs::write(&conf, config).expect("write emulator config");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&downloads).expect("downloads dir");
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("emulator log");
        let child = Command::new(venv().join("bin/sushy-emulator"))
            .arg("--config")
            .arg(&conf)
            // InsertMedia downloads into a temp dir: keep it in the lab
            .env("TMPDIR", &downloads)
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("sushy-emulator not found in the venv (run scripts/deps.sh)");
        let scheme = if options.tls { "https" } else { "http" };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let systems = (0..options.systems).map(|i| format!("{prefix}{i:012x}")).collect();
        let mut lab = SushyLab {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            systems,
            options,
            child: Some(child),
            dir,
            client,
        };
        lab.wait_ready();
        lab
    }

    /// Ready = the service root answers and the systems are listed (the
    /// first listing writes every system into the emulator's SQLite: ~1 s
    /// per 1000 systems, done here before any test clock starts).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("sushy-emulator exited with {status}:\n{}", self.log_tail(40));
            }
            // on a thread of its own: tests call this from inside a runtime
            let ok = std::thread::scope(|s| {
                s.spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    rt.block_on(async {
                        let root = self.client.get(format!("{}/redfish/v1/", self.url)).send().await;
                        if !root.is_ok_and(|r| r.status().is_success()) {
                            return false;
                        }
                        self.authed(self.client.get(format!("{}/redfish/v1/Systems", self.url)))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    })
                })
                .join()
                .unwrap_or(false)
            });
            if ok {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "sushy-emulator not ready:\n{}", self.log_tail(40));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.options.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// The CA that signed a TLS lab's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn system_path(&self, i: usize) -> String {
        format!("/redfish/v1/Systems/{}", self.systems[i])
    }

    /// `driver_info` for system `i` of this lab.
    pub fn driver_info(&self, i: usize) -> Value {
        let mut info = serde_json::json!({
            "redfish_address": self.url,
            "redfish_system_id": self.system_path(i),
        });
        if let Some((u, p)) = &self.options.auth {
            info["redfish_username"] = u.clone().into();
            info["redfish_password"] = p.clone().into();
        }
        if self.options.tls {
            info["redfish_verify_ca"] = self.ca().display().to_string().into();
        }
        info
    }

    /// A Redfish document, read as a test would read the BMC.
    pub async fn get(&self, path: &str) -> Value {
        let r = self.authed(self.client.get(format!("{}{path}", self.url))).send().await.expect("GET the emulator");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("JSON")
    }

    /// Every request the BMC received so far.
    pub async fn requests(&self) -> Vec<BmcRequest> {
        let v: Value = self
            .client
            .get(format!("{}/lab/requests", self.url))
            .send()
            .await
            .expect("lab")
            .json()
            .await
            .expect("json");
        v.as_array()
            .expect("a list")
            .iter()
            .map(|r| BmcRequest {
                method: r["method"].as_str().unwrap_or_default().into(),
                path: r["path"].as_str().unwrap_or_default().into(),
                auth: r["auth"].as_str().unwrap_or_default().into(),
            })
            .collect()
    }

    /// The writes that concern system `uuid` (its resource, its actions, its
    /// virtual media).
    pub async fn writes_for(&self, uuid: &str) -> Vec<BmcRequest> {
        self.requests().await.into_iter().filter(|r| r.is_write() && r.path.contains(uuid)).collect()
    }

    /// The bytes the emulator fetched into `device` (`Cd`, `Floppy`) of a
    /// system at its last InsertMedia; `None` when nothing is inserted.
    pub async fn media_bytes(&self, uuid: &str, device: &str) -> Option<Vec<u8>> {
        let r = self.client.get(format!("{}/lab/media/{uuid}/{device}", self.url)).send().await.expect("lab");
        if r.status() == 404 {
            return None;
        }
        assert!(r.status().is_success(), "lab media: {}: {}", r.status(), r.text().await.unwrap_or_default());
        Some(r.bytes().await.expect("bytes").to_vec())
    }

    /// The virtual media device document of a system.
    pub async fn media(&self, uuid: &str, device: &str) -> Value {
        self.get(&format!("/redfish/v1/Systems/{uuid}/VirtualMedia/{device}")).await
    }

    /// Drops every session (as a BMC restart would).
    pub async fn expire_sessions(&self) {
        let r = self.client.post(format!("{}/lab/expire-sessions", self.url)).send().await.expect("lab");
        assert!(r.status().is_success());
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("emulator.log")).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for SushyLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- tail of sushy-emulator ({}) ----\n{}", self.dir.path().display(), self.log_tail(30));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
