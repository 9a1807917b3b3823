//! Ferric's stateless REST API: Ironic's v1 API, so `baremetal`,
//! openstacksdk and metalsmith work unchanged.
//!
//! Layout: [`connections`] (the HTTP server: header read timeout,
//! graceful shutdown), [`trace`] (every request's span and request id,
//! W3C trace context), [`shed`] (the concurrency limit), [`timeout`] (the
//! whole-request timeout), [`limit`] (body size), [`version`]
//! (microversions), [`error`] (Ironic's error body), [`render`] (field
//! sets, masking, links), [`patch`] (JSON Patch), [`forward`] (the
//! owner-aware gRPC forwarder), [`routes`] (the router that remembers
//! its routes), [`openapi`] (the OpenAPI document, checked against them),
//! and one module per resource ([`nodes`], [`traits`], [`history`],
//! [`ports`], [`portgroups`], [`chassis`], [`allocations`], [`drivers`],
//! [`root`]).
//!
//! The invariant: the API reads from the database but never changes a
//! node itself; every change goes to the node's owning conductor, which
//! makes it under the node lock.

pub mod allocations;
pub mod auth;
pub mod chassis;
pub mod connections;
pub mod context;
pub mod drivers;
pub mod error;
pub mod fields;
pub mod forward;
pub mod history;
pub mod ipxe;
pub mod limit;
pub mod node_cache;
pub mod nodes;
pub mod openapi;
pub mod paging;
pub mod patch;
pub mod portgroups;
pub mod ports;
pub mod render;
pub mod root;
pub mod routes;
pub mod shed;
pub mod timeout;
pub mod trace;
pub mod traits;
pub mod version;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use ferric_common::config::Config;
use ferric_common::db::Db;
use ferric_common::ring::Ring;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use context::{AppState, MetricsRender, State};
pub use routes::Routes;

/// The routes of API v1, mounted both under `/v1` and at the root (the
/// `bookmark` links have no `/v1`).
fn v1_routes() -> Routes<State> {
    use axum::http::Method as M;
    use routes::VENDOR_METHODS as VENDOR;
    Routes::new()
        .at("/nodes", &[M::GET], nodes::list_nodes)
        .at("/nodes", &[M::POST], nodes::create_node)
        .at("/nodes/detail", &[M::GET], nodes::list_nodes_detail)
        .at("/nodes/{node}", &[M::GET], nodes::get_node)
        .at("/nodes/{node}", &[M::PATCH], nodes::patch_node)
        .at("/nodes/{node}", &[M::DELETE], nodes::delete_node)
        .at("/nodes/{node}/states", &[M::GET], nodes::get_states)
        .at("/nodes/{node}/states/provision", &[M::PUT], nodes::set_provision_state)
        .at("/nodes/{node}/states/power", &[M::PUT], nodes::set_power_state)
        .at("/nodes/{node}/validate", &[M::GET], nodes::validate)
        .at("/nodes/{node}/maintenance", &[M::PUT], nodes::put_maintenance)
        .at("/nodes/{node}/maintenance", &[M::DELETE], nodes::delete_maintenance)
        .at("/nodes/{node}/ports", &[M::GET], nodes::node_ports)
        .at("/nodes/{node}/portgroups", &[M::GET], portgroups::node_portgroups)
        .at("/nodes/{node}/traits", &[M::GET], traits::list)
        .at("/nodes/{node}/traits", &[M::PUT], traits::set_all)
        .at("/nodes/{node}/traits", &[M::DELETE], traits::remove_all)
        .at("/nodes/{node}/traits/{trait}", &[M::PUT], traits::add_one)
        .at("/nodes/{node}/traits/{trait}", &[M::DELETE], traits::remove_one)
        .at("/nodes/{node}/allocation", &[M::GET], allocations::node_allocation)
        .at("/nodes/{node}/allocation", &[M::DELETE], allocations::delete_node_allocation)
        .at("/nodes/{node}/history", &[M::GET], history::list)
        .at("/nodes/{node}/history/{event}", &[M::GET], history::get)
        .at("/nodes/{node}/vendor_passthru/methods", &[M::GET], nodes::vendor_methods)
        .at("/nodes/{node}/vendor_passthru/{method}", &VENDOR, nodes::vendor_call)
        .at("/nodes/{node}/vendor_passthru", &VENDOR, nodes::vendor_call_query)
        .at("/ports", &[M::GET], ports::list_ports)
        .at("/ports", &[M::POST], ports::create_port)
        .at("/ports/detail", &[M::GET], ports::list_ports_detail)
        .at("/ports/{port}", &[M::GET], ports::get_port)
        .at("/ports/{port}", &[M::PATCH], ports::patch_port)
        .at("/ports/{port}", &[M::DELETE], ports::delete_port)
        .at("/portgroups", &[M::GET], portgroups::list_portgroups)
        .at("/portgroups", &[M::POST], portgroups::create_portgroup)
        .at("/portgroups/detail", &[M::GET], portgroups::list_portgroups_detail)
        .at("/portgroups/{pg}", &[M::GET], portgroups::get_portgroup)
        .at("/portgroups/{pg}", &[M::PATCH], portgroups::patch_portgroup)
        .at("/portgroups/{pg}", &[M::DELETE], portgroups::delete_portgroup)
        .at("/portgroups/{pg}/ports", &[M::GET], portgroups::portgroup_ports)
        .at("/chassis", &[M::GET], chassis::list_chassis)
        .at("/chassis", &[M::POST], chassis::create_chassis)
        .at("/chassis/detail", &[M::GET], chassis::list_chassis_detail)
        .at("/chassis/{chassis}", &[M::GET], chassis::get_chassis)
        .at("/chassis/{chassis}", &[M::PATCH], chassis::patch_chassis)
        .at("/chassis/{chassis}", &[M::DELETE], chassis::delete_chassis)
        .at("/chassis/{chassis}/nodes", &[M::GET], nodes::chassis_nodes)
        .at("/allocations", &[M::GET], allocations::list_allocations)
        .at("/allocations", &[M::POST], allocations::create_allocation)
        .at("/allocations/{allocation}", &[M::GET], allocations::get_allocation)
        .at("/allocations/{allocation}", &[M::PATCH], allocations::patch_allocation)
        .at("/allocations/{allocation}", &[M::DELETE], allocations::delete_allocation)
        .at("/drivers", &[M::GET], drivers::list_drivers)
        .at("/drivers/{driver}", &[M::GET], drivers::get_driver)
        .at("/drivers/{driver}/properties", &[M::GET], drivers::driver_properties)
        .at("/drivers/{driver}/vendor_passthru/methods", &[M::GET], drivers::driver_vendor_methods)
        .at("/drivers/{driver}/vendor_passthru/ipxe_config", &[M::GET], ipxe::ipxe_config)
        .at("/drivers/{driver}/vendor_passthru/{method}", &VENDOR, drivers::driver_vendor_call)
        .at("/drivers/{driver}/vendor_passthru", &VENDOR, drivers::driver_vendor_call_query)
        .at("/conductors", &[M::GET], drivers::list_conductors)
        .at("/conductors/{host}", &[M::GET], drivers::get_conductor)
        .at("/lookup", &[M::GET], root::lookup)
        .at("/heartbeat/{node}", &[M::POST], root::heartbeat)
}

/// Every route the API serves: Ferric's own endpoints, the discovery
/// documents, and v1 under `/v1` and at the root. The OpenAPI document
/// (`openapi.json`) lists exactly these; [`openapi`]'s tests check it.
pub fn routes() -> Routes<State> {
    use axum::http::Method as M;
    Routes::new()
        .at("/", &[M::GET], root::root)
        .at("/healthz", &[M::GET], healthz)
        .at("/readyz", &[M::GET], readyz)
        .at("/metrics", &[M::GET], prometheus_metrics)
        .at("/openapi.json", &[M::GET], openapi::document)
        .at("/boot.ipxe", &[M::GET], ipxe::boot_ipxe)
        .at("/v1", &[M::GET], root::v1)
        .at("/v1/", &[M::GET], root::v1)
        .nest("/v1", v1_routes())
        .merge(v1_routes())
}

pub fn router(state: State) -> Router {
    let authenticator = state.auth.clone();
    let public = context::PublicUrl(state.cfg.api.public_url.clone());
    let body_limit = state.cfg.api.max_request_body_size;
    let request_timeout = Duration::from_millis(state.cfg.api.request_timeout_ms);
    let in_handlers = shed::Limit::new(state.cfg.api.max_concurrent_requests);
    metrics::counter!(ferric_common::metrics::API_REQUESTS_TIMED_OUT_TOTAL).increment(0);
    routes()
        .into_router()
        // after every route: it applies to the routes there are
        .method_not_allowed_fallback(root::method_not_allowed)
        .fallback(root::not_found)
        .with_state(state)
        // innermost: the shed limit and the request timeout cover a
        // Keystone round trip too; refusals get the version headers
        .layer(axum::middleware::from_fn(move |req, next| auth::middleware(authenticator.clone(), req, next)))
        // the last layer is the outermost: every answer, a shed or timed-out
        // request's too, gets the version headers and a request id, is counted
        // and traced; a shed request costs no timer; the timeout covers
        // reading the body
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req, next| limit::middleware(body_limit, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| timeout::middleware(request_timeout, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| shed::middleware(in_handlers.clone(), req, next)))
        .layer(axum::middleware::from_fn(version::middleware))
        .layer(axum::middleware::from_fn(trace::middleware))
        .layer(axum::Extension(public))
}

async fn healthz() -> &'static str {
    "ok"
}

/// `/metrics`: this process's Prometheus metrics, when a recorder is
/// installed.
async fn prometheus_metrics(axum::extract::State(st): axum::extract::State<State>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match &st.metrics {
        Some(render) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response(),
        None => error::ApiError::not_found("metrics are not enabled in this process").into_response(),
    }
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

/// The REST API's TLS (`api.tls_cert_file`, `api.tls_key_file`), its
/// certificate reloaded when the files change; `None`: plain HTTP.
pub fn tls_acceptor(cfg: &Config) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let a = &cfg.api;
    let Some(cert) =
        ferric_common::tls::listener_cert("api.tls_cert_file", &a.tls_cert_file, "api.tls_key_file", &a.tls_key_file)?
    else {
        return Ok(None);
    };
    let config = ferric_common::tls::server_config(cert, None, &[b"h2", b"http/1.1"])?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
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
    // refuse before binding when the address says enough
    if let Ok(addr) = cfg.api.listen.parse::<SocketAddr>() {
        auth::check_listener(&cfg, addr)?;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("binding the API address {}", cfg.api.listen))?;
    let addr = listener.local_addr()?;
    auth::check_listener(&cfg, addr)?;
    let strategy = cfg.auth.auth_strategy.clone();
    let auth = Arc::new(auth::Authenticator::new(&cfg)?);
    let fwd = forward::Forwarder::new(ring, Duration::from_millis(cfg.api.request_deadline_ms))
        .with_tls(ferric_common::tls::GrpcTls::from_config(&cfg.grpc));
    let tls = tls_acceptor(&cfg)?;
    let timeouts = connections::Timeouts {
        header_read: Duration::from_millis(cfg.api.header_read_timeout_ms),
        keep_alive: Duration::from_millis(cfg.api.keep_alive_timeout_ms),
    };
    let ipxe = ipxe::IpxeState::new(&cfg);
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let node_cache = node_cache::NodeCache::for_sole_writer(&db, cfg.api.node_cache_bytes);
    let state = Arc::new(AppState { cfg, db, fwd, metrics, ipxe, auth, stopping: stopping.clone(), node_cache });
    // clients ask for collections with a trailing slash (`/v1/ports/`)
    let app =
        tower::Layer::layer(&tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash(), router(state));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let join = tokio::spawn(connections::serve(listener, app, timeouts, tls, shutdown));
    tracing::info!(%addr, %scheme, auth_strategy = %strategy, "Ironic API listening");
    Ok(ApiHandle { addr, join, stopping })
}
