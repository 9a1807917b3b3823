//! The conductor: owns the nodes the ring gives it and acts on them.
//!
//! Layout: [`service`] (the gRPC service the API calls), [`lock`] (node
//! locks by incarnation), [`operation`] (the persisted, resumable step
//! engine), [`takeover`] (what the conductor does on every new ring epoch:
//! clear dead incarnations' locks, take over gained nodes, resume orphaned
//! operations and allocations), [`allocation`] (picking a node for an
//! allocation), [`drain`] (leave the ring without failing anything),
//! [`fence`] (stop acting when the lease may be gone),
//! [`reachability`] (leave the ring when the database is out of reach
//! while others reach it).
//!
//! The invariant: a conductor acts on a node only if the ring at its own
//! epoch says it owns the node, and only while it holds the node's lock;
//! everything it writes under the lock is conditional on still holding it.

pub mod allocation;
pub mod drain;
pub mod fence;
pub mod lock;
pub mod netboot;
pub mod operation;
pub mod periodic;
pub mod reachability;
pub mod secret;
pub mod service;
pub mod takeover;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferric_common::config::Config;
use ferric_common::db::{Db, DbError, NodeQuery, PortQuery};
use ferric_common::ids::{ConductorId, Incarnation, LockHolder};
use ferric_common::membership::Membership;
use ferric_common::model::{Node, Port};
use ferric_common::proto::conductor_server::ConductorServer;
use ferric_common::ring::{Member, MemberState, Ring};
use ferric_deploy::driver::{Registry, Task};
use ferric_deploy::services::Services;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, warn};
use uuid::Uuid;

/// Shared state of one running conductor incarnation.
pub struct Inner {
    pub cfg: Config,
    pub db: Db,
    pub registry: Registry,
    /// Stable identity (hostname / pod name).
    pub id: ConductorId,
    /// This start's identity; node locks are taken by it.
    pub incarnation: Incarnation,
    pub ring: watch::Receiver<Ring>,
    /// Bounds how many operations run at once.
    pub operations: Arc<Semaphore>,
    /// Every background operation, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown: operations stop at the next step boundary.
    pub cancel: CancellationToken,
    pub membership: Membership,
    /// Cancelled when the conductor asks its process to exit (a drain that
    /// finished).
    pub exit_requested: CancellationToken,
    /// Whether this incarnation may still act (see [`fence`]); every
    /// in-flight action selects on it and is dropped when it fences.
    pub fence: Arc<fence::Fence>,
    /// Set by a drain: no new operations, no take-overs.
    pub draining: std::sync::atomic::AtomicBool,
    pub stats: Stats,
    /// What every task's drivers use: media publishing (HTTP root or
    /// Swift), agent tokens, BMC connections, settings.
    pub services: Arc<Services>,
    /// Nodes whose operation runs in a task of this process. Nothing starts
    /// a second one while it runs, whatever the database says about the
    /// node's lock (a lock cleared under a running task must not let this
    /// process run the same operation twice at once).
    pub running: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Every node lock this incarnation takes, and the reaper of the ones
    /// its sections dropped without a release.
    pub locks: lock::Locks,
    /// (ring epoch, etcd revision): the ring of that epoch was confirmed
    /// current at that revision (see [`Inner::catch_up`]).
    confirmed: std::sync::Mutex<(u64, u64)>,
    /// The allocations this process picks a node for right now.
    pub allocations: allocation::Running,
    /// Bounds how many allocations are processed at once
    /// (`conductor.allocation_workers`).
    pub allocation_workers: Arc<Semaphore>,
}

/// How long a request whose ring epoch is newer than ours waits for our
/// watch to deliver it before etcd is asked.
const CATCH_UP_WAIT: Duration = Duration::from_millis(200);

/// Marks a node's operation as running in this process until dropped (a
/// panicking task drops it too).
struct Running {
    inner: Arc<Inner>,
    node: Uuid,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.inner.running.lock().expect("running set").remove(&self.node);
    }
}

/// Counters for status and metrics.
#[derive(Default)]
pub struct Stats {
    pub takeovers: std::sync::atomic::AtomicU64,
    pub takeovers_failed: std::sync::atomic::AtomicU64,
}

/// What a conductor's `/readyz` reports: ready to act on nodes means in
/// the ring as this incarnation, not fenced, not draining, and the database
/// answering. (`/healthz` stays liveness: the process serves HTTP.)
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub conductor: ConductorId,
    pub incarnation: Incarnation,
    pub joined: bool,
    /// etcd confirmed our ring current within the watch's stall timeout.
    pub ring_fresh: bool,
    pub fenced: bool,
    pub draining: bool,
    /// `ok`, or why the database did not answer.
    pub database: String,
}

impl Inner {
    pub async fn readiness(&self) -> Readiness {
        let joined = self.ring.borrow().member(&self.id).is_some_and(|m| m.incarnation == self.incarnation);
        let fenced = self.fence.is_fenced();
        let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
        let database = match self.db.ping(Duration::from_secs(2)).await {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        let ring_fresh = self.ring_is_fresh();
        Readiness {
            ready: joined && ring_fresh && !fenced && !draining && database == "ok",
            conductor: self.id.clone(),
            incarnation: self.incarnation.clone(),
            joined,
            ring_fresh,
            fenced,
            draining,
            database,
        }
    }

    /// The bound of one step, power action or take-over of a node.
    pub fn step_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.conductor.step_timeout_secs)
    }

    /// Makes sure the ring we act by is not older than `wanted` (the
    /// epoch a request was routed by). Waits briefly for our watch; then
    /// asks etcd whether our members are still the current ones — epochs
    /// of equal member sets can differ (a snapshot is numbered by the
    /// revision it was read at, a watched change by the change's) — and
    /// remembers the answer for this ring. Refuses when our ring is
    /// behind: the caller retries, and our watch catches up (or its stall
    /// is detected and the ring re-read).
    pub async fn catch_up(&self, wanted: u64) -> Result<(), String> {
        if wanted <= self.epoch() {
            return Ok(());
        }
        let mut rx = self.ring.clone();
        if tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(|r| r.epoch() >= wanted)).await.is_ok_and(|r| r.is_ok()) {
            return Ok(());
        }
        let ring = self.ring.borrow().clone();
        {
            let (epoch, rev) = *self.confirmed.lock().expect("confirmed ring");
            if epoch == ring.epoch() && rev >= wanted {
                return Ok(());
            }
        }
        match self.membership.confirm(&ring).await {
            Ok(Some(rev)) if rev >= wanted => {
                *self.confirmed.lock().expect("confirmed ring") = (ring.epoch(), rev);
                Ok(())
            }
            Ok(_) => {
                metrics::counter!(ferric_common::metrics::REQUESTS_REFUSED_STALE_RING_TOTAL).increment(1);
                Err(format!(
                    "conductor {} is behind the ring this request was routed by (its epoch {}, the request's \
                     {wanted}); retry",
                    self.id,
                    ring.epoch()
                ))
            }
            Err(e) => Err(format!("conductor {} could not confirm its ring with etcd ({e}); retry", self.id)),
        }
    }

    /// Whether our ring is known to be current (see
    /// `Membership::ring_is_fresh`): take-overs and dead-lock decisions wait
    /// for a fresh one.
    pub fn ring_is_fresh(&self) -> bool {
        self.membership.ring_is_fresh()
    }

    pub fn lock_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.conductor.lock_retry_interval_ms)
    }

    /// Whether the ring at our epoch gives us this node.
    pub fn owns(&self, node: &Node) -> bool {
        if self.fence.is_fenced() {
            return false;
        }
        let ring = self.ring.borrow();
        ring.owner(node.uuid.as_bytes(), &node.conductor_group, node.hardware_type())
            .is_some_and(|m| m.id == self.id && m.incarnation == self.incarnation)
    }

    /// Whether the ring at our epoch gives this node to nobody: no active
    /// conductor of its group enables its hardware type (the group's last
    /// one is gone). Only a move can bring such a node back, and it is
    /// applied by the node's owner as moved (`service::nodes`).
    pub fn nobody_owns(&self, node: &Node) -> bool {
        let ring = self.ring.borrow();
        ring.owner(node.uuid.as_bytes(), &node.conductor_group, node.hardware_type()).is_none()
    }

    pub fn epoch(&self) -> u64 {
        self.ring.borrow().epoch()
    }

    pub fn media(&self) -> &Arc<ferric_deploy::media::Media> {
        &self.services.media
    }

    /// A task on `node` run by this conductor.
    pub fn task(&self, node: Node, ports: Vec<Port>) -> Task {
        Task::new(node, ports, &self.id, self.services.clone())
    }

    /// A task on `node` with its ports read from the database.
    pub async fn task_with_ports(&self, node: Node) -> Task {
        let ports = self.ports_of(node.uuid).await;
        self.task(node, ports)
    }

    pub async fn ports_of(&self, node: Uuid) -> Vec<Port> {
        let q = PortQuery { node_uuid: Some(node), ..Default::default() };
        self.db.list_ports(&q).await.unwrap_or_default()
    }

    /// Append to the node's operation log; a failure to log is not a
    /// failure of the operation.
    pub async fn history(&self, node: Uuid, event: &str, detail: &str) {
        if let Err(e) = self.db.record_history(node, &self.id, &self.incarnation, event, detail).await {
            warn!(%node, "recording history failed: {e}");
        }
    }

    /// The queries that select the nodes the ring gives this incarnation
    /// through the `ring_partition` index: per (group, hardware type) I
    /// serve, a few thousand partitions each (bounded statement size).
    fn my_queries(&self) -> Vec<NodeQuery> {
        let ring = self.ring.borrow().clone();
        let Some(me) = ring.member(&self.id).filter(|m| m.incarnation == self.incarnation).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for hw in &me.hardware_types {
            let parts: Vec<i64> =
                ring.partitions_of(&me.id, &me.conductor_group, hw).into_iter().map(i64::from).collect();
            for chunk in parts.chunks(4096) {
                out.push(NodeQuery {
                    conductor_group: Some(me.conductor_group.clone()),
                    driver: Some(hw.clone()),
                    partitions: Some(chunk.to_vec()),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// The nodes the ring gives me.
    pub async fn my_nodes(&self) -> Result<Vec<Node>, DbError> {
        let mut out = Vec::new();
        for q in self.my_queries() {
            out.extend(self.db.list_nodes(&q).await?);
        }
        // the ring may have moved on while we read
        out.retain(|n| self.owns(n));
        Ok(out)
    }

    /// How many nodes the ring gives me: one grouped count in the database,
    /// not a listing (a status call — polled every 300 ms by `ferricctl
    /// conductor drain --wait` — used to read the whole node table).
    pub async fn count_my_nodes(&self) -> Result<u64, DbError> {
        let ring = self.ring.borrow().clone();
        let Some(me) = ring.member(&self.id).filter(|m| m.incarnation == self.incarnation).cloned() else {
            return Ok(0);
        };
        let counts = self.db.count_nodes_by_partition(&me.conductor_group).await?;
        let mut n = 0;
        for hw in &me.hardware_types {
            let mine: std::collections::HashSet<i64> =
                ring.partitions_of(&me.id, &me.conductor_group, hw).into_iter().map(i64::from).collect();
            n += counts
                .iter()
                .filter(|(d, p, _)| d == hw && mine.contains(p))
                .map(|(_, _, c)| (*c).max(0) as u64)
                .sum::<u64>();
        }
        Ok(n)
    }

    /// Whether a task of this process runs the node's operation.
    pub fn is_running(&self, node: Uuid) -> bool {
        self.running.lock().expect("running set").contains(&node)
    }

    /// Runs the node's operation from its recorded step in a task of its
    /// own, holding `permit` (a worker) until it ends. Refused (false) when
    /// a task of this process already runs it: the lock is then left as it
    /// is, held for that task.
    pub fn spawn_operation(
        self: &Arc<Self>,
        lock: lock::NodeLock,
        node: Node,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> bool {
        if !self.running.lock().expect("running set").insert(node.uuid) {
            warn!(node = %node.uuid, "an operation of this node already runs here; not starting another");
            drop(lock); // not released: it is held for the running task
            return false;
        }
        let running = Running { inner: self.clone(), node: node.uuid };
        let inner = self.clone();
        let span = operation::span(&node);
        self.tasks.spawn(
            async move {
                let cancel = inner.cancel.clone();
                operation::run(inner, lock, node, cancel, running).await;
                drop(permit);
            }
            .instrument(span),
        );
        true
    }

    pub fn operations_in_flight(&self) -> usize {
        self.cfg.conductor.max_operations - self.operations.available_permits()
    }
}

/// A started conductor.
pub struct ConductorHandle {
    pub inner: Arc<Inner>,
    pub grpc_addr: SocketAddr,
    pub grpc_url: String,
    server: tokio::task::JoinHandle<()>,
    membership: Membership,
}

impl ConductorHandle {
    /// Wait until the conductor has stopped: the gRPC server is down and
    /// every operation reached a step boundary (or the shutdown timeout).
    /// Leaves the ring only after its operations stopped: its locks are
    /// cleared by others once it is no longer a member, so it must not be
    /// acting on any node by then.
    pub async fn wait(self) {
        if self.inner.fence.is_fenced() {
            // everything was dropped mid-flight; the lease must expire on its
            // own before anybody may touch our nodes
            let _ = self.server.await;
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
            self.membership.abandon().await;
            return;
        }
        let _ = self.server.await;
        self.inner.tasks.close();
        let timeout = Duration::from_millis(self.inner.cfg.conductor.shutdown_timeout_ms);
        if tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_err() {
            warn!("operations still running after the shutdown timeout; not leaving the ring, the lease will expire");
            return;
        }
        if let Err(e) = self.membership.leave(&self.inner.id, &self.inner.incarnation).await {
            warn!("leaving the ring failed: {e}; the lease will expire");
        }
    }
}

/// Start a conductor: bind gRPC, join the membership, recover the nodes
/// the ring gives it, and serve until `shutdown` is cancelled.
/// Where BMCs reach this conductor's HTTP root: `[deploy] http_server_url`,
/// which the process sets from its bound HTTP listener when empty.
fn http_root_url(cfg: &Config) -> anyhow::Result<String> {
    if !cfg.deploy.http_server_url.is_empty() {
        return Ok(cfg.deploy.http_server_url.clone());
    }
    if cfg.deploy.use_http_web_server_for_images {
        anyhow::bail!(
            "deploy.http_server_url is empty and no conductor HTTP listener set it: set conductor.http_listen \
             (the conductor serves its HTTP root there) or deploy.http_server_url"
        );
    }
    Ok(String::new())
}

/// The advertised gRPC URL must reach this conductor (a `Whoami` with our
/// incarnation comes back), and the HTTP root's URL must serve this
/// conductor's store (a probe object put there downloads with its content)
/// — else every request for our nodes would wait for the deadline and end
/// in a 503, and every BMC fetch would fail.
async fn check_reachable(inner: &Arc<Inner>, grpc_url: &str) -> anyhow::Result<()> {
    const TRIES: u32 = 20;
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let answer = async {
            let tls = ferric_common::tls::GrpcTls::from_config(&inner.cfg.grpc);
            let ch = ferric_common::rpc::endpoint(grpc_url, tls.as_ref())?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3))
                .connect()
                .await
                .map_err(|e| {
                    format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
                })?;
            let who = ferric_common::proto::conductor_client::ConductorClient::new(ch)
                .whoami(ferric_common::proto::Empty {})
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            Ok::<_, String>(who)
        };
        match answer.await {
            Ok(who) if inner.incarnation == *who.incarnation => {
                last.clear();
                break;
            }
            Ok(who) => {
                anyhow::bail!(
                    "conductor.grpc_url {grpc_url} reaches another conductor ({}, incarnation {}), not this one: set \
                     --grpc-url to an address of this host that reaches --grpc-listen {}",
                    who.id,
                    who.incarnation,
                    inner.cfg.conductor.grpc_listen
                );
            }
            Err(e) => last = e,
        }
    }
    if !last.is_empty() {
        anyhow::bail!(
            "conductor.grpc_url {grpc_url} does not reach this conductor ({last}): API processes could not send it \
             requests; set --grpc-url to an address of this host that reaches --grpc-listen {}",
            inner.cfg.conductor.grpc_listen
        );
    }
    let store = inner.media().artefacts.store().clone();
    if store.kind() == "http" {
        let name = format!("probe-{}.txt", Uuid::new_v4());
        let nonce = Uuid::new_v4().to_string();
        store.put_bytes(&name, nonce.clone().into_bytes(), Some(Duration::from_secs(60))).await?;
        let url = store.url(&name, Duration::from_secs(60))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = &inner.cfg.conductor.http_tls_ca_file;
        let got = async {
            let mut client = reqwest::Client::builder().timeout(Duration::from_secs(5));
            if !ca.as_os_str().is_empty() {
                let pem = std::fs::read(ca).map_err(|e| format!("conductor.http_tls_ca_file {}: {e}", ca.display()))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| format!("conductor.http_tls_ca_file {}: {e}", ca.display()))?;
                client = client.tls_certs_only([cert]);
            }
            let r = client.build().map_err(|e| e.to_string())?.get(&url).send().await.map_err(|e| format!("{e}"))?;
            let status = r.status();
            let body = r.text().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body))
        }
        .await;
        let _ = store.delete(&name).await;
        match got {
            Ok((s, body)) if s.is_success() && body == nonce => {}
            Ok((s, _)) => anyhow::bail!(
                "deploy.http_server_url does not serve this conductor's HTTP root: {url} answered {s}; BMCs would \
                 fetch boot media from the wrong place — set it to the URL of this host's conductor.http_listen"
            ),
            Err(e) => anyhow::bail!(
                "deploy.http_server_url does not reach this conductor's HTTP root ({url}: {e}); BMCs could not fetch \
                 boot media — set it to a URL of this host's conductor.http_listen that BMCs reach"
            ),
        }
    }
    Ok(())
}

/// How long a gRPC client may take to complete its TLS handshake; API
/// processes on the cluster's network take milliseconds.
const GRPC_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn start(
    cfg: Config,
    db: Db,
    membership: Membership,
    shutdown: CancellationToken,
) -> anyhow::Result<ConductorHandle> {
    let registry = Registry::new(&cfg.conductor.enabled_hardware_types).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = tokio::net::TcpListener::bind(&cfg.conductor.grpc_listen)
        .await
        .with_context(|| format!("binding the conductor gRPC address {}", cfg.conductor.grpc_listen))?;
    let grpc_addr = listener.local_addr()?;
    let grpc_tls = match ferric_common::tls::GrpcTls::from_config(&cfg.grpc) {
        Some(t) => Some(t.server_config().context("grpc.cert_file / grpc.key_file / grpc.ca_file")?),
        None => None,
    };
    let scheme = if grpc_tls.is_some() { "https" } else { "http" };
    let grpc_url = if cfg.conductor.grpc_url.is_empty() {
        format!("{scheme}://{grpc_addr}")
    } else {
        cfg.conductor.grpc_url.clone()
    };
    let id = ConductorId::new(cfg.conductor_id());
    let incarnation = Incarnation::start(&id);
    let http_url = http_root_url(&cfg)?;
    let media = ferric_deploy::media::Media::from_config(&cfg, &http_url).await.with_context(|| {
        format!(
            "setting up the {} publisher",
            if cfg.deploy.use_http_web_server_for_images { "HTTP root" } else { "Swift" }
        )
    })?;
    netboot::prepare_tftp_root(&cfg).context("preparing the TFTP root")?;
    if !cfg.pxe.tftp_listen.is_empty() {
        netboot::serve_tftp(&cfg, shutdown.child_token()).await?;
    }
    let secret = secret::resolve(&db, cfg.conductor.cluster_secret.expose()).await.context("the cluster secret")?;
    let tokens = ferric_deploy::token::AgentTokens::new(secret);
    let exit_requested = CancellationToken::new();
    let fence = Arc::new(fence::Fence::new(
        id.clone(),
        incarnation.clone(),
        Duration::from_millis(cfg.membership.fence_margin_ms),
        exit_requested.clone(),
    ));
    let services = Arc::new(Services::new(&cfg, &http_url, media, tokens, &id, &incarnation, fence.clone()));
    if services.settings.callback_url.is_empty() {
        warn!(
            "deploy.external_callback_url is empty: ramdisks cannot be booted by virtual media until it names the \
             Ironic API URL the nodes reach"
        );
    }
    let inner = Arc::new(Inner {
        services,
        registry,
        id: id.clone(),
        incarnation: incarnation.clone(),
        ring: membership.subscribe(),
        operations: Arc::new(Semaphore::new(cfg.conductor.max_operations)),
        tasks: TaskTracker::new(),
        cancel: shutdown.child_token(),
        membership: membership.clone(),
        draining: std::sync::atomic::AtomicBool::new(false),
        exit_requested,
        fence: fence.clone(),
        stats: Stats::default(),
        running: Default::default(),
        locks: lock::Locks::new(db.clone(), LockHolder::of(&incarnation), fence),
        confirmed: std::sync::Mutex::new((0, 0)),
        allocations: Default::default(),
        allocation_workers: Arc::new(Semaphore::new(cfg.conductor.allocation_workers)),
        db,
        cfg,
    });

    let svc = service::ConductorService::new(inner.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let router = tonic::transport::Server::builder().add_service(
            ConductorServer::new(svc)
                .max_decoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES),
        );
        let res = match grpc_tls {
            // mutual TLS: only clients with a certificate of grpc.ca_file
            // complete a handshake
            Some(tls) => {
                let incoming = ferric_common::tls::incoming(listener, tls, GRPC_HANDSHAKE_TIMEOUT, stop.clone());
                let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
                router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
            }
        };
        if let Err(e) = res {
            warn!("conductor gRPC server stopped: {e}");
        }
    });

    // before anyone is told where we are: does it reach us?
    if let Err(e) = check_reachable(&inner, &grpc_url).await {
        shutdown.cancel();
        return Err(e);
    }
    let ring_settings = ferric_common::ring::RingSettings {
        partition_exponent: inner.cfg.membership.partition_exponent,
        load_epsilon: inner.cfg.membership.load_epsilon,
        replicas: inner.cfg.membership.replicas,
    };
    let member = Member {
        id: id.clone(),
        incarnation: incarnation.clone(),
        grpc_url: grpc_url.clone(),
        http_url: if inner.cfg.deploy.use_http_web_server_for_images { http_url.clone() } else { String::new() },
        conductor_group: inner.cfg.conductor.conductor_group.to_ascii_lowercase(),
        hardware_types: inner.registry.names().iter().map(|s| s.to_string()).collect(),
        state: MemberState::Active,
        ring_settings: ring_settings.fingerprint(),
        database_id: ferric_common::identity::database_id(&inner.db).await.context("reading the database id")?,
    };
    match membership.join(member, inner.cfg.membership.lease_ttl_secs).await {
        Ok(valid_until) => {
            if let Some(v) = valid_until {
                inner.fence.watch_lease(v);
            }
            // the watchdog runs on its own task, apart from every worker pool
            tokio::spawn(fence::watchdog(inner.clone()));
        }
        Err(e) => {
            shutdown.cancel();
            return Err(anyhow::anyhow!("joining the ring: {e}"));
        }
    }
    info!(%id, %incarnation, %grpc_url, "conductor joined the ring");
    // in the ring first, then the stored partitions checked (or recomputed)
    // under the partition lock: a recompute to other settings after this
    // sees us and is refused (ferric_common::partitions); "my nodes" are
    // read by these partitions, so nothing that reads them starts before
    if let Err(e) = ferric_common::partitions::settle(&inner.db, &membership, &ring_settings).await {
        if let Err(left) = membership.leave(&id, &incarnation).await {
            warn!("leaving the ring failed: {left}; the lease will expire");
        }
        shutdown.cancel();
        return Err(anyhow::anyhow!("the nodes' ring partitions: {e}"));
    }

    // react to every ring epoch (the first one is start-up)
    let watcher = inner.clone();
    inner.tasks.spawn(takeover::run(watcher));
    inner.tasks.spawn(periodic::run(inner.clone()));
    inner.tasks.spawn(reachability::watch(inner.clone()));

    Ok(ConductorHandle { inner, grpc_addr, grpc_url, server, membership })
}
