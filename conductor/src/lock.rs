//! Exclusive node locks.
//!
//! A lock is the node row's `reservation` column holding the holder's
//! *incarnation* (not its conductor id), taken by one conditional UPDATE.
//! A restarted conductor is a new incarnation and never inherits a lock;
//! the locks of a dead incarnation are cleared by the nodes' new owners
//! once the dead one has left the ring (its lease expired). Busy locks are
//! retried a bounded number of times, then reported as NODE_LOCKED (409).

use std::time::Duration;

use ferric_common::db::{Db, DbError, LockOutcome};
use ferric_common::model::Node;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("Node {node} is locked by host {holder}, please retry after the current operation is completed.")]
    Busy { node: Uuid, holder: String },
    #[error("Node {0} could not be found.")]
    NotFound(Uuid),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A held exclusive lock. Release it with [`NodeLock::release`]; a lock
/// dropped without release (a panic, a fenced task) stays until the holder
/// incarnation is declared dead, which is the safe direction.
#[derive(Debug)]
pub struct NodeLock {
    pub node: Uuid,
    pub holder: String,
    db: Db,
}

impl NodeLock {
    pub async fn acquire(
        db: &Db,
        node: Uuid,
        holder: &str,
        attempts: u32,
        interval: Duration,
    ) -> Result<(NodeLock, Node), LockError> {
        let mut last_holder = String::new();
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(interval).await;
            }
            match db.reserve_node(node, holder).await? {
                LockOutcome::Acquired(n) => {
                    return Ok((NodeLock { node, holder: holder.to_string(), db: db.clone() }, *n));
                }
                LockOutcome::Busy(h) => last_holder = h,
                LockOutcome::NotFound => return Err(LockError::NotFound(node)),
            }
        }
        Err(LockError::Busy { node, holder: last_holder })
    }

    /// One attempt at locking `node` while it is still in `state` (see
    /// `Db::reserve_node_in_state`).
    pub async fn acquire_in_state(
        db: &Db,
        node: Uuid,
        holder: &str,
        state: &str,
    ) -> Result<(NodeLock, Node), LockError> {
        match db.reserve_node_in_state(node, holder, state).await? {
            LockOutcome::Acquired(n) => Ok((NodeLock { node, holder: holder.to_string(), db: db.clone() }, *n)),
            LockOutcome::Busy(h) => Err(LockError::Busy { node, holder: h }),
            LockOutcome::NotFound => Err(LockError::NotFound(node)),
        }
    }

    /// Write the node, as long as this lock is still ours.
    pub async fn save(&self, node: &Node) -> Result<bool, DbError> {
        self.db.save_node_locked(node, &self.holder).await
    }

    /// Write the node and release the lock atomically.
    pub async fn save_and_release(self, node: &Node) -> Result<bool, DbError> {
        self.db.save_node_and_release(node, &self.holder).await
    }

    pub async fn release(self) -> Result<bool, DbError> {
        self.db.release_node(self.node, &self.holder).await
    }
}
