//! What a Ferric process says about its work: log lines, and (when asked
//! for) OpenTelemetry traces.
//!
//! * **Logs** go to stderr, `[log] format` `human` or `json`, filtered by
//!   `[log] filter` (`RUST_LOG` wins). A line written inside a span carries
//!   the fields of the span and of its ancestors (JSON: `span` and
//!   `spans`), so every line of a request or of a node's work says
//!   `request_id`, `node.uuid` and, while traces are exported, `trace_id`.
//! * **Traces** are exported over OTLP/gRPC only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   is set and `OTEL_SDK_DISABLED` is not `true`; otherwise no exporter,
//!   no propagator and no OpenTelemetry layer exist. The SDK reads the rest
//!   of the standard variables itself (`OTEL_SERVICE_NAME`, whose default
//!   here is the process's role, `OTEL_TRACES_SAMPLER[_ARG]`,
//!   `OTEL_EXPORTER_OTLP_*_{HEADERS,TIMEOUT}`, `OTEL_BSP_*`). Only spans and
//!   events of Ferric's own crates at `info` or above are exported: the
//!   exporter's own HTTP/2 connection must not trace itself.
//! * **Propagation** is W3C Trace Context (`traceparent`, `tracestate`):
//!   taken from an incoming REST request ([`set_parent`]), put on every
//!   gRPC call and every HTTP request to a BMC or a ramdisk ([`inject`]).
//! * **Inheritance**: OpenTelemetry spans do not inherit attributes. A span
//!   that declares `node.uuid` or `request_id` as
//!   [`tracing::field::Empty`] gets them from its nearest ancestor that
//!   has them when [`inherit`] is called on it — how a BMC request's span
//!   names the node whose work sent it.
//!
//! The invariant: nothing secret goes into a span field, an event or a log
//! line — no BMC password, agent token (it travels in the agent URL's
//! query: spans carry the URL without it), config drive or cluster secret.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tonic::codegen::http;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogConfig;

/// The span field naming the node a span's work is for.
pub const NODE_UUID: &str = "node.uuid";
/// The span field naming the REST request (`req-<uuid>`, Ironic's
/// `X-OpenStack-Request-Id`) a span's work is for.
pub const REQUEST_ID: &str = "request_id";
/// The span field with the trace id, for log lines.
pub const TRACE_ID: &str = "trace_id";

/// The span field with the id of the trace that started the work a span
/// resumes (see [`link`]).
pub const ORIGIN_TRACE_ID: &str = "origin_trace_id";

/// The header (and gRPC metadata key) that carries the request id.
pub const REQUEST_ID_HEADER: &str = "x-openstack-request-id";

/// This process's logging and tracing; [`Telemetry::shutdown`] sends what
/// is still buffered.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the batch of spans not yet exported (bounded by the
    /// exporter's timeout) and stops the exporter. Call it outside the
    /// runtime's tasks but while the runtime still runs: the export needs
    /// the runtime's I/O.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing the trace exporter failed: {e}");
        }
    }
}

/// Whether the environment asks for OTLP trace export.
pub fn otlp_requested(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber: log lines as `cfg` says and, for a
/// server (`service` given) when the environment asks for it
/// ([`otlp_requested`]), OTLP export with `service` as the default service
/// name; a server says in one line whether it exports. A one-shot command
/// (`None`: `ferric db …`) exports nothing and says nothing: its output is
/// what it was asked for. Exporting needs a Tokio runtime: call it inside
/// one (`Runtime::enter`). An exporter the environment describes wrongly
/// (a malformed endpoint) is an error.
pub fn init(cfg: &LogConfig, service: Option<&str>) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.filter));
    // colours only for a terminal: in a file or a log collector they are noise
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = if cfg.format == "json" { fmt.json().boxed() } else { fmt.boxed() };
    let (provider, name) = match service {
        Some(service) if otlp_requested(|k| std::env::var(k).ok()) => provider(service).map(|(p, s)| (Some(p), s))?,
        _ => (None, String::new()),
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer("ferric")).with_filter(exported())
    });
    let _ = tracing_subscriber::registry().with(Inherit).with(fmt.with_filter(filter)).with(otel).try_init();
    // one line saying whether this process exports: "why is my trace
    // empty" starts here
    match (service, &provider) {
        // a command's output is its answer
        (None, _) => {}
        (Some(_), Some(_)) => {
            tracing::info!(service.name = %name, "traces exported over OTLP/gRPC as OTEL_EXPORTER_OTLP_* say")
        }
        (Some(_), None) => tracing::info!(
            "traces not exported: neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, or OTEL_SDK_DISABLED=true"
        ),
    }
    Ok(Telemetry { provider })
}

/// Which spans and events are exported: Ferric's own (targets start with
/// `ferric`), `info` and above. A static filter: callsites of other crates
/// and of `debug!` are never asked again.
fn exported() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("ferric", tracing::Level::INFO)
}

/// The tracer provider with its batch exporter, and the service name it
/// reports.
fn provider(service: &str) -> Result<(opentelemetry_sdk::trace::SdkTracerProvider, String), String> {
    use opentelemetry_sdk::Resource;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("the OTLP trace exporter (OTEL_EXPORTER_OTLP_*): {e}"))?;
    // OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) wins;
    // else the SDK would say "unknown_service"
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.as_str().into_owned())
        .filter(|v| !v.starts_with("unknown_service"));
    let mut resource =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named.is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    // the sampler comes from OTEL_TRACES_SAMPLER(_ARG), read by the SDK
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok((provider, named.unwrap_or_else(|| service.to_string())))
}

// ---- propagation ------------------------------------------------------------

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Puts `span`'s trace context (the span of an outgoing request) on the
/// request's headers, or its gRPC metadata (`MetadataMap::as_mut`).
/// Nothing when traces are not exported.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Makes the trace context an incoming request carries (W3C
/// `traceparent`) the parent of `span`, then records the trace id on it
/// ([`TRACE_ID`], if declared). Call it before the span is entered.
pub fn set_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if cx.span().span_context().is_valid() {
        // an error only says that spans are not exported
        let _ = span.set_parent(cx);
    }
    record_trace_id(span);
}

/// Records the trace id `span` belongs to in its [`TRACE_ID`] field, so log
/// lines can be matched with the trace. Starts the span's OpenTelemetry
/// side: set its parent before.
pub fn record_trace_id(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record(TRACE_ID, sc.trace_id().to_string());
    }
}

/// `span`'s W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), to
/// store with work another process may resume; None when traces are not
/// exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Links `span` to the span a stored `traceparent` names when that one is
/// of another trace (work resumed by another request, or by a take-over
/// after its conductor died), and records that trace's id in `span`'s
/// [`ORIGIN_TRACE_ID`] field (if declared). Returns the linked trace id.
/// Nothing when traces are not exported or `traceparent` is malformed.
pub fn link(span: &tracing::Span, traceparent: &str) -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    let own = span.context().span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into_iter().collect();
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let origin = cx.span().span_context().clone();
    if !origin.is_valid() || origin.trace_id() == own.trace_id() {
        return None;
    }
    span.add_link(origin.clone());
    let id = origin.trace_id().to_string();
    span.record(ORIGIN_TRACE_ID, id.as_str());
    Some(id)
}

/// Renames `span`'s OpenTelemetry side, also after it started (its
/// `otel.name` field is read only before).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

// ---- inheritance ------------------------------------------------------------

/// The node and request a span's work is for: its own fields, or its
/// nearest ancestor's.
#[derive(Debug, Clone, Default, PartialEq)]
struct Inherited {
    node: Option<String>,
    request: Option<String>,
}

impl Visit for Inherited {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            NODE_UUID => self.node = Some(value.to_string()),
            REQUEST_ID => self.request = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), NODE_UUID | REQUEST_ID) {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Keeps [`Inherited`] in every span's extensions.
struct Inherit;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Inherit {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut v = span.parent().and_then(|p| p.extensions().get::<Inherited>().cloned()).unwrap_or_default();
        attrs.record(&mut v);
        span.extensions_mut().insert(v);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(v) = ext.get_mut::<Inherited>() {
            values.record(v);
        }
    }
}

/// Fills `span`'s empty [`NODE_UUID`] and [`REQUEST_ID`] fields from its
/// nearest ancestor that has them. A field the span does not declare is
/// left alone (tracing records only declared fields).
pub fn inherit(span: &tracing::Span) {
    let Some(id) = span.id() else { return };
    let found = tracing::dispatcher::get_default(|d| {
        let registry = d.downcast_ref::<Registry>()?;
        let s = registry.span(&id)?;
        s.extensions().get::<Inherited>().cloned()
    });
    let Some(v) = found else { return };
    if let Some(n) = &v.node {
        span.record(NODE_UUID, n.as_str());
    }
    if let Some(r) = &v.request {
        span.record(REQUEST_ID, r.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_only_when_an_endpoint_is_set_and_the_sdk_is_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(!otlp_requested(env(&[])));
        assert!(!otlp_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(otlp_requested(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")])));
        assert!(otlp_requested(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4317")])));
        assert!(!otlp_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "TRUE")
        ])));
        assert!(otlp_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "false")
        ])));
    }

    /// Collects what is recorded on spans after they were created.
    #[derive(Clone, Default)]
    struct Recorded(std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorded {
        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            struct V<'a>(&'a mut Vec<(String, String)>);
            impl Visit for V<'_> {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    self.0.push((field.name().to_string(), format!("{value:?}")));
                }
            }
            let name = ctx.span(id).map(|s| s.name().to_string()).unwrap_or_default();
            let mut fields = Vec::new();
            values.record(&mut V(&mut fields));
            let mut all = self.0.lock().unwrap();
            all.extend(fields.into_iter().map(|(f, v)| (name.clone(), f, v)));
        }
    }

    #[test]
    fn a_span_inherits_the_node_and_request_of_its_nearest_ancestor() {
        let recorded = Recorded::default();
        let subscriber = Registry::default().with(Inherit).with(recorded.clone());
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", request_id = "req-1");
            let _r = request.enter();
            let node = tracing::info_span!("operation", node.uuid = %"n-1");
            let _n = node.enter();
            let bmc = tracing::info_span!("bmc", node.uuid = tracing::field::Empty, request_id = tracing::field::Empty);
            inherit(&bmc);
            let other = tracing::info_span!(parent: None, "unrelated", node.uuid = tracing::field::Empty);
            inherit(&other);
            // a field the span does not declare is not recorded
            let undeclared = tracing::info_span!("undeclared");
            inherit(&undeclared);
        });
        let mut got = recorded.0.lock().unwrap().clone();
        got.sort();
        let want = [("bmc", NODE_UUID, "\"n-1\""), ("bmc", REQUEST_ID, "\"req-1\"")];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(got, want, "only the span with empty fields under a node and a request got them");
    }

    #[test]
    fn a_stored_traceparent_links_work_resumed_in_another_trace() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = Registry::default().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let started = tracing::info_span!("operation", origin_trace_id = tracing::field::Empty);
            let stored = traceparent(&started).expect("a sampled span has a traceparent");
            let sc = started.context().span().span_context().clone();
            assert_eq!(stored, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));

            // a take-over's run: a root span of its own trace
            let resumed = tracing::info_span!(parent: None, "operation", origin_trace_id = tracing::field::Empty);
            assert_eq!(link(&resumed, &stored), Some(sc.trace_id().to_string()));
            // a run resumed in the trace that started it links nothing
            let same = tracing::info_span!(parent: &started, "operation", origin_trace_id = tracing::field::Empty);
            assert_eq!(link(&same, &stored), None);
            assert_eq!(link(&resumed, "00-not-a-traceparent"), None);
        });
        // without an OpenTelemetry layer there is nothing to store or link
        let plain = tracing::info_span!("operation");
        assert_eq!(traceparent(&plain), None);
    }
}
