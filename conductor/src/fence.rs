//! Self-fencing.
//!
//! A conductor may act on nodes only while its lease is alive, because the
//! others clear its locks and take its nodes once the lease has expired.
//! It cannot ask etcd when it is cut off, so it keeps its own conservative
//! deadline: the send time of the last renewal etcd acknowledged plus the
//! TTL (etcd starts counting later, on receipt). When `deadline − margin`
//! (`membership.fence_margin_ms`) passes without a newer acknowledgement,
//! the conductor **fences** itself, at once:
//!
//! * `owns()` answers false for every node: RPCs get NOT_OWNER, take-over
//!   passes and periodic work stop;
//! * every running step, power action and take-over hook is dropped
//!   mid-flight (its future is cancelled) and nothing more is written —
//!   the node keeps its lock and its recorded step for the next owner;
//! * the process then stops this incarnation without revoking its lease
//!   and, once etcd answers again, registers as a new incarnation.
//!
//! Safety rests on clocks advancing at nearly the same rate on the
//! conductor and on etcd over one TTL (drift below the margin), and on the
//! watchdog running at least every `CHECK_EVERY`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::error;

use crate::Inner;

/// How often the watchdog looks at the deadline.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Watch the lease deadline; fence when it is about to pass.
pub async fn watchdog(inner: Arc<Inner>, valid_until: watch::Receiver<Instant>) {
    let margin = Duration::from_millis(inner.cfg.membership.fence_margin_ms);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let deadline = *valid_until.borrow();
        if Instant::now() + margin >= deadline {
            fence(&inner, "could not renew the lease in time");
            return;
        }
    }
}

/// Stop acting on anything, now.
pub fn fence(inner: &Inner, why: &str) {
    if inner.fenced.swap(true, Ordering::SeqCst) {
        return;
    }
    error!(id = %inner.id, incarnation = %inner.incarnation, "FENCED: {why}; stopping every action and starting a new incarnation");
    metrics::counter!("ferric_fenced_total").increment(1);
    inner.fence.cancel();
    inner.exit_requested.cancel();
}
