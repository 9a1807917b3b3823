//! Take-over: what a conductor does with the nodes the ring gives it.
//!
//! # Protocol
//!
//! A conductor runs a *pass* on every new ring epoch (start-up is the first)
//! and every `conductor.takeover_interval_ms` while work is left:
//!
//! 1. **My nodes** are read through the `ring_partition` index: for every
//!    (group, hardware type) I serve, the partitions the ring gives me.
//! 2. **Dead locks**: a node of mine locked by another incarnation has its
//!    lock cleared once that incarnation is confirmed dead by a
//!    linearizable read of its member key in etcd (the key lives as long
//!    as its lease; a stopping conductor revokes it only after its
//!    operations stopped) — never on the word of my own ring, which a
//!    stalled watch can leave without a member that just joined. Each node
//!    is cleared on its own (`WHERE reservation = <that holder>`), so a
//!    live member's lock is never touched.
//! 3. **Gained nodes** (owned by me, `conductor_affinity` ≠ me) are taken
//!    over in order of urgency — nodes waiting for a ramdisk callback first,
//!    then nodes with an operation in flight, then active/rescue nodes, then
//!    the rest — at most `conductor.takeover_concurrency` at a time:
//!    lock → (per [`policy`]) `boot.take_over` + `deploy.take_over` →
//!    `conductor_affinity = me` → unlock, or keep the lock and resume the
//!    operation at its recorded step. A node still locked by a live member
//!    (e.g. a draining conductor finishing a step) is retried next pass.
//!    A node moved to my group or hardware type by an update (`PATCH
//!    conductor_group` or `driver`, applied by its previous owner) is
//!    gained the same way, at the next periodic pass: the ring did not
//!    change, the node did.
//! 4. **Orphaned operations** (owned by me, affinity = me, `*ING`, unlocked:
//!    e.g. after a restart or a hand-off at a step boundary) resume.
//! 5. **Allocations** still `allocating` whose UUID the ring gives me
//!    (`Ring::any_owner`) and that no task of mine processes — their
//!    conductor died or left mid-way — are processed (see
//!    [`crate::allocation`]). Every pass, light or full: they are few and
//!    found through an index.
//!
//! A conductor killed in the middle of a take-over leaves the node either
//! locked by a dead incarnation (cleared in step 2 by the next owner) or
//! with the old affinity (so the next owner's step 3 does it again):
//! take-over hooks are idempotent (same inputs, same artefacts), so doing
//! one twice is harmless. Lost nodes need nothing here: periodic work only
//! ever iterates *my* partitions, and an operation checks ownership at
//! every step boundary and hands off when the ring moved its node.
//!
//! | provision state | the new owner |
//! |---|---|
//! | `wait call-back`, `clean wait`, `inspect wait`, `rescue wait`, `service wait`, `* hold` | take over (rebuild the ramdisk's boot artefacts, re-point the BMC); keep waiting, deadline unchanged |
//! | `deploying`, `cleaning`, `deleting`, `verifying`, `inspecting`, `adopting`, `rescuing`, `unrescuing`, `servicing` | take over, then resume at the recorded step |
//! | `active`, `rescue` | take over (boot ISO / instance boot config), nothing else |
//! | `enroll`, `manageable`, `available`, `* failed`, `error` | record affinity only: no artefacts exist |

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferric_common::db::NodeQuery;
use ferric_common::model::Node;
use ferric_common::states::ProvisionState;
use tokio::task::JoinSet;
use tracing::{info, warn};
use uuid::Uuid;

use ferric_common::ids::LockHolder;

use crate::Inner;
use crate::lock::LockError;

/// What the new owner of a node does, by provision state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Rebuild artefacts, re-point the BMC, then resume the operation.
    Resume,
    /// Rebuild artefacts and re-point the BMC.
    TakeOver,
    /// Nothing to rebuild: record the affinity.
    AffinityOnly,
}

pub fn policy(state: ProvisionState) -> Policy {
    if state.is_in_progress() {
        Policy::Resume
    } else if state.is_wait() || state.is_hold() || matches!(state, ProvisionState::Active | ProvisionState::Rescue) {
        Policy::TakeOver
    } else {
        Policy::AffinityOnly
    }
}

/// Lower is more urgent.
pub fn urgency(state: ProvisionState) -> u8 {
    if state.is_wait() || state.is_hold() {
        0
    } else if state.is_in_progress() {
        1
    } else if matches!(state, ProvisionState::Active | ProvisionState::Rescue) {
        2
    } else {
        3
    }
}

/// Which of my nodes to take over, in order.
pub fn plan(me: &str, mine: &[Node]) -> Vec<Uuid> {
    let mut gained: Vec<(u8, Uuid)> = mine
        .iter()
        .filter(|n| n.conductor_affinity.as_deref() != Some(me))
        .map(|n| (urgency(n.provision_state), n.uuid))
        .collect();
    gained.sort();
    gained.into_iter().map(|(_, u)| u).collect()
}

/// Take-over passes until shutdown. A **full pass** (every node the ring
/// gives me is read) runs at start-up, on every ring change, while the
/// previous full pass left work (a node busy or failing), and every
/// `conductor.takeover_full_interval_secs` as a safety net. In between, a
/// **light pass** every `conductor.takeover_interval_ms` looks only at what
/// needs doing, through indexes: my own orphaned locks, my nodes nobody
/// took over yet (no affinity: new, or moved to me), power actions lost
/// with their conductor, and my operations that lost their runner — so an
/// idle conductor reads what needs doing, not every node it owns.
pub async fn run(inner: Arc<Inner>) {
    let mut rx = inner.ring.clone();
    let interval = Duration::from_millis(inner.cfg.conductor.takeover_interval_ms);
    let full_every = Duration::from_secs(inner.cfg.conductor.takeover_full_interval_secs.max(1));
    let mut repaired = false;
    let mut full_due = true;
    let mut last_full = tokio::time::Instant::now();
    loop {
        rx.borrow_and_update();
        reap_own(&inner).await;
        if full_due || last_full.elapsed() >= full_every {
            last_full = tokio::time::Instant::now();
            full_due = full_pass(&inner).await.left_work;
        } else {
            light_pass(&inner).await;
        }
        if !repaired && !inner.cancel.is_cancelled() {
            repaired = repair_own(&inner).await.is_ok();
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                full_due = true;
            }
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// My own locks that no section of mine holds any more (a save lost to a
/// database outage, a request dropped mid-section) are cleared — also
/// while draining, which waits for my locks to go — and the passes (or the
/// nodes' next owners) resume their operations.
async fn reap_own(inner: &Arc<Inner>) {
    if inner.fence.is_cancelled() {
        return;
    }
    match inner.locks.reap_orphans().await {
        Ok(reaped) if !reaped.is_empty() => {
            metrics::counter!(ferric_common::metrics::ORPHANED_LOCKS_REAPED_TOTAL).increment(reaped.len() as u64);
            warn!(nodes = reaped.len(), first = %reaped[0], "cleared locks of mine that no running section held");
        }
        Ok(_) => {}
        Err(e) => warn!("checking my own locks failed: {e}"),
    }
}

/// What a full pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOutcome {
    pub taken_over: usize,
    /// Something could not be done now (a node busy or failing, no free
    /// worker, a lock holder that could not be checked): look again soon.
    pub left_work: bool,
}

/// Whether passes may decide anything now (not draining; a ring known to
/// be current: the nodes a stale ring gives me may not be mine).
fn may_decide(inner: &Inner) -> bool {
    if inner.draining.load(Ordering::Relaxed) || inner.fence.is_cancelled() {
        return false;
    }
    if !inner.ring_is_fresh() {
        metrics::counter!(ferric_common::metrics::TAKEOVER_PASSES_SKIPPED_TOTAL, "why" => "stale_ring").increment(1);
        return false;
    }
    true
}

/// A full pass over every node the ring gives me.
pub async fn full_pass(inner: &Arc<Inner>) -> PassOutcome {
    let mut out = PassOutcome::default();
    if !may_decide(inner) {
        // a draining conductor has nothing to take; a stale ring: soon again
        out.left_work = !inner.draining.load(Ordering::Relaxed);
        return out;
    }
    metrics::counter!(ferric_common::metrics::TAKEOVER_FULL_PASSES_TOTAL).increment(1);
    let mine = match inner.my_nodes().await {
        Ok(n) => n,
        Err(e) => {
            warn!("take-over: listing my nodes failed: {e}");
            out.left_work = true;
            return out;
        }
    };
    out.left_work |= clear_dead_locks(inner, &mine).await;
    // A node of mine that another live conductor holds may change under
    // this pass: one whose ring was a moment older may be taking it over
    // now, and saves its affinity after my listing showed me as its
    // conductor, so this pass would leave it with them. Look again soon.
    out.left_work |= mine.iter().any(|n| n.reservation.as_ref().is_some_and(|h| !h.is(&inner.incarnation)));
    metrics::gauge!(ferric_common::metrics::OWNED_NODES).set(mine.len() as f64);
    metrics::gauge!(ferric_common::metrics::OPERATIONS_IN_FLIGHT).set(inner.operations_in_flight() as f64);
    metrics::gauge!(ferric_common::metrics::LOCKS_HELD).set(inner.locks.held() as f64);
    let order = plan(&inner.id, &mine);
    let wanted = order.len();
    out.taken_over = take_over_all(inner, order).await;
    out.left_work |= out.taken_over < wanted;
    // power actions whose conductor stopped before they finished
    for n in mine.iter().filter(|n| n.target_power_state.is_some() && n.reservation.is_none()) {
        settle_lost_power_action(inner, n.uuid).await;
    }
    crate::allocation::pass(inner).await;
    // orphaned operations on nodes already mine
    for n in &mine {
        if n.conductor_affinity.as_deref() == Some(inner.id.as_str())
            && n.provision_state.is_in_progress()
            && n.reservation.is_none()
        {
            out.left_work |= !resume(inner, n.uuid, n.provision_state).await;
        }
    }
    out
}

/// The work a light pass looks for, found through indexes.
pub async fn light_pass(inner: &Arc<Inner>) {
    if !may_decide(inner) {
        return;
    }
    metrics::counter!(ferric_common::metrics::TAKEOVER_LIGHT_PASSES_TOTAL).increment(1);
    crate::allocation::pass(inner).await;
    let me = inner.ring.borrow().member(&inner.id).filter(|m| m.incarnation == inner.incarnation).cloned();
    let Some(me) = me else { return };
    let query = |q: NodeQuery| async move {
        match inner.db.list_nodes(&q).await {
            Ok(nodes) => nodes.into_iter().filter(|n| inner.owns(n)).collect::<Vec<Node>>(),
            Err(e) => {
                warn!("take-over: looking for work failed: {e}");
                Vec::new()
            }
        }
    };
    // my nodes nobody took over yet: new ones, or moved to me
    let mut fresh = Vec::new();
    for hw in &me.hardware_types {
        fresh.extend(
            query(NodeQuery {
                affinity: Some(None),
                conductor_group: Some(me.conductor_group.clone()),
                driver: Some(hw.clone()),
                unlocked: true,
                ..Default::default()
            })
            .await,
        );
    }
    if !fresh.is_empty() {
        take_over_all(inner, plan(&inner.id, &fresh)).await;
    }
    // power actions whose conductor stopped before they finished
    for n in query(NodeQuery { power_pending: true, unlocked: true, ..Default::default() }).await {
        settle_lost_power_action(inner, n.uuid).await;
    }
    // my operations that lost their runner
    let running: Vec<String> =
        ProvisionState::ALL.iter().filter(|s| s.is_in_progress()).map(|s| s.as_str().to_string()).collect();
    let orphans = query(NodeQuery {
        affinity: Some(Some(inner.id.to_string())),
        provision_states: Some(running),
        unlocked: true,
        ..Default::default()
    })
    .await;
    for n in orphans {
        resume(inner, n.uuid, n.provision_state).await;
    }
}

/// Takes over `order` (most urgent first), at most
/// `conductor.takeover_concurrency` at a time; returns how many were done.
async fn take_over_all(inner: &Arc<Inner>, order: Vec<Uuid>) -> usize {
    if order.is_empty() {
        return 0;
    }
    info!(nodes = order.len(), epoch = inner.epoch(), "taking over nodes");
    let limit = inner.cfg.conductor.takeover_concurrency.max(1);
    let mut taken = 0;
    let mut set = JoinSet::new();
    for uuid in order {
        if inner.cancel.is_cancelled() {
            break;
        }
        while set.len() >= limit {
            if let Some(Ok(true)) = set.join_next().await {
                taken += 1;
            }
        }
        let inner = inner.clone();
        set.spawn(async move { take_over_one(&inner, uuid).await });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(true) = r {
            taken += 1;
        }
    }
    taken
}

/// Clears the locks on my nodes whose holders are dead — each holder
/// confirmed dead by the membership's source of truth (a linearizable
/// read in etcd), not by my ring, which a stalled watch or a reconnect can
/// leave behind a member that joined; each node cleared on its own, only
/// while that holder still has it. A holder that cannot be checked keeps
/// its locks until the next pass (returns true: look again).
async fn clear_dead_locks(inner: &Arc<Inner>, mine: &[Node]) -> bool {
    let mut unsure = false;
    let mut verdict: HashMap<LockHolder, bool> = HashMap::new();
    for n in mine {
        let Some(holder) = n.reservation.as_ref() else { continue };
        if holder.is(&inner.incarnation) {
            continue; // mine: the own-lock reaper's business
        }
        let dead = match verdict.get(holder) {
            Some(d) => *d,
            None => {
                let d = match inner.membership.is_alive(&holder.incarnation()).await {
                    Ok(alive) => !alive,
                    Err(e) => {
                        warn!(holder = %holder, "could not check whether a lock holder lives: {e}; keeping its locks");
                        unsure = true;
                        false
                    }
                };
                verdict.insert(holder.clone(), d);
                d
            }
        };
        if !dead || inner.fence.is_cancelled() {
            continue;
        }
        match inner.db.release_node(n.uuid, holder).await {
            Ok(true) => {
                info!(node = %n.uuid, dead = %holder, "cleared the lock of a dead incarnation");
                metrics::counter!(ferric_common::metrics::DEAD_LOCKS_CLEARED_TOTAL).increment(1);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(node = %n.uuid, "clearing the lock of {holder} failed: {e}");
                unsure = true;
            }
        }
    }
    unsure
}

/// Nodes of mine (affinity = me already: a restart with the same id) whose
/// boot artefacts are no longer in my store — an HTTP root on a volume
/// that did not survive the restart — are taken over again: their media
/// are rebuilt (same bytes) and the BMC is written only where the URL
/// changed. A local check per node; no BMC is read for nodes whose
/// artefacts are all there.
async fn repair_own(inner: &Arc<Inner>) -> Result<usize, ()> {
    let mine = inner.my_nodes().await.map_err(|e| warn!("start-up repair: listing my nodes failed: {e}"))?;
    let mut todo = Vec::new();
    for n in mine {
        if n.conductor_affinity.as_deref() != Some(inner.id.as_str())
            || policy(n.provision_state) == Policy::AffinityOnly
        {
            continue;
        }
        let Ok(driver) = inner.registry.driver_for(&n) else { continue };
        let task = inner.task(n.clone(), Vec::new());
        match driver.boot.artefacts_present(&task).await {
            Ok(true) => {}
            Ok(false) => todo.push(n.uuid),
            Err(e) => warn!(node = %n.uuid, "start-up repair: checking the artefacts failed: {e}"),
        }
    }
    if todo.is_empty() {
        return Ok(0);
    }
    info!(nodes = todo.len(), "rebuilding the boot artefacts my store lost");
    let mut done = 0;
    for uuid in todo {
        if inner.cancel.is_cancelled() {
            break;
        }
        if take_over_one_as(inner, uuid, true).await {
            done += 1;
        }
    }
    Ok(done)
}

/// Take one node over; true if done (false: busy, gone, or failed — the
/// next pass tries again).
async fn take_over_one(inner: &Arc<Inner>, uuid: Uuid) -> bool {
    take_over_one_as(inner, uuid, false).await
}

/// `repair`: the node is mine already (start-up repair of lost artefacts);
/// its operation, if any, is resumed by the orphan pass.
async fn take_over_one_as(inner: &Arc<Inner>, uuid: Uuid, repair: bool) -> bool {
    let started = std::time::Instant::now();
    let (lock, mut node) = match inner.locks.acquire(uuid, 1, inner.lock_interval()).await {
        Ok(x) => x,
        Err(LockError::Busy { .. }) | Err(LockError::NotFound(_)) => return false,
        Err(e) => {
            warn!(node = %uuid, "take-over: locking failed: {e}");
            return false;
        }
    };
    let locked_at = std::time::Instant::now();
    let already_mine = node.conductor_affinity.as_deref() == Some(inner.id.as_str());
    if !inner.owns(&node) || already_mine != repair {
        let _ = lock.release().await;
        return false;
    }
    // A ring a moment behind (a member joined; our watch has not told us
    // yet) still gives us the node, and the joiner may have taken it over
    // already: taking it back would leave it with the wrong conductor until
    // the joiner's next full pass. Only a ring etcd calls current after our
    // lock may decide (the pass tries again once our watch caught up).
    if !repair && !inner.ring_current_since(locked_at).await {
        metrics::counter!(ferric_common::metrics::TAKEOVERS_TOTAL, "state" => node.provision_state.as_str(), "outcome" => "stale_ring")
            .increment(1);
        let _ = lock.release().await;
        return false;
    }
    let previous = node.conductor_affinity.clone().unwrap_or_default();
    let p = policy(node.provision_state);
    if p != Policy::AffinityOnly {
        let driver = match inner.registry.driver_for(&node) {
            Ok(d) => d,
            Err(e) => {
                warn!(node = %uuid, "take-over: {e}");
                let _ = lock.release().await;
                return false;
            }
        };
        let mut task = inner.task_with_ports(node.clone()).await;
        let hooks = async {
            driver.boot.take_over(&mut task).await?;
            driver.deploy.take_over(&driver, &mut task).await
        };
        let limit = inner.step_timeout();
        let res = tokio::select! {
            r = tokio::time::timeout(limit, hooks) => r.unwrap_or_else(|_| Err(ferric_deploy::driver::DriverError::Retryable(
                format!("it did not finish within {} s (conductor.step_timeout_secs)", limit.as_secs())
            ))),
            // fenced: stop at once, write nothing
            _ = inner.fence.cancelled() => return false,
        };
        if let Err(e) = res {
            // retryable or not, the node stays with its old affinity and the
            // next pass tries again; the error is on the node for operators
            warn!(node = %uuid, "take-over failed: {e}");
            task.node.last_error = Some(format!("Take-over by {} failed: {e}", inner.id));
            let _ = lock.save(&task.node).await;
            let _ = lock.release().await;
            inner.stats.takeovers_failed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(ferric_common::metrics::TAKEOVERS_TOTAL, "state" => node.provision_state.as_str(), "outcome" => "failed").increment(1);
            return false;
        }
        node = task.node;
    }
    node.conductor_affinity = Some(inner.id.clone());
    match lock.save(&node).await {
        Ok(true) => {}
        _ => return false,
    }
    let event = if repair { "repair" } else { "take_over" };
    inner.history(uuid, event, &format!("{} from {previous:?} ({p:?})", node.provision_state)).await;
    inner.stats.takeovers.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(ferric_common::metrics::TAKEOVERS_TOTAL, "state" => node.provision_state.as_str(), "outcome" => "ok")
        .increment(1);
    metrics::histogram!(ferric_common::metrics::TAKEOVER_SECONDS).record(started.elapsed().as_secs_f64());
    if p == Policy::Resume && !repair {
        match inner.operations.clone().try_acquire_owned() {
            Ok(permit) => {
                inner.spawn_operation(lock, node, permit);
            }
            // no free worker: leave it for the orphan pass
            Err(_) => {
                let _ = lock.release().await;
            }
        }
    } else {
        let _ = lock.release().await;
    }
    true
}

/// A power action holds the node's lock until it records its outcome, so
/// an unlocked node with a `target_power_state` is one whose action was
/// lost (its conductor was fenced, killed or restarted). Clear the target —
/// power sync then records what the BMC says — and say so in `last_error`.
async fn settle_lost_power_action(inner: &Arc<Inner>, uuid: Uuid) {
    let Ok((lock, mut node)) = inner.locks.acquire(uuid, 1, inner.lock_interval()).await else {
        return;
    };
    let Some(target) = node.target_power_state.take().filter(|_| inner.owns(&node)) else {
        let _ = lock.release().await;
        return;
    };
    warn!(node = %uuid, %target, "a power action was lost with the conductor that ran it");
    node.last_error = Some(format!(
        "The power action to '{target}' was lost: the conductor running it stopped (fenced, killed or restarted) \
         before it finished. The power state is what the BMC reports; retry the action if needed."
    ));
    match lock.save_and_release(&node).await {
        Ok(true) => inner.history(uuid, "power_lost", &target).await,
        Ok(false) => {}
        Err(e) => warn!(node = %uuid, "recording a lost power action: {e}"),
    }
}

/// Resumes an orphaned operation; false when it could not be now (its
/// task still runs, no free worker, the node is busy): a later pass does.
async fn resume(inner: &Arc<Inner>, uuid: Uuid, seen: ProvisionState) -> bool {
    if inner.is_running(uuid) {
        // "orphaned" in the database (its lock was cleared), but its task
        // here is alive: it stops by itself when its next save finds the
        // lock gone, and a later pass resumes it then
        return false;
    }
    let Ok(permit) = inner.operations.clone().try_acquire_owned() else {
        return false; // busy; a later pass picks it up
    };
    // `seen` is from the start of this pass: the operation may have been
    // resumed and even finished since, so lock only if it is still there
    let (lock, node) = match inner.locks.acquire_in_state(uuid, seen.as_str()).await {
        Ok(x) => x,
        Err(LockError::NotFound(_)) => return true,
        Err(LockError::Busy { .. }) => {
            // moved on (then nothing to do) or held: look at it again
            return inner.db.get_node(uuid).await.is_ok_and(|n| n.provision_state != seen);
        }
        Err(_) => return false,
    };
    if !node.provision_state.is_in_progress() || !inner.owns(&node) {
        let _ = lock.release().await;
        return true;
    }
    info!(node = %uuid, state = %node.provision_state, "resuming an orphaned operation");
    inner.spawn_operation(lock, node, permit);
    true
}

#[cfg(test)]
mod tests {
    use ferric_common::ids::ConductorId;

    use super::*;

    fn node(state: ProvisionState, affinity: Option<&str>) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", state);
        n.conductor_affinity = affinity.map(ConductorId::from);
        n
    }

    #[test]
    fn plan_orders_by_urgency_and_skips_mine() {
        let nodes = vec![
            node(ProvisionState::Available, Some("old")),
            node(ProvisionState::Active, Some("old")),
            node(ProvisionState::Deploying, None),
            node(ProvisionState::DeployWait, Some("old")),
            node(ProvisionState::Active, Some("me")),
            node(ProvisionState::CleanWait, Some("old")),
        ];
        let order = plan("me", &nodes);
        assert_eq!(order.len(), 5, "my own node is not taken over");
        let state = |u: &Uuid| nodes.iter().find(|n| n.uuid == *u).unwrap().provision_state;
        let states: Vec<ProvisionState> = order.iter().map(state).collect();
        assert!(states[..2].iter().all(|s| s.is_wait()), "{states:?}");
        assert_eq!(states[2], ProvisionState::Deploying);
        assert_eq!(states[3], ProvisionState::Active);
        assert_eq!(states[4], ProvisionState::Available);
    }

    #[test]
    fn policy_table_row_by_row() {
        use ProvisionState as S;
        for s in ProvisionState::ALL {
            let expected = match s {
                S::Verifying
                | S::Deploying
                | S::Deleting
                | S::Cleaning
                | S::Inspecting
                | S::Adopting
                | S::Rescuing
                | S::Unrescuing
                | S::Servicing => Policy::Resume,
                S::DeployWait
                | S::CleanWait
                | S::InspectWait
                | S::RescueWait
                | S::ServiceWait
                | S::DeployHold
                | S::CleanHold
                | S::ServiceHold
                | S::Active
                | S::Rescue => Policy::TakeOver,
                S::Enroll
                | S::Manageable
                | S::Available
                | S::Error
                | S::DeployFailed
                | S::CleanFailed
                | S::InspectFailed
                | S::AdoptFailed
                | S::RescueFailed
                | S::UnrescueFailed
                | S::ServiceFailed => Policy::AffinityOnly,
            };
            assert_eq!(policy(s), expected, "{s}");
        }
    }
}
