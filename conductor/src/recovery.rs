//! What a conductor does on every new ring epoch (start-up is the first):
//!
//! 1. Clear the locks of incarnations that are no longer ring members.
//!    A member leaves the ring only when its lease is gone (etcd) or its
//!    process stopped (in-process membership), so a lock whose holder is
//!    not a member can never be in use.
//! 2. Resume every node it owns that is in an `*ING` state with nobody
//!    holding its lock: the operation continues at its recorded step.
//!
//! Full take-over (boot artefacts, BMC re-pointing, affinity, ordering and
//! bounded concurrency) builds on this in `takeover`.

use std::collections::HashSet;
use std::sync::Arc;

use ferric_common::db::NodeQuery;
use ferric_common::states::ProvisionState;
use tracing::{info, warn};

use crate::Inner;
use crate::lock::{LockError, NodeLock};
use crate::operation;

pub async fn watch_ring(inner: Arc<Inner>) {
    let mut rx = inner.ring.clone();
    loop {
        recover(&inner).await;
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// One recovery pass over the nodes this conductor owns.
pub async fn recover(inner: &Arc<Inner>) {
    let nodes = match inner.db.list_nodes(&NodeQuery::default()).await {
        Ok(n) => n,
        Err(e) => {
            warn!("recovery: listing nodes failed: {e}");
            return;
        }
    };
    let live: HashSet<String> = inner
        .ring
        .borrow()
        .members()
        .iter()
        .map(|m| m.incarnation.clone())
        .collect();
    for node in nodes {
        if !inner.owns(&node) {
            continue;
        }
        if let Some(holder) = &node.reservation
            && !live.contains(holder)
        {
            match inner.db.clear_reservations_of(holder).await {
                Ok(n) => {
                    info!(dead = %holder, cleared = n, "cleared the locks of a dead incarnation")
                }
                Err(e) => warn!("clearing locks of {holder} failed: {e}"),
            }
        }
        if node.provision_state.is_in_progress() && node.provision_state != ProvisionState::Error {
            resume(inner, node.uuid).await;
        }
    }
}

async fn resume(inner: &Arc<Inner>, uuid: uuid::Uuid) {
    let Ok(permit) = inner.operations.clone().try_acquire_owned() else {
        return; // busy; the next epoch or periodic pass picks it up
    };
    let (lock, node) = match NodeLock::acquire(
        &inner.db,
        uuid,
        &inner.incarnation,
        1,
        inner.lock_interval(),
    )
    .await
    {
        Ok(x) => x,
        Err(LockError::Busy { .. }) | Err(LockError::NotFound(_)) => return,
        Err(e) => {
            warn!(node = %uuid, "recovery: locking failed: {e}");
            return;
        }
    };
    if !node.provision_state.is_in_progress() {
        let _ = lock.release().await;
        return;
    }
    info!(node = %uuid, state = %node.provision_state, "resuming an orphaned operation");
    let inner2 = inner.clone();
    let cancel = inner.cancel.clone();
    inner.tasks.spawn(async move {
        operation::run(inner2, lock, node, cancel).await;
        drop(permit);
    });
}
