//! The `ramdisk` deploy (Ironic's): no disk is written and no agent runs.
//! The instance is a kernel and ramdisk (`instance_info.kernel`,
//! `instance_info.ramdisk`, with `ramdisk_kernel_arguments`) or a whole
//! ISO (`instance_info.boot_iso`), and the node boots it from media the
//! boot interface prepares — a content-addressed boot ISO shared by every
//! node with the same inputs, or the node's network-boot script. A config
//! drive (`instance_info.configdrive`, as an image or an object; not a
//! URL: no agent runs to fetch it) goes on the BMC's removable virtual
//! medium. Deploy = power off → prepare the instance's boot → power on;
//! undeploy = power off → eject and release.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::driver::*;

pub struct RamdiskDeploy;

/// The boot option this deploy records for the boot interface.
pub const BOOT_OPTION: &str = "ramdisk";

fn has(task: &Task, key: &str) -> bool {
    task.node.instance_info.get(key).and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty())
}

#[async_trait]
impl DeployInterface for RamdiskDeploy {
    fn name(&self) -> &'static str {
        "ramdisk"
    }
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }
    async fn validate(&self, driver: &Driver, task: &Task) -> DriverResult<()> {
        // a config drive rides on a second virtual medium
        if crate::boot::virtual_media::config_drive(task)?.is_some() && !driver.boot.name().ends_with("virtual-media") {
            return Err(DriverError::Invalid(format!(
                "instance_info.configdrive reaches a diskless instance on a virtual medium, and boot interface {} \
                 has none: boot it by virtual media, or drop the config drive",
                driver.boot.name()
            )));
        }
        if has(task, "boot_iso") {
            return Ok(());
        }
        let missing: Vec<&str> = ["kernel", "ramdisk"].into_iter().filter(|k| !has(task, k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(DriverError::Invalid(format!(
            "the ramdisk deploy needs instance_info.boot_iso, or instance_info.kernel and instance_info.ramdisk; \
             missing: {}",
            missing.iter().map(|m| format!("instance_info.{m}")).collect::<Vec<_>>().join(", ")
        )))
    }
    fn deploy_steps(&self, _task: &Task) -> Vec<Step> {
        vec![Step::new("deploy", "deploy", 100)]
    }
    fn clean_steps(&self, _task: &Task) -> Vec<Step> {
        Vec::new()
    }
    fn tear_down_steps(&self, _task: &Task) -> Vec<Step> {
        vec![Step::new("deploy", "tear_down", 0)]
    }
    async fn execute_step(&self, driver: &Driver, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        match step.step.as_str() {
            "deploy" => {
                self.validate(driver, task).await?;
                task.node.driver_internal_info.insert("boot_option".into(), json!(BOOT_OPTION));
                driver.power.set_power_state(task, PowerAction::Off, None).await?;
                driver.boot.prepare_instance(task).await?;
                driver.power.set_power_state(task, PowerAction::On, None).await?;
            }
            "tear_down" => {
                driver.power.set_power_state(task, PowerAction::Off, None).await?;
                driver.boot.clean_up_instance(task).await?;
                driver.boot.clean_up_ramdisk(task).await?;
                task.node.driver_internal_info.remove("boot_option");
            }
            other => return Err(DriverError::Invalid(format!("deploy interface ramdisk has no step {other}"))),
        }
        Ok(StepOutcome::Done)
    }
    async fn take_over(&self, _driver: &Driver, _task: &mut Task) -> DriverResult<()> {
        // the boot interface re-attaches the instance's media
        Ok(())
    }
    async fn heartbeat(&self, _driver: &Driver, _task: &mut Task, _hb: &Heartbeat) -> DriverResult<HeartbeatOutcome> {
        // no agent runs for a ramdisk deploy
        Ok(HeartbeatOutcome::KeepWaiting)
    }
}
