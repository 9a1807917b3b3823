//! The owner-aware gRPC forwarder.
//!
//! The API finds a node's owner in its own copy of the ring (a
//! `watch::Receiver<Ring>`), sends the call with its ring epoch, and — if
//! the conductor answers NOT_OWNER (it has seen a newer ring) or cannot be
//! reached (it just died) — waits for its ring to move on and retries
//! against the new owner, within the request deadline. Ring churn is
//! therefore invisible to clients; only a deadline with no owner at all
//! becomes a 503.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use ferric_common::proto::conductor_client::ConductorClient;
use ferric_common::ring::{Member, Ring};
use ferric_common::rpc::{Reason, detail};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use crate::error::ApiError;

pub type Client = ConductorClient<Channel>;

pub struct Forwarder {
    ring: watch::Receiver<Ring>,
    channels: Mutex<HashMap<String, Channel>>,
    deadline: Duration,
}

/// What to route by.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The owner of a node.
    Node { uuid: &'a uuid::Uuid, group: &'a str, hardware_type: &'a str },
    /// Any active conductor that enables a hardware type.
    Driver(&'a str),
}

impl Forwarder {
    pub fn new(ring: watch::Receiver<Ring>, deadline: Duration) -> Forwarder {
        Forwarder { ring, channels: Mutex::new(HashMap::new()), deadline }
    }

    pub fn ring(&self) -> Ring {
        self.ring.borrow().clone()
    }

    fn client(&self, url: &str) -> Result<Client, ApiError> {
        let mut map = self.channels.lock().expect("channel cache poisoned");
        if let Some(ch) = map.get(url) {
            return Ok(Self::limited(ConductorClient::new(ch.clone())));
        }
        let ch = Endpoint::from_shared(url.to_string())
            .map_err(|e| ApiError::internal(format!("bad conductor URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.deadline)
            .connect_lazy();
        map.insert(url.to_string(), ch.clone());
        Ok(Self::limited(ConductorClient::new(ch)))
    }

    fn limited(c: Client) -> Client {
        c.max_decoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ferric_common::rpc::MAX_MESSAGE_BYTES)
    }

    fn pick(ring: &Ring, route: Route<'_>) -> Option<Member> {
        match route {
            Route::Node { uuid, group, hardware_type } => ring.owner(uuid.as_bytes(), group, hardware_type).cloned(),
            Route::Driver(hw) => ring
                .members()
                .iter()
                .find(|m| {
                    m.state == ferric_common::ring::MemberState::Active && m.hardware_types.iter().any(|h| h == hw)
                })
                .cloned(),
        }
    }

    /// Call `f(client, epoch)` on the right conductor, retrying across ring
    /// changes until the deadline.
    pub async fn call<T, F, Fut>(&self, route: Route<'_>, f: F) -> Result<T, ApiError>
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
                    Route::Driver(hw) => ("", hw),
                };
                return Err(ApiError::bad_request(format!(
                    "No valid host was found. Reason: No conductor service registered which supports driver {hw} for conductor group \"{group}\"."
                )));
            };
            let client = self.client(&member.grpc_url)?;
            match f(client, ring.epoch()).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => {
                    let d = detail(&status);
                    let retry = matches!(d.reason(), Reason::NotOwner | Reason::Unavailable);
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
