//! The public iPXE endpoints of the dynamic-config spec:
//!
//! * `GET /v1/drivers/<hardware type>/vendor_passthru/ipxe_config?node_uuid=<uuid>`
//!   or `?port_address=<mac>`: the node's script for its provision state
//!   (`ferric_deploy::boot::ipxe_script`), made here from the database row
//!   — no conductor is asked, so any API process answers and a dead owner
//!   strands no booting node. `text/plain`, as a file attachment (the
//!   "return as file" flag of the spec's vendor passthru).
//! * `GET /boot.ipxe`: the static entry script for operators with their own
//!   DHCP (point its boot file name at this URL): it chains to the above
//!   with `port_address=${mac}`.
//!
//! The hardware type in the path must be one Ferric has; the node is found
//! by its UUID or by the MAC of one of its ports, whatever its hardware
//! type. An unknown node or MAC gets a 200 script that explains it on the
//! node's console (iPXE shows nothing of an error page) and a warning in
//! our log; only a malformed request gets a 400.
//!
//! Bounded: a token bucket per client address (`[ipxe] rate_limit_per_sec`,
//! `rate_limit_burst`) answers 429 beyond it. Metrics:
//! `ferric_ipxe_scripts_total{kind}` (ramdisk, instance, local, not_ready,
//! error, unknown) and `ferric_ipxe_rejected_total{reason}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferric_common::db::{DbError, PortQuery};
use ferric_common::model::{Node, normalize_mac};
use ferric_deploy::boot::ipxe_script::{self, Script, ScriptContext, ScriptKind};
use ferric_deploy::publish::swift::TempUrlSigner;
use tracing::warn;
use uuid::Uuid;

use crate::context::{Ctx, State};
use crate::error::{ApiError, ApiResult};

/// Per-client token buckets; at most this many clients are remembered
/// (the fullest buckets are forgotten first: they would be full anyway).
const MAX_CLIENTS: usize = 65_536;

pub struct IpxeState {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    /// Signs Swift temp URLs; made at the first request that needs one
    /// (tempauth may need a request to Swift). After a failure, requests
    /// get the "cannot sign" script at once for [`SIGNER_RETRY`] instead of
    /// each waiting on Swift in turn.
    signer: tokio::sync::Mutex<Signer>,
}

/// How long a failed attempt to reach Swift for signing is not repeated.
const SIGNER_RETRY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Signer {
    signer: Option<TempUrlSigner>,
    failed_at: Option<Instant>,
}

impl IpxeState {
    pub fn new(cfg: &ferric_common::config::Config) -> IpxeState {
        IpxeState {
            rate: cfg.ipxe.rate_limit_per_sec,
            burst: f64::from(cfg.ipxe.rate_limit_burst),
            buckets: Mutex::new(HashMap::new()),
            signer: tokio::sync::Mutex::new(Signer::default()),
        }
    }

    /// Takes one token of `client`'s bucket; false when it is empty.
    fn admit(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_CLIENTS && !b.contains_key(&client) {
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
            if b.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let (tokens, at) = b.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn signer(&self, cfg: &ferric_common::config::Config) -> Option<TempUrlSigner> {
        if !cfg.ipxe.use_swift {
            return None;
        }
        let mut s = self.signer.lock().await;
        if s.signer.is_none() && s.failed_at.is_none_or(|t| t.elapsed() >= SIGNER_RETRY) {
            match TempUrlSigner::from_config(&cfg.swift).await {
                Ok(signer) => *s = Signer { signer: Some(signer), failed_at: None },
                Err(e) => {
                    warn!("ipxe_config: cannot sign Swift temporary URLs (next attempt in {SIGNER_RETRY:?}): {e}");
                    s.failed_at = Some(Instant::now());
                }
            }
        }
        s.signer.clone()
    }
}

fn reply(script: Script) -> Response {
    metrics::counter!(ferric_common::metrics::IPXE_SCRIPTS_TOTAL, "kind" => script.kind.as_str()).increment(1);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"boot.ipxe\""),
            (header::CACHE_CONTROL, "no-store"),
        ],
        script.body,
    )
        .into_response()
}

fn rejected(reason: &'static str, e: ApiError) -> Response {
    metrics::counter!(ferric_common::metrics::IPXE_REJECTED_TOTAL, "reason" => reason).increment(1);
    e.into_response()
}

fn client_ip(info: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    info.map(|c| c.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// What the request names.
enum Wanted {
    Node(Uuid),
    Mac(String),
}

fn wanted(q: &HashMap<String, String>) -> Result<Wanted, ApiError> {
    match (q.get("node_uuid"), q.get("port_address")) {
        (Some(u), None) => Uuid::parse_str(u.trim())
            .map(Wanted::Node)
            .map_err(|_| ApiError::bad_request(format!("node_uuid {u:?} is not a UUID"))),
        (None, Some(m)) => normalize_mac(m.trim())
            .map(Wanted::Mac)
            .ok_or_else(|| ApiError::bad_request(format!("port_address {m:?} is not a MAC address"))),
        (Some(_), Some(_)) => Err(ApiError::bad_request("Give one of node_uuid and port_address, not both")),
        (None, None) => Err(ApiError::bad_request("ipxe_config needs node_uuid=<uuid> or port_address=<mac>")),
    }
}

async fn find(st: &State, w: &Wanted) -> Result<Result<Node, String>, DbError> {
    match w {
        Wanted::Node(u) => match st.db.get_node(*u).await {
            Ok(n) => Ok(Ok(n)),
            Err(DbError::NotFound) => Ok(Err(format!("no node {u} is enrolled"))),
            Err(e) => Err(e),
        },
        Wanted::Mac(mac) => {
            let ports = st.db.list_ports(&PortQuery { address: Some(mac.clone()), ..Default::default() }).await?;
            let Some(p) = ports.first() else { return Ok(Err(format!("no node has a port with MAC {mac}"))) };
            match st.db.get_node(p.node_uuid).await {
                Ok(n) => Ok(Ok(n)),
                Err(DbError::NotFound) => Ok(Err(format!("no node has a port with MAC {mac}"))),
                Err(e) => Err(e),
            }
        }
    }
}

pub async fn ipxe_config(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(driver): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    req: axum::extract::Request,
) -> Response {
    let client = client_ip(req.extensions().get::<ConnectInfo<SocketAddr>>());
    if !st.ipxe.admit(client) {
        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("Too many iPXE script requests from {client}"));
        return rejected("rate_limited", e);
    }
    if !ferric_deploy::hardware::HARDWARE_TYPES.contains(&driver.as_str()) {
        return rejected("bad_request", ApiError::not_found(format!("Driver {driver} could not be found.")));
    }
    let w = match wanted(&q) {
        Ok(w) => w,
        Err(e) => return rejected("bad_request", e),
    };
    let node = match find(&st, &w).await {
        Ok(Ok(n)) => n,
        Ok(Err(why)) => {
            warn!(%client, "ipxe_config: {why}");
            return reply(ipxe_script::error_script(ScriptKind::Unknown, &why));
        }
        Err(e) => return rejected("database", ApiError::from_db(e, String::new)),
    };
    let self_url = format!("{}{}", ctx.base, req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""));
    let signer = st.ipxe.signer(&st.cfg).await;
    let sctx = ScriptContext {
        self_url: &self_url,
        retry_delay: Duration::from_secs(st.cfg.ipxe.retry_delay_secs),
        swift: signer.as_ref(),
        swift_validity: Duration::from_secs(st.cfg.swift.swift_temp_url_duration.max(60)),
    };
    let script = ipxe_script::for_node(&node, &sctx);
    if matches!(script.kind, ScriptKind::Error) {
        warn!(node = %node.uuid, state = %node.provision_state.as_str(), %client, "ipxe_config: an error script was served");
    }
    reply(script)
}

/// The static entry script (see the module doc).
pub async fn boot_ipxe(AxState(st): AxState<State>, ctx: Ctx, req: axum::extract::Request) -> ApiResult<Response> {
    let client = client_ip(req.extensions().get::<ConnectInfo<SocketAddr>>());
    if !st.ipxe.admit(client) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many iPXE script requests from {client}"),
        ));
    }
    Ok(reply(Script { kind: ScriptKind::Local, body: ipxe_script::entry_script(&ctx.base) }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let mut cfg = ferric_common::config::Config::default();
        cfg.ipxe.rate_limit_per_sec = 0.001;
        cfg.ipxe.rate_limit_burst = 3;
        let s = IpxeState::new(&cfg);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| s.admit(a)));
        assert!(!s.admit(a), "the fourth request within the burst is refused");
        assert!(s.admit(b), "another client has its own bucket");
    }

    #[test]
    fn requests_name_exactly_one_of_node_and_mac() {
        let q = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(
            matches!(wanted(&q(&[("port_address", "52:54:00:AA:BB:01")])), Ok(Wanted::Mac(m)) if m == "52:54:00:aa:bb:01")
        );
        assert!(wanted(&q(&[("port_address", "nope")])).is_err());
        assert!(wanted(&q(&[("node_uuid", "x")])).is_err());
        assert!(wanted(&q(&[])).is_err());
        let u = Uuid::new_v4().to_string();
        assert!(wanted(&q(&[("node_uuid", &u), ("port_address", "52:54:00:aa:bb:01")])).is_err());
    }
}
