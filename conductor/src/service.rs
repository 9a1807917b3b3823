//! The gRPC service the API calls (`proto/ferric/v1/conductor.proto`).
//!
//! Every handler that acts on a node first checks that the ring at this
//! conductor's epoch gives it the node (else NOT_OWNER with our epoch, and
//! the API retries against the right owner), then takes the node lock for
//! mutations. Provision and power actions persist the transient state
//! before replying and continue in the background.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use chrono::Utc;
use ferric_common::db::DbError;
use ferric_common::model::{Node, Port, normalize_mac};
use ferric_common::proto::conductor_server::Conductor;
use ferric_common::proto::*;
use ferric_common::rpc::{Reason, status};
use ferric_common::states::{Event, ProvisionState, Verb, transition};
use ferric_deploy::driver::{DriverError, Heartbeat, PowerState, VendorReturn};
use rand::RngCore;
use serde_json::Value;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use uuid::Uuid;

use crate::Inner;
use crate::lock::{LockError, NodeLock};
use crate::operation::{self, CLEAN_STEPS_KEY, DEPLOY_STEPS_KEY, RECORD_KEY, SERVICE_STEPS_KEY};

pub struct ConductorService {
    inner: Arc<Inner>,
}

/// Provision states in which a node may be deleted (plus any state in
/// maintenance), as Ironic allows.
const DELETE_ALLOWED: [ProvisionState; 4] =
    [ProvisionState::Manageable, ProvisionState::Enroll, ProvisionState::AdoptFailed, ProvisionState::Available];

/// States in which a node may be updated while a target is set.
const UPDATE_ALLOWED_IN_TRANSITION: [ProvisionState; 13] = [
    ProvisionState::DeployFailed,
    ProvisionState::Inspecting,
    ProvisionState::InspectFailed,
    ProvisionState::InspectWait,
    ProvisionState::CleanFailed,
    ProvisionState::Error,
    ProvisionState::Verifying,
    ProvisionState::AdoptFailed,
    ProvisionState::RescueFailed,
    ProvisionState::UnrescueFailed,
    ProvisionState::ServiceHold,
    ProvisionState::ServiceFailed,
    ProvisionState::Servicing,
];

const AGENT_TOKEN_KEY: &str = "agent_secret_token";

impl ConductorService {
    pub fn new(inner: Arc<Inner>) -> ConductorService {
        ConductorService { inner }
    }

    fn err(&self, reason: Reason, msg: impl Into<String>) -> Status {
        status(reason, msg, self.inner.epoch(), "")
    }

    fn db_err(&self, e: DbError) -> Status {
        match e {
            DbError::NotFound => self.err(Reason::NotFound, "Resource could not be found."),
            DbError::Duplicate { field } => self.err(Reason::Conflict, format!("duplicate {field}")),
            e if e.is_retryable() => self.err(Reason::Unavailable, format!("database unavailable: {e}")),
            e => self.err(Reason::Internal, e.to_string()),
        }
    }

    fn lock_err(&self, e: LockError) -> Status {
        match e {
            LockError::Busy { ref holder, .. } => status(Reason::NodeLocked, e.to_string(), self.inner.epoch(), holder),
            LockError::NotFound(u) => self.err(Reason::NotFound, format!("Node {u} could not be found.")),
            LockError::Db(e) => self.db_err(e),
        }
    }

    fn driver_err(&self, e: DriverError) -> Status {
        match e {
            DriverError::Retryable(m) => self.err(Reason::Unavailable, m),
            DriverError::Invalid(m) | DriverError::Unsupported(m) | DriverError::Failed(m) => {
                self.err(Reason::Invalid, m)
            }
        }
    }

    fn parse_uuid(&self, s: &str) -> Result<Uuid, Status> {
        Uuid::parse_str(s).map_err(|_| self.err(Reason::Invalid, format!("Expected a UUID but received {s}.")))
    }

    /// Load a node and check that we own it at our epoch.
    async fn load_owned(&self, uuid: &str) -> Result<Node, Status> {
        let uuid = self.parse_uuid(uuid)?;
        let node = match self.inner.db.get_node(uuid).await {
            Ok(n) => n,
            Err(DbError::NotFound) => {
                return Err(self.err(Reason::NotFound, format!("Node {uuid} could not be found.")));
            }
            Err(e) => return Err(self.db_err(e)),
        };
        if !self.inner.owns(&node) {
            return Err(self.err(Reason::NotOwner, format!("conductor {} does not own node {uuid}", self.inner.id)));
        }
        Ok(node)
    }

    async fn lock(&self, uuid: Uuid) -> Result<(NodeLock, Node), Status> {
        let c = &self.inner.cfg.conductor;
        let (lock, node) = NodeLock::acquire(
            &self.inner.db,
            uuid,
            &self.inner.incarnation,
            c.lock_attempts,
            self.inner.lock_interval(),
        )
        .await
        .map_err(|e| self.lock_err(e))?;
        // the ring may have moved while we waited for the lock
        if !self.inner.owns(&node) {
            let _ = lock.release().await;
            return Err(self.err(Reason::NotOwner, format!("conductor {} no longer owns node {uuid}", self.inner.id)));
        }
        Ok((lock, node))
    }

    async fn save(&self, lock: &NodeLock, node: &Node) -> Result<(), Status> {
        match lock.save(node).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
            Err(DbError::Duplicate { field }) => Err(self.err(Reason::Conflict, duplicate_message(field, node))),
            Err(e) => Err(self.db_err(e)),
        }
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.inner.operations.clone().try_acquire_owned().map_err(|_| {
            self.err(Reason::Unavailable, "Requested action cannot be performed due to lack of free conductor workers.")
        })
    }

    /// Release a lock after a failed request, logging (not hiding) errors.
    async fn give_back(lock: NodeLock) {
        if let Err(e) = lock.release().await {
            warn!("releasing a node lock failed: {e}");
        }
    }
}

fn duplicate_message(field: &str, node: &Node) -> String {
    match field {
        "name" => format!("A node with name {} already exists.", node.name.clone().unwrap_or_default()),
        "instance_uuid" => format!(
            "Instance {} is already associated with a node, it cannot be associated with this other node {}",
            node.instance_uuid.clone().unwrap_or_default(),
            node.uuid
        ),
        other => format!("A node with this {other} already exists."),
    }
}

fn parse_json(s: &str, what: &str) -> Result<Option<Value>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(s).map(Some).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// Check user-given steps: a list of objects with `interface` and `step`.
fn check_steps(v: &Value, what: &str) -> Result<Vec<ferric_deploy::driver::Step>, String> {
    let list = v.as_array().ok_or_else(|| format!("{what} must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let obj = s.as_object().ok_or_else(|| format!("{what}[{i}] must be an object"))?;
            for key in ["interface", "step"] {
                if !obj.get(key).is_some_and(Value::is_string) {
                    return Err(format!("{what}[{i}] is missing the required key {key:?}"));
                }
            }
            serde_json::from_value(s.clone()).map_err(|e| format!("{what}[{i}]: {e}"))
        })
        .collect()
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Conductor for ConductorService {
    async fn do_provision_action(&self, req: Request<ProvisionActionRequest>) -> Rpc<ActionReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let verb = Verb::parse(&r.target)
            .ok_or_else(|| self.err(Reason::Invalid, format!("\"{}\" is not a valid provision target", r.target)))?;
        let event = verb.event();
        let invalid_state = |n: &Node| {
            self.err(
                Reason::Invalid,
                format!(
                    "The requested action \"{}\" can not be performed on node \"{}\" while it is in state \"{}\".",
                    verb.as_str(),
                    n.uuid,
                    n.provision_state
                ),
            )
        };
        if transition(node.provision_state, node.target_provision_state, event).is_err() {
            if let Some(holder) = &node.reservation {
                return Err(status(
                    Reason::NodeLocked,
                    format!(
                        "Node {} is locked by host {holder}, please retry after the current operation is completed.",
                        node.uuid
                    ),
                    self.inner.epoch(),
                    holder,
                ));
            }
            return Err(invalid_state(&node));
        }
        // request arguments, checked before anything is locked
        let configdrive = parse_json(&r.configdrive_json, "configdrive").map_err(|m| self.err(Reason::Invalid, m))?;
        let mut steps_arg = None;
        for (json, e, key, name) in [
            (&r.clean_steps_json, Event::Clean, CLEAN_STEPS_KEY, "clean_steps"),
            (&r.service_steps_json, Event::Service, SERVICE_STEPS_KEY, "service_steps"),
            (&r.deploy_steps_json, Event::Deploy, DEPLOY_STEPS_KEY, "deploy_steps"),
        ] {
            let v = parse_json(json, name).map_err(|m| self.err(Reason::Invalid, m))?;
            if event == e || (name == "deploy_steps" && event == Event::Rebuild) {
                match v {
                    Some(v) => {
                        let steps = check_steps(&v, name).map_err(|m| self.err(Reason::Invalid, m))?;
                        steps_arg = Some((key, steps));
                    }
                    None if name != "deploy_steps" => {
                        return Err(self.err(
                            Reason::Invalid,
                            format!("\"{name}\" is required when setting target provision state to {}", verb.as_str()),
                        ));
                    }
                    None => {}
                }
            }
        }
        if event == Event::Rescue && r.rescue_password.is_empty() {
            return Err(self.err(
                Reason::Invalid,
                "A non-empty \"rescue_password\" is required when setting target provision state to rescue",
            ));
        }
        if matches!(event, Event::Deploy | Event::Rebuild) && node.maintenance {
            return Err(self.err(Reason::Invalid, format!("The node {} is in maintenance mode.", node.uuid)));
        }
        if matches!(event, Event::Rebuild | Event::Delete) && node.protected {
            return Err(self.err(
                Reason::Forbidden,
                format!("Node {} is protected and cannot be undeployed, rebuilt or deleted", node.uuid),
            ));
        }

        let permit = self.permit()?;
        let (lock, mut node) = self.lock(node.uuid).await?;
        let t = match transition(node.provision_state, node.target_provision_state, event) {
            Ok(t) => t,
            Err(_) => {
                let e = invalid_state(&node);
                Self::give_back(lock).await;
                return Err(e);
            }
        };
        // validate the interfaces the operation needs
        let needs: &[&str] = match event {
            Event::Deploy | Event::Rebuild => &["power", "deploy", "boot"],
            Event::Manage | Event::Provide | Event::Clean | Event::Adopt => &["power"],
            Event::Rescue | Event::Unrescue => &["power", "rescue"],
            _ => &[],
        };
        if !needs.is_empty() {
            let driver = match self.inner.registry.driver_for(&node) {
                Ok(d) => d,
                Err(e) => {
                    Self::give_back(lock).await;
                    return Err(self.driver_err(e));
                }
            };
            let task = ferric_deploy::driver::Task {
                node: node.clone(),
                ports: self.inner.ports_of(node.uuid).await,
                conductor_id: self.inner.id.clone(),
                media: self.inner.media.clone(),
            };
            for (iface, res) in driver.validate_all(&task).await {
                if let (true, Err(e)) = (needs.contains(&iface.as_str()), res) {
                    Self::give_back(lock).await;
                    return Err(
                        self.err(Reason::Invalid, format!("Failed to validate {iface} for node {}: {e}", node.uuid))
                    );
                }
            }
        }
        let from = node.provision_state;
        node.provision_state = t.to;
        node.target_provision_state = t.target;
        node.provision_updated_at = Some(Utc::now());
        node.last_error = None;
        node.driver_internal_info.remove(RECORD_KEY);
        // the operation's artefacts will live here
        node.conductor_affinity = Some(self.inner.id.clone());
        if let Some((key, steps)) = steps_arg {
            node.driver_internal_info.insert(key.into(), serde_json::to_value(steps).expect("steps serialise"));
        }
        if let Some(cd) = configdrive {
            node.instance_info.insert("configdrive".into(), cd);
        }
        if event == Event::Rescue {
            node.instance_info.insert("rescue_password".into(), Value::String(r.rescue_password.clone()));
        }
        if event == Event::Unrescue {
            node.instance_info.remove("rescue_password");
        }
        if let Err(e) = self.save(&lock, &node).await {
            Self::give_back(lock).await;
            return Err(e);
        }
        self.inner.history(node.uuid, "provision", &format!("{} : {from} -> {}", verb.as_str(), t.to)).await;
        info!(node = %node.uuid, verb = verb.as_str(), from = %from, to = %t.to, "provision action accepted");
        if t.to.is_in_progress() {
            let inner = self.inner.clone();
            let cancel = self.inner.cancel.clone();
            self.inner.tasks.spawn(async move {
                operation::run(inner, lock, node, cancel).await;
                drop(permit);
            });
        } else {
            Self::give_back(lock).await;
        }
        Ok(Response::new(ActionReply {}))
    }

    async fn change_power_state(&self, req: Request<PowerStateRequest>) -> Rpc<ActionReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let (final_state, reboot) = match r.target.as_str() {
            "power on" => (PowerState::On, false),
            "power off" | "soft power off" => (PowerState::Off, false),
            "rebooting" | "soft rebooting" => (PowerState::On, true),
            other => return Err(self.err(Reason::Invalid, format!("Invalid power state {other}."))),
        };
        if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
            return Err(self.err(
                Reason::Invalid,
                format!(
                    "Can not change power state of node {} while it is in state {}.",
                    node.uuid, node.provision_state
                ),
            ));
        }
        if final_state == PowerState::Off && node.disable_power_off {
            return Err(self.err(Reason::Invalid, format!("Powering off is disabled for node {}", node.uuid)));
        }
        let driver = self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?;
        let permit = self.permit()?;
        let (lock, mut node) = self.lock(node.uuid).await?;
        node.target_power_state = Some(final_state.as_str().into());
        node.last_error = None;
        if let Err(e) = self.save(&lock, &node).await {
            Self::give_back(lock).await;
            return Err(e);
        }
        let inner = self.inner.clone();
        let timeout = (r.timeout > 0).then(|| std::time::Duration::from_secs(u64::from(r.timeout)));
        let target = r.target.clone();
        self.inner.tasks.spawn(async move {
            let mut task = ferric_deploy::driver::Task {
                node: node.clone(),
                ports: Vec::new(),
                conductor_id: inner.id.clone(),
                media: inner.media.clone(),
            };
            let action = async {
                if reboot {
                    driver.power.reboot(&mut task, timeout).await
                } else {
                    driver.power.set_power_state(&mut task, final_state, timeout).await
                }
            };
            let res = tokio::select! {
                r = action => r,
                // fenced: drop the BMC call, write nothing
                _ = inner.fence.cancelled() => return,
            };
            let mut node = task.node;
            node.target_power_state = None;
            match res {
                Ok(()) => node.power_state = Some(final_state.as_str().into()),
                Err(e) => node.last_error = Some(format!("Failed to change power state to '{target}': {e}")),
            }
            inner.history(node.uuid, "power", &target).await;
            match lock.save_and_release(&node).await {
                Ok(true) => {}
                Ok(false) => warn!(node = %node.uuid, "lost the node lock during a power action"),
                Err(e) => warn!(node = %node.uuid, "saving the power state failed: {e}"),
            }
            drop(permit);
        });
        Ok(Response::new(ActionReply {}))
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Rpc<NodeReply> {
        let r = req.into_inner();
        let wanted: Node =
            serde_json::from_str(&r.node_json).map_err(|e| self.err(Reason::Invalid, format!("node document: {e}")))?;
        let current = self.load_owned(&r.node_uuid).await?;
        if wanted.uuid != current.uuid {
            return Err(self.err(Reason::Invalid, "the node uuid cannot be changed"));
        }
        let (lock, mut node) = self.lock(current.uuid).await?;
        let result = async {
            let user_fields_changed = wanted.instance_info != node.instance_info
                || wanted.driver != node.driver
                || wanted.interfaces != node.interfaces
                || wanted.driver_info != node.driver_info
                || wanted.instance_uuid != node.instance_uuid
                || wanted.properties != node.properties;
            if node.target_provision_state.is_some()
                && !UPDATE_ALLOWED_IN_TRANSITION.contains(&node.provision_state)
                && user_fields_changed
                && !(node.maintenance && wanted.instance_uuid.is_none())
            {
                return Err(self.err(
                    Reason::Conflict,
                    format!("Node {} can not be updated while a state transition is in progress.", node.uuid),
                ));
            }
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
            if self.inner.registry.get(&node.driver).is_some() {
                self.inner.registry.resolve(&node).map_err(|e| self.driver_err(e))?;
            }
            self.save(&lock, &node).await?;
            Ok(node)
        }
        .await;
        Self::give_back(lock).await;
        let mut node = result?;
        node.reservation = None;
        Ok(Response::new(NodeReply { node_json: serde_json::to_string(&node).expect("nodes serialise") }))
    }

    async fn destroy_node(&self, req: Request<NodeRef>) -> Rpc<Empty> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let (lock, node) = self.lock(node.uuid).await?;
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
        match self.inner.db.delete_node_locked(node.uuid, &lock.holder).await {
            Ok(true) => {
                info!(node = %node.uuid, "node deleted");
                Ok(Response::new(Empty {}))
            }
            Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
            Err(e) => {
                Self::give_back(lock).await;
                Err(self.db_err(e))
            }
        }
    }

    async fn update_port(&self, req: Request<UpdatePortRequest>) -> Rpc<PortReply> {
        let r = req.into_inner();
        let op = r.op();
        let mut port: Port =
            serde_json::from_str(&r.port_json).map_err(|e| self.err(Reason::Invalid, format!("port document: {e}")))?;
        port.address = normalize_mac(&port.address).ok_or_else(|| {
            self.err(Reason::Invalid, format!("Expected a MAC address but received {}.", port.address))
        })?;
        let node = self.load_owned(&r.node_uuid).await?;
        let (lock, _node) = self.lock(node.uuid).await?;
        let res = match op {
            update_port_request::Op::Create => self.inner.db.create_port(&port).await,
            update_port_request::Op::Update => self.inner.db.update_port(&port).await,
            update_port_request::Op::Delete => self.inner.db.delete_port(port.uuid).await,
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
        let stored = match op {
            update_port_request::Op::Delete => port,
            _ => self.inner.db.get_port(port.uuid).await.map_err(|e| self.db_err(e))?,
        };
        Ok(Response::new(PortReply { port_json: serde_json::to_string(&stored).expect("ports serialise") }))
    }

    async fn validate(&self, req: Request<NodeRef>) -> Rpc<ValidateReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let mut interfaces = Vec::new();
        match self.inner.registry.driver_for(&node) {
            Ok(driver) => {
                let task = ferric_deploy::driver::Task {
                    ports: self.inner.ports_of(node.uuid).await,
                    node,
                    conductor_id: self.inner.id.clone(),
                    media: self.inner.media.clone(),
                };
                for (iface, res) in driver.validate_all(&task).await {
                    interfaces.push(InterfaceValidation {
                        interface: iface,
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

    async fn node_vendor_passthru(&self, req: Request<NodeVendorRequest>) -> Rpc<VendorReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
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
        let mut task = ferric_deploy::driver::Task {
            ports: Vec::new(),
            node,
            conductor_id: self.inner.id.clone(),
            media: self.inner.media.clone(),
        };
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

    async fn driver_vendor_passthru(&self, req: Request<DriverVendorRequest>) -> Rpc<VendorReply> {
        let r = req.into_inner();
        let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll, 1);
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

    async fn get_vendor_methods(&self, req: Request<VendorMethodsRequest>) -> Rpc<VendorMethodsReply> {
        let r = req.into_inner();
        let methods = if !r.node_uuid.is_empty() {
            let node = self.load_owned(&r.node_uuid).await?;
            self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?.vendor.methods()
        } else {
            let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll, 1);
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

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Rpc<Empty> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let stored = node.driver_internal_info.get(AGENT_TOKEN_KEY).and_then(Value::as_str);
        if r.agent_token.is_empty() {
            return Err(self.err(Reason::Invalid, "Agent token is required for heartbeat processing."));
        }
        if stored != Some(r.agent_token.as_str()) {
            return Err(self.err(Reason::Invalid, "Invalid or missing agent token received."));
        }
        let (lock, mut node) = self.lock(node.uuid).await?;
        node.driver_internal_info.insert("agent_url".into(), Value::String(r.callback_url.clone()));
        node.driver_internal_info.insert("agent_last_heartbeat".into(), Value::String(Utc::now().to_rfc3339()));
        if !r.agent_version.is_empty() {
            node.driver_internal_info.insert("agent_version".into(), Value::String(r.agent_version.clone()));
        }
        let hb = Heartbeat {
            callback_url: r.callback_url,
            agent_version: r.agent_version,
            agent_status: r.agent_status,
            agent_status_message: r.agent_status_message,
        };
        let resume = if node.provision_state.is_wait() {
            let driver = self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?;
            let mut task = ferric_deploy::driver::Task {
                ports: Vec::new(),
                node: node.clone(),
                conductor_id: self.inner.id.clone(),
                media: self.inner.media.clone(),
            };
            let go = driver.deploy.heartbeat(&mut task, &hb).await.map_err(|e| self.driver_err(e))?;
            node = task.node;
            go
        } else {
            false
        };
        if resume && let Ok(t) = transition(node.provision_state, node.target_provision_state, Event::Resume) {
            node.provision_state = t.to;
            node.target_provision_state = t.target;
            if let Err(e) = self.save(&lock, &node).await {
                Self::give_back(lock).await;
                return Err(e);
            }
            let permit = self.permit()?;
            let inner = self.inner.clone();
            let cancel = self.inner.cancel.clone();
            self.inner.tasks.spawn(async move {
                operation::run(inner, lock, node, cancel).await;
                drop(permit);
            });
            return Ok(Response::new(Empty {}));
        }
        let res = self.save(&lock, &node).await;
        Self::give_back(lock).await;
        res.map(|_| Response::new(Empty {}))
    }

    async fn lookup(&self, req: Request<NodeRef>) -> Rpc<LookupReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        if node.driver_internal_info.contains_key(AGENT_TOKEN_KEY) {
            return Ok(Response::new(LookupReply {
                agent_token: String::new(),
                node_json: serde_json::to_string(&node).expect("serialise"),
            }));
        }
        // one attempt, as Ironic: the agent backs off on 409 by itself
        let (lock, mut node) =
            NodeLock::acquire(&self.inner.db, node.uuid, &self.inner.incarnation, 1, self.inner.lock_interval())
                .await
                .map_err(|e| self.lock_err(e))?;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        node.driver_internal_info.insert(AGENT_TOKEN_KEY.into(), Value::String(token.clone()));
        let res = self.save(&lock, &node).await;
        Self::give_back(lock).await;
        res?;
        Ok(Response::new(LookupReply {
            agent_token: token,
            node_json: serde_json::to_string(&node).expect("serialise"),
        }))
    }

    async fn pass_deploy_info(&self, req: Request<NodeVendorRequest>) -> Rpc<Empty> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid).await?;
        let deploy = self
            .inner
            .registry
            .resolve(&node)
            .map_err(|e| self.driver_err(e))?
            .get("deploy")
            .cloned()
            .unwrap_or_default();
        Err(self.err(
            Reason::Invalid,
            format!(
                "pass_deploy_info is only accepted from the iscsi deploy interface; node {} uses {deploy}",
                node.uuid
            ),
        ))
    }

    async fn get_driver_properties(&self, req: Request<DriverRef>) -> Rpc<DriverPropertiesReply> {
        let r = req.into_inner();
        let ht = self.inner.registry.get(&r.driver).ok_or_else(|| {
            self.err(
                Reason::NotFound,
                format!("Could not find the following driver(s) or hardware type(s): {}.", r.driver),
            )
        })?;
        let probe = Node::new(Uuid::nil(), &r.driver, ProvisionState::Enroll, 1);
        let driver = self.inner.registry.driver_for(&probe).map_err(|e| self.driver_err(e))?;
        let mut default_interfaces = HashMap::new();
        let mut enabled_interfaces = HashMap::new();
        for (kind, (default, enabled)) in &ht.interfaces {
            default_interfaces.insert(kind.to_string(), default.to_string());
            enabled_interfaces
                .insert(kind.to_string(), InterfaceNames { names: enabled.iter().map(|s| s.to_string()).collect() });
        }
        Ok(Response::new(DriverPropertiesReply {
            properties: driver.properties().into_iter().collect(),
            default_interfaces,
            enabled_interfaces,
        }))
    }

    async fn drain(&self, _req: Request<Empty>) -> Rpc<ConductorStatus> {
        self.drain_rpc().await
    }

    async fn get_conductor_status(&self, _req: Request<Empty>) -> Rpc<ConductorStatus> {
        let ring = self.inner.ring.borrow().clone();
        let me = ring.member(&self.inner.id);
        let owned = match self.inner.db.list_nodes(&Default::default()).await {
            Ok(nodes) => nodes.iter().filter(|n| self.inner.owns(n)).count() as u64,
            Err(e) => return Err(self.db_err(e)),
        };
        let progress = crate::drain::progress(&self.inner).await;
        Ok(Response::new(ConductorStatus {
            nodes_held: progress.nodes_held,
            draining: self.inner.draining.load(std::sync::atomic::Ordering::Relaxed),
            takeovers: self.inner.stats.takeovers.load(std::sync::atomic::Ordering::Relaxed),
            takeovers_failed: self.inner.stats.takeovers_failed.load(std::sync::atomic::Ordering::Relaxed),
            id: self.inner.id.clone(),
            incarnation: self.inner.incarnation.clone(),
            conductor_group: self.inner.cfg.conductor.conductor_group.clone(),
            hardware_types: self.inner.registry.names().iter().map(|s| s.to_string()).collect(),
            state: me.map(|m| format!("{:?}", m.state).to_lowercase()).unwrap_or_else(|| "stopped".into()),
            epoch: ring.epoch(),
            owned_nodes: owned,
            locks_held: progress.locks_held,
            operations_in_flight: self.inner.operations_in_flight() as u64,
        }))
    }
}

impl ConductorService {
    async fn drain_rpc(&self) -> Rpc<ConductorStatus> {
        let inner = self.inner.clone();
        match crate::drain::begin(&inner).await {
            Ok(true) => {
                let exit = self.inner.exit_requested.clone();
                tokio::spawn(async move {
                    crate::drain::drain_and_wait(&inner).await;
                    exit.cancel();
                });
            }
            Ok(false) => {}
            Err(e) => return Err(self.err(Reason::Unavailable, e)),
        }
        self.get_conductor_status(Request::new(Empty {})).await
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
