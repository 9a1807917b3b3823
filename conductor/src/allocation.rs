//! Allocations: picking a node for a request (Ironic's allocation API,
//! with which metalsmith reserves a node).
//!
//! # Protocol
//!
//! * An allocation that names no node belongs to the conductor the ring
//!   gives its UUID to ([`Ring::any_owner`]: any active member, whatever
//!   its group). The API sends the create there; that conductor stores it
//!   `allocating` and picks a node in the background. Every take-over pass
//!   also looks for the `allocating` allocations the ring gives it and
//!   picks for those it is not already picking for — so one whose
//!   conductor died mid-way is finished by the next owner of its UUID.
//! * Picking ([`candidates`], pure): the nodes of the allocation's resource
//!   class that are `available`, have no instance, a known power state, are
//!   not in maintenance, are among its candidate nodes (if it names any),
//!   are owned or leased by its owner (if it has one) and have every trait
//!   it asks for — in random order, so that allocations processed at once
//!   do not all try the same node first, except that a node named like the
//!   allocation comes first.
//! * Claiming ([`Db::claim_node`]): one transaction of two conditional
//!   UPDATEs — the node, only while it is still free and as it was read
//!   (nobody holds its lock, no instance, no allocation, unchanged in what
//!   the match looked at), takes the allocation's UUID as `instance_uuid`
//!   and `allocation_uuid`; the allocation, only while still `allocating`,
//!   turns `active` with the node. Both or neither: two allocations never
//!   get one node, and one allocation never gets two (a conductor that
//!   lost the allocation's UUID to another mid-way finds it no longer
//!   `allocating`). This is the one write a conductor makes to a node it
//!   may not own: it is conditional on nobody holding the node's lock, so
//!   it never lands inside the owner's locked section, and the owner reads
//!   the node under its lock afresh.
//! * A node that changed between the read and the claim is read again
//!   ([`suits`], pure): still suitable but locked by its owner — retried,
//!   like every such node, `conductor.lock_attempts` times
//!   `conductor.lock_retry_interval_ms` apart (Ironic's
//!   `node_locked_retry_*`); taken or no longer suitable — skipped.
//! * Nothing matches, or every retry found the nodes locked: the allocation
//!   turns `error` with Ironic's `last_error` (only while still
//!   `allocating`).
//!
//! The decisions ([`candidates`], [`suits`]) are plain functions over
//! plain data; [`process`] is the executor around them.

use std::collections::HashSet;
use std::sync::Arc;

use ferric_common::db::{AllocationQuery, ClaimOutcome, NodeQuery};
use ferric_common::model::{Allocation, AllocationState, Node};
use ferric_common::ring::Ring;
use ferric_common::states::ProvisionState;
use rand::Rng;
use rand::seq::SliceRandom;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Inner;

/// Why an allocation failed: Ironic's `last_error`.
pub fn failure(a: &Allocation, error: &str) -> String {
    format!("Failed to process allocation {}: {error}.", a.uuid)
}

fn resource_class(a: &Allocation) -> &str {
    a.resource_class.as_deref().unwrap_or_default()
}

/// Whether `node` may be given to `a`, traits aside (pure).
fn available_for(a: &Allocation, node: &Node) -> bool {
    node.provision_state == ProvisionState::Available
        && node.instance_uuid.is_none()
        && node.allocation_uuid.is_none()
        && node.power_state.is_some()
        && !node.maintenance
        && node.resource_class.as_deref().unwrap_or_default() == resource_class(a)
        && (a.candidate_nodes.is_empty() || a.candidate_nodes.contains(&node.uuid))
        && a.owner.as_ref().is_none_or(|o| node.owner.as_ref() == Some(o) || node.lessee.as_ref() == Some(o))
}

fn has_traits(a: &Allocation, node: &Node) -> bool {
    a.traits.iter().all(|t| node.traits.contains(t))
}

/// Whether `node` (as read now) may be given to `a` (pure); its lock is
/// not looked at.
pub fn suits(a: &Allocation, node: &Node) -> bool {
    available_for(a, node) && has_traits(a, node)
}

/// The nodes of `listed` that `a` may take, in the order to try them
/// (pure, but for `rng`): shuffled, a node named like the allocation
/// first. Or why none (Ironic's words).
pub fn candidates(a: &Allocation, listed: &[Node], rng: &mut impl Rng) -> Result<Vec<Uuid>, String> {
    let available: Vec<&Node> = listed.iter().filter(|n| available_for(a, n)).collect();
    if available.is_empty() {
        return Err(if a.candidate_nodes.is_empty() {
            format!("no available nodes match the resource class {}", resource_class(a))
        } else {
            format!("none of the requested nodes are available and match the resource class {}", resource_class(a))
        });
    }
    let mut suitable: Vec<&Node> = available.into_iter().filter(|n| has_traits(a, n)).collect();
    if suitable.is_empty() {
        return Err(format!("no suitable nodes have the requested traits {}", a.traits.join(", ")));
    }
    suitable.shuffle(rng);
    if let Some(name) = &a.name
        && let Some(i) = suitable.iter().position(|n| n.name.as_ref() == Some(name))
    {
        let named = suitable.remove(i);
        suitable.insert(0, named);
    }
    Ok(suitable.into_iter().map(|n| n.uuid).collect())
}

/// Whether this conductor processes the allocation `uuid` (pure).
pub fn is_mine(ring: &Ring, inner_id: &str, incarnation: &str, uuid: &Uuid) -> bool {
    ring.any_owner(uuid.as_bytes()).is_some_and(|m| m.id.as_str() == inner_id && m.incarnation.as_str() == incarnation)
}

/// The allocations being processed in this process, so a pass does not
/// start a second run of one the create started (or a previous pass).
#[derive(Debug, Default)]
pub struct Running(std::sync::Mutex<HashSet<Uuid>>);

/// Marks an allocation as processed here until dropped.
struct Mark {
    inner: Arc<Inner>,
    uuid: Uuid,
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.inner.allocations.0.lock().expect("running allocations").remove(&self.uuid);
    }
}

/// Starts processing `uuid` in the background, unless it already runs
/// here.
pub fn spawn(inner: &Arc<Inner>, uuid: Uuid) {
    if !inner.allocations.0.lock().expect("running allocations").insert(uuid) {
        return;
    }
    let mark = Mark { inner: inner.clone(), uuid };
    let inner = inner.clone();
    inner.clone().tasks.spawn(async move {
        let Ok(_worker) = inner.allocation_workers.clone().acquire_owned().await else { return };
        tokio::select! {
            _ = process(&inner, uuid) => {}
            _ = inner.fence.cancelled() => {}
            _ = inner.cancel.cancelled() => {}
        }
        drop(mark);
    });
}

/// The `allocating` allocations the ring gives this conductor: started
/// (a take-over pass calls it).
pub async fn pass(inner: &Arc<Inner>) {
    let q = AllocationQuery { state: Some(AllocationState::Allocating), ..Default::default() };
    let pending = match inner.db.list_allocations(&q).await {
        Ok(p) => p,
        Err(e) => {
            warn!("looking for allocations to process failed: {e}");
            return;
        }
    };
    let ring = inner.ring.borrow().clone();
    for a in pending {
        if is_mine(&ring, &inner.id, &inner.incarnation, &a.uuid) {
            spawn(inner, a.uuid);
        }
    }
}

/// Whether this conductor may go on with the allocation.
fn still_mine(inner: &Inner, uuid: &Uuid) -> bool {
    !inner.fence.is_fenced() && is_mine(&inner.ring.borrow(), &inner.id, &inner.incarnation, uuid)
}

/// Picks a node for the allocation and claims it, or fails the
/// allocation (see the module doc).
pub async fn process(inner: &Arc<Inner>, uuid: Uuid) {
    let attempts = inner.cfg.conductor.lock_attempts.max(1);
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(inner.lock_interval()).await;
        }
        if !still_mine(inner, &uuid) {
            return; // the allocation's new conductor goes on with it
        }
        let a = match inner.db.get_allocation(uuid).await {
            Ok(a) if a.state == AllocationState::Allocating => a,
            Ok(_) | Err(ferric_common::db::DbError::NotFound) => return,
            Err(e) => {
                warn!(allocation = %uuid, "reading the allocation failed: {e}");
                continue;
            }
        };
        let query = NodeQuery {
            provision_state: Some(ProvisionState::Available.as_str().into()),
            resource_class: a.resource_class.clone(),
            maintenance: Some(false),
            associated: Some(false),
            with_power_state: true,
            uuids: (!a.candidate_nodes.is_empty()).then(|| a.candidate_nodes.clone()),
            // an owned allocation takes only nodes its project owns or
            // leases, as Ironic's conductor filters them
            project: a.owner.clone(),
            ..Default::default()
        };
        let listed = match inner.db.list_nodes(&query).await {
            Ok(l) => l,
            Err(e) => {
                warn!(allocation = %uuid, "listing the nodes failed: {e}");
                continue;
            }
        };
        // the thread's generator is not held across an await
        let picked = candidates(&a, &listed, &mut rand::rng());
        let order = match picked {
            Ok(o) => o,
            Err(why) => return fail(inner, &a, &why).await,
        };
        let tried = order.len();
        let mut busy = 0;
        for node_uuid in order {
            let Some(mut node) = listed.iter().find(|n| n.uuid == node_uuid).cloned() else { continue };
            // a node that changed since it was listed is read again and
            // tried once more if it is still free
            for _ in 0..2 {
                match inner.db.claim_node(&a, &node).await {
                    Ok(ClaimOutcome::Claimed) => {
                        info!(allocation = %uuid, node = %node_uuid, "allocated a node");
                        inner.history(node_uuid, "allocation", &format!("allocated to {uuid}")).await;
                        return;
                    }
                    Ok(ClaimOutcome::AllocationGone) => return,
                    Ok(ClaimOutcome::NodeChanged) => match inner.db.get_node(node_uuid).await {
                        Ok(fresh) if suits(&a, &fresh) && fresh.reservation.is_some() => {
                            busy += 1;
                            break;
                        }
                        Ok(fresh) if suits(&a, &fresh) => node = fresh,
                        _ => break,
                    },
                    Err(e) => {
                        warn!(allocation = %uuid, node = %node_uuid, "claiming the node failed: {e}");
                        busy += 1;
                        break;
                    }
                }
            }
        }
        if busy == 0 {
            return fail(inner, &a, "all nodes were filtered out during reservation").await;
        }
        if attempt + 1 == attempts {
            return fail(inner, &a, &format!("could not reserve any of {tried} suitable nodes")).await;
        }
    }
}

async fn fail(inner: &Inner, a: &Allocation, why: &str) {
    if !still_mine(inner, &a.uuid) {
        return;
    }
    let message = failure(a, why);
    match inner.db.fail_allocation(a.uuid, &message).await {
        Ok(true) => info!(allocation = %a.uuid, "{message}"),
        Ok(false) => {}
        Err(e) => warn!(allocation = %a.uuid, "recording the allocation's failure failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn node(name: &str, rc: &str) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
        n.name = Some(name.into());
        n.resource_class = Some(rc.into());
        n.power_state = Some("power off".into());
        n
    }

    fn alloc(rc: &str) -> Allocation {
        Allocation::new(Uuid::new_v4(), Some(rc.into()))
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn a_node_suits_row_by_row() {
        let a = alloc("gold");
        let ok = node("n", "gold");
        assert!(suits(&a, &ok));
        let mut cases: Vec<(&str, Node)> = Vec::new();
        let mut n = ok.clone();
        n.provision_state = ProvisionState::Manageable;
        cases.push(("not available", n));
        let mut n = ok.clone();
        n.instance_uuid = Some(Uuid::new_v4().to_string());
        cases.push(("has an instance", n));
        let mut n = ok.clone();
        n.allocation_uuid = Some(Uuid::new_v4().to_string());
        cases.push(("has an allocation", n));
        let mut n = ok.clone();
        n.power_state = None;
        cases.push(("power state unknown", n));
        let mut n = ok.clone();
        n.maintenance = true;
        cases.push(("in maintenance", n));
        cases.push(("another resource class", node("n", "silver")));
        for (why, n) in cases {
            assert!(!suits(&a, &n), "{why}");
        }
        // traits: the node's must include the requested ones
        let mut a = alloc("gold");
        a.traits = vec!["CUSTOM_A".into(), "HW_CPU_X86_VMX".into()];
        let mut n = ok.clone();
        n.traits = vec!["CUSTOM_A".into()];
        assert!(!suits(&a, &n));
        n.traits.push("HW_CPU_X86_VMX".into());
        n.traits.push("CUSTOM_MORE".into());
        assert!(suits(&a, &n));
        // candidates and owner
        let mut a = alloc("gold");
        a.candidate_nodes = vec![Uuid::new_v4()];
        assert!(!suits(&a, &ok));
        a.candidate_nodes.push(ok.uuid);
        assert!(suits(&a, &ok));
        let mut a = alloc("gold");
        a.owner = Some("p1".into());
        assert!(!suits(&a, &ok));
        let mut leased = ok.clone();
        leased.lessee = Some("p1".into());
        assert!(suits(&a, &leased));
        let mut owned = ok.clone();
        owned.owner = Some("p1".into());
        assert!(suits(&a, &owned));
    }

    #[test]
    fn candidates_say_why_none_match() {
        let nodes = vec![node("a", "gold"), node("b", "gold")];
        let e = candidates(&alloc("silver"), &nodes, &mut rng()).unwrap_err();
        assert_eq!(e, "no available nodes match the resource class silver");
        let mut a = alloc("silver");
        a.candidate_nodes = vec![nodes[0].uuid];
        let e = candidates(&a, &nodes, &mut rng()).unwrap_err();
        assert_eq!(e, "none of the requested nodes are available and match the resource class silver");
        let mut a = alloc("gold");
        a.traits = vec!["CUSTOM_GPU".into()];
        let e = candidates(&a, &nodes, &mut rng()).unwrap_err();
        assert_eq!(e, "no suitable nodes have the requested traits CUSTOM_GPU");
        assert_eq!(
            failure(&a, &e),
            format!("Failed to process allocation {}: no suitable nodes have the requested traits CUSTOM_GPU.", a.uuid)
        );
    }

    #[test]
    fn candidates_are_shuffled_the_namesake_first() {
        let nodes: Vec<Node> = (0..20).map(|i| node(&format!("n{i}"), "gold")).collect();
        let a = alloc("gold");
        let mut seen_first = HashSet::new();
        for seed in 0..20 {
            let order = candidates(&a, &nodes, &mut rand::rngs::StdRng::seed_from_u64(seed)).unwrap();
            let mut sorted = order.clone();
            sorted.sort();
            let mut all: Vec<Uuid> = nodes.iter().map(|n| n.uuid).collect();
            all.sort();
            assert_eq!(sorted, all, "every suitable node is tried once");
            seen_first.insert(order[0]);
        }
        assert!(seen_first.len() > 5, "allocations at once would all try the same node first");
        let mut named = alloc("gold");
        named.name = Some("n13".into());
        for seed in 0..5 {
            let order = candidates(&named, &nodes, &mut rand::rngs::StdRng::seed_from_u64(seed)).unwrap();
            assert_eq!(order[0], nodes[13].uuid, "a node named like the allocation comes first");
        }
        // unsuitable nodes are never tried
        let mut mixed = nodes.clone();
        mixed[3].maintenance = true;
        let order = candidates(&a, &mixed, &mut rng()).unwrap();
        assert_eq!(order.len(), 19);
        assert!(!order.contains(&mixed[3].uuid));
    }
}
