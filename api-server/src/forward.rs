//! The owner-aware gRPC forwarder.
//!
//! The API finds a node's owner in its own copy of the ring (a
//! `watch::Receiver<Ring>`), sends the call with its ring epoch, and — if
//! the conductor answers NOT_OWNER (it has seen a newer ring) or cannot be
//! reached (it just died) — waits for its ring to move on and retries
//! against the new owner, within the request deadline. Ring churn is
//! therefore invisible to clients; only a deadline with no owner at all
//! becomes a 503.
//!
//! A retry must not apply a change twice. Every call carries an id (the
//! `x-ferric-call-id` header, one for all its attempts) that conductors
//! record with the change it makes, in one transaction, and answer
//! "applied" when it comes again — so a call whose reply was lost, or whose
//! conductor died right after applying it, is retried safely. Calls no
//! conductor records (vendor passthru: the driver's effect is its own) are
//! retried only when they surely never arrived: [`Forwarder::call_once`].
//!
//! Every attempt is a gRPC client span (`ferric.v1.Conductor/<Method>`,
//! with the node and the conductor) whose W3C trace context travels in
//! the call's metadata (`traceparent`, `tracestate`), with the REST
//! request's id (`x-openstack-request-id`): the conductor's spans of the
//! call are children of it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use ferric_common::proto::conductor_client::ConductorClient;
use ferric_common::ring::{Member, Ring};
use ferric_common::rpc::{CALL_ID_HEADER, Reason, detail, surely_not_delivered};
use ferric_common::telemetry;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codegen::{GrpcMethod, InterceptedService};
use tonic::transport::Channel;
use tonic::{Response, Status};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::error::ApiError;

tokio::task_local! {
    /// The id of the call being made: one for all its attempts.
    static CALL_ID: String;
}

/// Puts the current call's id, the REST request's id and the attempt's
/// trace context on every request.
type Attach = fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status>;

fn attach(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    if let Ok(Ok(v)) = CALL_ID.try_with(|id| id.parse()) {
        req.metadata_mut().insert(CALL_ID_HEADER, v);
    }
    if let Some(Ok(v)) = crate::trace::request_id().map(|id| id.parse()) {
        req.metadata_mut().insert(telemetry::REQUEST_ID_HEADER, v);
    }
    // called while the attempt's span is the current one: the method is
    // known only here, from what the generated client put on the request
    let span = tracing::Span::current();
    if let Some(m) = req.extensions().get::<GrpcMethod>() {
        span.record("rpc.method", m.method());
        telemetry::rename(&span, format!("{}/{}", m.service(), m.method()));
    }
    telemetry::inject(&span, req.metadata_mut().as_mut());
    Ok(req)
}

pub type Client = ConductorClient<InterceptedService<Channel, Attach>>;

/// Which failed attempts may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Any the conductor did not answer or answered "not mine" /
    /// "unavailable": conductors deduplicate the call by its id.
    Deduplicated,
    /// Only those that surely never reached a conductor (refused, or
    /// NOT_OWNER): nobody deduplicates the call.
    NotDelivered,
}

pub struct Forwarder {
    ring: watch::Receiver<Ring>,
    channels: Mutex<HashMap<String, Channel>>,
    deadline: Duration,
    /// Mutual TLS to conductors (`[grpc]`), and a watch on its files: a
    /// renewed client certificate drops the cached channels, so new ones
    /// present it.
    tls: Option<(ferric_common::tls::GrpcTls, ferric_common::tls::FileWatch)>,
}

/// What to route by.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The owner of a node.
    Node { uuid: &'a uuid::Uuid, group: &'a str, hardware_type: &'a str },
    /// An update of a node, which may move it to another group or hardware
    /// type: the owner of the node as stored, which applies it under the
    /// node's lock — or, when nobody owns the node as stored (its group's
    /// last conductor is gone), the owner of the node as updated: nobody
    /// else could move the node out.
    Update {
        uuid: &'a uuid::Uuid,
        group: &'a str,
        hardware_type: &'a str,
        new_group: &'a str,
        new_hardware_type: &'a str,
    },
    /// Any active conductor that enables a hardware type.
    Driver(&'a str),
    /// The conductor the ring gives work of no node keyed by this UUID to
    /// (an allocation that names no node: `Ring::any_owner`).
    Any(&'a uuid::Uuid),
}

impl Forwarder {
    pub fn new(ring: watch::Receiver<Ring>, deadline: Duration) -> Forwarder {
        Forwarder { ring, channels: Mutex::new(HashMap::new()), deadline, tls: None }
    }

    /// Calls conductors with mutual TLS.
    pub fn with_tls(mut self, tls: Option<ferric_common::tls::GrpcTls>) -> Forwarder {
        self.tls = tls.map(|t| {
            let w = t.watch();
            (t, w)
        });
        self
    }

    pub fn ring(&self) -> Ring {
        self.ring.borrow().clone()
    }

    fn client(&self, url: &str) -> Result<Client, ApiError> {
        let mut map = self.channels.lock().expect("channel cache poisoned");
        if let Some((_, watch)) = &self.tls
            && watch.changed()
        {
            tracing::info!("gRPC client certificate files changed: new connections to conductors present them");
            map.clear();
        }
        if let Some(ch) = map.get(url) {
            return Ok(Self::limited(ConductorClient::with_interceptor(ch.clone(), attach as Attach)));
        }
        let ch = ferric_common::rpc::endpoint(url, self.tls.as_ref().map(|(t, _)| t))
            .map_err(ApiError::internal)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.deadline)
            .connect_lazy();
        map.insert(url.to_string(), ch.clone());
        Ok(Self::limited(ConductorClient::with_interceptor(ch, attach as Attach)))
    }

    fn limited(c: Client) -> Client {
        c.max_decoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES)
    }

    fn pick(ring: &Ring, route: Route<'_>) -> Option<Member> {
        match route {
            Route::Node { uuid, group, hardware_type } => ring.owner(uuid.as_bytes(), group, hardware_type).cloned(),
            Route::Update { uuid, group, hardware_type, new_group, new_hardware_type } => ring
                .owner(uuid.as_bytes(), group, hardware_type)
                .or_else(|| ring.owner(uuid.as_bytes(), new_group, new_hardware_type))
                .cloned(),
            Route::Driver(hw) => ring
                .members()
                .iter()
                .find(|m| {
                    m.state == ferric_common::ring::MemberState::Active && m.hardware_types.iter().any(|h| h == hw)
                })
                .cloned(),
            Route::Any(key) => ring.any_owner(key.as_bytes()).cloned(),
        }
    }

    /// Call `f(client, epoch)` on the right conductor, retrying across ring
    /// changes until the deadline (every attempt with the same call id).
    pub async fn call<T, F, Fut>(&self, route: Route<'_>, f: F) -> Result<T, ApiError>
    where
        F: Fn(Client, u64) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let id = format!("call-{}", uuid::Uuid::new_v4());
        CALL_ID.scope(id, self.attempt(route, Retry::Deduplicated, f)).await
    }

    /// [`Forwarder::call`] for a call no conductor deduplicates: sent again
    /// only when it surely never arrived (the connection was refused, or
    /// the conductor answered NOT_OWNER before doing anything).
    pub async fn call_once<T, F, Fut>(&self, route: Route<'_>, f: F) -> Result<T, ApiError>
    where
        F: Fn(Client, u64) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let id = format!("call-{}", uuid::Uuid::new_v4());
        CALL_ID.scope(id, self.attempt(route, Retry::NotDelivered, f)).await
    }

    /// The client span of one attempt; its method and name are recorded by
    /// [`attach`].
    fn attempt_span(route: Route<'_>, member: &Member) -> tracing::Span {
        let span = tracing::info_span!(
            "rpc",
            otel.name = "ferric.v1.Conductor",
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = "ferric.v1.Conductor",
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
            server.address = %member.grpc_url,
            conductor = %member.id,
            node.uuid = Empty,
            request_id = Empty,
        );
        telemetry::inherit(&span);
        if let Route::Node { uuid, .. } = route {
            span.record(telemetry::NODE_UUID, tracing::field::display(uuid));
        }
        span
    }

    async fn attempt<T, F, Fut>(&self, route: Route<'_>, retry_on: Retry, f: F) -> Result<T, ApiError>
    where
        F: Fn(Client, u64) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let start = Instant::now();
        let deadline = start + self.deadline;
        let mut rx = self.ring.clone();
        let mut backoff = Duration::from_millis(20);
        loop {
            let ring = rx.borrow_and_update().clone();
            let Some(member) = Self::pick(&ring, route) else {
                // nobody serves it right now: a conductor may be joining
                let wait = Duration::from_secs(3).min(deadline.saturating_duration_since(Instant::now()));
                if tokio::time::timeout(wait, rx.changed()).await.is_ok_and(|r| r.is_ok()) && Instant::now() < deadline
                {
                    continue;
                }
                let (group, hw) = match route {
                    Route::Node { group, hardware_type, .. } => (group, hardware_type),
                    Route::Update { new_group, new_hardware_type, .. } => (new_group, new_hardware_type),
                    Route::Driver(hw) => ("", hw),
                    Route::Any(_) => {
                        return Err(ApiError::unavailable(
                            "Resource temporarily unavailable, please retry. (no conductor is running)",
                        ));
                    }
                };
                return Err(ApiError::bad_request(format!(
                    "No valid host was found. Reason: No conductor service registered which supports driver {hw} for conductor group \"{group}\"."
                )));
            };
            let client = self.client(&member.grpc_url)?;
            let span = Self::attempt_span(route, &member);
            let res = f(client, ring.epoch()).instrument(span.clone()).await;
            if let Err(status) = &res {
                span.record("rpc.grpc.status_code", i32::from(status.code()));
                span.record("otel.status_code", "error");
            }
            match res {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let d = detail(&status);
                    let retry = match retry_on {
                        Retry::Deduplicated => matches!(d.reason(), Reason::NotOwner | Reason::Unavailable),
                        Retry::NotDelivered => d.reason() == Reason::NotOwner || surely_not_delivered(&status),
                    };
                    if !retry || Instant::now() >= deadline {
                        if retry {
                            // a conductor that never answered: say which, and where we tried
                            let transport = ferric_common::rpc::is_transport_error(&status);
                            let msg = if transport {
                                format!(
                                    "Resource temporarily unavailable, please retry. (conductor {} at {} could not be \
                                     reached: {})",
                                    member.id, member.grpc_url, d.message
                                )
                            } else {
                                format!("Resource temporarily unavailable, please retry. ({})", d.message)
                            };
                            if transport {
                                tracing::warn!(conductor = %member.id, url = %member.grpc_url, "{}", d.message);
                            }
                            return Err(ApiError::unavailable(msg));
                        }
                        return Err(ApiError::from_status(&status));
                    }
                    // wait for the ring to move on, or back off a little
                    let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    let _ = tokio::time::timeout(wait, rx.changed()).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferric_common::ring::{MemberState, RingSettings};

    use super::*;

    fn member(id: &str, group: &str) -> Member {
        Member {
            id: id.into(),
            incarnation: format!("{id}/1").into(),
            grpc_url: String::new(),
            http_url: String::new(),
            conductor_group: group.into(),
            hardware_types: vec!["fake-hardware".into()],
            state: MemberState::Active,
            ring_settings: String::new(),
            database_id: String::new(),
        }
    }

    #[test]
    fn an_update_goes_to_the_owner_as_stored_else_to_the_owner_as_updated() {
        let uuid = uuid::Uuid::new_v4();
        let update = |group, new_group| Route::Update {
            uuid: &uuid,
            group,
            hardware_type: "fake-hardware",
            new_group,
            new_hardware_type: "fake-hardware",
        };
        let ring = Ring::new(1, vec![member("c1", ""), member("c3", "rack2")], RingSettings::default());
        let picked = |route| Forwarder::pick(&ring, route).map(|m| m.id.to_string());
        // a move is applied by the owner it has
        assert_eq!(picked(update("", "rack2")).as_deref(), Some("c1"));
        assert_eq!(picked(update("rack2", "")).as_deref(), Some("c3"));
        // a node of a group nobody serves is moved by its owner as moved
        assert_eq!(picked(update("gone", "rack2")).as_deref(), Some("c3"));
        // and an update that moves it nowhere served goes nowhere
        assert_eq!(picked(update("gone", "gone")), None);
        assert_eq!(picked(update("gone", "nowhere")), None);
    }
}
