//! `ferricctl`: what the Ironic CLI has no verbs for — the ring, who owns
//! a node, and what a membership change would move. It reads membership
//! from etcd and nodes from the API, and places nodes with the same pure
//! ring code every conductor runs, so what it prints is what they do.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{Context, bail};
use ferric_common::ids::ConductorId;
use ferric_common::ring::{Member, MemberState, Ring, RingSettings, partition_of};
use serde_json::Value;

/// A node as far as placement cares.
#[derive(Debug, Clone)]
pub struct NodeKey {
    pub uuid: uuid::Uuid,
    pub name: Option<String>,
    pub group: String,
    pub driver: String,
}

/// Every node, paging through the API.
pub async fn fetch_nodes(api: &str) -> anyhow::Result<Vec<NodeKey>> {
    let c = client();
    let mut out = Vec::new();
    let mut url = format!("{}/v1/nodes?fields=uuid,name,driver,conductor_group&limit=1000", api.trim_end_matches('/'));
    loop {
        let r = c
            .get(&url)
            .header("X-OpenStack-Ironic-API-Version", "1.115")
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !r.status().is_success() {
            bail!("GET {url}: HTTP {}", r.status());
        }
        let v: Value = r.json().await?;
        for n in v["nodes"].as_array().cloned().unwrap_or_default() {
            out.push(NodeKey {
                uuid: n["uuid"].as_str().unwrap_or_default().parse().context("node uuid")?,
                name: n["name"].as_str().map(String::from),
                group: n["conductor_group"].as_str().unwrap_or_default().to_string(),
                driver: n["driver"].as_str().unwrap_or_default().to_string(),
            });
        }
        match v["next"].as_str() {
            Some(next) => url = next.to_string(),
            None => return Ok(out),
        }
    }
}

pub async fn fetch_node(api: &str, ident: &str) -> anyhow::Result<NodeKey> {
    let url = format!("{}/v1/nodes/{ident}?fields=uuid,name,driver,conductor_group", api.trim_end_matches('/'));
    let r = client()
        .get(&url)
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if r.status() == 404 {
        bail!("node {ident} not found");
    }
    let n: Value = r.error_for_status()?.json().await?;
    Ok(NodeKey {
        uuid: n["uuid"].as_str().unwrap_or_default().parse().context("node uuid")?,
        name: n["name"].as_str().map(String::from),
        group: n["conductor_group"].as_str().unwrap_or_default().to_string(),
        driver: n["driver"].as_str().unwrap_or_default().to_string(),
    })
}

/// How ferricctl authenticates to the API (`auth.auth_strategy`).
#[derive(Debug, Clone, Default)]
pub enum ApiCredentials {
    /// `noauth`.
    #[default]
    None,
    /// `http_basic`: a user of the htpasswd file.
    Basic { username: String, password: String },
    /// `keystone`: a token (`openstack token issue`).
    Token(String),
}

static CREDENTIALS: std::sync::OnceLock<ApiCredentials> = std::sync::OnceLock::new();

/// The credentials every API request of this process carries (set once,
/// from the flags, before the first request).
pub fn use_credentials(c: ApiCredentials) {
    let _ = CREDENTIALS.set(c);
}

fn client() -> reqwest::Client {
    use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = HeaderMap::new();
    match CREDENTIALS.get().cloned().unwrap_or_default() {
        ApiCredentials::None => {}
        ApiCredentials::Basic { username, password } => {
            use base64::Engine;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            if let Ok(mut v) = HeaderValue::from_str(&format!("Basic {pair}")) {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        ApiCredentials::Token(t) => {
            if let Ok(mut v) = HeaderValue::from_str(&t) {
                v.set_sensitive(true);
                headers.insert("X-Auth-Token", v);
            }
        }
    }
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("http client")
}

fn owner_id(ring: &Ring, n: &NodeKey) -> Option<ConductorId> {
    ring.owner(n.uuid.as_bytes(), &n.group, &n.driver).map(|m| m.id.clone())
}

/// `ring show`: members, epoch, nodes per conductor, balance.
pub fn show(ring: &Ring, nodes: &[NodeKey]) -> String {
    let mut per: BTreeMap<ConductorId, usize> = BTreeMap::new();
    let mut orphans = 0usize;
    for n in nodes {
        match owner_id(ring, n) {
            Some(o) => *per.entry(o).or_default() += 1,
            None => orphans += 1,
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ring epoch {}  members {}  nodes {}  partitions {}",
        ring.epoch(),
        ring.members().len(),
        nodes.len(),
        ring.partitions()
    );
    let _ = writeln!(
        s,
        "{:<24} {:<9} {:<12} {:>7}  {:<24} {:<36} incarnation",
        "conductor", "state", "group", "nodes", "hardware types", "http root"
    );
    for m in ring.members() {
        let state = match m.state {
            MemberState::Active => "active",
            MemberState::Draining => "draining",
        };
        let _ = writeln!(
            s,
            "{:<24} {:<9} {:<12} {:>7}  {:<24} {:<36} {}",
            m.id,
            state,
            if m.conductor_group.is_empty() { "(default)" } else { &m.conductor_group },
            per.get(&m.id).copied().unwrap_or(0),
            m.hardware_types.join(","),
            if m.http_url.is_empty() { "-" } else { &m.http_url },
            m.incarnation
        );
    }
    let active = ring.members().iter().filter(|m| m.state == MemberState::Active).count();
    if active > 0 && !nodes.is_empty() {
        let max = per.values().copied().max().unwrap_or(0) as f64;
        let mean = (nodes.len() - orphans) as f64 / active as f64;
        let _ = writeln!(s, "balance: max/mean {:.3}", if mean > 0.0 { max / mean } else { 0.0 });
    }
    if orphans > 0 {
        let _ = writeln!(
            s,
            "WARNING: {orphans} nodes have no conductor (no active member serves their group and hardware type)"
        );
    }
    s
}

/// `node owner`: partition, owner, replicas.
pub fn owner(ring: &Ring, n: &NodeKey) -> String {
    let p = partition_of(n.uuid.as_bytes(), ring.settings().partition_exponent);
    let owner = owner_id(ring, n)
        .map(ConductorId::into_string)
        .unwrap_or_else(|| "(none: no active conductor serves it)".into());
    let replicas: Vec<String> =
        ring.replicas(n.uuid.as_bytes(), &n.group, &n.driver).iter().map(|m| m.id.to_string()).collect();
    format!(
        "node {}{}\n  partition {p}  group {:?}  hardware type {}\n  owner {owner}  (ring epoch {})\n  replicas {}\n",
        n.uuid,
        n.name.as_ref().map(|x| format!(" ({x})")).unwrap_or_default(),
        n.group,
        n.driver,
        ring.epoch(),
        if replicas.is_empty() { "-".into() } else { replicas.join(", ") }
    )
}

/// `ring simulate`: what would move if members were removed or added.
pub fn simulate(ring: &Ring, nodes: &[NodeKey], remove: &[ConductorId], add: &[Member]) -> anyhow::Result<String> {
    for r in remove {
        if ring.member(r).is_none() {
            bail!(
                "no member {r:?} in the ring (members: {})",
                ring.members().iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut members: Vec<Member> = ring.members().iter().filter(|m| !remove.contains(&m.id)).cloned().collect();
    for a in add {
        if members.iter().any(|m| m.id == a.id) {
            bail!("member {:?} is already in the ring", a.id);
        }
        members.push(a.clone());
    }
    let next = Ring::new(ring.epoch() + 1, members, ring.settings().clone());
    let mut flows: BTreeMap<(ConductorId, ConductorId), usize> = BTreeMap::new();
    let mut moved = 0usize;
    for n in nodes {
        let (a, b) = (owner_id(ring, n), owner_id(&next, n));
        if a != b {
            moved += 1;
            *flows.entry((a.unwrap_or_else(|| "(none)".into()), b.unwrap_or_else(|| "(none)".into()))).or_default() +=
                1;
        }
    }
    let mut s = String::new();
    let pct = if nodes.is_empty() { 0.0 } else { 100.0 * moved as f64 / nodes.len() as f64 };
    let _ = writeln!(s, "{moved} of {} nodes would move ({pct:.1}%)", nodes.len());
    for ((from, to), k) in flows {
        let _ = writeln!(s, "  {from} -> {to}: {k}");
    }
    Ok(s)
}

/// The ring as the members place nodes: with the settings their records
/// carry (all the same, or this is refused), else `configured` (no member
/// says).
pub fn with_members_settings(ring: Ring, configured: &RingSettings) -> anyhow::Result<Ring> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in ring.members().iter().filter(|m| !m.ring_settings.is_empty()) {
        seen.entry(m.ring_settings.clone()).or_default().push(m.id.to_string());
    }
    if seen.len() > 1 {
        let list: Vec<String> = seen.iter().map(|(s, ids)| format!("[{s}] ({})", ids.join(", "))).collect();
        bail!("the members place nodes with different ring settings, so they disagree on owners: {}", list.join("; "));
    }
    let settings = match seen.keys().next() {
        Some(fp) => RingSettings::from_fingerprint(fp)
            .ok_or_else(|| anyhow::anyhow!("unreadable ring settings in a member record: {fp}"))?,
        None => configured.clone(),
    };
    Ok(Ring::new(ring.epoch(), ring.members().to_vec(), settings))
}

/// Whether another active conductor could take `id`'s nodes: one of its
/// group that serves one of its hardware types.
pub fn has_successor(ring: &Ring, id: &ConductorId) -> bool {
    let Some(me) = ring.member(id) else { return false };
    ring.members().iter().any(|m| {
        m.id != *id
            && m.state == MemberState::Active
            && m.conductor_group == me.conductor_group
            && m.hardware_types.iter().any(|h| me.hardware_types.contains(h))
    })
}

/// Ask a conductor to drain; with `wait`, show progress until the process
/// exited (its gRPC and HTTP listeners are gone and it left the ring).
/// Refused without `force` when no other conductor could take its nodes.
pub async fn drain(
    mut ring: tokio::sync::watch::Receiver<Ring>,
    id: &ConductorId,
    wait: bool,
    force: bool,
    tls: Option<&ferric_common::tls::GrpcTls>,
) -> anyhow::Result<()> {
    use ferric_common::proto::Empty;
    use ferric_common::proto::conductor_client::ConductorClient;
    let now = ring.borrow().clone();
    let member = now.member(id).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no conductor {id:?} in the ring (members: {})",
            now.members().iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    if !has_successor(&now, id) {
        if !force {
            bail!(
                "{id} is the only active conductor of group {} for {}: draining it leaves its nodes without an owner \
                 until another conductor joins (it waits for one up to its conductor.drain_timeout_ms); start \
                 another conductor first, or drain anyway with --force",
                if member.conductor_group.is_empty() { "(default)" } else { &member.conductor_group },
                member.hardware_types.join(", ")
            );
        }
        eprintln!("warning: no other conductor can take {id}'s nodes; draining anyway (--force)");
    }
    let channel = ferric_common::rpc::endpoint(&member.grpc_url, tls).map_err(|e| anyhow::anyhow!(e))?;
    let mut c = channel
        .connect()
        .await
        .map(ConductorClient::new)
        .with_context(|| format!("connecting to {id} at {}", member.grpc_url))?;
    let s = c.drain(Empty {}).await.with_context(|| format!("asking {id} to drain"))?.into_inner();
    println!("{id}: draining ({} nodes held, {} operations in flight)", s.nodes_held, s.operations_in_flight);
    if !wait {
        return Ok(());
    }
    let total = s.nodes_held.max(1);
    let mut last = String::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        match c.get_conductor_status(Empty {}).await {
            Ok(s) => {
                let s = s.into_inner();
                let done = total.saturating_sub(s.nodes_held);
                let width = 30u64;
                let filled = (done * width / total) as usize;
                let line = format!(
                    "[{}{}] nodes still held {:>5}, operations in flight {:>3}, locks {:>3}",
                    "#".repeat(filled),
                    "-".repeat(width as usize - filled),
                    s.nodes_held,
                    s.operations_in_flight,
                    s.locks_held
                );
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
            // the gRPC server stopped: wait for the process itself
            Err(_) => break,
        }
    }
    let health = (!member.http_url.is_empty())
        .then(|| format!("{}/healthz", member.http_url.trim_end_matches('/').trim_end_matches("/httpboot")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let in_ring = ring.borrow_and_update().member(id).is_some_and(|m| m.incarnation == member.incarnation);
        let listening = match &health {
            Some(u) => client().get(u).timeout(std::time::Duration::from_secs(1)).send().await.is_ok(),
            None => false,
        };
        if !in_ring && !listening {
            println!("{id}: drained and stopped");
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{id} stopped serving requests but has not exited after 2 minutes (still in the ring: {in_ring})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
