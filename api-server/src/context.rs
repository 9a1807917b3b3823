//! Per-request context: negotiated version and the base URL links use.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ferric_common::config::Config;
use ferric_common::db::Db;
use ferric_common::model::Node;
use uuid::Uuid;

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
        Ok(Ctx { v, base })
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
