//! Ferric's stateless REST API: Ironic's v1 API, so `baremetal`,
//! openstacksdk and metalsmith work unchanged.
//!
//! Layout: [`connections`] (the HTTP server: header read timeout,
//! graceful shutdown), [`trace`] (every request's span and request id,
//! W3C trace context), [`shed`] (the concurrency limit), [`timeout`] (the
//! whole-request timeout), [`limit`] (body size), [`version`]
//! (microversions), [`error`] (Ironic's error body), [`render`] (field
//! sets, masking, links), [`patch`] (JSON Patch), [`forward`] (the
//! owner-aware gRPC forwarder), and one module per resource ([`nodes`],
//! [`ports`], [`drivers`], [`root`]).
//!
//! The invariant: the API reads from the database but never changes a
//! node itself; every change goes to the node's owning conductor, which
//! makes it under the node lock.

pub mod connections;
pub mod context;
pub mod drivers;
pub mod error;
pub mod fields;
pub mod forward;
pub mod ipxe;
pub mod limit;
pub mod nodes;
pub mod paging;
pub mod patch;
pub mod ports;
pub mod render;
pub mod root;
pub mod shed;
pub mod timeout;
pub mod trace;
pub mod version;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{any, get, put};
use ferric_common::config::Config;
use ferric_common::db::Db;
use ferric_common::ring::Ring;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use context::{AppState, MetricsRender, State};

/// The routes of API v1, mounted both under `/v1` and at the root (the
/// `bookmark` links have no `/v1`).
fn v1_routes() -> Router<State> {
    Router::new()
        .route("/nodes", get(nodes::list_nodes).post(nodes::create_node))
        .route("/nodes/detail", get(nodes::list_nodes_detail))
        .route("/nodes/{node}", get(nodes::get_node).patch(nodes::patch_node).delete(nodes::delete_node))
        .route("/nodes/{node}/states", get(nodes::get_states))
        .route("/nodes/{node}/states/provision", put(nodes::set_provision_state))
        .route("/nodes/{node}/states/power", put(nodes::set_power_state))
        .route("/nodes/{node}/validate", get(nodes::validate))
        .route("/nodes/{node}/maintenance", put(nodes::put_maintenance).delete(nodes::delete_maintenance))
        .route("/nodes/{node}/ports", get(nodes::node_ports))
        .route("/nodes/{node}/vendor_passthru/methods", get(nodes::vendor_methods))
        .route("/nodes/{node}/vendor_passthru/{method}", any(nodes::vendor_call))
        .route("/nodes/{node}/vendor_passthru", any(nodes::vendor_call_query))
        .route("/ports", get(ports::list_ports).post(ports::create_port))
        .route("/ports/detail", get(ports::list_ports_detail))
        .route("/ports/{port}", get(ports::get_port).patch(ports::patch_port).delete(ports::delete_port))
        .route("/drivers", get(drivers::list_drivers))
        .route("/drivers/{driver}", get(drivers::get_driver))
        .route("/drivers/{driver}/properties", get(drivers::driver_properties))
        .route("/drivers/{driver}/vendor_passthru/methods", get(drivers::driver_vendor_methods))
        .route("/drivers/{driver}/vendor_passthru/ipxe_config", get(ipxe::ipxe_config))
        .route("/drivers/{driver}/vendor_passthru/{method}", any(drivers::driver_vendor_call))
        .route("/drivers/{driver}/vendor_passthru", any(drivers::driver_vendor_call_query))
        .route("/conductors", get(drivers::list_conductors))
        .route("/conductors/{host}", get(drivers::get_conductor))
        .route("/lookup", get(root::lookup))
        .route("/heartbeat/{node}", axum::routing::post(root::heartbeat))
}

pub fn router(state: State) -> Router {
    let public = context::PublicUrl(state.cfg.api.public_url.clone());
    let body_limit = state.cfg.api.max_request_body_size;
    let request_timeout = Duration::from_millis(state.cfg.api.request_timeout_ms);
    let in_handlers = shed::Limit::new(state.cfg.api.max_concurrent_requests);
    metrics::counter!(ferric_common::metrics::API_REQUESTS_TIMED_OUT_TOTAL).increment(0);
    let v1_doc = get(root::v1).fallback(|| async {
        error::ApiError::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "The server could not comply with the request since it is either malformed or otherwise incorrect.",
        )
    });
    Router::new()
        .route("/", get(root::root))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/boot.ipxe", get(ipxe::boot_ipxe))
        .route(
            "/metrics",
            get(|axum::extract::State(st): axum::extract::State<State>| async move {
                match &st.metrics {
                    Some(render) => Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render())),
                    None => Err(error::ApiError::not_found("metrics are not enabled in this process")),
                }
            }),
        )
        .route("/v1", v1_doc.clone())
        .route("/v1/", v1_doc)
        .nest("/v1", v1_routes())
        .merge(v1_routes())
        .fallback(root::not_found)
        .with_state(state)
        // the last layer is the outermost: every answer, a shed or timed-out
        // request's too, gets the version headers and a request id, is counted
        // and traced; a shed
        // request costs no timer; the timeout covers reading the body
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req, next| limit::middleware(body_limit, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| timeout::middleware(request_timeout, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| shed::middleware(in_handlers.clone(), req, next)))
        .layer(axum::middleware::from_fn(version::middleware))
        .layer(axum::middleware::from_fn(trace::middleware))
        .layer(axum::Extension(public))
}

/// `/readyz`: 200 when this API process can serve (its database answers
/// and it is not stopping), 503 with the reason when not. The ring's
/// conductor count is reported, not required: reads need no conductor.
async fn readyz(axum::extract::State(st): axum::extract::State<State>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let stopping = st.stopping.load(std::sync::atomic::Ordering::SeqCst);
    let database = match st.db.ping(Duration::from_secs(2)).await {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    };
    let ring = st.fwd.ring();
    let conductors = ring.members().iter().filter(|m| m.state == ferric_common::ring::MemberState::Active).count();
    let ready = !stopping && database == "ok";
    let body = serde_json::json!({
        "ready": ready,
        "stopping": stopping,
        "database": database,
        "ring_epoch": ring.epoch(),
        "active_conductors": conductors,
    });
    let code = if ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}

/// A running API server.
pub struct ApiHandle {
    pub addr: SocketAddr,
    pub join: tokio::task::JoinHandle<()>,
    /// Set it to make `/readyz` answer 503 while still serving.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Bind and serve the API until `shutdown` is cancelled.
pub async fn serve(
    cfg: Config,
    db: Db,
    ring: watch::Receiver<Ring>,
    metrics: Option<MetricsRender>,
    shutdown: CancellationToken,
) -> anyhow::Result<ApiHandle> {
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("binding the API address {}", cfg.api.listen))?;
    let addr = listener.local_addr()?;
    let fwd = forward::Forwarder::new(ring, Duration::from_millis(cfg.api.request_deadline_ms));
    let header_read_timeout = Duration::from_millis(cfg.api.header_read_timeout_ms);
    let ipxe = ipxe::IpxeState::new(&cfg);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = Arc::new(AppState { cfg, db, fwd, metrics, ipxe, stopping: stopping.clone() });
    // clients ask for collections with a trailing slash (`/v1/ports/`)
    let app =
        tower::Layer::layer(&tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash(), router(state));
    let join = tokio::spawn(connections::serve(listener, app, header_read_timeout, shutdown));
    tracing::info!(%addr, "Ironic API listening");
    Ok(ApiHandle { addr, join, stopping })
}
