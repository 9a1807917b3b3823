//! Periodic work, for the nodes this conductor owns only (read through the
//! `ring_partition` index, so a lost node drops out by itself):
//!
//! * **callback timeouts**: a node waiting for its ramdisk (`wait call-back`,
//!   `clean wait`, ...) past the deadline recorded in its operation (wall
//!   clock, in the database, so a new owner keeps it) fails with a clear
//!   `last_error`;
//! * **power sync**: a node in a stable state whose BMC reports another
//!   power state than the database gets the database corrected — BMCs read
//!   `power_sync_workers` at a time, each read bounded, and the answer
//!   written only if the node did not change since it was listed
//!   ([`power_to_record`]: a power action's word is newer than the read).
//!
//! * **helper image expiry**: parameters floppies in the HTTP root past
//!   `deploy_helper_images_ttl` are deleted (Swift expires them itself);
//! * **lost-node clean-up** (HTTP root only, which is this conductor's
//!   own): floppies and boot ISO uses of nodes that were deleted, or whose
//!   `conductor_affinity` names another live conductor (its take-over
//!   rebuilt them in its own root and re-pointed the BMC), are dropped, and
//!   an ISO whose last user went with them is deleted. Never while this
//!   conductor is fenced, draining or missing from its own view of the
//!   ring, and never merely because the ring moved a node: until the new
//!   owner took it over, the node may be booting from these files. Never
//!   for Swift: its container is shared, and a node owned elsewhere still
//!   uses the same objects.
//!
//! * **network-boot files** of such nodes (PXE/iPXE kernels, ramdisks and
//!   per-MAC configs in this conductor's TFTP and HTTP roots), by the same
//!   rule (`crate::netboot`).
//!
//! * **history retention**: entries beyond the newest
//!   `node_history_max_entries` of each node, and those of deleted nodes,
//!   are deleted every `node_history_cleanup_interval_secs` by one
//!   conductor (the active member with the smallest id in this one's view;
//!   two doing it at once delete the same rows), and with them the records
//!   of applied API calls older than `applied_call_retention_secs`.
//!
//! Busy nodes (locked) and nodes in maintenance are left alone.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use ferric_common::ids::ConductorId;
use ferric_common::model::Node;
use tracing::{Instrument as _, info, warn};

use crate::Inner;
use crate::operation::{self, OperationRecord};

/// BMC reads are bounded; a BMC that does not answer is skipped this round.
const BMC_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(inner: Arc<Inner>) {
    let secs = inner.cfg.conductor.periodic_interval_secs;
    if secs == 0 {
        return;
    }
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
        pass(&inner).await;
        let every = Duration::from_secs(inner.cfg.conductor.node_history_cleanup_interval_secs.max(1));
        if last_prune.is_none_or(|t| t.elapsed() >= every) && prunes_history(&inner) {
            last_prune = Some(tokio::time::Instant::now());
            prune_history(&inner).await;
        }
        match inner.media().artefacts.expire().await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "expired helper images removed"),
            Err(e) => warn!("helper image expiry: {e}"),
        }
        media_round(&inner).await;
        crate::netboot::reap_lost_nodes_files(&inner).await;
    }
}

/// Whether this conductor is the one that prunes the history: the active
/// member with the smallest id.
fn prunes_history(inner: &Inner) -> bool {
    let ring = inner.ring.borrow();
    ring.members().iter().filter(|m| m.state == ferric_common::ring::MemberState::Active).map(|m| m.id.as_str()).min()
        == Some(inner.id.as_str())
}

/// Batches of 1000, at most 100 per round, so one round cannot hold the
/// database for long; what is left goes next time.
async fn prune_history(inner: &Inner) {
    let keep = inner.cfg.conductor.node_history_max_entries;
    let mut removed = 0;
    for _ in 0..100 {
        if inner.cancel.is_cancelled() {
            break;
        }
        match inner.db.prune_history(keep, 1000).await {
            Ok(0) => break,
            Ok(n) => removed += n,
            Err(e) => {
                warn!("pruning node history: {e}");
                break;
            }
        }
    }
    if removed > 0 {
        info!(removed, keep, "node history pruned");
        metrics::counter!(ferric_common::metrics::NODE_HISTORY_PRUNED_TOTAL).increment(removed);
    }
    let before = Utc::now() - chrono::Duration::seconds(inner.cfg.conductor.applied_call_retention_secs as i64);
    let mut calls = 0;
    for _ in 0..100 {
        match inner.db.prune_applied_calls(before, 1000).await {
            Ok(0) => break,
            Ok(n) => calls += n,
            Err(e) => {
                warn!("pruning applied call records: {e}");
                break;
            }
        }
    }
    if calls > 0 {
        info!(removed = calls, "applied call records pruned");
    }
}

/// One listing of the publisher feeds the lost-node clean-up (HTTP root
/// only) and the media metrics; a second one only when something was
/// removed.
async fn media_round(inner: &Inner) {
    let inv = match inner.media().artefacts.inventory().await {
        Ok(inv) => inv,
        Err(e) => {
            warn!("listing published artefacts: {e}");
            return;
        }
    };
    let inv = if inner.media().publisher == "http" && reap_lost_nodes_artefacts(inner, &inv).await != (0, 0) {
        inner.media().artefacts.inventory().await.unwrap_or(inv)
    } else {
        inv
    };
    media_metrics(inner, &inv);
}

/// Gauges of what this conductor publishes and caches.
fn media_metrics(inner: &Inner, inv: &ferric_deploy::publish::artefacts::Inventory) {
    let publisher = inner.media().publisher;
    let s = inner.media().images.stats();
    metrics::gauge!(ferric_common::metrics::IMAGE_CACHE_BYTES).set(s.bytes as f64);
    metrics::gauge!(ferric_common::metrics::IMAGE_CACHE_IMAGES).set(s.images as f64);
    metrics::counter!(ferric_common::metrics::IMAGE_CACHE_HITS_TOTAL).absolute(s.hits);
    metrics::counter!(ferric_common::metrics::IMAGE_CACHE_DOWNLOADS_TOTAL).absolute(s.downloads);
    metrics::counter!(ferric_common::metrics::IMAGE_CACHE_EVICTIONS_TOTAL).absolute(s.evictions);
    metrics::gauge!(ferric_common::metrics::BOOT_ISOS_PUBLISHED, "publisher" => publisher)
        .set(inv.boot_isos.len() as f64);
    metrics::gauge!(ferric_common::metrics::FLOPPIES_PUBLISHED, "publisher" => publisher)
        .set(inv.floppies.len() as f64);
}

/// Whether this conductor's artefacts of `node` are no longer needed: the
/// node is gone, or its `conductor_affinity` names another conductor that
/// is a live ring member — whose take-over rebuilt them in its own root and
/// re-pointed the BMC. Not merely "the ring gives the node to someone
/// else": until the new owner has taken it over, the node may be booting
/// from these very files. A database error keeps them.
async fn moved_away(inner: &Inner, node: uuid::Uuid, live: &HashSet<ConductorId>) -> bool {
    match inner.db.get_node(node).await {
        // and never a node the ring gives to me, or one somebody holds:
        // my own take-over of it may be using these very files right now
        Ok(n) => {
            !inner.owns(&n)
                && n.reservation.is_none()
                && n.conductor_affinity.as_ref().is_some_and(|a| *a != inner.id && live.contains(a))
        }
        Err(ferric_common::db::DbError::NotFound) => true,
        Err(e) => {
            warn!(%node, "lost-node clean-up: reading the node failed: {e}");
            false
        }
    }
}

/// See the module doc; returns (floppies deleted, ISO uses released).
pub async fn reap_lost_nodes_artefacts(
    inner: &Inner,
    inv: &ferric_deploy::publish::artefacts::Inventory,
) -> (usize, usize) {
    // a fenced or draining conductor, or one that is not in the ring it
    // sees (a stale or empty view), decides nothing about other members
    if inner.fence.is_fenced() || inner.draining.load(Ordering::SeqCst) {
        return (0, 0);
    }
    let ring = inner.ring.borrow().clone();
    if !ring.members().iter().any(|m| m.id == inner.id && m.incarnation == inner.incarnation) {
        return (0, 0);
    }
    let live: HashSet<ConductorId> = ring.members().iter().map(|m| m.id.clone()).collect();
    let a = &inner.media().artefacts;
    let (mut floppies, mut uses) = (0, 0);
    for (name, node) in &inv.floppies {
        if moved_away(inner, *node, &live).await && a.remove_floppy(name).await.is_ok() {
            floppies += 1;
        }
    }
    for (iso, node) in &inv.uses {
        if moved_away(inner, *node, &live).await {
            match a.release_boot_iso(*node, iso).await {
                Ok(left) => {
                    uses += 1;
                    info!(%node, iso = %iso, left, "boot ISO use of a node now served by another conductor (or gone) dropped");
                }
                Err(e) => warn!(%node, "lost-node clean-up: {e}"),
            }
        }
    }
    (floppies, uses)
}

/// One round; returns (power states corrected, callbacks timed out).
pub async fn pass(inner: &Arc<Inner>) -> (usize, usize) {
    let nodes = match inner.my_nodes().await {
        Ok(n) => n,
        Err(e) => {
            warn!("periodic: listing my nodes failed: {e}");
            return (0, 0);
        }
    };
    let mut timed_out = 0;
    let mut to_sync = Vec::new();
    for node in nodes {
        if inner.cancel.is_cancelled() || node.reservation.is_some() || node.maintenance {
            continue;
        }
        if node.provision_state.is_wait() {
            if fail_expired_wait(inner, &node).await {
                timed_out += 1;
            }
        } else if node.provision_state.is_stable() {
            to_sync.push(node);
        }
    }
    let synced = sync_power(inner, to_sync).await;
    (synced, timed_out)
}

/// Whether a waiting node's ramdisk missed its callback deadline at `now`.
pub fn wait_expired(n: &Node, now: chrono::DateTime<Utc>) -> bool {
    n.provision_state.is_wait() && OperationRecord::load(n).and_then(|r| r.wait_deadline).is_some_and(|d| d < now)
}

/// Whether to fail a node for a missed callback: it was seen expired in
/// the listing, and — read again under the lock — it still waits in the
/// same state past its deadline (a heartbeat in between moved the
/// deadline, a callback ended the wait).
pub fn callback_timed_out(listed: &Node, locked: &Node, now: chrono::DateTime<Utc>) -> bool {
    wait_expired(listed, now) && locked.provision_state == listed.provision_state && wait_expired(locked, now)
}

/// What the power sync writes, if anything: `actual` (the BMC's word, read
/// outside the lock after `listed` was read) — unless, read again under
/// the lock, the node changed since the listing (a power action, or
/// anything else: its word is newer than the BMC read), or a power action
/// is pending.
pub fn power_to_record(listed: &Node, locked: &Node, actual: &str) -> Option<String> {
    let changed_since = locked.updated_at != listed.updated_at || locked.power_state != listed.power_state;
    (listed.power_state.as_deref() != Some(actual) && !changed_since && locked.target_power_state.is_none())
        .then(|| actual.to_string())
}

/// Fails a node whose ramdisk did not call back before its deadline.
async fn fail_expired_wait(inner: &Arc<Inner>, node: &Node) -> bool {
    if !wait_expired(node, Utc::now()) {
        return false;
    }
    let Ok((lock, mut n)) = inner.locks.acquire(node.uuid, 1, inner.lock_interval()).await else {
        return false;
    };
    if callback_timed_out(node, &n, Utc::now()) && inner.owns(&n) {
        let msg = format!("Timeout reached while waiting for callback for node {}", n.uuid);
        operation::fail(inner, &mut n, &msg).await;
        return lock.save_and_release(&n).await.unwrap_or(false);
    }
    let _ = lock.release().await;
    false
}

/// Reads the BMCs of `nodes` — at most `conductor.power_sync_workers` at
/// once, each within [`BMC_TIMEOUT`] — and corrects the recorded power
/// state where the BMC says otherwise. A fleet's round takes about
/// nodes / workers BMC answers, not the sum of them; a BMC that hangs
/// holds one worker for its timeout. Returns how many were corrected.
async fn sync_power(inner: &Arc<Inner>, nodes: Vec<Node>) -> usize {
    let workers = Arc::new(tokio::sync::Semaphore::new(inner.cfg.conductor.power_sync_workers.max(1)));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for node in nodes {
        if inner.cancel.is_cancelled() {
            break;
        }
        let Ok(permit) = workers.clone().acquire_owned().await else { break };
        let (inner, in_flight, peak) = (inner.clone(), in_flight.clone(), peak.clone());
        // a trace of its own per node and round: its BMC requests name the node
        let span = tracing::info_span!(parent: None, "power sync", node.uuid = %node.uuid);
        let read = async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let read = read_power(&inner, &node).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            match read {
                Some(actual) => correct_power(&inner, &node, actual).await,
                None => false,
            }
        };
        set.spawn(read.instrument(span));
    }
    let mut synced = 0;
    while let Some(r) = set.join_next().await {
        if let Ok(true) = r {
            synced += 1;
        }
    }
    // how many BMCs the round read at once (at most the workers)
    metrics::gauge!(ferric_common::metrics::POWER_SYNC_CONCURRENCY).set(peak.load(Ordering::SeqCst) as f64);
    synced
}

/// The power state the node's BMC reports, or `None` (logged) when it
/// did not answer.
async fn read_power(inner: &Inner, node: &Node) -> Option<String> {
    let driver = inner.registry.driver_for(node).ok()?;
    let task = inner.task(node.clone(), Vec::new());
    match tokio::time::timeout(BMC_TIMEOUT, driver.power.get_power_state(&task)).await {
        Ok(Ok(s)) => Some(s.as_str().to_string()),
        Ok(Err(e)) => {
            warn!(node = %node.uuid, "power sync: {e}");
            None
        }
        Err(_) => {
            warn!(node = %node.uuid, "power sync: the BMC did not answer within {BMC_TIMEOUT:?}");
            None
        }
    }
}

/// Records `actual` (read from the BMC outside the lock) unless the node
/// changed meanwhile.
async fn correct_power(inner: &Inner, node: &Node, actual: String) -> bool {
    if node.power_state.as_deref() == Some(actual.as_str()) {
        return false;
    }
    let Ok((lock, mut n)) = inner.locks.acquire(node.uuid, 1, inner.lock_interval()).await else {
        return false;
    };
    let mut synced = false;
    if let Some(actual) = power_to_record(node, &n, &actual).filter(|_| inner.owns(&n)) {
        info!(node = %n.uuid, db = ?n.power_state, bmc = %actual, "power sync: correcting the recorded power state");
        n.power_state = Some(actual.clone());
        if lock.save(&n).await.unwrap_or(false) {
            inner.history(n.uuid, "power_sync", &actual).await;
            synced = true;
        }
    }
    let _ = lock.release().await;
    synced
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use ferric_common::states::ProvisionState;
    use uuid::Uuid;

    use super::*;

    fn node(power: &str) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Active);
        n.power_state = Some(power.into());
        n.updated_at = Some(Utc::now() - Duration::seconds(60));
        n
    }

    #[test]
    fn the_power_sync_never_writes_over_a_newer_word() {
        // the BMC says off, the database on, nothing happened since: record it
        let listed = node("power on");
        assert_eq!(power_to_record(&listed, &listed.clone(), "power off").as_deref(), Some("power off"));
        // the BMC agrees: nothing to write
        assert_eq!(power_to_record(&listed, &listed.clone(), "power on"), None);
        // a power action is running: its outcome is the word that counts
        let mut pending = listed.clone();
        pending.target_power_state = Some("power off".into());
        assert_eq!(power_to_record(&listed, &pending, "power off"), None);
        // the race: the BMC read "off" (before a power-on landed); the power
        // action then finished and wrote "power on" — the same value the
        // listing had. Comparing power states alone (the old decision) wrote
        // the stale "off" over it.
        let mut newer = listed.clone();
        newer.updated_at = Some(Utc::now());
        assert_eq!(power_to_record(&listed, &newer, "power off"), None, "a stale BMC read overwrote a newer state");
        // and a change of the value itself
        let mut other = listed.clone();
        other.power_state = Some("power off".into());
        assert_eq!(power_to_record(&listed, &other, "power on"), None);
    }

    #[test]
    fn a_callback_deadline_is_read_again_under_the_lock() {
        let now = Utc::now();
        let waiting = |deadline: chrono::DateTime<Utc>| {
            let mut n = node("power on");
            n.provision_state = ProvisionState::DeployWait;
            let rec = serde_json::json!({"state": "deploying", "steps": [], "next": 0, "started_by": "c1",
                                         "wait_deadline": deadline});
            n.driver_internal_info.insert(crate::operation::RECORD_KEY.into(), rec);
            n
        };
        let expired = waiting(now - Duration::seconds(1));
        assert!(callback_timed_out(&expired, &expired.clone(), now));
        // a heartbeat between the listing and the lock moved the deadline
        assert!(!callback_timed_out(&expired, &waiting(now + Duration::seconds(600)), now));
        // the callback ended the wait
        let mut resumed = expired.clone();
        resumed.provision_state = ProvisionState::Deploying;
        assert!(!callback_timed_out(&expired, &resumed, now));
        // not expired when listed: nothing to do
        let fresh = waiting(now + Duration::seconds(5));
        assert!(!callback_timed_out(&fresh, &expired, now));
    }
}
