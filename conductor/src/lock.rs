//! Exclusive node locks.
//!
//! A lock is the node row's `reservation` column holding the holder's
//! *incarnation* (not its conductor id), taken by one conditional UPDATE.
//! A restarted conductor is a new incarnation and never inherits a lock;
//! the locks of a dead incarnation are cleared by the nodes' new owners
//! once the dead one has left the ring (its lease expired). Busy locks are
//! retried a bounded number of times, then reported as NODE_LOCKED (409).
//!
//! **A lock cannot outlive its holder's section.** Every lock this process
//! takes goes through [`Locks`], which remembers it in memory from just
//! before the UPDATE until the [`NodeLock`] is dropped — released, or not:
//! a save that failed in a database outage, a request future dropped by
//! its deadline between "save the `*ING` state" and "spawn the operation",
//! an UPDATE whose answer was lost, a panic. A reservation in the database
//! that names this incarnation but that no live `NodeLock` of this process
//! accounts for is therefore orphaned, and [`Locks::reap_orphans`] (run by
//! every take-over pass) clears it; the pass then resumes the node's
//! operation from its record, as after a restart. Without it such a lock
//! stays until this incarnation dies, and a live conductor never does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferric_common::db::{AppliedCall, Db, DbError, LockOutcome};
use ferric_common::ids::LockHolder;

use crate::fence::Fence;
use ferric_common::model::Node;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("Node {node} is locked by host {holder}, please retry after the current operation is completed.")]
    Busy { node: Uuid, holder: LockHolder },
    #[error("Node {0} could not be found.")]
    NotFound(Uuid),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Fenced(#[from] crate::fence::Fenced),
}

/// What this process holds, by node: how many live [`NodeLock`]s (and
/// acquisitions in flight), or that the reaper is clearing an orphan.
#[derive(Debug, Default)]
struct Held(Mutex<HashMap<Uuid, Entry>>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    Held(u32),
    Reaping,
}

impl Held {
    /// Marks `node` as (about to be) held; `None` while the reaper clears
    /// an orphaned lock of it (the caller sees the node as busy).
    fn mark(self: &Arc<Self>, node: Uuid) -> Option<Mark> {
        let mut m = self.0.lock().expect("held locks");
        match m.entry(node).or_insert(Entry::Held(0)) {
            Entry::Reaping => return None,
            Entry::Held(n) => *n += 1,
        }
        Some(Mark { held: self.clone(), node })
    }

    /// Starts reaping `node` if nothing of this process holds it.
    fn start_reap(&self, node: Uuid) -> bool {
        let mut m = self.0.lock().expect("held locks");
        if m.contains_key(&node) {
            return false;
        }
        m.insert(node, Entry::Reaping);
        true
    }

    fn end_reap(&self, node: Uuid) {
        let mut m = self.0.lock().expect("held locks");
        if m.get(&node) == Some(&Entry::Reaping) {
            m.remove(&node);
        }
    }

    fn count(&self) -> usize {
        self.0.lock().expect("held locks").values().filter(|e| matches!(e, Entry::Held(_))).count()
    }
}

/// One hold of a node, counted in [`Held`] until dropped.
#[derive(Debug)]
struct Mark {
    held: Arc<Held>,
    node: Uuid,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let mut m = self.held.0.lock().expect("held locks");
        if let Some(Entry::Held(n)) = m.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.node);
            }
        }
    }
}

/// Takes node locks for one incarnation, and reclaims the ones its own
/// sections dropped (see the module doc).
#[derive(Debug)]
pub struct Locks {
    db: Db,
    holder: LockHolder,
    held: Arc<Held>,
    /// Checked before every lock, save and release: a fenced incarnation
    /// (or one whose lease may have run out) writes nothing.
    fence: Arc<Fence>,
}

impl Locks {
    pub fn new(db: Db, holder: LockHolder, fence: Arc<Fence>) -> Locks {
        Locks { db, holder, held: Arc::default(), fence }
    }

    /// Locks `node`, retrying a busy lock `attempts` times `interval` apart.
    pub async fn acquire(&self, node: Uuid, attempts: u32, interval: Duration) -> Result<(NodeLock, Node), LockError> {
        let mut last_holder = LockHolder::default();
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(interval).await;
            }
            let Some(mark) = self.held.mark(node) else {
                last_holder = self.holder.clone();
                continue;
            };
            self.fence.check()?;
            match self.db.reserve_node(node, &self.holder).await? {
                LockOutcome::Acquired(n) => return Ok((self.lock(node, mark), *n)),
                LockOutcome::Busy(h) => last_holder = h,
                LockOutcome::NotFound => return Err(LockError::NotFound(node)),
            }
        }
        Err(LockError::Busy { node, holder: last_holder })
    }

    /// One attempt at locking `node` while it is still in `state` (see
    /// `Db::reserve_node_in_state`).
    pub async fn acquire_in_state(&self, node: Uuid, state: &str) -> Result<(NodeLock, Node), LockError> {
        let Some(mark) = self.held.mark(node) else {
            return Err(LockError::Busy { node, holder: self.holder.clone() });
        };
        self.fence.check()?;
        match self.db.reserve_node_in_state(node, &self.holder, state).await? {
            LockOutcome::Acquired(n) => Ok((self.lock(node, mark), *n)),
            LockOutcome::Busy(h) => Err(LockError::Busy { node, holder: h }),
            LockOutcome::NotFound => Err(LockError::NotFound(node)),
        }
    }

    fn lock(&self, node: Uuid, mark: Mark) -> NodeLock {
        NodeLock { node, holder: self.holder.clone(), db: self.db.clone(), fence: self.fence.clone(), _mark: mark }
    }

    /// How many nodes live locks of this process hold.
    pub fn held(&self) -> usize {
        self.held.count()
    }

    /// Clears the locks the database says this incarnation holds but no
    /// live [`NodeLock`] of it does; returns the nodes it cleared. A node
    /// is checked and cleared while it is marked as being reaped, so a
    /// section of this process that locks it meanwhile finds it busy and
    /// never has its fresh lock cleared.
    pub async fn reap_orphans(&self) -> Result<Vec<Uuid>, DbError> {
        let mut reaped = Vec::new();
        for node in self.db.nodes_reserved_by(&self.holder).await? {
            if self.fence.check().is_err() {
                break;
            }
            if !self.held.start_reap(node) {
                continue;
            }
            let released = self.db.release_node(node, &self.holder).await;
            self.held.end_reap(node);
            if released? {
                reaped.push(node);
            }
        }
        Ok(reaped)
    }
}

/// A held exclusive lock, taken through [`Locks`]. Release it with
/// [`NodeLock::release`] (or save-and-release); one dropped without a
/// release is reclaimed by [`Locks::reap_orphans`].
#[derive(Debug)]
pub struct NodeLock {
    pub node: Uuid,
    pub holder: LockHolder,
    db: Db,
    fence: Arc<Fence>,
    _mark: Mark,
}

impl NodeLock {
    /// Write the node, as long as this lock is still ours. A fenced
    /// incarnation writes nothing: to it every lock is lost (false).
    pub async fn save(&self, node: &Node) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.save_node_locked(node, &self.holder).await
    }

    /// [`NodeLock::save`], recording the API's `call` in the same
    /// transaction.
    pub async fn save_applying(&self, node: &Node, call: Option<&AppliedCall<'_>>) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.save_node_applying(node, &self.holder, call).await
    }

    /// [`NodeLock::save_applying`], deleting the allocation `allocation`
    /// in the same transaction (the node no longer names it).
    pub async fn save_dropping_allocation(
        &self,
        node: &Node,
        allocation: &str,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.save_node_dropping_allocation(node, &self.holder, allocation, call).await
    }

    /// Stores the allocation `a` for the node, saved as `node` (which names
    /// it), in one transaction (recording `call`), as long as this lock is
    /// ours.
    pub async fn backfill_allocation(
        &self,
        a: &ferric_common::model::Allocation,
        node: &Node,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.backfill_allocation(a, node, &self.holder, call).await
    }

    /// Delete the node (recording `call`), as long as this lock is ours.
    pub async fn delete(self, call: Option<&AppliedCall<'_>>) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.delete_node_locked(self.node, &self.holder, call).await
    }

    /// Write the node and release the lock atomically.
    pub async fn save_and_release(self, node: &Node) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.save_node_and_release(node, &self.holder).await
    }

    /// Release the lock (a fenced incarnation leaves it for the node's
    /// next owner, who clears it once our lease is gone).
    pub async fn release(self) -> Result<bool, DbError> {
        if self.fence.check().is_err() {
            return Ok(false);
        }
        self.db.release_node(self.node, &self.holder).await
    }
}

#[cfg(test)]
mod tests {
    use ferric_common::states::ProvisionState;

    use super::*;

    async fn db_with(n: usize) -> (Db, Vec<Uuid>) {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let settings = ferric_common::ring::RingSettings::default();
        let local = ferric_common::membership::LocalMembership::new(settings.clone());
        let membership = ferric_common::membership::Membership::Local(Arc::new(local));
        ferric_common::partitions::settle(&db, &membership, &settings).await.unwrap();
        let mut uuids = Vec::new();
        for _ in 0..n {
            let node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
            db.create_node(&node).await.unwrap();
            uuids.push(node.uuid);
        }
        (db, uuids)
    }

    fn unfenced() -> Arc<Fence> {
        Arc::new(Fence::new("c1".into(), "c1/one".into(), Duration::ZERO, Default::default()))
    }

    #[tokio::test]
    async fn a_fenced_incarnation_locks_saves_and_releases_nothing() {
        let (db, nodes) = db_with(2).await;
        let fence = unfenced();
        let locks = Locks::new(db.clone(), LockHolder::new("c1/one"), fence.clone());
        let (held, mut node) = locks.acquire(nodes[0], 1, Duration::ZERO).await.unwrap();
        fence.fence("test");
        assert!(matches!(locks.acquire(nodes[1], 1, Duration::ZERO).await, Err(LockError::Fenced(_))));
        assert!(matches!(locks.acquire_in_state(nodes[1], "available").await, Err(LockError::Fenced(_))));
        node.maintenance = true;
        assert!(!held.save(&node).await.unwrap(), "a fenced incarnation wrote a node");
        assert!(!db.get_node(nodes[0]).await.unwrap().maintenance);
        assert!(!held.release().await.unwrap());
        // the lock stays for whoever takes the node once our lease is gone
        assert_eq!(reservation(&db.get_node(nodes[0]).await.unwrap()), Some("c1/one"));
        assert_eq!(reservation(&db.get_node(nodes[1]).await.unwrap()), None);
        assert!(locks.reap_orphans().await.unwrap().is_empty(), "a fenced incarnation reaped");
    }

    #[tokio::test]
    async fn a_lease_past_its_deadline_fences_at_the_first_write_without_a_watchdog() {
        let (db, nodes) = db_with(1).await;
        let exit = tokio_util::sync::CancellationToken::new();
        let fence = Arc::new(Fence::new("c1".into(), "c1/one".into(), Duration::from_millis(100), exit.clone()));
        let (tx, rx) = tokio::sync::watch::channel(tokio::time::Instant::now() + Duration::from_secs(60));
        fence.watch_lease(rx);
        let locks = Locks::new(db.clone(), LockHolder::new("c1/one"), fence.clone());
        let (held, node) = locks.acquire(nodes[0], 1, Duration::ZERO).await.unwrap();
        assert!(held.save(&node).await.unwrap());
        // the last renewal etcd acknowledged is now too old; no watchdog runs
        tx.send_replace(tokio::time::Instant::now() + Duration::from_millis(50));
        assert!(!held.save(&node).await.unwrap(), "wrote after the lease deadline");
        assert!(fence.is_fenced() && exit.is_cancelled(), "the inline check fences the incarnation");
    }

    fn reservation(n: &Node) -> Option<&str> {
        n.reservation.as_deref()
    }

    #[tokio::test]
    async fn the_reaper_clears_only_locks_no_live_section_holds() {
        let (db, nodes) = db_with(3).await;
        let locks = Locks::new(db.clone(), LockHolder::new("c1/one"), unfenced());
        let (held, _) = locks.acquire(nodes[0], 1, Duration::ZERO).await.unwrap();
        let (dropped, _) = locks.acquire(nodes[1], 1, Duration::ZERO).await.unwrap();
        // another incarnation's lock is not ours to reap
        let other = Locks::new(db.clone(), LockHolder::new("c2/two"), unfenced());
        let (theirs, _) = other.acquire(nodes[2], 1, Duration::ZERO).await.unwrap();
        assert_eq!(locks.held(), 2);
        assert_eq!(locks.reap_orphans().await.unwrap(), Vec::<Uuid>::new(), "both sections are live");

        // a section that ends without a release (a failed save, a dropped
        // request future) leaves the lock in the database
        drop(dropped);
        assert_eq!(locks.held(), 1);
        assert_eq!(reservation(&db.get_node(nodes[1]).await.unwrap()), Some("c1/one"));
        assert_eq!(locks.reap_orphans().await.unwrap(), vec![nodes[1]]);
        assert_eq!(reservation(&db.get_node(nodes[1]).await.unwrap()), None);
        assert_eq!(reservation(&db.get_node(nodes[0]).await.unwrap()), Some("c1/one"), "a live lock was cleared");
        assert_eq!(reservation(&db.get_node(nodes[2]).await.unwrap()), Some("c2/two"));
        // and the node can be locked again
        let (again, _) = locks.acquire(nodes[1], 1, Duration::ZERO).await.unwrap();
        assert!(again.release().await.unwrap());
        assert!(held.release().await.unwrap());
        assert!(theirs.release().await.unwrap());
        assert_eq!(locks.held(), 0);
        assert!(locks.reap_orphans().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_node_being_reaped_is_busy_and_a_lock_in_acquisition_is_not_reaped() {
        let (db, nodes) = db_with(1).await;
        let locks = Locks::new(db.clone(), LockHolder::new("c1/one"), unfenced());
        assert!(locks.held.start_reap(nodes[0]));
        match locks.acquire(nodes[0], 2, Duration::from_millis(1)).await {
            Err(LockError::Busy { holder, .. }) => assert_eq!(holder, "c1/one"),
            other => panic!("a node being reaped was locked: {other:?}"),
        }
        assert!(matches!(locks.acquire_in_state(nodes[0], "available").await, Err(LockError::Busy { .. })));
        locks.held.end_reap(nodes[0]);
        // marked before the UPDATE: an acquisition in flight is never reaped
        let mark = locks.held.mark(nodes[0]).unwrap();
        assert!(!locks.held.start_reap(nodes[0]));
        drop(mark);
        assert!(locks.held.start_reap(nodes[0]));
        locks.held.end_reap(nodes[0]);
        let (lock, n) = locks.acquire(nodes[0], 1, Duration::ZERO).await.unwrap();
        assert_eq!(reservation(&n), Some("c1/one"));
        assert!(lock.release().await.unwrap());
    }
}
