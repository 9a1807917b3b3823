//! Drain: take a conductor out of service without failing anything.
//!
//! 1. Mark it `draining` in the membership (it leaves the ring but keeps its
//!    lease, so nobody mistakes it for dead and clears its locks).
//! 2. Stop taking new work: every node request now answers NOT_OWNER and the
//!    API retries against the new owners.
//! 3. Running operations notice at their next step boundary that the ring
//!    moved their node, release the lock and leave the recorded step for
//!    the new owner, whose take-over resumes them.
//! 4. Wait until no node has this conductor as `conductor_affinity` and no
//!    operation or lock is left (or `conductor.drain_timeout_ms`), then ask
//!    the process to exit, which revokes the lease.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferric_common::db::NodeRef;
use ferric_common::ring::MemberState;
use tracing::{info, warn};

use crate::Inner;

/// Progress of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub nodes_held: u64,
    pub locks_held: u64,
    pub operations_in_flight: u64,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.nodes_held == 0 && self.locks_held == 0 && self.operations_in_flight == 0
    }
}

pub async fn progress(inner: &Inner) -> Progress {
    let held = inner.db.count_nodes_with(NodeRef::Affinity, &inner.id).await.unwrap_or(i64::MAX);
    let locks = inner.db.count_nodes_with(NodeRef::Reservation, &inner.incarnation).await.unwrap_or(i64::MAX);
    Progress {
        nodes_held: held.max(0) as u64,
        locks_held: locks.max(0) as u64,
        operations_in_flight: inner.operations_in_flight() as u64,
    }
}

/// Begin draining (idempotent). Returns false if it was already draining.
pub async fn begin(inner: &Arc<Inner>) -> Result<bool, String> {
    if inner.draining.swap(true, Ordering::SeqCst) {
        return Ok(false);
    }
    info!(id = %inner.id, "draining: leaving the ring, keeping the lease");
    if let Err(e) = inner.membership.set_state(&inner.id, MemberState::Draining).await {
        inner.draining.store(false, Ordering::SeqCst);
        return Err(format!("could not mark the conductor draining: {e}"));
    }
    Ok(true)
}

/// Whether an active conductor other than this one serves this one's
/// group and one of its hardware types (someone can take its nodes).
fn successor_exists(inner: &Inner) -> bool {
    let group = inner.cfg.conductor.conductor_group.to_ascii_lowercase();
    let mine = inner.registry.names();
    inner.ring.borrow().members().iter().any(|m| {
        m.id != inner.id
            && m.state == MemberState::Active
            && m.conductor_group == group
            && m.hardware_types.iter().any(|h| mine.contains(&h.as_str()))
    })
}

/// Drain and wait for the hand-off to complete (or time out); then the
/// caller stops the conductor.
pub async fn drain_and_wait(inner: &Arc<Inner>) {
    if let Err(e) = begin(inner).await {
        warn!("{e}; stopping without a hand-off");
        return;
    }
    let deadline = Instant::now() + Duration::from_millis(inner.cfg.conductor.drain_timeout_ms);
    if !successor_exists(inner) {
        let p = progress(inner).await;
        warn!(
            nodes_held = p.nodes_held,
            "no other conductor of group {:?} serves {}: nobody can take this conductor's nodes, so the drain waits up \
             to {} s (conductor.drain_timeout_ms) for one to join; a second SIGTERM (or Ctrl-C) stops now, at the \
             next step boundary",
            inner.cfg.conductor.conductor_group,
            inner.registry.names().join(", "),
            inner.cfg.conductor.drain_timeout_ms / 1000
        );
    }
    let mut last = None;
    loop {
        let p = progress(inner).await;
        metrics::gauge!(ferric_common::metrics::DRAIN_NODES_HELD).set(p.nodes_held as f64);
        metrics::gauge!(ferric_common::metrics::DRAIN_OPERATIONS_IN_FLIGHT).set(p.operations_in_flight as f64);
        if last != Some(p) {
            info!(
                nodes_held = p.nodes_held,
                locks_held = p.locks_held,
                operations = p.operations_in_flight,
                "drain progress"
            );
            last = Some(p);
        }
        if p.done() {
            info!("drain complete: every node has a new owner");
            return;
        }
        if Instant::now() >= deadline {
            warn!(nodes_held = p.nodes_held, "drain timed out; stopping anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
