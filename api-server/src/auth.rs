//! Who is calling, and may they: Ironic's `auth_strategy`.
//!
//! * `noauth`: every caller is an administrator. Served on loopback only,
//!   unless `auth.insecure_noauth` (`--insecure-noauth`) says otherwise
//!   ([`check_listener`] refuses to start).
//! * `http_basic`: `Authorization: Basic` checked against an htpasswd
//!   file of bcrypt hashes (ironic-lib's `auth_basic`, the scheme Metal3
//!   uses), read again when it changes. A user it knows is an
//!   administrator, as in Ironic.
//! * `keystone`: `X-Auth-Token` validated by Keystone
//!   (`GET /v3/auth/tokens` with the API's own service token), the answer
//!   kept for `token_cache_time` in a bounded cache; what the caller may
//!   do is Ironic's default policy ([`policy`]): system-scoped admin /
//!   member / reader, and project-scoped callers who see and act on the
//!   nodes their project owns or leases.
//!
//! Public routes ([`is_public`]) take no credentials under any strategy:
//! the discovery documents, the health and metrics endpoints, the OpenAPI
//! document, and the ramdisk's and firmware's endpoints (lookup,
//! heartbeat, `pass_deploy_info`, `ipxe_config`, `/boot.ipxe`), which are
//! guarded by their per-deploy agent tokens instead.
//!
//! Every refusal is Ironic's error body: 401 (with `WWW-Authenticate`)
//! for no or wrong credentials — the same words whether the user exists
//! or not — and 403 for a caller whose roles do not allow the action.

pub mod basic;
pub mod keystone;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferric_common::config::Config;

use crate::error::ApiError;
pub use policy::{Caller, Credentials, Rule};

/// The realm Ironic names in its basic-auth challenge.
pub const BASIC_REALM: &str = "Basic realm=\"Baremetal API\"";

/// How this API process authenticates callers.
pub enum Authenticator {
    NoAuth,
    Basic(basic::Htpasswd),
    Keystone(Box<keystone::Validator>),
}

impl Authenticator {
    /// From the configuration; an unreadable or invalid htpasswd file
    /// stops the start (as ironic-lib's `validate_auth_file`).
    pub fn new(cfg: &Config) -> anyhow::Result<Authenticator> {
        Ok(match cfg.auth.auth_strategy.as_str() {
            "http_basic" => Authenticator::Basic(basic::Htpasswd::open(&cfg.auth.http_basic_auth_user_file)?),
            "keystone" => Authenticator::Keystone(Box::new(keystone::Validator::new(
                cfg.keystone_authtoken.clone(),
                cfg.auth.rbac_service_project_name.clone(),
            )?)),
            _ => Authenticator::NoAuth,
        })
    }

    async fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
        match self {
            Authenticator::NoAuth => Ok(Caller::Admin),
            Authenticator::Basic(file) => file.authenticate(headers).await.map(|_user| Caller::Admin),
            Authenticator::Keystone(v) => v.authenticate(headers).await.map(|c| Caller::Keystone(Arc::new(c))),
        }
    }
}

/// Refuse to serve `noauth` on anything but loopback unless told to.
pub fn check_listener(cfg: &Config, addr: SocketAddr) -> anyhow::Result<()> {
    if cfg.auth.auth_strategy == "noauth" && !addr.ip().is_loopback() && !cfg.auth.insecure_noauth {
        anyhow::bail!(
            "refusing to serve the API without authentication on {addr}, which is not a loopback address: anyone who \
             can reach it could do anything. Set auth.auth_strategy = \"http_basic\" or \"keystone\", listen on \
             127.0.0.1, or accept the risk with --insecure-noauth (auth.insecure_noauth = true)"
        );
    }
    if cfg.auth.auth_strategy == "noauth" && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API serves without authentication on a non-loopback address (auth.insecure_noauth)");
    }
    Ok(())
}

/// A route that takes no credentials (see the module doc). `path` is the
/// request's path (trailing slash trimmed), `query` its query string.
pub fn is_public(method: &Method, path: &str, query: Option<&str>) -> bool {
    let get = *method == Method::GET || *method == Method::HEAD;
    let path = path.trim_end_matches('/');
    match path {
        "" | "/v1" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/boot.ipxe" => return get,
        _ => {}
    }
    // v1's routes are served under /v1 and at the root
    let rest = match path.strip_prefix("/v1") {
        Some(r) if r.starts_with('/') => r,
        _ => path,
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let post = *method == Method::POST;
    match segments.as_slice() {
        ["lookup"] => get,
        ["heartbeat", node] => post && !node.is_empty(),
        ["drivers", driver, "vendor_passthru", "ipxe_config"] => get && !driver.is_empty(),
        ["nodes", node, "vendor_passthru", "pass_deploy_info"] => post && !node.is_empty(),
        ["nodes", node, "vendor_passthru"] => {
            post && !node.is_empty() && query.is_some_and(|q| q.split('&').any(|kv| kv == "method=pass_deploy_info"))
        }
        _ => false,
    }
}

/// The middleware: public routes pass as [`Caller::Public`]; any other
/// request is authenticated first, and its [`Caller`] goes into the
/// request's extensions for the handlers' policy checks.
pub async fn middleware(auth: Arc<Authenticator>, mut req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path(), req.uri().query()) {
        req.extensions_mut().insert(Caller::Public);
        return next.run(req).await;
    }
    let headers = req.headers().clone();
    match auth.authenticate(&headers).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            let challenge = match auth.as_ref() {
                Authenticator::Basic(_) => Some(HeaderValue::from_static(BASIC_REALM)),
                Authenticator::Keystone(v) => HeaderValue::from_str(&v.challenge()).ok(),
                Authenticator::NoAuth => None,
            };
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut resp = e.into_response();
            if unauthorized && let Some(c) = challenge {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
            }
            resp
        }
    }
}

/// 401, in the same words whatever was wrong (no header, unknown user,
/// wrong password), so that nobody learns which users exist.
pub fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Incorrect username or password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_routes_are_the_documented_few() {
        let public = [
            (Method::GET, "/", None),
            (Method::GET, "/v1", None),
            (Method::GET, "/v1/", None),
            (Method::HEAD, "/v1", None),
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/openapi.json", None),
            (Method::GET, "/boot.ipxe", None),
            (Method::GET, "/v1/lookup", None),
            (Method::GET, "/lookup", None),
            (Method::POST, "/v1/heartbeat/abc", None),
            (Method::POST, "/heartbeat/abc", None),
            (Method::GET, "/v1/drivers/ilo/vendor_passthru/ipxe_config", None),
            (Method::POST, "/v1/nodes/n1/vendor_passthru/pass_deploy_info", None),
            (Method::POST, "/v1/nodes/n1/vendor_passthru", Some("method=pass_deploy_info")),
        ];
        for (m, p, q) in public {
            assert!(is_public(&m, p, q), "{m} {p} {q:?} is public");
        }
        let private = [
            (Method::GET, "/v1/nodes", None),
            (Method::POST, "/v1/nodes", None),
            (Method::GET, "/nodes/n1", None),
            (Method::POST, "/v1/lookup", None),
            (Method::GET, "/v1/heartbeat/abc", None),
            (Method::POST, "/v1/heartbeat", None),
            (Method::POST, "/v1/nodes/n1/vendor_passthru", Some("method=other")),
            (Method::POST, "/v1/nodes/n1/vendor_passthru", Some("xmethod=pass_deploy_info")),
            (Method::GET, "/v1/nodes/n1/vendor_passthru/pass_deploy_info", None),
            (Method::POST, "/v1/drivers/ilo/vendor_passthru/ipxe_config", None),
            (Method::GET, "/v1/drivers/ilo/vendor_passthru/other", None),
            (Method::DELETE, "/healthz", None),
            (Method::GET, "/v1x", None),
            (Method::GET, "/v1/lookup/x", None),
            (Method::GET, "/v1/conductors", None),
        ];
        for (m, p, q) in private {
            assert!(!is_public(&m, p, q), "{m} {p} {q:?} is not public");
        }
    }
}
