//! A tiny OpenTelemetry collector: an OTLP/gRPC trace receiver
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, from
//! opentelemetry-proto 0.33.1's `gen-tonic` code on tonic 0.14) on a free
//! loopback port, keeping every span it is sent. Point a Ferric process
//! at it with `OTEL_EXPORTER_OTLP_ENDPOINT=`[`Collector::endpoint`].
//!
//! Besides the decoded spans it keeps every export request as it came, in
//! protobuf bytes ([`Collector::exported_bytes`]): a string that appears
//! nowhere in them appears in no span name, attribute, event, link or
//! resource.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// One exported span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` (`unspecified`).
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    /// Event names with their attributes (log lines written in the span).
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// The spans this one links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn kind(k: i32) -> &'static str {
    match k {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    bytes: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = req.into_inner();
        let mut got = self.0.lock().expect("collector");
        got.bytes.extend(req.encode_to_vec());
        for rs in &req.resource_spans {
            let resource = rs.resource.as_ref().map(|r| map(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    got.spans.push(Span {
                        service: service.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: kind(s.kind),
                        attributes: map(&s.attributes),
                        events: s.events.iter().map(|e| (e.name.clone(), map(&e.attributes))).collect(),
                        links: s.links.iter().map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id))).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// The receiver, serving until dropped.
pub struct Collector {
    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    received: Receiver,
    stop: CancellationToken,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        let received = Receiver::default();
        let stop = CancellationToken::new();
        let (svc, s) = (TraceServiceServer::new(received.clone()), stop.clone());
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await;
        });
        Collector { endpoint, received, stop }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.0.lock().expect("collector").spans.clone()
    }

    /// Every export request received so far, as protobuf bytes, one after
    /// the other.
    pub fn exported_bytes(&self) -> Vec<u8> {
        self.received.0.lock().expect("collector").bytes.clone()
    }

    /// Waits until `done` holds for the spans received (exporters send in
    /// batches, every few seconds); returns them. Fails after `timeout`,
    /// listing what came.
    pub async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if start.elapsed() > timeout {
                let names: Vec<String> =
                    spans.iter().map(|s| format!("{} {} {} ({})", s.service, s.kind, s.name, s.trace_id)).collect();
                panic!(
                    "{what}: not received within {timeout:?}; the collector has {} spans:\n{}",
                    spans.len(),
                    names.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
