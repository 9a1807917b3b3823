//! The `fake` deploy: a deploy's real flow without writing an image. It
//! boots the ramdisk through the node's boot interface and reboots through
//! its power interface (on `fake-hardware` those are fake too; on
//! `redfish` they drive a real BMC and real virtual media), optionally
//! waits for a ramdisk callback (`fake_wait_after`), records the image it
//! would have written, prepares the instance's boot and boots it.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::driver::*;
use crate::fake_hooks;

pub struct FakeDeploy;

#[async_trait]
impl DeployInterface for FakeDeploy {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, driver: &Driver, task: &Task) -> DriverResult<()> {
        fake_hooks::validate(task)?;
        // it boots the deploy ramdisk
        driver.boot.validate_ramdisk(task).await
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
    async fn execute_step(&self, driver: &Driver, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        fake_hooks::step(task, &step.full_name()).await?;
        match step.step.as_str() {
            "deploy" => {
                task.node.driver_internal_info.retain(|k, _| !k.starts_with("fake_waited_"));
                driver.boot.prepare_ramdisk(task, &BTreeMap::new()).await?;
                driver.power.set_power_state(task, PowerAction::Reboot, None).await?;
            }
            "write_image" => {
                let image = task.node.instance_info.get("image_source").cloned().unwrap_or(Value::Null);
                fake_hooks::record(task, "fake_image_written", image);
            }
            "prepare_instance_boot" => driver.boot.prepare_instance(task).await?,
            "boot_instance" => driver.power.set_power_state(task, PowerAction::Reboot, None).await?,
            "tear_down" => {
                task.node.driver_internal_info.retain(|k, _| !k.starts_with("fake_waited_"));
                driver.power.set_power_state(task, PowerAction::Off, None).await?;
                driver.boot.clean_up_instance(task).await?;
                driver.boot.clean_up_ramdisk(task).await?;
                task.node.driver_internal_info.remove("fake_image_written");
            }
            "erase_devices_metadata" | "erase_devices" => {
                fake_hooks::record(task, "fake_cleaned", json!(true));
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
    async fn take_over(&self, _driver: &Driver, task: &mut Task) -> DriverResult<()> {
        fake_hooks::step(task, "deploy.take_over").await
    }
    async fn heartbeat(&self, _driver: &Driver, _task: &mut Task, _hb: &Heartbeat) -> DriverResult<HeartbeatOutcome> {
        Ok(HeartbeatOutcome::Resume)
    }
}
