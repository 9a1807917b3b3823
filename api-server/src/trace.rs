//! Every REST request's span and request id.
//!
//! A request gets an id, `req-<uuid>` as Ironic's, answered in
//! `X-OpenStack-Request-Id` (and `OpenStack-Request-Id`), written on the
//! request's span — so every log line of the request says it — and sent
//! to the conductor with every gRPC call the request makes
//! ([`request_id`], read by the forwarder), where the conductor's spans
//! and log lines say it too.
//!
//! The span is a server span named after the route template (`PUT
//! /v1/nodes/{node}/states/power`, never the raw path: a path can name a
//! node by its name), with the method, the status and, once a handler has
//! looked the node up, `node.uuid`. A W3C `traceparent` the client sent
//! makes the client's span its parent. Nothing of the body or the query is
//! recorded: a heartbeat carries an agent token, a deploy a config drive.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use ferric_common::telemetry;
use tracing::Instrument as _;
use tracing::field::Empty;

tokio::task_local! {
    /// The id of the request this task serves.
    static REQUEST_ID: String;
}

/// The id of the REST request being served, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Middleware: the request's id and span.
pub async fn middleware(req: Request, next: Next) -> Response {
    let id = format!("req-{}", uuid::Uuid::new_v4());
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = Empty,
        http.response.status_code = Empty,
        request_id = %id,
        node.uuid = Empty,
        trace_id = Empty,
    );
    if let Some(r) = &route {
        span.record("http.route", r.as_str());
    }
    telemetry::set_parent(&span, req.headers());
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req).instrument(span.clone())).await;
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let value = HeaderValue::from_str(&id).expect("ascii");
    resp.headers_mut().insert("openstack-request-id", value.clone());
    resp.headers_mut().insert(telemetry::REQUEST_ID_HEADER, value);
    resp
}

/// Names the node the current request acts on, on its span.
pub fn record_node(uuid: &uuid::Uuid) {
    tracing::Span::current().record(telemetry::NODE_UUID, tracing::field::display(uuid));
}
