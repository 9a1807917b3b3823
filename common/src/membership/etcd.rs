//! Membership in etcd.
//!
//! Each conductor puts `/ferric/conductors/<id>` → JSON [`Member`] attached
//! to its own lease (TTL `lease_ttl_secs`, kept alive every TTL/3 by a task
//! of its own, apart from every worker pool). Every process — conductors,
//! API servers, ferricctl — reads the prefix at a consistent revision, then
//! watches it from the next revision, and publishes a new [`Ring`] (epoch =
//! the etcd revision of the change) whenever the set of members changes.
//!
//! When etcd goes away, the watch breaks: the watcher keeps the ring it has,
//! reconnects with back-off, re-reads the snapshot and publishes only if the
//! members differ — an etcd restart that lost nobody changes no ownership.
//! A watch can also **stall** without breaking: an etcd member cut from its
//! leader keeps the stream open and sends nothing, a slow watcher lags.
//! Every client asks for the leader (`require_leader`: a leaderless member
//! refuses, and we go to another), and the watcher asks etcd for a
//! progress notification every `watch_progress_interval_ms`; one not
//! answered within `watch_stall_timeout_ms` means the ring may be stale,
//! and the watch is dropped and the ring re-read. When the ring was last
//! confirmed current is published ([`EtcdMembership::confirmed_at`]).
//! A conductor's keep-alive retries likewise and publishes, after every
//! acknowledged renewal, until when the lease is surely valid; the
//! conductor fences itself before that instant (see `ferric_conductor::fence`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ids::{ConductorId, Incarnation};
use crate::ring::{Member, MemberState, Ring, RingSettings};

pub const PREFIX: &str = "/ferric/conductors/";

/// Where each conductor says whether it reaches the database
/// (`<prefix><id>` → JSON [`DatabaseHealth`]), on its own lease: written
/// when that changes, gone with the conductor.
pub const DB_HEALTH_PREFIX: &str = "/ferric/dbhealth/";

/// A conductor's word on its database connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatabaseHealth {
    pub incarnation: Incarnation,
    pub reaches_database: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("etcd: {0}")]
pub struct EtcdError(String);

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        EtcdError(e.to_string())
    }
}

/// A client for etcd. No per-request timeout: it would also cut the
/// long-lived watch and keep-alive streams. HTTP/2 pings detect a silently
/// dead server; their interval stays above etcd's
/// `--grpc-keepalive-min-time` (5 s), or etcd closes the connection
/// ("too many pings").
async fn connect(endpoints: &EtcdEndpoints) -> Result<Client, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // a member cut off from the cluster's leader answers nothing new:
        // have it refuse instead of serving a stale view
        .with_require_leader(true);
    if let Some(tls) = &endpoints.tls {
        opts = opts.with_tls(tls.clone());
    }
    if let Some((user, password)) = &endpoints.user {
        opts = opts.with_user(user.clone(), password.expose());
    }
    Ok(Client::connect(&endpoints.urls, Some(opts)).await?)
}

/// Where etcd is and how to talk to it: its endpoints, TLS (a CA to check
/// its certificate, optionally a client certificate) and a user.
#[derive(Clone, Default)]
pub struct EtcdEndpoints {
    pub urls: Vec<String>,
    tls: Option<etcd_client::TlsOptions>,
    user: Option<(String, crate::secrets::Secret)>,
}

impl std::fmt::Debug for EtcdEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdEndpoints")
            .field("urls", &self.urls)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl From<Vec<String>> for EtcdEndpoints {
    fn from(urls: Vec<String>) -> EtcdEndpoints {
        EtcdEndpoints { urls, tls: None, user: None }
    }
}

impl EtcdEndpoints {
    /// From `[membership]`: the endpoints, TLS files and user (the files
    /// are read now, so a bad one is named at start).
    pub fn from_config(m: &crate::config::MembershipConfig) -> Result<EtcdEndpoints, EtcdError> {
        let mut e = EtcdEndpoints::from(m.etcd_endpoints.clone());
        if !m.etcd_ca_file.as_os_str().is_empty() {
            let read = |key: &str, p: &std::path::Path| {
                std::fs::read(p).map_err(|err| EtcdError(format!("membership.{key} {}: {err}", p.display())))
            };
            crate::tls::read_roots(&m.etcd_ca_file)
                .map_err(|err| EtcdError(format!("membership.etcd_ca_file: {err}")))?;
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("etcd_ca_file", &m.etcd_ca_file)?));
            if !m.etcd_cert_file.as_os_str().is_empty() {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read("etcd_cert_file", &m.etcd_cert_file)?,
                    read("etcd_key_file", &m.etcd_key_file)?,
                ));
            }
            e.tls = Some(tls);
        }
        if !m.etcd_username.is_empty() {
            e.user = Some((m.etcd_username.clone(), m.etcd_password.clone()));
        }
        Ok(e)
    }
}

/// A member of `ring` (other than `me`) that works on another database
/// than `database_id`, as the error that refuses this process.
pub fn database_mismatch(ring: &Ring, me: Option<&ConductorId>, database_id: &str) -> Option<String> {
    let other = ring.members().iter().find(|m| {
        Some(&m.id) != me && !m.database_id.is_empty() && !database_id.is_empty() && m.database_id != database_id
    })?;
    Some(format!(
        "this process's database (id {database_id}) is not the cluster's: member {} works on database {}; every \
         process of a cluster needs the same database.url (a forgotten --database-url gives a process its own SQLite \
         file)",
        other.id, other.database_id
    ))
}

/// How the membership watch is kept honest (`[membership]`
/// `watch_progress_interval_ms`, `watch_stall_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    pub progress_every: Duration,
    pub stall_after: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings { progress_every: Duration::from_secs(1), stall_after: Duration::from_secs(5) }
    }
}

impl WatchSettings {
    pub fn from_config(m: &crate::config::MembershipConfig) -> WatchSettings {
        WatchSettings {
            progress_every: Duration::from_millis(m.watch_progress_interval_ms),
            stall_after: Duration::from_millis(m.watch_stall_timeout_ms),
        }
    }
}

/// Watches the membership and publishes the ring; optionally registers
/// this process as a member.
pub struct EtcdMembership {
    endpoints: EtcdEndpoints,
    /// The etcd cluster's id (from its response headers), hex.
    cluster_id: String,
    tx: watch::Sender<Ring>,
    /// When etcd last confirmed that the published ring is current (an
    /// event, a progress notification or a fresh snapshot).
    confirmed: watch::Sender<Instant>,
    watch_settings: WatchSettings,
    cancel: CancellationToken,
    registration: Mutex<Option<Registration>>,
}

/// A conductor's entry and lease.
struct Registration {
    member: Member,
    lease: i64,
    stop: CancellationToken,
}

impl EtcdMembership {
    /// Read the membership and keep watching it until `cancel`.
    pub async fn start(
        endpoints: impl Into<EtcdEndpoints>,
        settings: RingSettings,
        watch_settings: WatchSettings,
        cancel: CancellationToken,
    ) -> Result<Arc<EtcdMembership>, EtcdError> {
        let endpoints = endpoints.into();
        let mut client = connect(&endpoints).await?;
        let cluster_id = client.status().await?.header().map(|h| format!("{:x}", h.cluster_id())).unwrap_or_default();
        let (members, rev) = snapshot(&mut client).await?;
        let (tx, _) = watch::channel(Ring::new(rev as u64, members.values().cloned().collect(), settings.clone()));
        let (confirmed, _) = watch::channel(Instant::now());
        let m = Arc::new(EtcdMembership {
            endpoints,
            cluster_id,
            tx,
            confirmed,
            watch_settings,
            cancel: cancel.clone(),
            registration: Mutex::new(None),
        });
        let watcher = Watcher {
            endpoints: m.endpoints.clone(),
            tx: m.tx.clone(),
            confirmed: m.confirmed.clone(),
            settings,
            watch: watch_settings,
            cancel,
        };
        tokio::spawn(watcher.run(members, rev));
        Ok(m)
    }

    /// When etcd last confirmed that the published ring is current.
    pub fn confirmed_at(&self) -> Instant {
        *self.confirmed.borrow()
    }

    /// How the watch is checked (its stall timeout tells how old a
    /// confirmation may be before the ring counts as stale).
    pub fn watch_settings(&self) -> WatchSettings {
        self.watch_settings
    }

    /// Asks etcd (a linearizable read) whether `ring`'s members are the
    /// current ones: the revision they are current at, or `None` when etcd
    /// has other members (the ring is behind).
    pub async fn confirm(&self, ring: &Ring) -> Result<Option<u64>, EtcdError> {
        let mut client = connect(&self.endpoints).await?;
        let (members, rev) = snapshot(&mut client).await?;
        let mut now: Vec<Member> = members.into_values().collect();
        now.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((now.as_slice() == ring.members()).then_some(rev as u64))
    }

    /// The members etcd has now (a linearizable read).
    pub async fn members_now(&self) -> Result<Vec<Member>, EtcdError> {
        let mut client = connect(&self.endpoints).await?;
        let (members, _) = snapshot(&mut client).await?;
        Ok(members.into_values().collect())
    }

    pub fn subscribe(&self) -> watch::Receiver<Ring> {
        self.tx.subscribe()
    }

    /// The etcd cluster's id, as recorded in a database's identity.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn current(&self) -> Ring {
        self.tx.borrow().clone()
    }

    /// Register this conductor under a lease of `ttl` seconds and keep it
    /// alive; returns once our own watch has seen the entry. The receiver
    /// holds this process's conservative estimate of when the lease
    /// expires: the send time of the last renewal etcd acknowledged, plus
    /// the TTL (etcd counts from when it *received* it, which is later).
    pub async fn register(&self, member: Member, ttl: i64) -> Result<watch::Receiver<Instant>, EtcdError> {
        // members that place nodes differently would each own nodes the
        // others also think they own (locks keep them from acting together,
        // but nodes would bounce and requests go astray): refuse to join
        if let Some(other) = self
            .current()
            .members()
            .iter()
            .find(|m| m.id != member.id && !m.ring_settings.is_empty() && m.ring_settings != member.ring_settings)
        {
            return Err(EtcdError(format!(
                "ring settings differ: member {} uses [{}], this process [{}]; every process of a cluster needs the \
                 same membership.partition_exponent, load_epsilon and replicas",
                other.id, other.ring_settings, member.ring_settings
            )));
        }
        if let Some(other) = database_mismatch(&self.current(), Some(&member.id), &member.database_id) {
            return Err(EtcdError(other));
        }
        let mut client = connect(&self.endpoints).await?;
        let (lease, granted) = put_with_lease(&mut client, &member, ttl).await?;
        let (valid_tx, valid_until) = watch::channel(granted + Duration::from_secs(ttl as u64));
        let stop = self.cancel.child_token();
        tokio::spawn(keep_alive(self.endpoints.clone(), member.clone(), lease, ttl, valid_tx, stop.clone()));
        *self.registration.lock().await = Some(Registration { member: member.clone(), lease, stop });
        let mut rx = self.subscribe();
        let seen = rx.wait_for(|r| r.member(&member.id).is_some_and(|m| m.incarnation == member.incarnation));
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .map_err(|_| EtcdError("our own registration did not show up in the watch within 10 s".into()))?
            .map_err(|_| EtcdError("membership watch stopped".into()))?;
        Ok(valid_until)
    }

    /// Whether `incarnation`'s member key exists (a linearizable read: the
    /// answer reflects every write etcd acknowledged before it, whatever
    /// this process's watch has seen). The key is attached to the
    /// incarnation's lease and etcd deletes it when the lease expires or is
    /// revoked; a key of the same conductor id with another incarnation
    /// means that incarnation is gone (a new one registers only once the
    /// old key is deleted).
    pub async fn is_alive(&self, incarnation: &Incarnation) -> Result<bool, EtcdError> {
        let mut client = connect(&self.endpoints).await?;
        let resp = client.get(key(&incarnation.conductor()), None).await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<Member>(kv.value()).ok())
            .is_some_and(|m| m.incarnation == *incarnation))
    }

    /// Publishes whether this conductor reaches the database (on its lease).
    pub async fn report_database(&self, reaches: bool) -> Result<(), EtcdError> {
        let reg = self.registration.lock().await;
        let reg = reg.as_ref().ok_or_else(|| EtcdError("not registered".into()))?;
        let health = DatabaseHealth { incarnation: reg.member.incarnation.clone(), reaches_database: reaches };
        let mut client = connect(&self.endpoints).await?;
        let value = serde_json::to_string(&health).expect("health serialises");
        client
            .put(format!("{DB_HEALTH_PREFIX}{}", reg.member.id), value, Some(PutOptions::new().with_lease(reg.lease)))
            .await?;
        Ok(())
    }

    /// The live conductors other than `me` that say they reach the
    /// database (a linearizable read; a word is there only while its
    /// writer's lease lives).
    pub async fn others_reaching_database(&self, me: &ConductorId) -> Result<Vec<ConductorId>, EtcdError> {
        let mut client = connect(&self.endpoints).await?;
        let resp = client.get(DB_HEALTH_PREFIX, Some(GetOptions::new().with_prefix())).await?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let id = ConductorId::new(String::from_utf8_lossy(kv.key()).trim_start_matches(DB_HEALTH_PREFIX));
            if id != *me
                && let Ok(h) = serde_json::from_slice::<DatabaseHealth>(kv.value())
                && h.reaches_database
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Change our entry's state (active → draining), keeping the lease.
    pub async fn set_state(&self, state: MemberState) -> Result<(), EtcdError> {
        let mut reg = self.registration.lock().await;
        let reg = reg.as_mut().ok_or_else(|| EtcdError("not registered".into()))?;
        reg.member.state = state;
        let mut client = connect(&self.endpoints).await?;
        let value = serde_json::to_string(&reg.member).expect("members serialise");
        client.put(key(&reg.member.id), value, Some(PutOptions::new().with_lease(reg.lease))).await?;
        Ok(())
    }

    /// Stop renewing without revoking: a fenced conductor gives its lease up
    /// to expiry, so the others clear its locks only when it is gone.
    pub async fn abandon(&self) {
        if let Some(reg) = self.registration.lock().await.take() {
            reg.stop.cancel();
            warn!(id = %reg.member.id, incarnation = %reg.member.incarnation, "abandoned the lease; it will expire");
        }
    }

    /// Leave at once: revoke the lease, which deletes the entry.
    pub async fn leave(&self) -> Result<(), EtcdError> {
        let Some(reg) = self.registration.lock().await.take() else {
            return Ok(());
        };
        reg.stop.cancel();
        let mut client = connect(&self.endpoints).await?;
        client.lease_revoke(reg.lease).await?;
        info!(id = %reg.member.id, "left the ring (lease revoked)");
        Ok(())
    }
}

fn key(id: &ConductorId) -> String {
    format!("{PREFIX}{id}")
}

/// Creates our member key under a new lease — never over another
/// process's. A key that exists belongs to a live lease (etcd deletes it at
/// expiry): the previous incarnation of this id, killed moments ago, whose
/// lease runs out within its TTL — we wait for that — or a second process
/// with the same id (a cloned VM, a copied unit file), which would drive
/// the same nodes: if the same lease is still renewed once its TTL has
/// passed, we refuse to start, naming it.
///
/// Each attempt is made under a lease granted just before it (and revoked
/// when the key was taken): nothing renews a lease while we wait, so one
/// granted before a wait longer than its TTL would be gone when the key
/// frees. Returns the lease and when it was asked for (its TTL runs from
/// no earlier than that).
async fn put_with_lease(client: &mut Client, member: &Member, ttl: i64) -> Result<(i64, Instant), EtcdError> {
    let k = key(&member.id);
    let value = serde_json::to_string(member).expect("members serialise");
    // the lease of the holder we wait for, and until when
    let mut waiting: Option<(i64, Instant)> = None;
    loop {
        let granted = Instant::now();
        let lease = client.lease_grant(ttl, None).await?.id();
        let txn = Txn::new()
            .when(vec![Compare::version(k.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(k.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))])
            .or_else(vec![TxnOp::get(k.clone(), None)]);
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            Err(e) => {
                let _ = client.lease_revoke(lease).await;
                return Err(e.into());
            }
        };
        if resp.succeeded() {
            info!(id = %member.id, incarnation = %member.incarnation, lease, ttl, "registered in etcd");
            return Ok((lease, granted));
        }
        let _ = client.lease_revoke(lease).await;
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => {
                g.kvs().first().map(|kv| (kv.lease(), String::from_utf8_lossy(kv.value()).into_owned()))
            }
            _ => None,
        });
        let Some((their_lease, their_value)) = holder else { continue };
        let incarnation = serde_json::from_str::<Member>(&their_value).map(|m| m.incarnation).unwrap_or_default();
        // -1 once the lease expired: etcd deletes the key shortly (its
        // expiry pass can lag on a loaded server); only a lease still
        // running after its TTL is a live holder
        let ttl_left = client.lease_time_to_live(their_lease, None).await?.ttl();
        let left = ttl_left.max(0) as u64;
        match waiting {
            None => {
                warn!(
                    id = %member.id, theirs = %incarnation, lease = their_lease, seconds_left = ttl_left,
                    "this conductor id is still registered by another incarnation: waiting for its lease to expire \
                     (a restart after a crash does this; a second live process with this id is refused)"
                );
                waiting = Some((their_lease, Instant::now() + Duration::from_secs(left + 2)));
            }
            Some((l, until)) if ttl_left > 0 && (l != their_lease || Instant::now() >= until) => {
                return Err(EtcdError(format!(
                    "conductor id {} is registered by a live process (incarnation {incarnation}, lease {their_lease} \
                     still renewed): two processes with one id would drive the same nodes. Give this one another \
                     --conductor-id, or stop the other",
                    member.id
                )));
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn snapshot(client: &mut Client) -> Result<(BTreeMap<String, Member>, i64), EtcdError> {
    let resp = client.get(PREFIX, Some(GetOptions::new().with_prefix())).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut members = BTreeMap::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<Member>(kv.value()) {
            Ok(m) => {
                members.insert(String::from_utf8_lossy(kv.key()).into_owned(), m);
            }
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a malformed membership entry: {e}")
            }
        }
    }
    Ok((members, rev))
}

/// Publish a ring for `members` at `rev` unless the members are unchanged.
fn publish(tx: &watch::Sender<Ring>, members: &BTreeMap<String, Member>, rev: i64, settings: &RingSettings) {
    let mut list: Vec<Member> = members.values().cloned().collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    if tx.borrow().members() == list.as_slice() {
        return;
    }
    let before = tx.borrow().members().to_vec();
    let ids = |l: &[Member]| l.iter().map(|m| m.id.clone()).collect::<std::collections::BTreeSet<_>>();
    let (old, new) = (ids(&before), ids(&list));
    let joined: Vec<&ConductorId> = new.difference(&old).collect();
    let left: Vec<&ConductorId> = old.difference(&new).collect();
    let changed: Vec<String> = list
        .iter()
        .filter_map(|m| {
            let b = before.iter().find(|x| x.id == m.id)?;
            (b != m).then(|| {
                if b.state != m.state {
                    format!("{} ({:?} -> {:?})", m.id, b.state, m.state).to_lowercase()
                } else if b.incarnation != m.incarnation {
                    format!("{} (new incarnation)", m.id)
                } else {
                    m.id.to_string()
                }
            })
        })
        .collect();
    info!(epoch = rev, members = list.len(), ?joined, ?left, ?changed, "ring changed");
    let ours = settings.fingerprint();
    for m in list.iter().filter(|m| !m.ring_settings.is_empty() && m.ring_settings != ours) {
        tracing::error!(
            member = %m.id,
            theirs = %m.ring_settings,
            ours = %ours,
            "a ring member uses other ring settings: this process computes other owners than it does"
        );
    }
    tx.send_replace(Ring::new(rev as u64, list, settings.clone()));
}

/// The task that keeps the published ring in step with etcd.
struct Watcher {
    endpoints: EtcdEndpoints,
    tx: watch::Sender<Ring>,
    confirmed: watch::Sender<Instant>,
    settings: RingSettings,
    watch: WatchSettings,
    cancel: CancellationToken,
}

impl Watcher {
    async fn run(self, mut members: BTreeMap<String, Member>, mut rev: i64) {
        let mut backoff = Duration::from_millis(100);
        let mut trouble = crate::logonce::Repeated::new("membership watch");
        loop {
            let res = self.follow(&mut members, &mut rev, &mut backoff).await;
            if self.cancel.is_cancelled() {
                return;
            }
            if let Err(e) = res {
                trouble.failed(&format!("membership watch interrupted: {e}; resyncing"));
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            // resync from a fresh snapshot; publish only a real change
            if let Ok(mut client) = connect(&self.endpoints).await
                && let Ok((m, r)) = snapshot(&mut client).await
            {
                members = m;
                rev = r;
                publish(&self.tx, &members, rev, &self.settings);
                self.confirmed.send_replace(Instant::now());
                trouble.succeeded();
            }
        }
    }

    /// Follows the watch from `rev + 1` until it breaks, is cancelled, or
    /// stalls: a progress request not answered within the stall timeout.
    async fn follow(
        &self,
        members: &mut BTreeMap<String, Member>,
        rev: &mut i64,
        backoff: &mut Duration,
    ) -> Result<(), EtcdError> {
        let mut client = connect(&self.endpoints).await?;
        let stream =
            client.watch(PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(*rev + 1))).await?;
        let (mut requests, mut responses) = stream.split();
        let mut tick = tokio::time::interval(self.watch.progress_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // when the unanswered progress request was sent
        let mut asked: Option<Instant> = None;
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    match asked {
                        Some(t) if t.elapsed() >= self.watch.stall_after => {
                            metrics::counter!(crate::metrics::MEMBERSHIP_WATCH_STALLS_TOTAL).increment(1);
                            return Err(EtcdError(format!(
                                "the watch stalled: no answer to a progress request for {:?}",
                                self.watch.stall_after
                            )));
                        }
                        Some(_) => {}
                        None => {
                            requests.request_progress().await?;
                            asked = Some(Instant::now());
                        }
                    }
                    continue;
                }
                m = responses.message() => m?,
            };
            let Some(resp) = msg else {
                return Err(EtcdError("watch stream ended".into()));
            };
            if resp.canceled() {
                return Err(EtcdError(format!(
                    "watch cancelled ({}; compacted at {})",
                    if resp.cancel_reason().is_empty() { "no reason given" } else { resp.cancel_reason() },
                    resp.compact_revision()
                )));
            }
            // anything etcd sends on a synced watch (an event, the
            // "created" message, a progress notification) says the ring is
            // current up to the revision in its header
            asked = None;
            if resp.events().is_empty() {
                self.confirmed.send_replace(Instant::now());
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let k = String::from_utf8_lossy(kv.key()).into_owned();
                match ev.event_type() {
                    EventType::Put => match serde_json::from_slice::<Member>(kv.value()) {
                        Ok(m) => {
                            members.insert(k, m);
                        }
                        Err(e) => warn!(key = %k, "ignoring a malformed membership entry: {e}"),
                    },
                    EventType::Delete => {
                        members.remove(&k);
                    }
                }
                *rev = (*rev).max(kv.mod_revision());
            }
            publish(&self.tx, members, *rev, &self.settings);
            self.confirmed.send_replace(Instant::now());
            *backoff = Duration::from_millis(100);
        }
    }
}

/// Renew the lease every TTL/3 on a task of its own, publishing how long
/// it is valid. If etcd reports it expired, stop: the registration (and its
/// incarnation) is dead, and the owner fences itself and starts anew.
async fn keep_alive(
    endpoints: EtcdEndpoints,
    member: Member,
    lease: i64,
    ttl: i64,
    valid_until: watch::Sender<Instant>,
    stop: CancellationToken,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    let mut trouble = crate::logonce::Repeated::new("lease keep-alive");
    loop {
        let res: Result<bool, EtcdError> = async {
            let mut client = connect(&endpoints).await?;
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            loop {
                let sent = Instant::now();
                keeper.keep_alive().await?;
                let resp = tokio::time::timeout(period, stream.message())
                    .await
                    .map_err(|_| EtcdError("keep-alive answer timed out".into()))??
                    .ok_or_else(|| EtcdError("keep-alive stream ended".into()))?;
                if resp.ttl() <= 0 {
                    warn!(id = %member.id, lease, "etcd says the lease expired; this incarnation is over");
                    return Ok(true);
                }
                valid_until.send_replace(sent + Duration::from_secs(resp.ttl() as u64));
                trouble.succeeded();
                tokio::select! {
                    _ = stop.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(period) => {}
                }
            }
        }
        .await;
        if stop.is_cancelled() || matches!(res, Ok(true)) {
            return;
        }
        if let Err(e) = res {
            trouble.failed(&format!("lease keep-alive of {}: {e}", member.id));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
