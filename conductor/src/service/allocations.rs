//! Allocations (`POST`/`DELETE /v1/allocations`): stored by the conductor
//! the ring gives the allocation's UUID to, which picks a node in the
//! background ([`crate::allocation`]); a backfill (an allocation for a
//! deployed node) and the deletion of an allocation that holds a node are
//! made by the node's owner, under the node's lock, node and allocation in
//! one transaction.
//!
//! The decisions are pure and tested: [`backfill_refusal`] (may this
//! deployed node take this allocation) and [`release_refusal`] (may this
//! node's allocation go now).

use ferric_common::model::{Allocation, AllocationState};

use super::*;
use crate::allocation;

/// States in which a node's instance may be removed while it has an
/// allocation (Ironic's `allowed_update_states` of `update_node`).
pub const INSTANCE_REMOVAL_ALLOWED: [ProvisionState; 5] = [
    ProvisionState::Enroll,
    ProvisionState::Inspecting,
    ProvisionState::InspectWait,
    ProvisionState::Manageable,
    ProvisionState::Available,
];

/// Why `node` cannot take the allocation `a` it is backfilled with, as
/// Ironic words it (pure); `None` when it can.
pub fn backfill_refusal(a: &Allocation, node: &Node) -> Option<(Reason, String)> {
    if let Some(inst) = node.instance_uuid.as_deref().filter(|i| *i != a.uuid.to_string()) {
        return Some((Reason::Conflict, format!("Node {} is associated with instance {inst}.", node.uuid)));
    }
    if let Some(other) = &node.allocation_uuid {
        return Some((Reason::Conflict, format!("Node {} is associated with allocation {other}.", node.uuid)));
    }
    let mut errors = Vec::new();
    if node.provision_state != ProvisionState::Active {
        errors.push(format!(
            "Node must be in the \"active\" state, but the current state is \"{}\"",
            node.provision_state
        ));
    }
    if let Some(rc) = &a.resource_class
        && node.resource_class.as_ref() != Some(rc)
    {
        errors.push(format!(
            "Resource class {} does not match the requested resource class {rc}",
            node.resource_class.as_deref().unwrap_or("None")
        ));
    }
    if !a.traits.iter().all(|t| node.traits.contains(t)) {
        errors.push(format!("List of traits {:?} does not match the requested traits {:?}", node.traits, a.traits));
    }
    if !a.candidate_nodes.is_empty() && !a.candidate_nodes.contains(&node.uuid) {
        errors.push(format!(
            "Candidate nodes must be empty or contain the target node, but got {:?}",
            a.candidate_nodes.iter().map(|u| u.to_string()).collect::<Vec<_>>()
        ));
    }
    if errors.is_empty() {
        return None;
    }
    Some((Reason::Invalid, format!("Cannot backfill an allocation for node {}: {}", node.uuid, errors.join("; "))))
}

/// Why the allocation `uuid` of `node` may not be deleted now (pure):
/// a node running its instance, or in a transition that forbids updates,
/// keeps it unless in maintenance (Ironic's
/// `verify_node_for_deallocation`).
pub fn release_refusal(uuid: &str, node: &Node) -> Option<String> {
    if node.maintenance {
        return None;
    }
    if node.target_provision_state.is_some() && !UPDATE_ALLOWED_IN_TRANSITION.contains(&node.provision_state) {
        return Some(format!(
            "Cannot remove allocation {uuid} for node {}, because the node is in state {} where updates are not \
             allowed (and maintenance mode is off)",
            node.uuid, node.provision_state
        ));
    }
    if node.provision_state == ProvisionState::Active {
        return Some(format!(
            "Cannot remove allocation {uuid} for node {}, because the node is active (and maintenance mode is off)",
            node.uuid
        ));
    }
    None
}

/// What a node update does to the node's instance and allocation (pure):
/// an instance is never overwritten by another (Ironic's `NodeAssociated`),
/// and an instance removed from a node with an allocation takes the
/// allocation with it (`Ok(true)`) — only in the states of
/// [`INSTANCE_REMOVAL_ALLOWED`] or in maintenance.
pub fn instance_change(node: &Node, wanted: &Node) -> Result<bool, String> {
    if wanted.instance_uuid == node.instance_uuid {
        return Ok(false);
    }
    if let (Some(inst), Some(_)) = (&node.instance_uuid, &wanted.instance_uuid) {
        return Err(format!("Node {} is associated with instance {inst}.", node.uuid));
    }
    if wanted.instance_uuid.is_some() || node.allocation_uuid.is_none() {
        return Ok(false);
    }
    if !node.maintenance && !INSTANCE_REMOVAL_ALLOWED.contains(&node.provision_state) {
        let allowed: Vec<&str> = INSTANCE_REMOVAL_ALLOWED.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "Node {} with an allocation can not have instance_uuid removed unless it is in one of allowed ({}) \
             states or in maintenance mode.",
            node.uuid,
            allowed.join(", ")
        ));
    }
    Ok(true)
}

fn allocation_duplicate(field: &str, a: &Allocation) -> String {
    match field {
        "name" => format!("An allocation with name {} already exists.", a.name.clone().unwrap_or_default()),
        "instance_uuid" => format!(
            "Instance {} is already associated with a node, it cannot be associated with this other node {}",
            a.uuid,
            a.node_uuid.map(|u| u.to_string()).unwrap_or_default()
        ),
        _ => format!("An allocation with UUID {} already exists.", a.uuid),
    }
}

impl ConductorService {
    async fn allocation_reply(&self, uuid: Uuid) -> Rpc<AllocationReply> {
        let a = self.inner.db.get_allocation(uuid).await.map_err(|e| match e {
            DbError::NotFound => self.err(Reason::NotFound, format!("Allocation {uuid} could not be found.")),
            e => self.db_err(e),
        })?;
        Ok(Response::new(AllocationReply {
            allocation_json: serde_json::to_string(&a).expect("allocations serialise"),
        }))
    }

    pub(super) async fn create_allocation_rpc(&self, req: Request<AllocationRequest>) -> Rpc<AllocationReply> {
        let call = call_id(&req);
        let r = req.into_inner();
        let a: Allocation = serde_json::from_str(&r.allocation_json)
            .map_err(|e| self.err(Reason::Invalid, format!("allocation document: {e}")))?;
        let uuid = a.uuid;
        if self.already_applied(&call).await? {
            return self.allocation_reply(uuid).await;
        }
        let res = match a.node_uuid {
            Some(node) => self.backfill(r.epoch, a, node, &call).await,
            None => self.create_allocation(r.epoch, a, &call).await,
        };
        self.unless_applied(res, &call, || self.allocation_reply(uuid)).await
    }

    /// Stores a new allocation and starts picking its node.
    async fn create_allocation(&self, epoch: u64, mut a: Allocation, call: &Option<String>) -> Rpc<AllocationReply> {
        if let Err(why) = self.inner.catch_up(epoch).await {
            return Err(self.err(Reason::Unavailable, why));
        }
        let ring = self.inner.ring.borrow().clone();
        if self.inner.fence.is_fenced() || !allocation::is_mine(&ring, &self.inner.id, &self.inner.incarnation, &a.uuid)
        {
            return Err(self
                .err(Reason::NotOwner, format!("conductor {} does not process allocation {}", self.inner.id, a.uuid)));
        }
        a.state = AllocationState::Allocating;
        a.last_error = None;
        a.created_at = Utc::now();
        a.updated_at = None;
        match self.inner.db.create_allocation(&a, self.applied(call, a.uuid, "allocation").as_ref()).await {
            Ok(()) => {}
            Err(DbError::Duplicate { field }) => {
                return Err(self.err(Reason::Conflict, allocation_duplicate(field, &a)));
            }
            Err(e) => return Err(self.db_err(e)),
        }
        info!(allocation = %a.uuid, resource_class = ?a.resource_class, "allocation created");
        let reply = self.allocation_reply(a.uuid).await;
        allocation::spawn(&self.inner, a.uuid);
        reply
    }

    /// Ties a new allocation to a node already deployed (backfill), under
    /// the node's lock.
    async fn backfill(&self, epoch: u64, mut a: Allocation, node: Uuid, call: &Option<String>) -> Rpc<AllocationReply> {
        let node = self.load_owned(&node.to_string(), epoch).await?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return self.allocation_reply(a.uuid).await;
        };
        let res = async {
            if let Some((reason, message)) = backfill_refusal(&a, &node) {
                return Err(self.err(reason, message));
            }
            a.state = AllocationState::Active;
            a.node_uuid = Some(node.uuid);
            a.last_error = None;
            a.created_at = Utc::now();
            a.updated_at = None;
            node.instance_uuid = Some(a.uuid.to_string());
            node.allocation_uuid = Some(a.uuid.to_string());
            let applied = self.applied(call, node.uuid, "allocation");
            match lock.backfill_allocation(&a, &node, applied.as_ref()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
                Err(DbError::Duplicate { field }) => Err(self.err(Reason::Conflict, allocation_duplicate(field, &a))),
                Err(e) => Err(self.db_err(e)),
            }
        }
        .await;
        Self::give_back(lock).await;
        res?;
        info!(allocation = %a.uuid, node = %node.uuid, "allocation backfilled");
        self.allocation_reply(a.uuid).await
    }

    pub(super) async fn destroy_allocation_rpc(&self, req: Request<AllocationRef>) -> Rpc<Empty> {
        let call = call_id(&req);
        let r = req.into_inner();
        if self.already_applied(&call).await? {
            return Ok(Response::new(Empty {}));
        }
        let res = self.destroy_allocation(&r, &call).await;
        self.unless_applied(res, &call, || async { Ok(Response::new(Empty {})) }).await
    }

    async fn destroy_allocation(&self, r: &AllocationRef, call: &Option<String>) -> Rpc<Empty> {
        let uuid = self.parse_uuid(&r.allocation_uuid)?;
        let not_found = || self.err(Reason::NotFound, format!("Allocation {uuid} could not be found."));
        if r.node_uuid.is_empty() {
            if let Err(why) = self.inner.catch_up(r.epoch).await {
                return Err(self.err(Reason::Unavailable, why));
            }
            return match self
                .inner
                .db
                .delete_free_allocation(uuid, self.applied(call, uuid, "allocation").as_ref())
                .await
            {
                Ok(true) => {
                    info!(allocation = %uuid, "allocation deleted");
                    Ok(Response::new(Empty {}))
                }
                Ok(false) => match self.inner.db.get_allocation(uuid).await {
                    Ok(a) => Err(self.err(
                        Reason::Conflict,
                        format!(
                            "Allocation {uuid} was given node {} while it was being deleted; delete it again.",
                            a.node_uuid.map(|u| u.to_string()).unwrap_or_default()
                        ),
                    )),
                    Err(DbError::NotFound) => Err(not_found()),
                    Err(e) => Err(self.db_err(e)),
                },
                Err(e) => Err(self.db_err(e)),
            };
        }
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(Empty {}));
        };
        let res = async {
            if node.allocation_uuid.as_deref() != Some(r.allocation_uuid.as_str()) {
                return Err(not_found());
            }
            if let Some(why) = release_refusal(&r.allocation_uuid, &node) {
                return Err(self.err(Reason::Conflict, why));
            }
            node.allocation_uuid = None;
            node.instance_uuid = None;
            let applied = self.applied(call, node.uuid, "allocation");
            match lock.save_dropping_allocation(&node, &r.allocation_uuid, applied.as_ref()).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
                Err(e) => Err(self.db_err(e)),
            }
        }
        .await;
        Self::give_back(lock).await;
        res?;
        info!(allocation = %uuid, node = %node.uuid, "allocation deleted");
        Ok(Response::new(Empty {}))
    }
}

#[cfg(test)]
mod tests {
    use ferric_common::states::ProvisionState as S;

    use super::*;

    fn node(state: S) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", state);
        n.resource_class = Some("gold".into());
        n
    }

    #[test]
    fn a_backfill_needs_a_deployed_matching_free_node() {
        let mut a = Allocation::new(Uuid::new_v4(), Some("gold".into()));
        assert_eq!(backfill_refusal(&a, &node(S::Active)), None);
        // its instance may already be the allocation's UUID
        let mut same = node(S::Active);
        same.instance_uuid = Some(a.uuid.to_string());
        assert_eq!(backfill_refusal(&a, &same), None);
        let mut other = node(S::Active);
        other.instance_uuid = Some("i-2".into());
        assert_eq!(backfill_refusal(&a, &other).unwrap().0, Reason::Conflict);
        let mut taken = node(S::Active);
        taken.allocation_uuid = Some(Uuid::new_v4().to_string());
        assert_eq!(backfill_refusal(&a, &taken).unwrap().0, Reason::Conflict);
        let (reason, message) = backfill_refusal(&a, &node(S::Available)).unwrap();
        assert_eq!(reason, Reason::Invalid);
        assert!(message.contains("Node must be in the \"active\" state"), "{message}");
        a.resource_class = Some("silver".into());
        a.traits = vec!["CUSTOM_X".into()];
        a.candidate_nodes = vec![Uuid::new_v4()];
        let message = backfill_refusal(&a, &node(S::Active)).unwrap().1;
        for part in ["Resource class gold does not match", "List of traits", "Candidate nodes must be empty"] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
    }

    #[test]
    fn an_instance_is_not_overwritten_and_removing_it_drops_the_allocation() {
        let mut n = node(S::Available);
        let mut w = n.clone();
        assert_eq!(instance_change(&n, &w), Ok(false));
        w.instance_uuid = Some("i-1".into());
        assert_eq!(instance_change(&n, &w), Ok(false), "setting an instance");
        n.instance_uuid = Some("i-0".into());
        assert!(instance_change(&n, &w).unwrap_err().contains("is associated with instance i-0"));
        w.instance_uuid = None;
        assert_eq!(instance_change(&n, &w), Ok(false), "no allocation to drop");
        n.allocation_uuid = Some("i-0".into());
        assert_eq!(instance_change(&n, &w), Ok(true));
        n.provision_state = S::Active;
        assert!(instance_change(&n, &w).unwrap_err().contains("can not have instance_uuid removed"));
        n.maintenance = true;
        assert_eq!(instance_change(&n, &w), Ok(true));
    }

    #[test]
    fn an_allocation_stays_with_a_running_or_busy_node_unless_in_maintenance() {
        assert_eq!(release_refusal("a", &node(S::Available)), None);
        assert_eq!(release_refusal("a", &node(S::Manageable)), None);
        assert!(release_refusal("a", &node(S::Active)).unwrap().contains("because the node is active"));
        let mut deploying = node(S::Deploying);
        deploying.target_provision_state = Some(S::Active);
        assert!(release_refusal("a", &deploying).unwrap().contains("where updates are not allowed"));
        let mut failed = node(S::DeployFailed);
        failed.target_provision_state = Some(S::Active);
        assert_eq!(release_refusal("a", &failed), None, "a failed deploy may let its allocation go");
        let mut maint = node(S::Active);
        maint.maintenance = true;
        assert_eq!(release_refusal("a", &maint), None);
    }
}
