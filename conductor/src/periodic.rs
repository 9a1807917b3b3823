//! Periodic work, for the nodes this conductor owns only (read through the
//! `ring_partition` index, so a lost node drops out by itself):
//!
//! * **callback timeouts**: a node waiting for its ramdisk (`wait call-back`,
//!   `clean wait`, ...) past the deadline recorded in its operation (wall
//!   clock, in the database, so a new owner keeps it) fails with a clear
//!   `last_error`;
//! * **power sync**: a node in a stable state whose BMC reports another
//!   power state than the database gets the database corrected.
//!
//! * **helper image expiry**: parameters floppies in the HTTP root past
//!   `deploy_helper_images_ttl` are deleted (Swift expires them itself).
//!
//! Busy nodes (locked) and nodes in maintenance are left alone.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferric_deploy::driver::Task;
use tracing::{info, warn};

use crate::Inner;
use crate::lock::NodeLock;
use crate::operation::{self, OperationRecord};

/// BMC reads are bounded; a BMC that does not answer is skipped this round.
const BMC_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(inner: Arc<Inner>) {
    let secs = inner.cfg.conductor.periodic_interval_secs;
    if secs == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
        pass(&inner).await;
        match inner.media.artefacts.expire().await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "expired helper images removed"),
            Err(e) => warn!("helper image expiry: {e}"),
        }
    }
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
    let (mut synced, mut timed_out) = (0, 0);
    for node in nodes {
        if inner.cancel.is_cancelled() || node.reservation.is_some() || node.maintenance {
            continue;
        }
        if node.provision_state.is_wait() {
            let expired = OperationRecord::load(&node).and_then(|r| r.wait_deadline).is_some_and(|d| d < Utc::now());
            if expired
                && let Ok((lock, mut n)) =
                    NodeLock::acquire(&inner.db, node.uuid, &inner.incarnation, 1, inner.lock_interval()).await
            {
                if n.provision_state.is_wait() && inner.owns(&n) {
                    let msg = format!("Timeout reached while waiting for callback for node {}", n.uuid);
                    operation::fail(inner, &mut n, &msg).await;
                    if lock.save_and_release(&n).await.unwrap_or(false) {
                        timed_out += 1;
                    }
                } else {
                    let _ = lock.release().await;
                }
            }
            continue;
        }
        if !node.provision_state.is_stable() {
            continue;
        }
        let Ok(driver) = inner.registry.driver_for(&node) else { continue };
        let task =
            Task { node: node.clone(), ports: Vec::new(), conductor_id: inner.id.clone(), media: inner.media.clone() };
        let actual = match tokio::time::timeout(BMC_TIMEOUT, driver.power.get_power_state(&task)).await {
            Ok(Ok(s)) => s.as_str().to_string(),
            Ok(Err(e)) => {
                warn!(node = %node.uuid, "power sync: {e}");
                continue;
            }
            Err(_) => {
                warn!(node = %node.uuid, "power sync: the BMC did not answer within {BMC_TIMEOUT:?}");
                continue;
            }
        };
        if node.power_state.as_deref() == Some(actual.as_str()) {
            continue;
        }
        if let Ok((lock, mut n)) =
            NodeLock::acquire(&inner.db, node.uuid, &inner.incarnation, 1, inner.lock_interval()).await
        {
            if inner.owns(&n) && n.target_power_state.is_none() {
                info!(node = %n.uuid, db = ?n.power_state, bmc = %actual, "power sync: correcting the recorded power state");
                n.power_state = Some(actual.clone());
                if lock.save(&n).await.unwrap_or(false) {
                    inner.history(n.uuid, "power_sync", &actual).await;
                    synced += 1;
                }
            }
            let _ = lock.release().await;
        }
    }
    (synced, timed_out)
}
