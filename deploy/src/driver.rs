//! Driver interfaces, as in Ironic's boot-interface design: a hardware type
//! composes one implementation per interface kind, and the conductor calls
//! them under the node lock.
//!
//! Long operations (deploy, clean, tear-down, rescue, ...) are sequences of
//! *steps* (`interface.step`). The conductor persists which step it is in
//! before and after running it, and every step is idempotent, so another
//! conductor can resume an operation from the recorded step.
//!
//! Interfaces that drive others (a deploy boots the ramdisk through the
//! boot interface and reboots through the power interface) get the node's
//! whole [`Driver`] next to the task, as Ironic's `task.driver`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferric_common::model::{JsonObject, Node, Port};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::services::{DriverSettings, EjectPolicy, Services};

/// The kinds of interface a node has (`<kind>_interface` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InterfaceKind {
    Bios,
    Boot,
    Console,
    Deploy,
    Firmware,
    Inspect,
    Management,
    Network,
    Power,
    Raid,
    Rescue,
    Storage,
    Vendor,
}

impl InterfaceKind {
    pub const ALL: [InterfaceKind; 13] = [
        InterfaceKind::Bios,
        InterfaceKind::Boot,
        InterfaceKind::Console,
        InterfaceKind::Deploy,
        InterfaceKind::Firmware,
        InterfaceKind::Inspect,
        InterfaceKind::Management,
        InterfaceKind::Network,
        InterfaceKind::Power,
        InterfaceKind::Raid,
        InterfaceKind::Rescue,
        InterfaceKind::Storage,
        InterfaceKind::Vendor,
    ];

    /// The kinds with behaviour beyond validation and named steps.
    pub const CORE: [InterfaceKind; 5] = [
        InterfaceKind::Boot,
        InterfaceKind::Deploy,
        InterfaceKind::Management,
        InterfaceKind::Power,
        InterfaceKind::Vendor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceKind::Bios => "bios",
            InterfaceKind::Boot => "boot",
            InterfaceKind::Console => "console",
            InterfaceKind::Deploy => "deploy",
            InterfaceKind::Firmware => "firmware",
            InterfaceKind::Inspect => "inspect",
            InterfaceKind::Management => "management",
            InterfaceKind::Network => "network",
            InterfaceKind::Power => "power",
            InterfaceKind::Raid => "raid",
            InterfaceKind::Rescue => "rescue",
            InterfaceKind::Storage => "storage",
            InterfaceKind::Vendor => "vendor",
        }
    }

    pub fn parse(s: &str) -> Option<InterfaceKind> {
        InterfaceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_generic(self) -> bool {
        !InterfaceKind::CORE.contains(&self)
    }
}

impl std::fmt::Display for InterfaceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The node under an exclusive lock, as a driver sees it. Drivers change
/// `node` in place; the conductor persists it.
#[derive(Debug, Clone)]
pub struct Task {
    pub node: Node,
    pub ports: Vec<Port>,
    /// Who runs the task (for logs and artefact ownership).
    pub conductor_id: String,
    /// What the conductor lends its drivers: media publishing, agent
    /// tokens, BMC connections, settings.
    pub services: Arc<Services>,
}

impl Task {
    pub fn new(node: Node, ports: Vec<Port>, conductor_id: &str, services: Arc<Services>) -> Task {
        Task { node, ports, conductor_id: conductor_id.to_string(), services }
    }

    pub fn media(&self) -> &crate::media::Media {
        &self.services.media
    }

    pub fn uuid(&self) -> uuid::Uuid {
        self.node.uuid
    }
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

impl From<crate::media::MediaError> for DriverError {
    fn from(e: crate::media::MediaError) -> Self {
        if e.is_retryable() { DriverError::Retryable(e.to_string()) } else { DriverError::Failed(e.to_string()) }
    }
}

pub type DriverResult<T> = Result<T, DriverError>;

/// A ramdisk parameter (`prepare_ramdisk`'s `params`) with this value
/// gets the session's token, minted when the media are made (the iSCSI
/// deploy's `deploy_key`).
pub const SESSION_TOKEN: &str = "@@ferric-session-token@@";

/// What a step left the operation in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Go on with the next step.
    Done,
    /// Wait for a ramdisk callback (heartbeat / pass_deploy_info), which
    /// resumes the operation at the next step.
    Wait,
    /// Wait for a ramdisk callback, then run this same step again (a step
    /// that drives a sequence of asynchronous agent commands).
    WaitHere,
}

/// What a heartbeat means for the waiting operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Go on (at the step the operation waits for).
    Resume,
    /// Not yet (an agent command still runs): keep waiting; the deadline
    /// moves on.
    KeepWaiting,
    /// The ramdisk reports a failure: fail the operation with this message.
    Fail(String),
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

/// A power action (Ironic's power targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    On,
    Off,
    /// ACPI shutdown (`soft power off`).
    SoftOff,
    /// Hard reset, or power on when off (`rebooting`).
    Reboot,
    /// ACPI restart (`soft rebooting`).
    SoftReboot,
}

impl PowerAction {
    /// Ironic's target names.
    pub fn parse(target: &str) -> Option<PowerAction> {
        Some(match target {
            "power on" => PowerAction::On,
            "power off" => PowerAction::Off,
            "soft power off" => PowerAction::SoftOff,
            "rebooting" => PowerAction::Reboot,
            "soft rebooting" => PowerAction::SoftReboot,
            _ => return None,
        })
    }

    /// The power state the action ends in.
    pub fn target(self) -> PowerState {
        match self {
            PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
            PowerAction::On | PowerAction::Reboot | PowerAction::SoftReboot => PowerState::On,
        }
    }

    pub fn is_reboot(self) -> bool {
        matches!(self, PowerAction::Reboot | PowerAction::SoftReboot)
    }
}

/// A boot device (`management.set_boot_device`), as Ironic names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
    Cdrom,
    Bios,
}

impl BootDevice {
    pub fn parse(s: &str) -> Option<BootDevice> {
        Some(match s {
            "pxe" => BootDevice::Pxe,
            "disk" => BootDevice::Disk,
            "cdrom" => BootDevice::Cdrom,
            "bios" => BootDevice::Bios,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Bios => "bios",
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
    /// The PEM CA of an agent serving https.
    pub agent_verify_ca: String,
}

#[async_trait]
pub trait PowerInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    async fn get_power_state(&self, task: &Task) -> DriverResult<PowerState>;
    /// Performs `action` and waits until the BMC reports its target state
    /// (`timeout`, else `[conductor] power_state_change_timeout`).
    async fn set_power_state(
        &self,
        task: &mut Task,
        action: PowerAction,
        timeout: Option<Duration>,
    ) -> DriverResult<()>;
}

#[async_trait]
pub trait ManagementInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    /// One-time or persistent boot device.
    async fn set_boot_device(&self, task: &mut Task, device: BootDevice, persistent: bool) -> DriverResult<()>;
}

#[async_trait]
pub trait BootInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()>;
    /// Whether the node can boot a deploy/rescue ramdisk (its images are
    /// named and valid); called by the deploy interfaces that boot one.
    async fn validate_ramdisk(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    /// Make the node boot the deploy/rescue ramdisk at its next boot;
    /// `params` are extra ramdisk parameters. Mints the ramdisk's agent
    /// token where the boot media can carry it.
    async fn prepare_ramdisk(&self, task: &mut Task, params: &BTreeMap<String, String>) -> DriverResult<()>;
    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()>;
    /// Make the node boot its instance (from disk, or from a boot ISO).
    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()>;
    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()>;
    /// The ramdisk called back (the operation resumes after its wait).
    async fn ramdisk_called_back(&self, _task: &mut Task) -> DriverResult<()> {
        Ok(())
    }
    /// The node is about to be power-cycled outside an operation (an API
    /// reboot or power-on): make sure what it boots from is in place
    /// (re-attach a boot ISO whose URL expired or moved).
    async fn prepare_reboot(&self, _task: &mut Task) -> DriverResult<()> {
        Ok(())
    }
    /// Rebuild this node's boot artefacts on a new owner (deterministic:
    /// same inputs, same bytes) and point the BMC at them.
    async fn take_over(&self, task: &mut Task) -> DriverResult<()>;
    /// Whether the artefacts this conductor published for the node are
    /// still in its store (a local check, no BMC call): a conductor that
    /// restarts with an emptied HTTP root takes such nodes over again.
    async fn artefacts_present(&self, _task: &Task) -> DriverResult<bool> {
        Ok(true)
    }
}

#[async_trait]
pub trait DeployInterface: Send + Sync {
    fn name(&self) -> &'static str;
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, driver: &Driver, task: &Task) -> DriverResult<()>;
    /// The steps of a deploy, in order.
    fn deploy_steps(&self, task: &Task) -> Vec<Step>;
    /// The automated cleaning steps, in order.
    fn clean_steps(&self, task: &Task) -> Vec<Step>;
    /// The tear-down steps of an undeploy, in order.
    fn tear_down_steps(&self, task: &Task) -> Vec<Step>;
    async fn execute_step(&self, driver: &Driver, task: &mut Task, step: &Step) -> DriverResult<StepOutcome>;
    async fn take_over(&self, driver: &Driver, task: &mut Task) -> DriverResult<()>;
    /// A ramdisk heartbeat while the operation waits for its ramdisk.
    async fn heartbeat(&self, driver: &Driver, task: &mut Task, hb: &Heartbeat) -> DriverResult<HeartbeatOutcome>;
    /// The iSCSI ramdisk's `pass_deploy_info` (its deploy key already
    /// verified, the node waiting for it): record what it says.
    async fn pass_deploy_info(
        &self,
        _driver: &Driver,
        task: &mut Task,
        _body: &Value,
    ) -> DriverResult<HeartbeatOutcome> {
        Err(DriverError::Invalid(format!(
            "pass_deploy_info is only accepted from the iscsi deploy interface; node {} uses {}",
            task.node.uuid,
            self.name()
        )))
    }
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
    pub others: BTreeMap<InterfaceKind, Arc<dyn GenericInterface>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("hardware_type", &self.hardware_type)
            .field("boot", &self.boot.name())
            .field("deploy", &self.deploy.name())
            .field("power", &self.power.name())
            .finish()
    }
}

impl Driver {
    /// Run one step, dispatched on its interface.
    pub async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        let Some(kind) = InterfaceKind::parse(&step.interface) else {
            return Err(DriverError::Invalid(format!(
                "unknown interface {:?} in step {}",
                step.interface,
                step.full_name()
            )));
        };
        match kind {
            InterfaceKind::Deploy => self.deploy.execute_step(self, task, step).await,
            InterfaceKind::Power if step.step == "get_power_state" => {
                let state = self.power.get_power_state(task).await?;
                task.node.power_state = Some(state.as_str().into());
                Ok(StepOutcome::Done)
            }
            InterfaceKind::Power => {
                let action = match step.step.as_str() {
                    "power_on" => PowerAction::On,
                    "power_off" => PowerAction::Off,
                    "reboot" => PowerAction::Reboot,
                    other => {
                        return Err(DriverError::Invalid(format!("power interface has no step {other}")));
                    }
                };
                self.power.set_power_state(task, action, None).await?;
                task.node.power_state = Some(action.target().as_str().into());
                Ok(StepOutcome::Done)
            }
            InterfaceKind::Boot => match step.step.as_str() {
                "prepare_ramdisk" => self.boot.prepare_ramdisk(task, &BTreeMap::new()).await.map(|_| StepOutcome::Done),
                "clean_up_ramdisk" => self.boot.clean_up_ramdisk(task).await.map(|_| StepOutcome::Done),
                "prepare_instance" => self.boot.prepare_instance(task).await.map(|_| StepOutcome::Done),
                "clean_up_instance" => self.boot.clean_up_instance(task).await.map(|_| StepOutcome::Done),
                // inserted by the conductor when a ramdisk's callback
                // resumes an operation (see operation.rs)
                "ramdisk_called_back" => self.boot.ramdisk_called_back(task).await.map(|_| StepOutcome::Done),
                other => Err(DriverError::Invalid(format!("boot interface has no step {other}"))),
            },
            other => match self.others.get(&other) {
                Some(iface) => iface.execute_step(task, step).await,
                None => Err(DriverError::Invalid(format!("the {other} interface has no step {}", step.step))),
            },
        }
    }

    /// validate() of every interface, in Ironic's order (vendor excluded,
    /// as `GET /v1/nodes/<n>/validate` does).
    /// Validates the interfaces of `kinds` only (a provision action checks
    /// what it will use, and does not wait on a BMC it will not touch).
    pub async fn validate_kinds(&self, task: &Task, kinds: &[InterfaceKind]) -> Vec<(InterfaceKind, DriverResult<()>)> {
        let mut out = Vec::new();
        for kind in kinds {
            let r = match kind {
                InterfaceKind::Boot => self.boot.validate(task).await,
                InterfaceKind::Deploy => self.deploy.validate(self, task).await,
                InterfaceKind::Management => self.management.validate(task).await,
                InterfaceKind::Power => self.power.validate(task).await,
                other => match self.others.get(other) {
                    Some(iface) => iface.validate(task).await,
                    None => continue,
                },
            };
            out.push((*kind, r));
        }
        out
    }

    pub async fn validate_all(&self, task: &Task) -> Vec<(InterfaceKind, DriverResult<()>)> {
        let mut out = vec![
            (InterfaceKind::Boot, self.boot.validate(task).await),
            (InterfaceKind::Deploy, self.deploy.validate(self, task).await),
            (InterfaceKind::Management, self.management.validate(task).await),
            (InterfaceKind::Power, self.power.validate(task).await),
        ];
        for (kind, iface) in &self.others {
            out.push((*kind, iface.validate(task).await));
        }
        out.sort_by_key(|(k, _)| k.as_str());
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

pub use crate::hardware::{HardwareType, Registry};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_kinds_round_trip_and_match_the_node_fields() {
        for k in InterfaceKind::ALL {
            assert_eq!(InterfaceKind::parse(k.as_str()), Some(k));
        }
        let names: Vec<&str> = InterfaceKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ferric_common::model::NODE_INTERFACES.to_vec(), "one kind per <kind>_interface field");
        assert!(InterfaceKind::Rescue.is_generic() && !InterfaceKind::Boot.is_generic());
    }

    #[test]
    fn power_targets_as_ironic_names_them() {
        assert_eq!(PowerAction::parse("soft rebooting"), Some(PowerAction::SoftReboot));
        assert_eq!(PowerAction::parse("rebooting").unwrap().target(), PowerState::On);
        assert_eq!(PowerAction::parse("soft power off").unwrap().target(), PowerState::Off);
        assert_eq!(PowerAction::parse("off"), None);
    }
}
