//! Load shedding: at most `[api] max_concurrent_requests` requests are in
//! handlers at once; beyond it a request is answered at once with 503, an
//! Ironic error body and `Retry-After`, and counted in
//! `ferric_api_requests_shed_total`. Never a queue: a burst costs a bounded
//! amount of memory, and its clients learn at once to come back.
//!
//! `/healthz`, `/readyz` and `/metrics` are never shed: a busy API must not
//! be restarted by its liveness probe, nor hidden from its metrics.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// `Retry-After` of a shed request, in seconds: most requests in handlers
/// end well within it.
pub const RETRY_AFTER_SECS: u32 = 1;

const NEVER_SHED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The requests in handlers, bounded.
#[derive(Clone)]
pub struct Limit {
    in_handlers: Arc<Semaphore>,
    max: usize,
}

impl Limit {
    pub fn new(max: usize) -> Limit {
        // present from the start, so that dashboards and alerts see a 0
        metrics::counter!(ferric_common::metrics::API_REQUESTS_SHED_TOTAL).increment(0);
        Limit { in_handlers: Arc::new(Semaphore::new(max)), max }
    }
}

fn shed(max: usize) -> Response {
    metrics::counter!(ferric_common::metrics::API_REQUESTS_SHED_TOTAL).increment(1);
    let mut resp = ApiError::unavailable(format!(
        "The API is busy: it serves at most api.max_concurrent_requests ({max}) requests at once. Retry in \
         {RETRY_AFTER_SECS} s."
    ))
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    resp
}

/// The middleware.
pub async fn middleware(limit: Limit, req: Request, next: Next) -> Response {
    if NEVER_SHED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    // held until the handler has answered
    let Ok(_in_handler) = limit.in_handlers.try_acquire() else {
        return shed(limit.max);
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn beyond_the_limit_requests_are_shed_at_once_and_health_never_is() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (in_handler, held) = (entered.clone(), release.clone());
        let limit = Limit::new(1);
        let app = Router::new()
            .route(
                "/held",
                get(move || async move {
                    in_handler.notify_one();
                    held.notified().await
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(move |req, next| middleware(limit.clone(), req, next)));
        let call = |path: &'static str| app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap());
        // the first request takes the only place
        let first = tokio::spawn(call("/held"));
        entered.notified().await;
        let resp = call("/held").await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("api.max_concurrent_requests (1)"));
        assert_eq!(call("/healthz").await.unwrap().status(), 200);
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        release.notify_one();
        assert_eq!(call("/held").await.unwrap().status(), 200, "the place is free again");
    }
}
