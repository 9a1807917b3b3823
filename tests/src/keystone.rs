//! A real Keystone (OpenStack Identity, the `keystone` package from PyPI)
//! on a free loopback port, for the `keystone` auth strategy's tests:
//! SQLite, Fernet tokens, `keystone-manage bootstrap` (user `admin`, the
//! roles admin ⊃ manager ⊃ member ⊃ reader and service, admin on the
//! system and on project `admin`), served by gunicorn.
//!
//! The virtualenv is `FERRIC_KEYSTONE_VENV`, else `.venv-keystone` at the
//! workspace root (scripts/deps.sh makes it). Set-up takes about 15 s
//! (database migrations, key repositories, bootstrap).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{free_port, http};

pub const ADMIN_PASSWORD: &str = "admin-secret";

pub fn venv() -> PathBuf {
    let v = std::env::var_os("FERRIC_KEYSTONE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-keystone"));
    assert!(
        v.join("bin/keystone-manage").exists() && v.join("bin/gunicorn").exists(),
        "no Keystone in {} — run scripts/deps.sh or set FERRIC_KEYSTONE_VENV",
        v.display()
    );
    v
}

/// What a token is scoped to.
pub enum Scope<'a> {
    System,
    Project(&'a str),
}

pub struct Keystone {
    /// `http://127.0.0.1:<port>/v3`
    pub url: String,
    child: Option<Child>,
    log: PathBuf,
    /// Last: the process stops before its files go.
    pub dir: tempfile::TempDir,
}

impl Keystone {
    pub fn start() -> Keystone {
        let venv = venv();
        let dir = tempfile::Builder::new().prefix("ferric-keystone").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["fernet-keys", "fernet-receipts", "credential-keys"] {
            std::fs::create_dir_all(d.join(sub)).expect("key dir");
        }
        let conf = d.join("keystone.conf");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nuse_stderr = true\n[database]\nconnection = sqlite:///{db}\n[token]\nprovider = fernet\n\
                 [fernet_tokens]\nkey_repository = {d}/fernet-keys\n[fernet_receipts]\nkey_repository = {d}/fernet-receipts\n\
                 [credential]\nkey_repository = {d}/credential-keys\n",
                db = d.join("keystone.db").display(),
                d = d.display()
            ),
        )
        .expect("keystone.conf");
        // oslo.config reads the process's arguments: the WSGI module must
        // not see gunicorn's
        std::fs::write(
            d.join("ferric_keystone_wsgi.py"),
            "import sys\nsys.argv = sys.argv[:1]\nfrom keystone.server.wsgi import initialize_public_application\n\
             application = initialize_public_application()\n",
        )
        .expect("wsgi shim");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/v3");
        let log = d.join("keystone.log");
        let manage = |args: &[&str]| {
            let out = Command::new(venv.join("bin/keystone-manage"))
                .arg("--config-file")
                .arg(&conf)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run keystone-manage");
            assert!(out.status.success(), "keystone-manage {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let me = unsafe { (libc::getuid(), libc::getgid()) };
        let (uid, gid) = (me.0.to_string(), me.1.to_string());
        manage(&["db_sync"]);
        manage(&["fernet_setup", "--keystone-user", &uid, "--keystone-group", &gid]);
        manage(&["credential_setup", "--keystone-user", &uid, "--keystone-group", &gid]);
        manage(&["bootstrap", "--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-public-url", &url]);
        let logf = std::fs::File::create(&log).expect("keystone log");
        let child = Command::new(venv.join("bin/gunicorn"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--workers", "1", "--chdir"])
            .arg(d)
            .arg("ferric_keystone_wsgi:application")
            .env("OS_KEYSTONE_CONFIG_FILES", &conf)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            // its own process group: gunicorn's worker stops with it
            .process_group(0)
            .spawn()
            .expect("spawn gunicorn");
        let mut ks = Keystone { url, child: Some(child), log, dir };
        let start = Instant::now();
        loop {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up {
                break;
            }
            if let Some(s) = ks.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("keystone exited with {s}:\n{}", ks.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "keystone did not listen within 60 s:\n{}",
                ks.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ks
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// A token of `user` (domain Default).
    pub async fn token(&self, user: &str, password: &str, scope: Scope<'_>) -> String {
        let scope = match scope {
            Scope::System => json!({"system": {"all": true}}),
            Scope::Project(p) => json!({"project": {"name": p, "domain": {"id": "default"}}}),
        };
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}}, "scope": scope}});
        let r = http().post(format!("{}/auth/tokens", self.url)).json(&body).send().await.expect("keystone");
        assert_eq!(r.status().as_u16(), 201, "token for {user}: {}", r.text().await.unwrap_or_default());
        r.headers()["x-subject-token"].to_str().unwrap().to_string()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let token = self.token("admin", ADMIN_PASSWORD, Scope::System).await;
        let mut r = http().request(method.clone(), format!("{}{path}", self.url)).header("X-Auth-Token", token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("keystone");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A new project in domain Default; its id.
    pub async fn project(&self, name: &str) -> String {
        let v = self
            .admin(reqwest::Method::POST, "/projects", Some(json!({"project": {"name": name, "domain_id": "default"}})))
            .await;
        v["project"]["id"].as_str().unwrap().to_string()
    }

    /// A new user in domain Default; its id.
    pub async fn user(&self, name: &str, password: &str) -> String {
        let body = json!({"user": {"name": name, "password": password, "domain_id": "default"}});
        let v = self.admin(reqwest::Method::POST, "/users", Some(body)).await;
        v["user"]["id"].as_str().unwrap().to_string()
    }

    /// Put a service into the catalog (type `service_type`, one public
    /// endpoint, no region), so clients find it by logging in.
    pub async fn catalog(&self, service_type: &str, url: &str) {
        let v = self
            .admin(
                reqwest::Method::POST,
                "/services",
                Some(json!({"service": {"type": service_type, "name": service_type}})),
            )
            .await;
        let id = v["service"]["id"].as_str().unwrap().to_string();
        let body = json!({"endpoint": {"service_id": id, "interface": "public", "url": url}});
        self.admin(reqwest::Method::POST, "/endpoints", Some(body)).await;
    }

    async fn role_id(&self, role: &str) -> String {
        let v = self.admin(reqwest::Method::GET, &format!("/roles?name={role}"), None).await;
        match v["roles"].as_array().and_then(|a| a.first()) {
            Some(r) => r["id"].as_str().unwrap().to_string(),
            None => {
                let v = self.admin(reqwest::Method::POST, "/roles", Some(json!({"role": {"name": role}}))).await;
                v["role"]["id"].as_str().unwrap().to_string()
            }
        }
    }

    /// Give `user` the role `role` on the project, or on the system.
    pub async fn grant(&self, user_id: &str, role: &str, on: Scope<'_>) {
        let role_id = self.role_id(role).await;
        let path = match on {
            Scope::System => format!("/system/users/{user_id}/roles/{role_id}"),
            Scope::Project(p) => format!("/projects/{p}/users/{user_id}/roles/{role_id}"),
        };
        self.admin(reqwest::Method::PUT, &path, None).await;
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- tail of keystone ({}) ----\n{}", self.log.display(), self.log_tail());
        }
        if let Some(mut c) = self.child.take() {
            // the group this process leads: gunicorn and its worker
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}
