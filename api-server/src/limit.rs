//! Request body bounds, answered the Ironic way (413 with a JSON
//! faultstring) whether the body announced its length or not.
//!
//! The ramdisk's endpoints (lookup, heartbeat, pass_deploy_info) are
//! reachable by anything on the provisioning network and carry a few
//! hundred bytes, so they take at most [`RAMDISK_BODY_LIMIT`]; everything
//! else takes `[api] max_request_body_size` (a provision request carries
//! its config drive).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Bound on what a ramdisk may send.
pub const RAMDISK_BODY_LIMIT: usize = 64 * 1024;

fn is_ramdisk_endpoint(path: &str, query: Option<&str>) -> bool {
    let p = path.strip_prefix("/v1").unwrap_or(path);
    let by_query = p.ends_with("/vendor_passthru")
        && query.is_some_and(|q| q.split('&').any(|kv| kv == "method=pass_deploy_info"));
    p.starts_with("/heartbeat/")
        || p.starts_with("/lookup")
        || p.ends_with("/vendor_passthru/pass_deploy_info")
        || by_query
}

fn too_large(limit: usize) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request is too large: the body of this request may hold at most {limit} bytes."),
    )
    .into_response()
}

/// The middleware: `general` is the bound of every other endpoint.
pub async fn middleware(general: usize, req: Request, next: Next) -> Response {
    let limit = if is_ramdisk_endpoint(req.uri().path(), req.uri().query()) { RAMDISK_BODY_LIMIT } else { general };
    let announced =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return too_large(limit);
    }
    // a body without a length is cut at the bound while it is read (the
    // router disables axum's own 2 MB default)
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !json { too_large(limit) } else { resp }
}
