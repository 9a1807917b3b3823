//! A multi-process Ferric cluster on real etcd and PostgreSQL: N conductor
//! processes and one API process, each on its own loopback ports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferric_common::proto::conductor_client::ConductorClient;
use ferric_common::proto::{ConductorStatus, Empty};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{Etcd, Postgres, Process, free_port, http};

/// Fields drop in order: the processes stop before etcd and PostgreSQL.
pub struct Cluster {
    pub api: Process,
    /// (process, gRPC port), conductor i+1 at index i (ids c1, c2, ...).
    pub conductors: Vec<(Process, u16)>,
    pub api_url: String,
    pub etcd: Etcd,
    pub db_url: String,
    pub pg: Postgres,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// Mutual TLS on the gRPC hop, when the cluster was started with the
    /// `FERRIC_GRPC__*` settings (every process gets them).
    pub grpc_tls: Option<ferric_common::tls::GrpcTls>,
}

pub fn conductor_process(
    dir: &Path,
    etcd: &str,
    db: &str,
    i: usize,
    grpc: u16,
    ttl: u64,
    env: &[(&str, &str)],
) -> Process {
    Process::start(&format!("c{i}"), dir, conductor_args(dir, etcd, db, i, grpc, ttl), env, Some(grpc))
}

/// The command line of conductor `c{i}`.
pub fn conductor_args(dir: &Path, etcd: &str, db: &str, i: usize, grpc: u16, ttl: u64) -> Vec<String> {
    [
        "conductor",
        "--etcd-endpoints",
        etcd,
        "--database-url",
        db,
        "--lease-ttl",
        &ttl.to_string(),
        "--conductor-id",
        &format!("c{i}"),
        "--grpc-listen",
        &format!("127.0.0.1:{grpc}"),
        "--data-dir",
        &dir.join(format!("c{i}")).display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Cluster {
    /// `n` conductors with lease TTL `ttl` seconds; `env` goes to every
    /// conductor (FERRIC_* settings).
    pub fn start(n: usize, ttl: u64, env: &[(&str, &str)]) -> Cluster {
        let etcd = Etcd::start();
        let endpoints = vec![etcd.endpoint.clone(); n];
        Cluster::start_with(etcd, endpoints, ttl, env)
    }

    /// Conductor i+1 reaches etcd at `endpoints[i]` (e.g. through a proxy).
    pub fn start_with(etcd: Etcd, endpoints: Vec<String>, ttl: u64, env: &[(&str, &str)]) -> Cluster {
        let pg = Postgres::start();
        let db_url = pg.database("ferric_cluster");
        Cluster::start_on(etcd, endpoints, pg, db_url.clone(), &db_url, ttl, env)
    }

    /// Every process (conductors and API) reaches the database `db_url` of
    /// `pg` at `processes_db_url` (e.g. through a proxy the test can cut).
    pub fn start_on(
        etcd: Etcd,
        endpoints: Vec<String>,
        pg: Postgres,
        db_url: String,
        processes_db_url: &str,
        ttl: u64,
        env: &[(&str, &str)],
    ) -> Cluster {
        let ports = endpoints.iter().map(|_| (free_port(), Vec::new())).collect();
        Cluster::start_full(etcd, endpoints, pg, db_url, processes_db_url, ttl, env, ports)
    }

    /// [`Cluster::start_on`], with conductor i+1 listening for gRPC on
    /// `conductors[i].0` and getting the extra settings `conductors[i].1`
    /// (e.g. an advertised gRPC URL through a proxy to that port; a
    /// `FERRIC_DATABASE__URL` there is that conductor's database URL).
    #[allow(clippy::too_many_arguments)]
    pub fn start_full(
        etcd: Etcd,
        endpoints: Vec<String>,
        pg: Postgres,
        db_url: String,
        processes_db_url: &str,
        ttl: u64,
        env: &[(&str, &str)],
        conductors_at: Vec<(u16, Vec<(String, String)>)>,
    ) -> Cluster {
        assert_eq!(endpoints.len(), conductors_at.len(), "one etcd endpoint and one port per conductor");
        let dir = tempfile::tempdir().expect("tempdir");
        // ramdisks call back the API: its port is known before the conductors start
        let port = free_port();
        let callback = format!("http://127.0.0.1:{port}");
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "FERRIC_DEPLOY__EXTERNAL_CALLBACK_URL") {
            env.push(("FERRIC_DEPLOY__EXTERNAL_CALLBACK_URL", callback.as_str()));
        }
        let mut conductors = Vec::new();
        for (i, (ep, (grpc, extra))) in endpoints.iter().zip(&conductors_at).enumerate() {
            let mut env = env.clone();
            env.extend(
                extra.iter().filter(|(k, _)| k != "FERRIC_DATABASE__URL").map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let db = extra.iter().find(|(k, _)| k == "FERRIC_DATABASE__URL").map(|(_, v)| v.as_str());
            let db = db.unwrap_or(processes_db_url);
            conductors.push((conductor_process(dir.path(), ep, db, i + 1, *grpc, ttl, &env), *grpc));
        }
        let args: Vec<String> = [
            "api",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--database-url",
            processes_db_url,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &dir.path().join("api").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // the API shares the cluster's membership settings (ring settings
        // above all) and its OpenTelemetry settings
        let mut api_env: Vec<(&str, &str)> = vec![("FERRIC_API__REQUEST_DEADLINE_MS", "30000")];
        api_env.extend(
            env.iter().filter(|(k, _)| {
                (k.starts_with("FERRIC_MEMBERSHIP__") && !k.contains("FENCE")) || k.starts_with("OTEL_")
            }),
        );
        // and the gRPC hop's TLS: it calls the conductors
        api_env.extend(env.iter().filter(|(k, _)| k.starts_with("FERRIC_GRPC__")));
        let setting = |k: &str| env.iter().find(|(key, _)| *key == k).map(|(_, v)| std::path::PathBuf::from(v));
        let grpc_tls = setting("FERRIC_GRPC__CA_FILE").map(|ca| ferric_common::tls::GrpcTls {
            ca,
            cert: setting("FERRIC_GRPC__CERT_FILE").expect("FERRIC_GRPC__CERT_FILE"),
            key: setting("FERRIC_GRPC__KEY_FILE").expect("FERRIC_GRPC__KEY_FILE"),
        });
        let api = Process::start("api", dir.path(), args, &api_env, Some(port));
        Cluster {
            etcd,
            api,
            api_url: format!("http://127.0.0.1:{port}"),
            conductors,
            db_url,
            pg,
            dir,
            client: http(),
            grpc_tls,
        }
    }

    /// Starts one more conductor, `c{n+1}`, reaching etcd at `etcd` (the
    /// cluster's own, or a proxy), with the ramdisk callback URL of this
    /// cluster's API and `env`; returns its index in `conductors`.
    pub fn add_conductor(&mut self, etcd: &str, ttl: u64, env: &[(&str, &str)]) -> usize {
        let i = self.conductors.len() + 1;
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "FERRIC_DEPLOY__EXTERNAL_CALLBACK_URL") {
            env.push(("FERRIC_DEPLOY__EXTERNAL_CALLBACK_URL", self.api_url.as_str()));
        }
        let grpc = free_port();
        let p = conductor_process(self.dir.path(), etcd, &self.db_url, i, grpc, ttl, &env);
        self.conductors.push((p, grpc));
        i - 1
    }

    /// Each live member's HTTP root URL, by conductor id, as published in
    /// its member record in etcd.
    pub fn member_http_urls(&self) -> BTreeMap<String, String> {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.etcd.endpoint, "get", "--prefix", "/ferric/conductors/", "--print-value-only"])
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|m| Some((m["id"].as_str()?.to_string(), m["http_url"].as_str()?.to_string())))
            .collect()
    }

    /// The ids of the members registered in etcd now.
    pub fn member_ids(&self) -> Vec<String> {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.etcd.endpoint, "get", "--prefix", "/ferric/conductors/", "--print-value-only"])
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|m| Some(m["id"].as_str()?.to_string()))
            .collect()
    }

    /// Every process stops (SIGKILL: a crash or a power cut, whatever the
    /// nodes were doing) and the test waits until etcd has no member left
    /// (their leases expired), then every process starts again — the
    /// conductors, then the API — with `env` added to its settings (a
    /// cluster restarted with another configuration).
    pub async fn restart_all(&mut self, env: &[(&str, &str)]) {
        self.api.kill();
        for (c, _) in &mut self.conductors {
            c.kill();
        }
        let start = Instant::now();
        while !self.member_ids().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "members still registered: {:?}", self.member_ids());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (c, _) in &mut self.conductors {
            for (k, v) in env {
                c.set_env(k, v);
            }
            c.spawn();
        }
        for (k, v) in env {
            self.api.set_env(k, v);
        }
        self.api.spawn();
    }

    pub async fn status(&self, i: usize) -> Option<ConductorStatus> {
        let scheme = if self.grpc_tls.is_some() { "https" } else { "http" };
        status_at(&format!("{scheme}://127.0.0.1:{}", self.conductors[i].1), self.grpc_tls.as_ref()).await.ok()
    }

    pub async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.api_url))
            .header("X-OpenStack-Ironic-API-Version", "1.115");
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Like `req`, insisting on success.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.req(method.clone(), path, body).await;
        assert!((200..300).contains(&s), "{method} {path} -> {s}: {v}");
        v
    }

    pub async fn wait_conductors(&self, n: usize) {
        let start = Instant::now();
        loop {
            let v = self.ok(Method::GET, "/v1/conductors", None).await;
            if v["conductors"].as_array().map(|a| a.len()) == Some(n) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "API never saw {n} conductors: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Create `n` fake-hardware nodes named `{prefix}{i}`; returns uuids.
    pub async fn create_nodes(&self, prefix: &str, n: usize, driver_info: Value) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..n {
            let v = self
                .ok(
                    Method::POST,
                    "/v1/nodes",
                    Some(
                        json!({"driver": "fake-hardware", "name": format!("{prefix}{i}"), "driver_info": driver_info}),
                    ),
                )
                .await;
            out.push(v["uuid"].as_str().expect("uuid").to_string());
        }
        out
    }

    /// Every node's full document, by uuid.
    pub async fn nodes(&self) -> BTreeMap<String, Value> {
        let v = self.ok(Method::GET, "/v1/nodes/detail?limit=1000", None).await;
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["uuid"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    }

    /// Move nodes to `state` with `verb` and wait.
    pub async fn drive(&self, uuids: &[String], verb: &str, state: &str, timeout: Duration) {
        self.act(uuids, verb).await;
        self.wait_all(uuids, state, timeout).await;
    }

    /// Send a provision verb to every node, 16 requests at a time.
    pub async fn act(&self, uuids: &[String], verb: &str) {
        for chunk in uuids.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for u in chunk {
                let (c, url) = (self.client.clone(), format!("{}/v1/nodes/{u}/states/provision", self.api_url));
                let body = json!({"target": verb});
                set.spawn(async move {
                    let r = c
                        .put(url)
                        .header("X-OpenStack-Ironic-API-Version", "1.115")
                        .json(&body)
                        .send()
                        .await
                        .expect("request");
                    let s = r.status();
                    (s, r.text().await.unwrap_or_default())
                });
            }
            while let Some(r) = set.join_next().await {
                let (s, body) = r.expect("task");
                assert_eq!(s.as_u16(), 202, "{verb}: {body}");
            }
        }
    }

    pub async fn wait_all(&self, uuids: &[String], state: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let all = self.nodes().await;
            let failed: Vec<&Value> = uuids
                .iter()
                .filter_map(|u| all.get(u))
                .filter(|n| {
                    let s = n["provision_state"].as_str().unwrap_or_default();
                    s.ends_with("failed") || s == "error"
                })
                .collect();
            assert!(
                failed.is_empty(),
                "nodes failed: {:?}",
                failed.iter().map(|n| (&n["uuid"], &n["provision_state"], &n["last_error"])).collect::<Vec<_>>()
            );
            let pending =
                uuids.iter().filter(|u| all.get(*u).map(|n| n["provision_state"] != state).unwrap_or(true)).count();
            if pending == 0 {
                return;
            }
            assert!(start.elapsed() < timeout, "{pending} nodes not {state} after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub async fn status(port: u16) -> Option<ConductorStatus> {
    status_at(&format!("http://127.0.0.1:{port}"), None).await.ok()
}

/// A conductor's status at `url`, through the one channel builder every
/// client uses (mutual TLS with `tls`); Err says what failed.
pub async fn status_at(url: &str, tls: Option<&ferric_common::tls::GrpcTls>) -> Result<ConductorStatus, String> {
    let ch = ferric_common::rpc::endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))?;
    let mut c = ConductorClient::new(ch);
    c.get_conductor_status(Empty {}).await.map(|r| r.into_inner()).map_err(|e| e.to_string())
}

/// Continuous API requests that each go over gRPC to a node's owner
/// (`GET /v1/nodes/<n>/validate`), counting failures, until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    pub fn start(api: &str, nodes: Vec<String>) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let api = api.to_string();
        let handle = tokio::spawn(async move {
            let c = http();
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut i = 0usize;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let node = &nodes[i % nodes.len()];
                i += 1;
                match c
                    .get(format!("{api}/v1/nodes/{node}/validate"))
                    .header("X-OpenStack-Ironic-API-Version", "1.115")
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => {
                        let s = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failed.push(format!("{node}: {s} {body}"));
                    }
                    Err(e) => failed.push(format!("{node}: {e}")),
                }
            }
            (ok, failed)
        });
        Load { stop, handle }
    }

    /// Stop; returns (successful requests, failures).
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.await.expect("load task")
    }
}
