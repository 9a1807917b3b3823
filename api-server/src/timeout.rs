//! The whole-request timeout: from its headers to its answer, reading its
//! body included, a request takes at most `[api] request_timeout_ms`; then
//! it is answered 503 with an Ironic error body naming the setting. It
//! bounds what a slow client (a body sent a byte at a time) or a stuck call
//! holds: a task, a connection, a place under `max_concurrent_requests`.
//!
//! It is longer than `request_deadline_ms`, so a request that finds no
//! conductor is answered by the forwarder (503, which conductor it tried)
//! before this cuts it.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

fn timed_out(limit: Duration) -> ApiError {
    ApiError::unavailable(format!(
        "Request timed out: it did not complete within api.request_timeout_ms ({} ms). A change it had already sent \
         to the node's conductor may still be made; read the node before retrying.",
        limit.as_millis()
    ))
}

/// The middleware: `limit` is `[api] request_timeout_ms`.
pub async fn middleware(limit: Duration, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(%method, %path, "request timed out after {} ms", limit.as_millis());
            metrics::counter!(ferric_common::metrics::API_REQUESTS_TIMED_OUT_TOTAL).increment(1);
            timed_out(limit).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn app(limit: Duration) -> Router {
        Router::new()
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(3600)).await }))
            .route("/fast", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(move |req, next| middleware(limit, req, next)))
    }

    async fn get_status_and_body(app: Router, path: &str) -> (u16, String) {
        let resp = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_timeout_gets_an_ironic_503_naming_it() {
        let (status, body) = get_status_and_body(app(Duration::from_secs(60)), "/slow").await;
        assert_eq!(status, 503);
        let outer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let inner: serde_json::Value = serde_json::from_str(outer["error_message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["faultcode"], "Server");
        let message = inner["faultstring"].as_str().unwrap();
        assert!(message.contains("api.request_timeout_ms (60000 ms)"), "{message}");
        assert_eq!(get_status_and_body(app(Duration::from_secs(60)), "/fast").await, (200, "ok".into()));
    }
}
