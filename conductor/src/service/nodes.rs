//! Node and port updates that need the node lock, validation, vendor
//! passthru.

use super::*;

impl ConductorService {
    /// The stored node, as an update answers (a replayed one too), its
    /// secrets masked: the API renders it masked anyway, and a reply is
    /// no place for BMC passwords.
    async fn node_reply(&self, uuid: Uuid) -> Rpc<NodeReply> {
        let mut node = self.inner.db.get_node(uuid).await.map_err(|e| self.db_err(e))?;
        node.reservation = None;
        Ok(Response::new(NodeReply { node_json: serde_json::to_string(&node.masked()).expect("nodes serialise") }))
    }

    pub(super) async fn update_node_rpc(&self, req: Request<UpdateNodeRequest>) -> Rpc<NodeReply> {
        let call = call_id(&req);
        let r = req.into_inner();
        let uuid = self.parse_uuid(&r.node_uuid)?;
        if self.already_applied(&call).await? {
            return self.node_reply(uuid).await;
        }
        let res = self.update_node(r, &call).await;
        self.unless_applied(res, &call, || self.node_reply(uuid)).await
    }

    /// Applies what the API's PATCH changed (`base_json` → `node_json`) to
    /// the node as it is under the lock.
    ///
    /// A move — a new `conductor_group`, or a `driver` another conductor
    /// serves — is applied here by the node's owner as stored, and the
    /// node's new owner takes it over on its next take-over pass. When
    /// nobody owns the node as stored (its group's last conductor is gone)
    /// the API sends the update to the node's owner as moved, which may
    /// apply it: else such a node could never be moved out.
    async fn update_node(&self, r: UpdateNodeRequest, call: &Option<String>) -> Rpc<NodeReply> {
        let wanted: Node =
            serde_json::from_str(&r.node_json).map_err(|e| self.err(Reason::Invalid, format!("node document: {e}")))?;
        let may_update = |n: &Node| self.inner.owns(n) || self.inner.nobody_owns(n);
        let current = self.load_if(&r.node_uuid, r.epoch, may_update).await?;
        if wanted.uuid != current.uuid {
            return Err(self.err(Reason::Invalid, "the node uuid cannot be changed"));
        }
        // refused at once, not after waiting for the lock a running
        // operation holds; and again under the lock
        refuse_in_transition(&current, &self.merged(&r, wanted.clone(), &current)?)
            .map_err(|m| self.err(Reason::Conflict, m))?;
        let Some((lock, mut node)) = self.lock_for_if(current.uuid, call, may_update).await? else {
            return self.node_reply(current.uuid).await;
        };
        let owned_as_stored = self.inner.owns(&node);
        let result: Result<Node, Status> = async {
            // only what the patch changed, applied to the node as it is now
            let wanted = self.merged(&r, wanted, &node)?;
            let moved =
                wanted.driver != node.driver || !wanted.conductor_group.eq_ignore_ascii_case(&node.conductor_group);
            refuse_in_transition(&node, &wanted).map_err(|m| self.err(Reason::Conflict, m))?;
            let drop_allocation =
                allocations::instance_change(&node, &wanted).map_err(|m| self.err(Reason::Conflict, m))?;
            // copy what a user may change; everything else stays as stored
            node.name = wanted.name;
            node.driver = wanted.driver;
            node.interfaces = wanted.interfaces;
            node.driver_info = wanted.driver_info;
            node.instance_info = wanted.instance_info;
            node.properties = wanted.properties;
            node.extra = wanted.extra;
            node.network_data = wanted.network_data;
            node.instance_uuid = wanted.instance_uuid;
            node.instance_name = wanted.instance_name;
            node.resource_class = wanted.resource_class;
            node.owner = wanted.owner;
            node.lessee = wanted.lessee;
            node.description = wanted.description;
            node.shard = wanted.shard;
            node.parent_node = wanted.parent_node;
            node.chassis_uuid = wanted.chassis_uuid;
            node.automated_clean = wanted.automated_clean;
            node.protected = wanted.protected;
            node.protected_reason = wanted.protected_reason;
            node.retired = wanted.retired;
            node.retired_reason = wanted.retired_reason;
            node.disable_power_off = wanted.disable_power_off;
            node.maintenance = wanted.maintenance;
            node.maintenance_reason = wanted.maintenance_reason;
            node.fault = if node.maintenance { wanted.fault } else { None };
            node.conductor_group = wanted.conductor_group.to_ascii_lowercase();
            node.console_enabled = wanted.console_enabled;
            if moved {
                // nobody has taken the node over on its new ring yet: its
                // new owner's next light pass finds it by this (the old
                // owner keeps its artefacts until the new one has)
                node.conductor_affinity = None;
            }
            if !owned_as_stored && !self.inner.owns(&node) {
                return Err(self.err(
                    Reason::NotOwner,
                    format!("conductor {} owns node {} neither as stored nor as updated", self.inner.id, node.uuid),
                ));
            }
            if self.inner.registry.get(&node.driver).is_some() {
                self.inner.registry.resolve(&node).map_err(|e| self.driver_err(e))?;
            }
            // the API checked the copy it patched; merged onto the node as
            // it is now (another PATCH may have grown it since) it can be larger
            self.check_size(&node)?;
            let applied = self.applied(call, node.uuid, "update_node");
            // an instance removed takes its allocation with it
            let dropped = if drop_allocation { node.allocation_uuid.take() } else { None };
            match &dropped {
                Some(allocation) => self.save_dropping(&lock, &node, allocation, applied.as_ref()).await?,
                None => self.save_applying(&lock, &node, applied.as_ref()).await?,
            }
            Ok(node)
        }
        .await;
        Self::give_back(lock).await;
        let mut node = result?;
        node.reservation = None;
        Ok(Response::new(NodeReply { node_json: serde_json::to_string(&node.masked()).expect("nodes serialise") }))
    }

    /// `wanted` as a change from the API's base copy (when it sent one)
    /// applied to `fresh`: only what the PATCH changed.
    fn merged(&self, r: &UpdateNodeRequest, wanted: Node, fresh: &Node) -> Result<Node, Status> {
        if r.base_json.is_empty() {
            return Ok(wanted);
        }
        let base: serde_json::Value = serde_json::from_str(&r.base_json)
            .map_err(|e| self.err(Reason::Invalid, format!("base node document: {e}")))?;
        let fresh = serde_json::to_value(fresh).expect("nodes serialise");
        let wanted = serde_json::to_value(&wanted).expect("nodes serialise");
        let merged = ferric_common::merge::merge3(&base, &wanted, &fresh);
        serde_json::from_value::<Node>(merged)
            .map_err(|e| self.err(Reason::Invalid, format!("node document after the merge: {e}")))
    }

    pub(super) async fn destroy_node_rpc(&self, req: Request<NodeRef>) -> Rpc<Empty> {
        let call = call_id(&req);
        if self.already_applied(&call).await? {
            return Ok(Response::new(Empty {}));
        }
        let res = self.destroy_node(req.into_inner(), &call).await;
        self.unless_applied(res, &call, || async { Ok(Response::new(Empty {})) }).await
    }

    async fn destroy_node(&self, r: NodeRef, call: &Option<String>) -> Rpc<Empty> {
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let Some((lock, node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(Empty {}));
        };
        let check = || -> Result<(), Status> {
            if node.protected {
                return Err(self.err(
                    Reason::Forbidden,
                    format!("Node {} is protected and cannot be undeployed, rebuilt or deleted", node.uuid),
                ));
            }
            if let (Some(inst), false) = (&node.instance_uuid, node.maintenance) {
                return Err(
                    self.err(Reason::Conflict, format!("Node {} is associated with instance {inst}.", node.uuid))
                );
            }
            if !node.maintenance && !DELETE_ALLOWED.contains(&node.provision_state) {
                let valid: Vec<&str> = DELETE_ALLOWED.iter().map(|s| s.as_str()).collect();
                return Err(self.err(
                    Reason::Conflict,
                    format!(
                        "Can not delete node \"{}\" while it is in provision state \"{}\". Valid provision states to perform deletion are: {}, or set the node into maintenance mode",
                        node.uuid,
                        node.provision_state,
                        valid.join(", ")
                    ),
                ));
            }
            Ok(())
        };
        if let Err(e) = check() {
            Self::give_back(lock).await;
            return Err(e);
        }
        let uuid = node.uuid;
        match lock.delete(self.applied(call, uuid, "destroy_node").as_ref()).await {
            Ok(true) => {
                info!(node = %uuid, "node deleted");
                Ok(Response::new(Empty {}))
            }
            Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
            // the lock stays with a live section no more: the reaper frees it
            Err(e) => Err(self.db_err(e)),
        }
    }

    pub(super) async fn update_port_rpc(&self, req: Request<UpdatePortRequest>) -> Rpc<PortReply> {
        let call = call_id(&req);
        let r = req.into_inner();
        let op = r.op();
        let mut port: Port =
            serde_json::from_str(&r.port_json).map_err(|e| self.err(Reason::Invalid, format!("port document: {e}")))?;
        port.address = normalize_mac(&port.address).ok_or_else(|| {
            self.err(Reason::Invalid, format!("Expected a MAC address but received {}.", port.address))
        })?;
        let replay = |port: Port| self.port_reply(op, port);
        if self.already_applied(&call).await? {
            return replay(port).await;
        }
        let res = self.update_port(&r, &call, port.clone()).await;
        self.unless_applied(res, &call, || replay(port)).await
    }

    async fn update_port(&self, r: &UpdatePortRequest, call: &Option<String>, port: Port) -> Rpc<PortReply> {
        let op = r.op();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let Some((lock, _node)) = self.lock_for(node.uuid, call).await? else {
            return self.port_reply(op, port).await;
        };
        // a port joins a portgroup of its own node (checked under the lock
        // that guards the node's portgroups too)
        if op != update_port_request::Op::Delete
            && let Some(pg) = &port.portgroup_uuid
            && let Err(e) = self.check_portgroup(&port, pg).await
        {
            Self::give_back(lock).await;
            return Err(e);
        }
        let applied = self.applied(call, node.uuid, "port");
        let db = &self.inner.db;
        let res = match op {
            update_port_request::Op::Create => db.create_port_applying(&port, applied.as_ref()).await,
            update_port_request::Op::Update => db.update_port_applying(&port, applied.as_ref()).await,
            update_port_request::Op::Delete => db.delete_port_applying(port.uuid, applied.as_ref()).await,
            update_port_request::Op::Unspecified => Err(DbError::Corrupt("no port operation given".into())),
        };
        Self::give_back(lock).await;
        match res {
            Ok(()) => {}
            Err(DbError::Duplicate { field: "address" }) => {
                return Err(
                    self.err(Reason::Conflict, format!("A port with MAC address {} already exists.", port.address))
                );
            }
            Err(DbError::Duplicate { field }) => {
                return Err(self.err(
                    Reason::Conflict,
                    format!("A port with {field} {} already exists.", port.name.clone().unwrap_or_default()),
                ));
            }
            Err(DbError::NotFound) => {
                return Err(self.err(Reason::NotFound, format!("Port {} could not be found.", port.uuid)));
            }
            Err(DbError::Corrupt(m)) => return Err(self.err(Reason::Invalid, m)),
            Err(e) => return Err(self.db_err(e)),
        }
        self.port_reply(op, port).await
    }

    async fn check_portgroup(&self, port: &Port, pg: &str) -> Result<(), Status> {
        let not_found = || self.err(Reason::Invalid, format!("Portgroup {pg} could not be found."));
        let uuid = Uuid::parse_str(pg).map_err(|_| not_found())?;
        match self.inner.db.get_portgroup(uuid).await {
            Ok(g) if g.node_uuid == port.node_uuid => Ok(()),
            Ok(g) => Err(self.err(
                Reason::Invalid,
                format!(
                    "Port {} and portgroup {} belong to different nodes ({} and {}).",
                    port.uuid, pg, port.node_uuid, g.node_uuid
                ),
            )),
            Err(DbError::NotFound) => Err(not_found()),
            Err(e) => Err(self.db_err(e)),
        }
    }

    /// A port change's answer: the stored port (the deleted one for a
    /// delete).
    async fn port_reply(&self, op: update_port_request::Op, port: Port) -> Rpc<PortReply> {
        let stored = match op {
            update_port_request::Op::Delete => port,
            _ => self.inner.db.get_port(port.uuid).await.map_err(|e| self.db_err(e))?,
        };
        Ok(Response::new(PortReply { port_json: serde_json::to_string(&stored).expect("ports serialise") }))
    }

    pub(super) async fn validate_rpc(&self, req: Request<NodeRef>) -> Rpc<ValidateReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let mut interfaces = Vec::new();
        match self.inner.registry.driver_for(&node) {
            Ok(driver) => {
                let task = self.inner.task_with_ports(node).await;
                for (iface, res) in driver.validate_all(&task).await {
                    interfaces.push(InterfaceValidation {
                        interface: iface.to_string(),
                        result: res.is_ok(),
                        reason: res.err().map(|e| e.to_string()).unwrap_or_default(),
                    });
                }
            }
            Err(e) => {
                for iface in ["boot", "deploy", "management", "power"] {
                    interfaces.push(InterfaceValidation {
                        interface: iface.into(),
                        result: false,
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(Response::new(ValidateReply { interfaces }))
    }

    pub(super) async fn node_vendor_passthru_rpc(&self, req: Request<NodeVendorRequest>) -> Rpc<VendorReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let driver = self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?;
        let method = driver
            .vendor
            .methods()
            .into_iter()
            .find(|m| m.name == r.method)
            .ok_or_else(|| self.err(Reason::Invalid, format!("No handler for method {}", r.method)))?;
        if !method.http_methods.contains(&r.http_method.as_str()) {
            return Err(
                self.err(Reason::Invalid, format!("The method {} does not support HTTP {}", r.method, r.http_method))
            );
        }
        let body: Value = parse_json(&r.body_json, "body")
            .map_err(|m| self.err(Reason::Invalid, m))?
            .unwrap_or(Value::Object(Default::default()));
        let (lock, node) = if method.require_exclusive_lock {
            let (l, n) = self.lock(node.uuid).await?;
            (Some(l), n)
        } else {
            (None, node)
        };
        let mut task = self.inner.task(node, Vec::new());
        let res = driver.vendor.call(&mut task, &r.method, &body).await;
        if let Some(lock) = lock {
            if res.is_ok()
                && let Err(e) = self.save(&lock, &task.node).await
            {
                Self::give_back(lock).await;
                return Err(e);
            }
            Self::give_back(lock).await;
        }
        let value = res.map_err(|e| self.driver_err(e))?;
        Ok(Response::new(vendor_reply(method.is_async, method.attach, value)))
    }

    pub(super) async fn driver_vendor_passthru_rpc(&self, req: Request<DriverVendorRequest>) -> Rpc<VendorReply> {
        let r = req.into_inner();
        let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll);
        let driver = self.inner.registry.driver_for(&probe).map_err(|e| self.driver_err(e))?;
        let method = driver
            .vendor
            .driver_methods()
            .into_iter()
            .find(|m| m.name == r.method)
            .ok_or_else(|| self.err(Reason::Invalid, format!("No handler for method {}", r.method)))?;
        if !method.http_methods.contains(&r.http_method.as_str()) {
            return Err(
                self.err(Reason::Invalid, format!("The method {} does not support HTTP {}", r.method, r.http_method))
            );
        }
        let body: Value = parse_json(&r.body_json, "body")
            .map_err(|m| self.err(Reason::Invalid, m))?
            .unwrap_or(Value::Object(Default::default()));
        let value = driver.vendor.driver_call(&r.method, &body).await.map_err(|e| self.driver_err(e))?;
        Ok(Response::new(vendor_reply(method.is_async, method.attach, value)))
    }

    pub(super) async fn get_vendor_methods_rpc(&self, req: Request<VendorMethodsRequest>) -> Rpc<VendorMethodsReply> {
        let r = req.into_inner();
        let methods = if !r.node_uuid.is_empty() {
            let node = self.load_owned(&r.node_uuid, r.epoch).await?;
            self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?.vendor.methods()
        } else {
            let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll);
            self.inner.registry.driver_for(&probe).map_err(|e| self.driver_err(e))?.vendor.driver_methods()
        };
        Ok(Response::new(VendorMethodsReply {
            methods: methods
                .into_iter()
                .map(|m| VendorMethod {
                    name: m.name.into(),
                    http_methods: m.http_methods.iter().map(|s| s.to_string()).collect(),
                    r#async: m.is_async,
                    description: m.description.into(),
                    attach: m.attach,
                    require_exclusive_lock: m.require_exclusive_lock,
                })
                .collect(),
        }))
    }
}

fn vendor_reply(is_async: bool, attach: bool, value: VendorReturn) -> VendorReply {
    let return_value = match value {
        VendorReturn::Json(v) => v.to_string().into_bytes(),
        VendorReturn::Bytes(b) => b,
        VendorReturn::None => Vec::new(),
    };
    VendorReply { r#async: is_async, attach, return_value }
}

/// Refuses (with Ironic's words; 409 at the API) to change while a state
/// transition is in progress what a node is — its driver, interfaces,
/// driver_info, instance, properties — or who serves it — its conductor
/// group: the operation under way was started for the node as it was, by
/// its owner as it was. Ironic refuses every update then; other fields
/// (name, extra, ...) may change here. Every field may change in the
/// states Ironic allows updates in, and in maintenance when the update
/// leaves no instance (how an operator frees a stuck node).
fn refuse_in_transition(node: &Node, wanted: &Node) -> Result<(), String> {
    let what_or_where_changed = wanted.instance_info != node.instance_info
        || wanted.driver != node.driver
        || wanted.interfaces != node.interfaces
        || wanted.driver_info != node.driver_info
        || wanted.instance_uuid != node.instance_uuid
        || wanted.properties != node.properties
        || !wanted.conductor_group.eq_ignore_ascii_case(&node.conductor_group);
    if node.target_provision_state.is_some()
        && !UPDATE_ALLOWED_IN_TRANSITION.contains(&node.provision_state)
        && what_or_where_changed
        && !(node.maintenance && wanted.instance_uuid.is_none())
    {
        return Err(format!("Node {} can not be updated while a state transition is in progress.", node.uuid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: ProvisionState, target: Option<ProvisionState>) -> Node {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", state);
        n.target_provision_state = target;
        n
    }

    #[test]
    fn moves_wait_for_the_transition_to_end() {
        use ProvisionState as S;
        let waiting = node(S::DeployWait, Some(S::Active));
        let mut moved = waiting.clone();
        moved.conductor_group = "rack2".into();
        assert!(refuse_in_transition(&waiting, &moved).unwrap_err().contains("state transition is in progress"));
        let mut other_driver = waiting.clone();
        other_driver.driver = "redfish".into();
        assert!(refuse_in_transition(&waiting, &other_driver).is_err());
        // the group's case is not a move (it is stored lower-case)
        let mut same = waiting.clone();
        same.conductor_group = "".into();
        assert_eq!(refuse_in_transition(&waiting, &same), Ok(()));
        let mut upper = node(S::DeployWait, Some(S::Active));
        upper.conductor_group = "rack2".into();
        let mut to_upper = upper.clone();
        to_upper.conductor_group = "RACK2".into();
        assert_eq!(refuse_in_transition(&upper, &to_upper), Ok(()));
        // what does not change the node or its owner may
        let mut renamed = waiting.clone();
        renamed.extra.insert("note".into(), serde_json::json!("x"));
        renamed.name = Some("w".into());
        assert_eq!(refuse_in_transition(&waiting, &renamed), Ok(()));
        // a running deploy too
        let deploying = node(S::Deploying, Some(S::Active));
        let mut moved = deploying.clone();
        moved.conductor_group = "rack2".into();
        assert!(refuse_in_transition(&deploying, &moved).is_err());
        // no transition, or one Ironic allows updates in, or a node freed
        // by an operator (maintenance, no instance): the move is applied
        for n in [
            node(S::Available, None),
            node(S::Active, None),
            node(S::Manageable, None),
            node(S::InspectWait, Some(S::Manageable)),
            node(S::DeployFailed, Some(S::Active)),
            {
                let mut m = node(S::DeployWait, Some(S::Active));
                m.maintenance = true;
                m
            },
        ] {
            let mut moved = n.clone();
            moved.conductor_group = "rack2".into();
            assert_eq!(
                refuse_in_transition(&n, &moved),
                Ok(()),
                "{} -> {:?}",
                n.provision_state,
                n.target_provision_state
            );
        }
    }
}

/// The most traits a node may have (Ironic's `MAX_TRAITS_PER_NODE`).
pub const MAX_TRAITS_PER_NODE: usize = 50;

/// A node's traits after `op` with `given` (pure): sorted, each once; or
/// why not (NOT_FOUND for a trait to remove the node lacks, INVALID past
/// [`MAX_TRAITS_PER_NODE`]).
pub fn traits_after(
    node: &Node,
    op: node_traits_request::Op,
    given: &[String],
) -> Result<Vec<String>, (Reason, String)> {
    use node_traits_request::Op;
    let traits: std::collections::BTreeSet<String> = match op {
        Op::Set => given.iter().cloned().collect(),
        Op::Add => node.traits.iter().chain(given).cloned().collect(),
        Op::Remove => {
            let mut t: std::collections::BTreeSet<String> = node.traits.iter().cloned().collect();
            for g in given {
                if !t.remove(g) {
                    return Err((Reason::NotFound, format!("Node {} doesn't have a trait '{g}'", node.uuid)));
                }
            }
            t
        }
        Op::Unspecified => return Err((Reason::Invalid, "no traits operation given".into())),
    };
    if traits.len() > MAX_TRAITS_PER_NODE {
        return Err((
            Reason::Invalid,
            format!(
                "Could not modify traits for node {} as it would exceed the maximum number of traits per node ({} vs. \
                 {MAX_TRAITS_PER_NODE})",
                node.uuid,
                traits.len()
            ),
        ));
    }
    Ok(traits.into_iter().collect())
}

impl ConductorService {
    pub(super) async fn set_node_traits_rpc(&self, req: Request<NodeTraitsRequest>) -> Rpc<NodeReply> {
        let call = call_id(&req);
        let r = req.into_inner();
        let uuid = self.parse_uuid(&r.node_uuid)?;
        if self.already_applied(&call).await? {
            return self.node_reply(uuid).await;
        }
        let res = self.set_node_traits(&r, &call).await;
        self.unless_applied(res, &call, || self.node_reply(uuid)).await
    }

    async fn set_node_traits(&self, r: &NodeTraitsRequest, call: &Option<String>) -> Rpc<NodeReply> {
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        // refused at once, not after waiting for the lock; and again under it
        traits_after(&node, r.op(), &r.traits).map_err(|(reason, m)| self.err(reason, m))?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return self.node_reply(node.uuid).await;
        };
        let res = async {
            node.traits = traits_after(&node, r.op(), &r.traits).map_err(|(reason, m)| self.err(reason, m))?;
            self.save_applying(&lock, &node, self.applied(call, node.uuid, "traits").as_ref()).await
        }
        .await;
        Self::give_back(lock).await;
        res?;
        self.node_reply(node.uuid).await
    }

    pub(super) async fn update_portgroup_rpc(&self, req: Request<UpdatePortgroupRequest>) -> Rpc<PortgroupReply> {
        let call = call_id(&req);
        let r = req.into_inner();
        let pg: ferric_common::model::Portgroup = serde_json::from_str(&r.portgroup_json)
            .map_err(|e| self.err(Reason::Invalid, format!("portgroup document: {e}")))?;
        let op = r.op();
        if self.already_applied(&call).await? {
            return self.portgroup_reply(op, pg).await;
        }
        let res = self.update_portgroup(&r, &call, pg.clone()).await;
        self.unless_applied(res, &call, || self.portgroup_reply(op, pg)).await
    }

    async fn update_portgroup(
        &self,
        r: &UpdatePortgroupRequest,
        call: &Option<String>,
        pg: ferric_common::model::Portgroup,
    ) -> Rpc<PortgroupReply> {
        use update_portgroup_request::Op;
        let op = r.op();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        if pg.node_uuid != node.uuid {
            return Err(self.err(Reason::Invalid, "a portgroup stays with its node"));
        }
        let Some((lock, _node)) = self.lock_for(node.uuid, call).await? else {
            return self.portgroup_reply(op, pg).await;
        };
        let applied = self.applied(call, node.uuid, "portgroup");
        let db = &self.inner.db;
        let res = match op {
            Op::Create => db.create_portgroup(&pg, applied.as_ref()).await,
            Op::Update => db.update_portgroup(&pg, applied.as_ref()).await,
            Op::Delete => match db.delete_portgroup(pg.uuid, applied.as_ref()).await {
                Ok(true) => Ok(()),
                Ok(false) => match db.get_portgroup(pg.uuid).await {
                    Ok(_) => Err(DbError::Corrupt(format!(
                        "Cannot complete the requested action because portgroup {} contains ports.",
                        pg.uuid
                    ))),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Op::Unspecified => Err(DbError::Corrupt("no portgroup operation given".into())),
        };
        Self::give_back(lock).await;
        match res {
            Ok(()) => self.portgroup_reply(op, pg).await,
            Err(DbError::Duplicate { field: "address" }) => Err(self.err(
                Reason::Conflict,
                format!("A portgroup with MAC address {} already exists.", pg.address.clone().unwrap_or_default()),
            )),
            Err(DbError::Duplicate { field: "name" }) => Err(self.err(
                Reason::Conflict,
                format!("A portgroup with name {} already exists.", pg.name.clone().unwrap_or_default()),
            )),
            Err(DbError::Duplicate { .. }) => {
                Err(self.err(Reason::Conflict, format!("A portgroup with UUID {} already exists.", pg.uuid)))
            }
            Err(DbError::NotFound) => {
                Err(self.err(Reason::NotFound, format!("Portgroup {} could not be found.", pg.uuid)))
            }
            Err(DbError::Corrupt(m)) => Err(self.err(Reason::Invalid, m)),
            Err(e) => Err(self.db_err(e)),
        }
    }

    /// A portgroup change's answer: the stored portgroup (the deleted one
    /// for a delete).
    async fn portgroup_reply(
        &self,
        op: update_portgroup_request::Op,
        pg: ferric_common::model::Portgroup,
    ) -> Rpc<PortgroupReply> {
        let stored = match op {
            update_portgroup_request::Op::Delete => pg,
            _ => self.inner.db.get_portgroup(pg.uuid).await.map_err(|e| self.db_err(e))?,
        };
        Ok(Response::new(PortgroupReply {
            portgroup_json: serde_json::to_string(&stored).expect("portgroups serialise"),
        }))
    }
}

#[cfg(test)]
mod trait_tests {
    use super::*;

    #[test]
    fn traits_are_set_added_and_removed_within_the_bound() {
        use node_traits_request::Op;
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
        n.traits = vec!["CUSTOM_B".into(), "CUSTOM_A".into()];
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<String>>();
        assert_eq!(
            traits_after(&n, Op::Add, &s(&["CUSTOM_C", "CUSTOM_A"])),
            Ok(s(&["CUSTOM_A", "CUSTOM_B", "CUSTOM_C"]))
        );
        assert_eq!(traits_after(&n, Op::Set, &s(&["HW_X", "HW_X"])), Ok(s(&["HW_X"])));
        assert_eq!(traits_after(&n, Op::Set, &[]), Ok(Vec::new()));
        assert_eq!(traits_after(&n, Op::Remove, &s(&["CUSTOM_A"])), Ok(s(&["CUSTOM_B"])));
        let (reason, m) = traits_after(&n, Op::Remove, &s(&["CUSTOM_Z"])).unwrap_err();
        assert_eq!(reason, Reason::NotFound);
        assert_eq!(m, format!("Node {} doesn't have a trait 'CUSTOM_Z'", n.uuid));
        let fifty: Vec<String> = (0..50).map(|i| format!("CUSTOM_{i}")).collect();
        assert_eq!(traits_after(&n, Op::Set, &fifty).map(|t| t.len()), Ok(50));
        let (reason, m) = traits_after(&n, Op::Add, &fifty).unwrap_err();
        assert_eq!(reason, Reason::Invalid);
        assert!(m.contains("(52 vs. 50)"), "{m}");
    }
}
