//! Driver interfaces, as in Ironic's boot-interface design: a hardware type
//! composes one implementation per interface, and the conductor calls them
//! under the node lock.
//!
//! Long operations (deploy, clean, tear-down, rescue, ...) are sequences of
//! *steps* (`interface.step`). The conductor persists which step it is in
//! before and after running it, and every step is idempotent, so another
//! conductor can resume an operation from the recorded step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferric_common::model::{JsonObject, Node, Port};
use serde::{Deserialize, Serialize};

/// The node under an exclusive lock, as a driver sees it. Drivers change
/// `node` in place; the conductor persists it.
#[derive(Debug, Clone)]
pub struct Task {
    pub node: Node,
    pub ports: Vec<Port>,
    /// Who runs the task (for logs and artefact ownership).
    pub conductor_id: String,
    /// The conductor's publisher and boot loaders, for boot interfaces
    /// that build and publish media (and rebuild them in `take_over`).
    pub media: Arc<crate::media::Media>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// The node's configuration is wrong; retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// The operation failed (the BMC refused, an image is missing, ...).
    #[error("{0}")]
    Failed(String),
    /// A transient failure (timeout, connection refused): retry later.
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Unsupported(String),
}

impl DriverError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DriverError::Retryable(_))
    }
}

pub type DriverResult<T> = Result<T, DriverError>;

/// What a step left the operation in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Go on with the next step.
    Done,
    /// Wait for a ramdisk callback (heartbeat / pass_deploy_info), which
    /// resumes the operation at the next step.
    Wait,
}

/// One step of an operation, as persisted in `deploy_step`/`clean_step`
/// and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub interface: String,
    pub step: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default)]
    pub args: JsonObject,
}

impl Step {
    pub fn new(interface: &str, step: &str, priority: u32) -> Step {
        Step { interface: interface.into(), step: step.into(), priority, args: JsonObject::new() }
    }

    /// `interface.step`, the name used in logs and failure injection.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.interface, self.step)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    On,
    Off,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "power on",
            PowerState::Off => "power off",
        }
    }
}

/// A vendor passthru method.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorMethod {
    pub name: &'static str,
    pub http_methods: Vec<&'static str>,
    pub is_async: bool,
    pub description: &'static str,
    pub attach: bool,
    pub require_exclusive_lock: bool,
}

/// What a vendor method returned.
#[derive(Debug, Clone, PartialEq)]
pub enum VendorReturn {
    Json(serde_json::Value),
    /// Returned as a file attachment (`attach: true` methods).
    Bytes(Vec<u8>),
    None,
}

/// A ramdisk heartbeat as the API received it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    pub callback_url: String,
    pub agent_version: String,
    pub agent_status: String,
    pub agent_status_message: String,
}

#[async_trait]
pub trait PowerInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    async fn get_power_state(&self, task: &Task) -> DriverResult<PowerState>;
    async fn set_power_state(&self, task: &mut Task, target: PowerState, timeout: Option<Duration>)
    -> DriverResult<()>;
    async fn reboot(&self, task: &mut Task, timeout: Option<Duration>) -> DriverResult<()>;
}

#[async_trait]
pub trait ManagementInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    /// One-time or persistent boot device (`pxe`, `cdrom`, `disk`).
    async fn set_boot_device(&self, task: &mut Task, device: &str, persistent: bool) -> DriverResult<()>;
}

#[async_trait]
pub trait BootInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    /// Make the node boot the deploy/rescue ramdisk; `params` are extra
    /// kernel/ramdisk parameters (agent token, callback URL, ...).
    async fn prepare_ramdisk(&self, task: &mut Task, params: &BTreeMap<String, String>) -> DriverResult<()>;
    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()>;
    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()>;
    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()>;
    /// Rebuild this node's boot artefacts on a new owner (deterministic:
    /// same inputs, same bytes) and point the BMC at them.
    async fn take_over(&self, task: &mut Task) -> DriverResult<()>;
}

#[async_trait]
pub trait DeployInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    /// The steps of a deploy, in order.
    fn deploy_steps(&self, task: &Task) -> Vec<Step>;
    /// The automated cleaning steps, in order.
    fn clean_steps(&self, task: &Task) -> Vec<Step>;
    /// The tear-down steps of an undeploy, in order.
    fn tear_down_steps(&self, task: &Task) -> Vec<Step>;
    async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome>;
    async fn take_over(&self, task: &mut Task) -> DriverResult<()>;
    /// A ramdisk heartbeat; returns true when the waiting operation may
    /// resume at its next step.
    async fn heartbeat(&self, task: &mut Task, hb: &Heartbeat) -> DriverResult<bool>;
}

#[async_trait]
pub trait VendorInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn methods(&self) -> Vec<VendorMethod>;
    fn driver_methods(&self) -> Vec<VendorMethod>;
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    async fn call(&self, task: &mut Task, method: &str, body: &serde_json::Value) -> DriverResult<VendorReturn>;
    async fn driver_call(&self, method: &str, body: &serde_json::Value) -> DriverResult<VendorReturn>;
}

/// An interface with no behaviour beyond validation and named steps
/// (console, inspect, rescue, raid, bios, ...).
#[async_trait]
pub trait GenericInterface: Send + Sync {
    fn name(&self) -> &'static str;
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome>;
}

/// One node's resolved interfaces.
#[derive(Clone)]
pub struct Driver {
    pub hardware_type: &'static str,
    pub power: Arc<dyn PowerInterface>,
    pub management: Arc<dyn ManagementInterface>,
    pub boot: Arc<dyn BootInterface>,
    pub deploy: Arc<dyn DeployInterface>,
    pub vendor: Arc<dyn VendorInterface>,
    /// Every other interface by kind (bios, console, firmware, inspect,
    /// network, raid, rescue, storage).
    pub others: BTreeMap<&'static str, Arc<dyn GenericInterface>>,
}

impl Driver {
    /// Run one step, dispatched on its interface.
    pub async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        match step.interface.as_str() {
            "deploy" => self.deploy.execute_step(task, step).await,
            "power" if step.step == "get_power_state" => {
                let state = self.power.get_power_state(task).await?;
                task.node.power_state = Some(state.as_str().into());
                Ok(StepOutcome::Done)
            }
            "power" => {
                let target = match step.step.as_str() {
                    "power_on" => PowerState::On,
                    "power_off" => PowerState::Off,
                    other => {
                        return Err(DriverError::Invalid(format!("power interface has no step {other}")));
                    }
                };
                self.power.set_power_state(task, target, None).await.map(|_| StepOutcome::Done)
            }
            "boot" => match step.step.as_str() {
                "prepare_ramdisk" => self.boot.prepare_ramdisk(task, &BTreeMap::new()).await.map(|_| StepOutcome::Done),
                "clean_up_ramdisk" => self.boot.clean_up_ramdisk(task).await.map(|_| StepOutcome::Done),
                "prepare_instance" => self.boot.prepare_instance(task).await.map(|_| StepOutcome::Done),
                "clean_up_instance" => self.boot.clean_up_instance(task).await.map(|_| StepOutcome::Done),
                other => Err(DriverError::Invalid(format!("boot interface has no step {other}"))),
            },
            other => match self.others.get(other) {
                Some(iface) => iface.execute_step(task, step).await,
                None => Err(DriverError::Invalid(format!("unknown interface {other:?} in step {}", step.full_name()))),
            },
        }
    }

    /// validate() of every interface, in Ironic's order (vendor excluded,
    /// as `GET /v1/nodes/<n>/validate` does).
    pub async fn validate_all(&self, task: &Task) -> Vec<(String, DriverResult<()>)> {
        let mut out = vec![
            ("boot".to_string(), self.boot.validate(task).await),
            ("deploy".to_string(), self.deploy.validate(task).await),
            ("management".to_string(), self.management.validate(task).await),
            ("power".to_string(), self.power.validate(task).await),
        ];
        for (kind, iface) in &self.others {
            out.push((kind.to_string(), iface.validate(task).await));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The properties a driver understands, with descriptions.
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        for (k, v) in self
            .power
            .properties()
            .into_iter()
            .chain(self.management.properties())
            .chain(self.boot.properties())
            .chain(self.deploy.properties())
        {
            p.insert(k.to_string(), v.to_string());
        }
        p
    }
}

/// A hardware type: which implementation of each interface it supports and
/// which is the default.
pub struct HardwareType {
    pub name: &'static str,
    /// interface kind → (default, enabled implementations)
    pub interfaces: BTreeMap<&'static str, (&'static str, Vec<&'static str>)>,
    /// Build the driver for the resolved interface names.
    pub build: fn(&BTreeMap<&'static str, String>) -> DriverResult<Driver>,
}

/// The hardware types a conductor enables.
pub struct Registry {
    types: BTreeMap<&'static str, HardwareType>,
}

impl Registry {
    /// Every hardware type Ferric knows, filtered to `enabled`.
    pub fn new(enabled: &[String]) -> Result<Registry, DriverError> {
        let mut types = BTreeMap::new();
        for name in enabled {
            let ht = match name.as_str() {
                crate::fake::HARDWARE_TYPE => crate::fake::hardware_type(),
                other => {
                    return Err(DriverError::Invalid(format!(
                        "unknown hardware type {other:?} in enabled_hardware_types"
                    )));
                }
            };
            types.insert(ht.name, ht);
        }
        Ok(Registry { types })
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    pub fn get(&self, name: &str) -> Option<&HardwareType> {
        self.types.get(name)
    }

    /// Resolve a node's interface names (defaults for unset ones) and
    /// check each is enabled for its hardware type.
    pub fn resolve(&self, node: &Node) -> DriverResult<BTreeMap<&'static str, String>> {
        let ht = self
            .types
            .get(node.driver.as_str())
            .ok_or_else(|| DriverError::Invalid(format!("hardware type {} is not enabled", node.driver)))?;
        let mut out = BTreeMap::new();
        for (kind, (default, enabled)) in &ht.interfaces {
            let chosen = node.interfaces.get(kind).cloned().flatten().unwrap_or_else(|| default.to_string());
            if !enabled.contains(&chosen.as_str()) {
                return Err(DriverError::Invalid(format!(
                    "Could not find the following interface in the 'ironic.hardware.interfaces.{kind}' entrypoint: {chosen}. Valid interfaces are {}.",
                    enabled.join(", ")
                )));
            }
            out.insert(*kind, chosen);
        }
        Ok(out)
    }

    pub fn driver_for(&self, node: &Node) -> DriverResult<Driver> {
        let names = self.resolve(node)?;
        let ht = self.types.get(node.driver.as_str()).expect("resolve checked it");
        (ht.build)(&names)
    }
}
