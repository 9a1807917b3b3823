//! Per-request context: negotiated version and the base URL links use.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ferric_common::config::Config;
use ferric_common::db::Db;
use ferric_common::model::Node;
use uuid::Uuid;

use crate::auth::Caller;
use crate::auth::policy::{Rule, Target};
use crate::error::{ApiError, ApiResult};
use crate::forward::{Forwarder, Route};
use crate::version::Version;

pub struct AppState {
    pub cfg: Config,
    pub db: Db,
    pub fwd: Forwarder,
    /// Renders this process's Prometheus metrics, if a recorder is installed.
    pub metrics: Option<MetricsRender>,
    /// The public iPXE endpoints' rate limit and Swift signer.
    pub ipxe: crate::ipxe::IpxeState,
    /// How callers are authenticated (`auth.auth_strategy`).
    pub auth: Arc<crate::auth::Authenticator>,
    /// Set when the process was asked to stop: `/readyz` answers 503 while
    /// requests are still served for `api.shutdown_delay_ms`.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Rendered node answers, in a process that is its database's only
    /// writer (see [`crate::node_cache`]).
    pub node_cache: Option<crate::node_cache::NodeCache>,
}

pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

pub type State = Arc<AppState>;

pub struct Ctx {
    pub v: Version,
    pub base: String,
    /// Who calls, as the auth middleware found (a router without it, as
    /// in unit tests of handlers, serves as `noauth`).
    pub caller: Caller,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Ctx, ApiError> {
        let v = parts.extensions.get::<Version>().copied().unwrap_or(Version(1));
        let base = match parts.extensions.get::<PublicUrl>() {
            Some(PublicUrl(u)) if !u.is_empty() => u.trim_end_matches('/').to_string(),
            _ => {
                // HTTP/2 carries the host in the URI's authority
                let host = parts
                    .headers
                    .get(axum::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                    .unwrap_or("127.0.0.1:6385");
                let scheme =
                    if parts.extensions.get::<crate::connections::OverTls>().is_some() { "https" } else { "http" };
                format!("{scheme}://{host}")
            }
        };
        let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Admin);
        Ok(Ctx { v, base, caller })
    }
}

/// The configured public URL, put into request extensions by the router.
#[derive(Clone)]
pub struct PublicUrl(pub String);

impl AppState {
    /// Look a node up by UUID, or by name from 1.5 on.
    pub async fn node(&self, ident: &str, v: Version) -> ApiResult<Node> {
        let not_found = || format!("Node {ident} could not be found.");
        let res = match Uuid::parse_str(ident) {
            Ok(u) => self.db.get_node(u).await,
            Err(_) if v.at_least(5) => self.db.get_node_by_name(ident).await,
            Err(_) => return Err(ApiError::not_found(not_found())),
        };
        let node = res.map_err(|e| ApiError::from_db(e, not_found))?;
        crate::trace::record_node(&node.uuid);
        Ok(node)
    }

    /// The node `ident` names, if `ctx`'s caller passes `rule` on it. A
    /// caller who may not even read the node gets the same 404 as for a
    /// node that does not exist (Ironic's `conceal_node`); one who may
    /// read it but not do this gets 403.
    pub async fn node_for(&self, ctx: &Ctx, ident: &str, rule: Rule) -> ApiResult<Node> {
        let node = self.node(ident, ctx.v).await?;
        ctx.authorize_node(&node, ident, rule)?;
        Ok(node)
    }

    pub fn route(node: &Node) -> Route<'_> {
        Route::Node { uuid: &node.uuid, group: &node.conductor_group, hardware_type: &node.driver }
    }

    /// Where an update of `stored` to `updated` goes (see [`Route::Update`]).
    pub fn route_update<'a>(stored: &'a Node, updated: &'a Node) -> Route<'a> {
        Route::Update {
            uuid: &stored.uuid,
            group: &stored.conductor_group,
            hardware_type: &stored.driver,
            new_group: &updated.conductor_group,
            new_hardware_type: &updated.driver,
        }
    }

    /// The conductor the ring gives a node to (the `conductor` field).
    pub fn conductor_of(&self, node: &Node) -> Option<ferric_common::ids::ConductorId> {
        self.fwd.ring().owner(node.uuid.as_bytes(), &node.conductor_group, &node.driver).map(|m| m.id.clone())
    }
}

impl Ctx {
    /// 403 unless the caller passes `rule` (a rule with no node target).
    pub fn authorize(&self, rule: Rule) -> ApiResult<()> {
        if self.caller.allows(rule, Target::default()) { Ok(()) } else { Err(forbidden(rule)) }
    }

    /// 404 when the caller may not read `node`, 403 when it may but does
    /// not pass `rule`.
    pub fn authorize_node(&self, node: &Node, ident: &str, rule: Rule) -> ApiResult<()> {
        let t = target(node);
        if self.caller.allows(rule, t) {
            return Ok(());
        }
        if !self.caller.allows(Rule::NodeGet, t) {
            return Err(ApiError::not_found(format!("Node {ident} could not be found.")));
        }
        Err(forbidden(rule))
    }
}

impl Ctx {
    /// 403 unless the caller could pass `rule` on something of its own
    /// project (Ironic's generic `check_policy` before it looks the target
    /// up): a caller no target would let through is refused before its
    /// request is read.
    pub fn authorize_own(&self, rule: Rule) -> ApiResult<()> {
        let p = self.caller.project();
        if self.caller.allows(rule, Target { owner: p, lessee: p }) { Ok(()) } else { Err(forbidden(rule)) }
    }

    /// As [`Ctx::authorize_node`] for any target: 404 (`not_found`'s
    /// words) when the caller may not even `read` it, 403 when it may but
    /// does not pass `rule`.
    pub fn authorize_on(&self, t: Target, rule: Rule, read: Rule, not_found: impl FnOnce() -> String) -> ApiResult<()> {
        if self.caller.allows(rule, t) {
            return Ok(());
        }
        if !self.caller.allows(read, t) {
            return Err(ApiError::not_found(not_found()));
        }
        Err(forbidden(rule))
    }
}

/// A node as the target of a policy rule.
pub fn target(node: &Node) -> Target<'_> {
    Target { owner: node.owner.as_deref(), lessee: node.lessee.as_deref() }
}

/// Ironic's 403 (`HTTPForbidden` from a failed policy check).
pub fn forbidden(rule: Rule) -> ApiError {
    ApiError::new(axum::http::StatusCode::FORBIDDEN, format!("{} is disallowed by policy", rule.name()))
}
