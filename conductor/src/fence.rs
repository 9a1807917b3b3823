//! Self-fencing.
//!
//! A conductor may act on nodes only while its lease is alive, because the
//! others clear its locks and take its nodes once the lease has expired.
//! It cannot ask etcd when it is cut off, so it keeps its own conservative
//! deadline: the send time of the last renewal etcd acknowledged plus the
//! TTL (etcd starts counting later, on receipt). When `deadline − margin`
//! (`membership.fence_margin_ms`) passes without a newer acknowledgement,
//! or when its own member record disappears from the ring (an operator
//! deleted the key, or etcd expired the lease while the conductor was
//! away), the conductor **fences** itself, at once:
//!
//! * `owns()` answers false for every node: RPCs get NOT_OWNER, take-over
//!   passes and periodic work stop;
//! * every running step, power action, take-over hook and RPC handler is
//!   dropped mid-flight (its future is cancelled) and nothing more is
//!   written — the node keeps its lock and its recorded step for the next
//!   owner;
//! * the process then stops this incarnation without revoking its lease
//!   and, once etcd answers again, registers as a new incarnation.
//!
//! The deadline is checked **inline** too, not only by the watchdog every
//! [`CHECK_EVERY`]: [`Fence::check`] runs before every lock, save and
//! release (`crate::lock`) and before every request to a BMC or an agent
//! (the drivers' [`ActGuard`]), so a conductor whose watchdog task was
//! starved (a saturated runtime, a paused process) still acts on nothing
//! once its deadline has passed.
//!
//! Safety rests on clocks advancing at nearly the same rate on the
//! conductor and on etcd over one TTL (drift below the margin).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferric_common::ids::{ConductorId, Incarnation};
use ferric_deploy::services::ActGuard;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::error;

use crate::Inner;

/// How often the watchdog looks at the deadline and the ring.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Why an action was refused: this incarnation is fenced.
#[derive(Debug, Clone, thiserror::Error)]
#[error("conductor {id} (incarnation {incarnation}) is fenced: {why}")]
pub struct Fenced {
    pub id: ConductorId,
    pub incarnation: Incarnation,
    pub why: String,
}

/// One incarnation's fence: whether it may still act, and the token every
/// action in flight selects on.
#[derive(Debug)]
pub struct Fence {
    id: ConductorId,
    incarnation: Incarnation,
    fenced: AtomicBool,
    why: std::sync::Mutex<String>,
    token: CancellationToken,
    /// Cancelled with the fence: the process replaces this incarnation.
    exit: CancellationToken,
    /// Until when the lease is surely valid (set once the conductor
    /// joined; in-process membership has none and never expires).
    lease: OnceLock<watch::Receiver<Instant>>,
    margin: Duration,
}

impl Fence {
    pub fn new(id: ConductorId, incarnation: Incarnation, margin: Duration, exit: CancellationToken) -> Fence {
        Fence {
            id,
            incarnation,
            fenced: AtomicBool::new(false),
            why: std::sync::Mutex::new(String::new()),
            token: CancellationToken::new(),
            exit,
            lease: OnceLock::new(),
            margin,
        }
    }

    /// The lease deadline the membership publishes after every renewal.
    pub fn watch_lease(&self, valid_until: watch::Receiver<Instant>) {
        let _ = self.lease.set(valid_until);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Same as [`Fence::is_fenced`], named as a token's.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when this incarnation fences (select on it).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// May this incarnation act now? Fences it (and says no) when the
    /// lease deadline minus the margin has passed, whether or not the
    /// watchdog has seen it yet.
    pub fn check(&self) -> Result<(), Fenced> {
        if !self.is_fenced()
            && let Some(lease) = self.lease.get()
            && Instant::now() + self.margin >= *lease.borrow()
        {
            self.fence("could not renew the lease in time");
        }
        if self.is_fenced() {
            return Err(Fenced {
                id: self.id.clone(),
                incarnation: self.incarnation.clone(),
                why: self.why.lock().expect("fence reason").clone(),
            });
        }
        Ok(())
    }

    /// Stop acting on anything, now.
    pub fn fence(&self, why: &str) {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        *self.why.lock().expect("fence reason") = why.to_string();
        error!(id = %self.id, incarnation = %self.incarnation, "FENCED: {why}; stopping every action and starting a new incarnation");
        metrics::counter!(ferric_common::metrics::FENCED_TOTAL).increment(1);
        self.token.cancel();
        self.exit.cancel();
    }
}

impl ActGuard for Fence {
    fn may_act(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }
}

/// Watch the lease deadline and our own member record; fence when the
/// deadline is about to pass or the record is gone from the ring.
pub async fn watchdog(inner: Arc<Inner>) {
    let mut ring = inner.ring.clone();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.fence.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = ring.changed() => {}
        }
        if inner.cancel.is_cancelled() {
            return; // stopping: leaving the ring removes our record on purpose
        }
        if inner.fence.check().is_err() {
            return;
        }
        let gone = ring.borrow_and_update().member(&inner.id).is_none_or(|m| m.incarnation != inner.incarnation);
        if gone {
            inner.fence.fence("our member record is gone from the ring (deleted, or our lease expired)");
            return;
        }
    }
}

/// A shared handle, for what holds the fence beyond [`Inner`].
pub type SharedFence = Arc<Fence>;
