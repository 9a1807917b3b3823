//! The `ferric` binary's library side: process wiring for each mode.
//!
//! `all-in-one` runs the API and one conductor in one process with SQLite
//! and in-process membership: the same code paths as a cluster, with the
//! gRPC hop over loopback.

pub mod ctl;
pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferric_common::config::Config;
use ferric_common::db::{Db, SchemaPolicy};
use ferric_common::membership::etcd::EtcdMembership;
use ferric_common::membership::{LocalMembership, Membership};
use ferric_common::ring::RingSettings;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub fn ring_settings(cfg: &Config) -> RingSettings {
    RingSettings {
        partition_exponent: cfg.membership.partition_exponent,
        load_epsilon: cfg.membership.load_epsilon,
        replicas: cfg.membership.replicas,
    }
}

/// Run API + conductor until `shutdown` is cancelled, then stop both:
/// the API stops taking requests, running operations stop at a step
/// boundary (and resume at the next start).
pub async fn run_all_in_one(mut cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.membership.backend != "local" {
        anyhow::bail!("all-in-one uses in-process membership; membership.backend must be \"local\"");
    }
    let _dir_lock = guard::lock_data_dir(&cfg.data_dir, "all-in-one")?;
    let url = cfg.database_url();
    let db = open_db(&cfg).await?;
    let membership = Membership::Local(Arc::new(LocalMembership::new(ring_settings(&cfg))));
    guard::check_cluster(&db, &membership, &redact(&url)).await?;
    let claim_stop = CancellationToken::new();
    let claim = guard::claim_database(&db, &cfg.data_dir, claim_stop.clone()).await?;
    // with the claim and the cluster check, no other process writes to this
    // database: the API may keep answers while nothing was written
    db.writes().declare_sole_writer();
    let http_stop = CancellationToken::new();
    let _stop_http = http_stop.clone().drop_guard();
    let media_slot = ferric_deploy::media::MediaSlot::default();
    let ready = ReadySlot::default();
    serve_conductor_http(&mut cfg, install_metrics(), media_slot.clone(), ready.clone(), http_stop).await?;
    if cfg.deploy.external_callback_url.is_empty() {
        // ramdisks call back the API this process serves
        cfg.deploy.external_callback_url = own_api_url(&cfg).unwrap_or_default();
    }
    let conductor = ferric_conductor::start(cfg.clone(), db.clone(), membership.clone(), shutdown.clone()).await?;
    *media_slot.write().expect("media slot") = Some(conductor.inner.media().clone());
    *ready.write().expect("ready slot") = Some(conductor.inner.clone());
    let api =
        ferric_api::serve(cfg.clone(), db.clone(), membership.subscribe(), install_metrics(), shutdown.clone()).await?;
    let scheme = if cfg.api.tls_cert_file.as_os_str().is_empty() { "http" } else { "https" };
    info!(
        api = %format!("{scheme}://{}", api.addr),
        conductor = %conductor.inner.id,
        database = %redact(&url),
        "ferric all-in-one ready"
    );
    println!(
        "Ferric all-in-one: Ironic API on {scheme}://{0}\n  try: baremetal --os-auth-type none --os-endpoint {scheme}://{0} driver list",
        api.addr
    );
    shutdown.cancelled().await;
    info!("shutting down");
    let _ = api.join.await;
    conductor.wait().await;
    claim_stop.cancel();
    let _ = claim.await;
    db.close().await;
    Ok(())
}

/// Where nodes reach this process's API: `api.public_url`, else the
/// listen address when it is a concrete one (not a wildcard, not port 0).
fn own_api_url(cfg: &Config) -> Option<String> {
    if !cfg.api.public_url.is_empty() {
        return Some(cfg.api.public_url.trim_end_matches('/').to_string());
    }
    let addr: std::net::SocketAddr = cfg.api.listen.parse().ok()?;
    let scheme = if cfg.api.tls_cert_file.as_os_str().is_empty() { "http" } else { "https" };
    (!addr.ip().is_unspecified() && addr.port() != 0).then(|| format!("{scheme}://{addr}"))
}

async fn etcd_membership(cfg: &Config, shutdown: &CancellationToken) -> anyhow::Result<Membership> {
    if cfg.membership.backend != "etcd" {
        anyhow::bail!(
            "a separate API or conductor process needs membership.backend = \"etcd\" and membership.etcd_endpoints \
             (FERRIC_MEMBERSHIP__BACKEND=etcd FERRIC_MEMBERSHIP__ETCD_ENDPOINTS=[...] or --etcd-endpoints)"
        );
    }
    let m = EtcdMembership::start(
        ferric_common::membership::etcd::EtcdEndpoints::from_config(&cfg.membership)?,
        ring_settings(cfg),
        ferric_common::membership::etcd::WatchSettings::from_config(&cfg.membership),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("connecting to etcd at {}", cfg.membership.etcd_endpoints.join(",")))?;
    Ok(Membership::Etcd(m))
}

/// The database, its schema checked (and migrated when
/// `database.auto_migrate`).
async fn open_db(cfg: &Config) -> anyhow::Result<Db> {
    let policy = if cfg.database.auto_migrate { SchemaPolicy::Migrate } else { SchemaPolicy::Require };
    open_db_with(cfg, policy).await
}

pub async fn open_db_with(cfg: &Config, policy: SchemaPolicy) -> anyhow::Result<Db> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let url = cfg.database_url();
    let acquire = Duration::from_secs(cfg.database.acquire_timeout_secs.max(1));
    Db::open(&url, cfg.database.max_connections, acquire, policy)
        .await
        .with_context(|| format!("opening database {}", redact(&url)))
}

/// `ferric db …`: what the schema is, bringing it up to date, waiting for it.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DbCmd {
    /// Apply the migrations the database lacks (the Helm chart's migration
    /// Job runs this). Refuses a schema newer than this binary.
    Migrate,
    /// Applied, pending and unknown migrations, as JSON
    Status,
    /// Exit 0 when the schema is exactly this binary's, else 1 and why
    Check {
        /// Keep checking for up to SECS seconds (an init container waiting for the migration Job; the database
        /// may not be up yet either)
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
}

pub async fn run_db(cfg: Config, cmd: DbCmd) -> anyhow::Result<()> {
    let url = redact(&cfg.database_url());
    match cmd {
        DbCmd::Migrate => {
            let db = open_db_with(&cfg, SchemaPolicy::Inspect).await?;
            let applied = db.migrate().await.with_context(|| format!("migrating {url}"))?;
            if applied.is_empty() {
                println!("{url}: schema already current");
            } else {
                let v: Vec<String> = applied.iter().map(|v| format!("{v:04}")).collect();
                println!("{url}: applied migration {}", v.join(", "));
            }
            db.close().await;
        }
        DbCmd::Status => {
            let db = open_db_with(&cfg, SchemaPolicy::Inspect).await?;
            let s = db.schema_status().await?;
            let mut out = serde_json::to_value(&s)?;
            out["current"] = json!(s.current());
            println!("{}", serde_json::to_string_pretty(&out)?);
            db.close().await;
        }
        DbCmd::Check { wait } => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            let mut last = String::new();
            loop {
                let why = match open_db_with(&cfg, SchemaPolicy::Inspect).await {
                    Ok(db) => {
                        let s = db.schema_status().await;
                        db.close().await;
                        match s {
                            Ok(s) if s.current() => {
                                println!("{url}: schema current ({} migrations)", s.applied.len());
                                return Ok(());
                            }
                            Ok(s) => s.refusal(SchemaPolicy::Require).unwrap_or_default(),
                            Err(e) => format!("reading the schema: {e}"),
                        }
                    }
                    Err(e) => format!("{e:#}"),
                };
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("{url}: {why}");
                }
                if why != last {
                    eprintln!("{url}: waiting: {why}");
                    last = why;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    Ok(())
}

/// A stateless API process: watches the ring in etcd, serves the Ironic
/// API, forwards node actions to their owners.
pub async fn run_api(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let watch_token = CancellationToken::new();
    let _stop_watch = watch_token.clone().drop_guard();
    let membership = etcd_membership(&cfg, &watch_token).await?;
    let db = open_db(&cfg).await?;
    let url = redact(&cfg.database_url());
    guard::refuse_sqlite_cluster(&cfg, &db, &url)?;
    guard::check_cluster(&db, &membership, &url).await?;
    // an API that places nodes differently routes every request to the
    // wrong conductor: refuse it, as conductors are refused at join
    let ours = ring_settings(&cfg).fingerprint();
    if let Some(m) =
        membership.current().members().iter().find(|m| !m.ring_settings.is_empty() && m.ring_settings != ours)
    {
        anyhow::bail!(
            "ring settings differ: member {} uses [{}], this API process [{ours}]; every process of a cluster needs \
             the same membership.partition_exponent, load_epsilon and replicas",
            m.id,
            m.ring_settings
        );
    }
    let database_id = ferric_common::identity::database_id(&db).await?;
    if let Some(e) = ferric_common::membership::etcd::database_mismatch(&membership.current(), None, &database_id) {
        anyhow::bail!(e);
    }
    // nodes are created with the recorded exponent; bring the stored
    // partitions to ours (or be refused) before serving
    ferric_common::partitions::settle(&db, &membership, &ring_settings(&cfg))
        .await
        .map_err(|e| anyhow::anyhow!("the nodes' ring partitions: {e}"))?;
    let serve_stop = CancellationToken::new();
    let api = ferric_api::serve(cfg.clone(), db.clone(), membership.subscribe(), install_metrics(), serve_stop.clone())
        .await?;
    let scheme = if cfg.api.tls_cert_file.as_os_str().is_empty() { "http" } else { "https" };
    info!(api = %format!("{scheme}://{}", api.addr), epoch = membership.current().epoch(), "ferric api ready");
    shutdown.cancelled().await;
    api.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    if cfg.api.shutdown_delay_ms > 0 {
        info!(
            delay_ms = cfg.api.shutdown_delay_ms,
            "stopping: /readyz answers 503, still serving until the delay ends"
        );
        tokio::time::sleep(Duration::from_millis(cfg.api.shutdown_delay_ms)).await;
    }
    serve_stop.cancel();
    let _ = api.join.await;
    db.close().await;
    Ok(())
}

/// A conductor process: registers in etcd under a lease and owns the nodes
/// the ring gives it.
pub async fn run_conductor(
    mut cfg: Config,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> anyhow::Result<()> {
    // the lease and the watch outlive the conductor's shutdown: it leaves
    // the ring only after its operations stopped (else others would clear
    // its locks while it still acts)
    let membership_token = CancellationToken::new();
    let _stop_membership = membership_token.clone().drop_guard();
    let _dir_lock = guard::lock_data_dir(&cfg.data_dir, "conductor")?;
    let membership = etcd_membership(&cfg, &membership_token).await?;
    let db = open_db(&cfg).await?;
    let url = redact(&cfg.database_url());
    guard::refuse_sqlite_cluster(&cfg, &db, &url)?;
    guard::check_cluster(&db, &membership, &url).await?;
    let media_slot = ferric_deploy::media::MediaSlot::default();
    let ready = ReadySlot::default();
    serve_conductor_http(&mut cfg, install_metrics(), media_slot.clone(), ready.clone(), membership_token.clone())
        .await?;
    let mut restarting = false;
    let mut trouble = ferric_common::logonce::Repeated::new("new incarnation");
    loop {
        let stop = CancellationToken::new();
        let conductor = match ferric_conductor::start(cfg.clone(), db.clone(), membership.clone(), stop.clone()).await {
            Ok(c) => c,
            // after fencing: etcd may still be unreachable; keep trying
            Err(e) if restarting => {
                trouble.failed(&format!("starting a new incarnation failed: {e:#}"));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
            Err(e) => return Err(e),
        };
        trouble.succeeded();
        *media_slot.write().expect("media slot") = Some(conductor.inner.media().clone());
        *ready.write().expect("ready slot") = Some(conductor.inner.clone());
        info!(id = %conductor.inner.id, incarnation = %conductor.inner.incarnation, grpc = %conductor.grpc_url, "ferric conductor ready");
        tokio::select! {
            // SIGTERM/SIGINT: drain first, so nothing fails (bounded by
            // drain_timeout_ms, or cut short by a second signal)
            _ = shutdown.cancelled() => {
                tokio::select! {
                    _ = ferric_conductor::drain::drain_and_wait(&conductor.inner) => {}
                    _ = hurry.cancelled() => {}
                }
            }
            // a finished drain (ferricctl conductor drain), or fencing
            _ = conductor.inner.exit_requested.cancelled() => {}
        }
        *media_slot.write().expect("media slot") = None;
        *ready.write().expect("ready slot") = None;
        let fenced = conductor.inner.fence.is_fenced();
        stop.cancel();
        conductor.wait().await;
        if !fenced || shutdown.is_cancelled() {
            break;
        }
        restarting = true;
    }
    db.close().await;
    Ok(())
}

/// Install this process's Prometheus recorder (once) and return how to
/// render it.
pub fn install_metrics() -> Option<ferric_api::MetricsRender> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    let handle =
        HANDLE.get_or_init(|| metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok()).clone()?;
    Some(Arc::new(move || handle.render()))
}

/// The running incarnation, for `/readyz` (none while starting or while a
/// fenced incarnation is being replaced).
type ReadySlot = Arc<std::sync::RwLock<Option<Arc<ferric_conductor::Inner>>>>;

/// `/readyz`: 200 and the checks when this conductor may act on nodes, 503
/// and the checks when not.
async fn readyz(ready: ReadySlot) -> axum::response::Response {
    use axum::response::IntoResponse;
    let inner = ready.read().expect("ready slot").clone();
    let Some(inner) = inner else {
        let body = serde_json::json!({"ready": false, "reason": "no incarnation is running (starting, or replacing a fenced one)"});
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    };
    let r = inner.readiness().await;
    let code = if r.ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(r)).into_response()
}

/// The conductor's own HTTP listener: /metrics, /healthz (liveness), /readyz, the HTTP root
/// under /httpboot/ (boot media for BMCs) and /vmedia/<name> (a redirect to
/// a fresh URL of a published object, for BMCs that refuse query strings). Sets `deploy.http_server_url`
/// from the bound address when it is empty.
async fn serve_conductor_http(
    cfg: &mut Config,
    metrics: Option<ferric_api::MetricsRender>,
    media: ferric_deploy::media::MediaSlot,
    ready: ReadySlot,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if cfg.conductor.http_listen.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&cfg.conductor.http_listen)
        .await
        .with_context(|| format!("binding the conductor HTTP address {}", cfg.conductor.http_listen))?;
    let addr = listener.local_addr()?;
    let c = &cfg.conductor;
    let tls = ferric_common::tls::listener_cert(
        "conductor.http_tls_cert_file",
        &c.http_tls_cert_file,
        "conductor.http_tls_key_file",
        &c.http_tls_key_file,
    )?
    .map(|cert| ferric_common::tls::server_config(cert, None, &[b"h2", b"http/1.1"]))
    .transpose()?
    .map(tokio_rustls::TlsAcceptor::from);
    let scheme = if tls.is_some() { "https" } else { "http" };
    if cfg.deploy.http_server_url.is_empty() {
        if addr.ip().is_unspecified() {
            anyhow::bail!(
                "conductor.http_listen {addr} is a wildcard address, so BMCs cannot be told where the HTTP root is: \
                 set deploy.http_server_url (e.g. {scheme}://<this host's IP>:{}/httpboot)",
                addr.port()
            );
        }
        cfg.deploy.http_server_url = format!("{scheme}://{addr}/httpboot");
    }
    let root = cfg.http_server_root();
    std::fs::create_dir_all(&root).with_context(|| format!("creating the HTTP root {}", root.display()))?;
    info!(addr = %addr, root = %root.display(), url = %cfg.deploy.http_server_url, "conductor HTTP (/metrics, /healthz, /readyz, /httpboot) listening");
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(move || readyz(ready.clone())))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.map(|r| r()).unwrap_or_default() }
            }),
        )
        .nest_service("/httpboot", ferric_deploy::publish::http::router(root))
        .merge(ferric_deploy::media::redirect_router(media));
    match tls {
        // HTTPS: the API's connection handling (handshake and headers
        // bounded in time), the certificate reloaded when its files change
        Some(tls) => {
            let timeouts = ferric_api::connections::Timeouts {
                header_read: Duration::from_millis(cfg.api.header_read_timeout_ms),
                keep_alive: Duration::from_millis(cfg.api.keep_alive_timeout_ms),
            };
            tokio::spawn(ferric_api::connections::serve(listener, app, timeouts, Some(tls), shutdown));
        }
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
            });
        }
    }
    Ok(())
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    ferric_common::db::redact_password(url)
}

/// Runs a process mode: a Tokio runtime, logging and tracing as `cfg` and
/// the `OTEL_*` environment say (`service`: a server's service name unless
/// `OTEL_SERVICE_NAME` gives one; None for a one-shot command, which
/// exports nothing), SIGINT/SIGTERM wired to `main`'s
/// shutdown and hurry tokens. The spans not yet exported are sent after
/// `main` returns, while the runtime still runs (the exporter needs it).
pub fn run_process<F, Fut>(cfg: &Config, service: Option<&str>, main: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Runtime::new()?;
    let telemetry = {
        let _in_runtime = rt.enter();
        ferric_common::telemetry::init(&cfg.log, service).map_err(anyhow::Error::msg)?
    };
    let res = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let hurry = CancellationToken::new();
        cancel_on_signals(shutdown.clone(), hurry.clone());
        main(shutdown, hurry).await
    });
    telemetry.shutdown();
    res
}

/// Cancel `token` on SIGINT or SIGTERM; a second signal cancels `hurry`
/// (a draining conductor then stops waiting for a hand-off and stops at
/// the next step boundary).
pub fn cancel_on_signals(token: CancellationToken, hurry: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                token.cancel();
            } else {
                tracing::warn!("second signal: stopping now, at the next step boundary");
                hurry.cancel();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.sqlite"), "sqlite://x.sqlite");
    }
}

/// Flags shared by the process modes; each maps onto a config key.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct CommonFlags {
    /// Directory for local state (and the SQLite file by default) [default: .ferric]
    #[arg(long, global = true)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB [default: sqlite://<data-dir>/ferric.sqlite]
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// etcd endpoints, comma-separated (sets membership.backend = etcd)
    #[arg(long, value_delimiter = ',', global = true)]
    pub etcd_endpoints: Option<Vec<String>>,
}

/// Flags of a conductor process in a cluster (not of all-in-one, whose
/// in-process membership has no lease).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LeaseFlags {
    /// Lease TTL in seconds for conductor membership [default: 6]
    #[arg(long)]
    pub lease_ttl: Option<u64>,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ApiFlags {
    /// Address of the Ironic API [default: 127.0.0.1:6385]
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve the API without authentication (auth.auth_strategy = noauth) on an address that is not loopback
    /// (sets auth.insecure_noauth): anyone who reaches the port can do anything
    #[arg(long)]
    pub insecure_noauth: bool,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ConductorFlags {
    /// Conductor id, stable across restarts [default: the host name]
    #[arg(long)]
    pub conductor_id: Option<String>,
    /// Conductor group this conductor serves [default: ""]
    #[arg(long)]
    pub conductor_group: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:0]
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// URL other processes reach the gRPC service at [default: from the bound address]
    #[arg(long)]
    pub grpc_url: Option<String>,
    /// The conductor's HTTP listener: /metrics, /healthz (liveness), /readyz (ready to act on nodes) and the HTTP root BMCs fetch boot media from
    /// [default: 127.0.0.1:0, any free port]
    #[arg(long)]
    pub http_listen: Option<String>,
}

fn section<'a>(o: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    o.entry(name).or_insert_with(|| json!({})).as_object_mut().expect("sections are objects")
}

/// The config overrides the flags stand for.
pub fn overrides(
    common: &CommonFlags,
    api: Option<&ApiFlags>,
    conductor: Option<&ConductorFlags>,
    lease: Option<&LeaseFlags>,
) -> Value {
    let mut o = Map::new();
    if let Some(d) = &common.data_dir {
        o.insert("data_dir".into(), json!(d));
    }
    if let Some(u) = &common.database_url {
        section(&mut o, "database").insert("url".into(), json!(u));
    }
    if let Some(e) = &common.etcd_endpoints {
        let m = section(&mut o, "membership");
        m.insert("backend".into(), json!("etcd"));
        m.insert("etcd_endpoints".into(), json!(e));
    }
    if let Some(t) = lease.and_then(|l| l.lease_ttl) {
        section(&mut o, "membership").insert("lease_ttl_secs".into(), json!(t));
    }
    if let Some(a) = api
        && let Some(l) = &a.listen
    {
        section(&mut o, "api").insert("listen".into(), json!(l));
    }
    if api.is_some_and(|a| a.insecure_noauth) {
        section(&mut o, "auth").insert("insecure_noauth".into(), json!(true));
    }
    if let Some(c) = conductor {
        let s = section(&mut o, "conductor");
        for (k, v) in [
            ("id", &c.conductor_id),
            ("conductor_group", &c.conductor_group),
            ("grpc_listen", &c.grpc_listen),
            ("grpc_url", &c.grpc_url),
            ("http_listen", &c.http_listen),
        ] {
            if let Some(v) = v {
                s.insert(k.into(), json!(v));
            }
        }
    }
    Value::Object(o)
}
