//! `fake-hardware`: a hardware type whose interfaces touch no machine but
//! behave like real ones toward the conductor — power state persisted,
//! steps run in order, take-over recorded — so the control plane can be
//! exercised end to end.
//!
//! Test hooks, read from the node's `driver_info`:
//! * `fake_step_delay_ms`: every step and power action sleeps this long
//!   (to kill conductors mid-operation in chaos tests);
//! * `fake_fail_step`: the `interface.step` (or `power.set_power_state`)
//!   that fails, to drive the failure paths;
//! * `fake_wait_after`: the deploy step (`deploy.write_image`, ...) after
//!   which the node waits for a ramdisk heartbeat (`wait call-back`), as a
//!   real agent deploy does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::driver::*;

pub const HARDWARE_TYPE: &str = "fake-hardware";

const OTHER_KINDS: [&str; 8] = ["bios", "console", "firmware", "inspect", "network", "raid", "rescue", "storage"];

pub fn hardware_type() -> HardwareType {
    let mut interfaces = BTreeMap::new();
    for kind in ["boot", "deploy", "management", "power", "vendor"] {
        interfaces.insert(kind, ("fake", vec!["fake"]));
    }
    for kind in OTHER_KINDS {
        let (default, enabled) = match kind {
            "network" | "storage" => ("noop", vec!["noop"]),
            "inspect" => ("fake", vec!["fake", "no-inspect"]),
            "rescue" => ("fake", vec!["fake", "no-rescue"]),
            "bios" => ("fake", vec!["fake", "no-bios"]),
            "console" => ("fake", vec!["fake", "no-console"]),
            "firmware" => ("fake", vec!["fake", "no-firmware"]),
            "raid" => ("fake", vec!["fake", "no-raid"]),
            _ => unreachable!(),
        };
        interfaces.insert(kind, (default, enabled));
    }
    HardwareType { name: HARDWARE_TYPE, interfaces, build }
}

fn build(names: &BTreeMap<&'static str, String>) -> DriverResult<Driver> {
    let mut others: BTreeMap<&'static str, Arc<dyn GenericInterface>> = BTreeMap::new();
    for kind in OTHER_KINDS {
        let implemented = names.get(kind).map(|n| n == "fake" || n == "noop").unwrap_or(false);
        others.insert(kind, Arc::new(FakeGeneric { kind, implemented }));
    }
    Ok(Driver {
        hardware_type: HARDWARE_TYPE,
        power: Arc::new(FakePower),
        management: Arc::new(FakeManagement),
        boot: Arc::new(FakeBoot),
        deploy: Arc::new(FakeDeploy),
        vendor: Arc::new(FakeVendor),
        others,
    })
}

/// Apply the injected delay, then the injected failure for `name`.
async fn hooks(task: &Task, name: &str) -> DriverResult<()> {
    if let Some(ms) = task.node.driver_info.get("fake_step_delay_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if task.node.driver_info.get("fake_fail_step").and_then(Value::as_str) == Some(name) {
        return Err(DriverError::Failed(format!("fake-hardware: injected failure in {name}")));
    }
    Ok(())
}

fn record(task: &mut Task, key: &str, value: Value) {
    task.node.driver_internal_info.insert(key.to_string(), value);
}

struct FakePower;

#[async_trait]
impl PowerInterface for FakePower {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("fake_step_delay_ms", "Milliseconds every fake step sleeps. Optional."),
            ("fake_fail_step", "The step (interface.step) that fails, for testing. Optional."),
        ])
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        if let Some(v) = task.node.driver_info.get("fake_step_delay_ms")
            && v.as_u64().is_none()
        {
            return Err(DriverError::Invalid("driver_info.fake_step_delay_ms must be a non-negative integer".into()));
        }
        Ok(())
    }
    async fn get_power_state(&self, task: &Task) -> DriverResult<PowerState> {
        Ok(match task.node.power_state.as_deref() {
            Some("power on") => PowerState::On,
            _ => PowerState::Off,
        })
    }
    async fn set_power_state(
        &self,
        task: &mut Task,
        target: PowerState,
        _timeout: Option<Duration>,
    ) -> DriverResult<()> {
        hooks(task, "power.set_power_state").await?;
        task.node.power_state = Some(target.as_str().into());
        Ok(())
    }
    async fn reboot(&self, task: &mut Task, timeout: Option<Duration>) -> DriverResult<()> {
        self.set_power_state(task, PowerState::On, timeout).await
    }
}

struct FakeManagement;

#[async_trait]
impl ManagementInterface for FakeManagement {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn set_boot_device(&self, task: &mut Task, device: &str, persistent: bool) -> DriverResult<()> {
        record(task, "fake_boot_device", json!({"boot_device": device, "persistent": persistent}));
        Ok(())
    }
}

struct FakeBoot;

#[async_trait]
impl BootInterface for FakeBoot {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn prepare_ramdisk(&self, task: &mut Task, _params: &BTreeMap<String, String>) -> DriverResult<()> {
        hooks(task, "boot.prepare_ramdisk").await?;
        record(task, "fake_boot", json!("ramdisk"));
        Ok(())
    }
    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()> {
        task.node.driver_internal_info.remove("fake_boot");
        Ok(())
    }
    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()> {
        hooks(task, "boot.prepare_instance").await?;
        record(task, "fake_boot", json!("instance"));
        Ok(())
    }
    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()> {
        task.node.driver_internal_info.remove("fake_boot");
        Ok(())
    }
    async fn take_over(&self, task: &mut Task) -> DriverResult<()> {
        hooks(task, "boot.take_over").await?;
        let what = task.node.driver_internal_info.get("fake_boot").cloned().unwrap_or(Value::Null);
        let by = task.conductor_id.clone();
        record(task, "fake_take_over", json!({"by": by, "regenerated": what}));
        Ok(())
    }
}

struct FakeDeploy;

#[async_trait]
impl DeployInterface for FakeDeploy {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    fn deploy_steps(&self, _task: &Task) -> Vec<Step> {
        vec![
            Step::new("deploy", "deploy", 100),
            Step::new("deploy", "write_image", 80),
            Step::new("deploy", "prepare_instance_boot", 60),
            Step::new("deploy", "boot_instance", 20),
        ]
    }
    fn clean_steps(&self, _task: &Task) -> Vec<Step> {
        vec![Step::new("deploy", "erase_devices_metadata", 99)]
    }
    fn tear_down_steps(&self, _task: &Task) -> Vec<Step> {
        vec![Step::new("deploy", "tear_down", 0)]
    }
    async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        hooks(task, &step.full_name()).await?;
        match step.step.as_str() {
            "deploy" => {
                task.node.driver_internal_info.retain(|k, _| !k.starts_with("fake_waited_"));
                record(task, "fake_boot", json!("ramdisk"));
            }
            "write_image" => {
                let image = task.node.instance_info.get("image_source").cloned().unwrap_or(Value::Null);
                record(task, "fake_image_written", image);
            }
            "prepare_instance_boot" => record(task, "fake_boot", json!("instance")),
            "boot_instance" => task.node.power_state = Some(PowerState::On.as_str().into()),
            "tear_down" => {
                task.node.driver_internal_info.retain(|k, _| !k.starts_with("fake_waited_"));
                task.node.power_state = Some(PowerState::Off.as_str().into());
                task.node.driver_internal_info.remove("fake_boot");
                task.node.driver_internal_info.remove("fake_image_written");
            }
            "erase_devices_metadata" | "erase_devices" => {
                record(task, "fake_cleaned", json!(true));
            }
            other => {
                return Err(DriverError::Invalid(format!("deploy interface fake has no step {other}")));
            }
        }
        let name = step.full_name();
        if task.node.driver_info.get("fake_wait_after").and_then(Value::as_str) == Some(name.as_str()) {
            let key = format!("fake_waited_{}", step.step);
            if task.node.driver_internal_info.insert(key, json!(true)).is_none() {
                return Ok(StepOutcome::Wait);
            }
        }
        Ok(StepOutcome::Done)
    }
    async fn take_over(&self, task: &mut Task) -> DriverResult<()> {
        hooks(task, "deploy.take_over").await
    }
    async fn heartbeat(&self, _task: &mut Task, _hb: &Heartbeat) -> DriverResult<bool> {
        Ok(true)
    }
}

struct FakeVendor;

fn method(
    name: &'static str,
    http: &[&'static str],
    is_async: bool,
    attach: bool,
    description: &'static str,
) -> VendorMethod {
    VendorMethod { name, http_methods: http.to_vec(), is_async, description, attach, require_exclusive_lock: is_async }
}

#[async_trait]
impl VendorInterface for FakeVendor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn methods(&self) -> Vec<VendorMethod> {
        vec![
            method("first_method", &["POST"], true, false, "Records its argument bar in driver_internal_info"),
            method("second_method", &["POST"], false, false, "Returns its arguments"),
            method("get_log", &["GET"], false, true, "Returns a log file as an attachment"),
        ]
    }
    fn driver_methods(&self) -> Vec<VendorMethod> {
        vec![method("driver_method", &["POST", "GET"], false, false, "Echoes its arguments")]
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn call(&self, task: &mut Task, method: &str, body: &Value) -> DriverResult<VendorReturn> {
        match method {
            "first_method" => {
                let bar = body.get("bar").cloned().ok_or_else(|| {
                    DriverError::Invalid("Parameter 'bar' not passed to method 'first_method'.".into())
                })?;
                record(task, "fake_vendor_bar", bar);
                Ok(VendorReturn::None)
            }
            "second_method" => Ok(VendorReturn::Json(json!({"node": task.node.uuid, "args": body}))),
            "get_log" => Ok(VendorReturn::Bytes(format!("log of node {}\n", task.node.uuid).into_bytes())),
            other => Err(DriverError::Invalid(format!("No handler for method {other}"))),
        }
    }
    async fn driver_call(&self, method: &str, body: &Value) -> DriverResult<VendorReturn> {
        match method {
            "driver_method" => Ok(VendorReturn::Json(json!({"args": body}))),
            other => Err(DriverError::Invalid(format!("No handler for method {other}"))),
        }
    }
}

struct FakeGeneric {
    kind: &'static str,
    implemented: bool,
}

#[async_trait]
impl GenericInterface for FakeGeneric {
    fn name(&self) -> &'static str {
        if self.implemented { "fake" } else { "none" }
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        if self.kind == "rescue" && !self.implemented {
            return Err(DriverError::Unsupported(format!(
                "Driver {} does not support rescue (disabled or not implemented).",
                task.node.driver
            )));
        }
        Ok(())
    }
    async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        if !self.implemented {
            return Err(DriverError::Unsupported(format!(
                "the {} interface of this node does not implement {}",
                self.kind, step.step
            )));
        }
        hooks(task, &step.full_name()).await?;
        match (self.kind, step.step.as_str()) {
            ("rescue", "rescue") => record(task, "fake_rescued", json!(true)),
            ("rescue", "unrescue") => {
                task.node.driver_internal_info.remove("fake_rescued");
            }
            ("inspect", "inspect_hardware") => {
                task.node.properties.entry("cpus").or_insert(json!(4));
                task.node.properties.entry("memory_mb").or_insert(json!(8192));
            }
            _ => {}
        }
        Ok(StepOutcome::Done)
    }
}
