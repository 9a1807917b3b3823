//! The `direct` (agent) deploy: the deploy ramdisk (ironic-python-agent,
//! or anything speaking its API) downloads and writes the image itself.
//! Commands, order and fields as Ironic 39 sends them (notes/
//! ironic-compat.md §8; `agent.rs` for the transport).
//!
//! Deploy steps (priorities as Ironic's):
//!
//! | step | priority | what |
//! |---|---|---|
//! | `deploy.deploy` | 100 | boot the ramdisk (`boot.prepare_ramdisk`, reboot), wait for its callback |
//! | `deploy.write_image` | 80 | `deploy.get_deploy_steps`, then every agent deploy step with a priority (`write_image` with the image info and the config drive), each `deploy.execute_deploy_step`, asynchronous: the operation waits, and each heartbeat looks whether the command finished |
//! | `deploy.prepare_instance_boot` | 60 | `standby.get_partition_uuids`; `image.install_bootloader` for UEFI whole-disk images; `boot.prepare_instance` |
//! | `deploy.tear_down_agent` | 40 | `standby.power_off`, then the BMC until the machine is off (forced after `post_deploy_power_off_timeout`) |
//! | `deploy.boot_instance` | 20 | power on (from disk) |
//!
//! Automated cleaning: `deploy.prepare_cleaning` (boot the ramdisk, wait),
//! `deploy.run_clean_steps` (`clean.get_clean_steps`, then each agent
//! clean step with a priority, highest first — `erase_devices_metadata`
//! 99, `erase_devices` 10 — as `clean.execute_clean_step`), then the
//! ramdisk is cleaned up and the node powered off.
//!
//! An agent step sequence is recorded on the node
//! (`driver_internal_info.agent_step_run`: the steps left and the one whose
//! command was sent), so any conductor resumes it: it asks the agent how
//! the recorded command ended and goes on from there. A failed command
//! fails the operation with the agent's words; the ramdisk's logs are
//! collected (`[agent] deploy_logs_collect`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::text;
use crate::agent::{self, Command};
use crate::driver::*;

pub struct DirectDeploy;

const RUN_KEY: &str = "agent_step_run";
const HMV_KEY: &str = "hardware_manager_version";

/// An agent step sequence in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AgentRun {
    /// `deploy` or `clean`.
    kind: String,
    /// The agent's step list was fetched (`get_<kind>_steps`).
    fetched: bool,
    /// Steps still to run, in order.
    pending: Vec<Value>,
    /// The step whose `execute_<kind>_step` was sent.
    current: Option<Value>,
}

impl AgentRun {
    fn load(task: &Task, kind: &str) -> AgentRun {
        task.node
            .driver_internal_info
            .get(RUN_KEY)
            .and_then(|v| serde_json::from_value::<AgentRun>(v.clone()).ok())
            .filter(|r| r.kind == kind)
            .unwrap_or(AgentRun { kind: kind.to_string(), ..Default::default() })
    }

    fn store(&self, task: &mut Task) {
        task.node.driver_internal_info.insert(RUN_KEY.into(), serde_json::to_value(self).expect("serialises"));
    }

    fn clear(task: &mut Task) {
        task.node.driver_internal_info.remove(RUN_KEY);
    }
}

/// The `image_info` of the agent's `write_image` step, from
/// `instance_info` (Ironic's field names).
fn image_info(task: &Task) -> DriverResult<Value> {
    let ii = &task.node.instance_info;
    let source = text(ii, "image_source").ok_or_else(|| {
        DriverError::Invalid("the direct deploy needs instance_info.image_source (the image's http(s) URL)".into())
    })?;
    let url = text(ii, "image_url").unwrap_or_else(|| source.clone());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(DriverError::Invalid(format!(
            "instance_info.image_source {url:?}: the ramdisk downloads the image itself, so it must be an http(s) URL"
        )));
    }
    let mut info = json!({
        "id": source.rsplit('/').next().unwrap_or(&source),
        "urls": [url],
        "disk_format": text(ii, "image_disk_format"),
        "container_format": text(ii, "image_container_format"),
        "stream_raw_images": true,
        "node_uuid": task.node.uuid,
        "image_type": text(ii, "image_type").unwrap_or_else(|| "whole-disk".into()),
    });
    let checksum = text(ii, "image_checksum");
    let (algo, value) = (text(ii, "image_os_hash_algo"), text(ii, "image_os_hash_value"));
    match (checksum, algo, value) {
        (_, Some(a), Some(v)) => {
            if !matches!(a.as_str(), "md5" | "sha256" | "sha512") {
                return Err(DriverError::Invalid(format!(
                    "instance_info.image_os_hash_algo {a:?}: one of md5, sha256, sha512"
                )));
            }
            info["os_hash_algo"] = a.into();
            info["os_hash_value"] = v.into();
        }
        (Some(c), _, _) => info["checksum"] = c.into(),
        _ => {
            return Err(DriverError::Invalid(
                "the direct deploy needs instance_info.image_checksum, or instance_info.image_os_hash_algo and \
                 instance_info.image_os_hash_value"
                    .into(),
            ));
        }
    }
    let cd = crate::image::configdrive::for_agent(
        ii.get("configdrive"),
        &task.node.uuid.to_string(),
        task.node.name.as_deref(),
    )
    .map_err(|e| DriverError::Invalid(e.to_string()))?;
    if let Some(cd) = cd {
        info["configdrive"] = cd.into();
    }
    Ok(info)
}

/// The node as the agent gets it (Ironic's `node.as_dict(secure=True)`):
/// what it needs to find disks and images, secrets masked.
fn node_for_agent(task: &Task) -> Value {
    use ferric_common::secrets::{DRIVER_INFO_SECRET_KEYS, mask};
    let n = &task.node;
    // the one masking every process uses (ferric_common::secrets), at every depth
    json!({
        "uuid": n.uuid,
        "name": n.name,
        "driver": n.driver,
        "properties": n.properties,
        "instance_info": mask(&n.instance_info, &[]),
        "driver_info": mask(&n.driver_info, DRIVER_INFO_SECRET_KEYS),
        // the agent session's nonce (conductors derive the token from it)
        "driver_internal_info": mask(&n.driver_internal_info, &[crate::token::NONCE_KEY]),
        "instance_uuid": n.instance_uuid,
    })
}

fn ports_for_agent(task: &Task) -> Value {
    Value::Array(
        task.ports
            .iter()
            .map(|p| json!({"uuid": p.uuid, "address": p.address, "pxe_enabled": p.pxe_enabled}))
            .collect(),
    )
}

/// The agent's step list (`{"<hardware manager>": [steps]}`) flattened to
/// the steps that run by themselves (priority > 0), highest first.
/// The agent answers 409 while it runs another command — one an owner
/// sent just before it died, before it could record it: the command's end
/// forces a heartbeat, which runs the step again (Ironic's AgentInProgress).
fn agent_busy(e: &agent::AgentError) -> bool {
    matches!(e, agent::AgentError::Refused { status: 409, .. })
}

/// Ironic's priority of the agent's image step.
const WRITE_IMAGE_PRIORITY: u64 = 80;

/// A step the agent offers, whatever its priority.
fn offered_step(result: &Value, kind: &str, name: &str) -> Option<Value> {
    result
        .get(format!("{kind}_steps"))
        .and_then(Value::as_object)?
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .find(|s| s.get("step").and_then(Value::as_str) == Some(name))
        .cloned()
}

/// Puts the agent's `write_image` into a deploy's steps at Ironic's
/// priority when the agent offers it at none; false if it offers none.
fn with_write_image(steps: &mut Vec<Value>, result: &Value) -> bool {
    if steps.iter().any(|s| s["step"] == "write_image") {
        return true;
    }
    let Some(mut offered) = offered_step(result, "deploy", "write_image") else { return false };
    offered["priority"] = json!(WRITE_IMAGE_PRIORITY);
    let at =
        steps.iter().position(|s| s["priority"].as_u64().unwrap_or(0) < WRITE_IMAGE_PRIORITY).unwrap_or(steps.len());
    steps.insert(at, offered);
    true
}

fn runnable_steps(result: &Value, kind: &str) -> Vec<Value> {
    let mut steps: Vec<Value> = Vec::new();
    if let Some(by_manager) = result.get(format!("{kind}_steps")).and_then(Value::as_object) {
        for list in by_manager.values() {
            for s in list.as_array().into_iter().flatten() {
                if s.get("priority").and_then(Value::as_u64).unwrap_or(0) > 0 {
                    // the same step from two managers: the higher priority wins
                    let name = s.get("step").and_then(Value::as_str).unwrap_or_default();
                    if let Some(i) = steps.iter().position(|x| x.get("step").and_then(Value::as_str) == Some(name)) {
                        if steps[i]["priority"].as_u64() < s["priority"].as_u64() {
                            steps[i] = s.clone();
                        }
                    } else {
                        steps.push(s.clone());
                    }
                }
            }
        }
    }
    steps.sort_by(|a, b| {
        b["priority"].as_u64().cmp(&a["priority"].as_u64()).then_with(|| a["step"].as_str().cmp(&b["step"].as_str()))
    });
    steps
}

/// Saves the ramdisk's logs (`log.collect_system_logs`), as Ironic does on
/// a failure; returns where they went.
async fn collect_logs(task: &Task, why: &str) -> Option<String> {
    let settings = &task.services.settings;
    if settings.deploy_logs_collect == "never" {
        return None;
    }
    let t = agent::target(task).ok()?;
    let cmd = task.services.agent.run(&t, "log.collect_system_logs", json!({}), true).await.ok()?;
    let b64 = cmd.command_result.get("system_logs").and_then(Value::as_str)?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let dir = &settings.deploy_logs_dir;
    tokio::fs::create_dir_all(dir).await.ok()?;
    let path = dir.join(format!("{}_{}_{why}.tar.gz", task.uuid(), chrono::Utc::now().format("%Y-%m-%d-%H%M%S")));
    tokio::fs::write(&path, bytes).await.ok()?;
    Some(path.display().to_string())
}

impl DirectDeploy {
    /// Drives the agent's steps of `kind` (see the module doc): returns
    /// `WaitHere` while a command runs, `Done` when none is left.
    async fn agent_steps(&self, task: &mut Task, kind: &str) -> DriverResult<StepOutcome> {
        let agent = &task.services.agent;
        let t = agent::target(task)?;
        let mut run = AgentRun::load(task, kind);
        if let Some(current) = run.current.clone() {
            let name = current.get("step").and_then(Value::as_str).unwrap_or_default().to_string();
            let cmd = agent.latest(&t, &format!("{kind}.execute_{kind}_step")).await?.ok_or_else(|| {
                DriverError::Failed(format!(
                    "the agent has no record of the {kind} step {name} it was given (did the ramdisk reboot?)"
                ))
            })?;
            if cmd.running() {
                return Ok(StepOutcome::WaitHere);
            }
            if cmd.failed() {
                return Err(self.fail(task, kind, &name, &cmd).await);
            }
            info!(node = %task.uuid(), kind, step = %name, "agent step done");
            run.current = None;
        }
        if !run.fetched {
            let listed = agent
                .run(
                    &t,
                    &format!("{kind}.get_{kind}_steps"),
                    json!({"node": node_for_agent(task), "ports": ports_for_agent(task)}),
                    true,
                )
                .await;
            let cmd = match listed {
                Err(e) if agent_busy(&e) => {
                    info!(node = %task.uuid(), kind, "the agent is busy with a command sent before; waiting for it");
                    return Ok(StepOutcome::WaitHere);
                }
                r => r?,
            };
            if cmd.failed() {
                return Err(DriverError::Failed(format!(
                    "the agent could not list its {kind} steps: {}",
                    cmd.error_text()
                )));
            }
            let mut steps = runnable_steps(&cmd.command_result, kind);
            if kind == "deploy" {
                // the image step carries what to write. IPA offers it at
                // priority 0 and Ironic runs it anyway, as its own deploy
                // step of priority 80 (AgentDeploy.write_image)
                let info = image_info(task)?;
                if !with_write_image(&mut steps, &cmd.command_result) {
                    return Err(DriverError::Failed(
                        "the agent offers no write_image deploy step: is the ramdisk an ironic-python-agent?".into(),
                    ));
                }
                if let Some(s) = steps.iter_mut().find(|s| s["step"] == "write_image") {
                    s["args"] = json!({"image_info": info, "configdrive": info.get("configdrive")});
                }
            }
            if let Some(v) = cmd.command_result.get("hardware_manager_version") {
                task.node.driver_internal_info.insert(HMV_KEY.into(), v.clone());
            }
            run.pending = steps;
            run.fetched = true;
        }
        loop {
            let Some(next) = (!run.pending.is_empty()).then(|| run.pending.remove(0)) else {
                AgentRun::clear(task);
                return Ok(StepOutcome::Done);
            };
            let name = next.get("step").and_then(Value::as_str).unwrap_or_default().to_string();
            let mut params = json!({"step": next, "node": node_for_agent(task), "ports": ports_for_agent(task)});
            params[format!("{kind}_version")] =
                task.node.driver_internal_info.get(HMV_KEY).cloned().unwrap_or(Value::Null);
            info!(node = %task.uuid(), kind, step = %name, "running an agent step");
            let cmd = match agent.run(&t, &format!("{kind}.execute_{kind}_step"), params, false).await {
                Err(e) if agent_busy(&e) => {
                    info!(node = %task.uuid(), kind, step = %name, "the agent is busy with a command sent before; waiting for it");
                    run.pending.insert(0, next);
                    run.store(task);
                    return Ok(StepOutcome::WaitHere);
                }
                r => r?,
            };
            if cmd.failed() {
                return Err(self.fail(task, kind, &name, &cmd).await);
            }
            if cmd.running() {
                run.current = Some(next);
                run.store(task);
                return Ok(StepOutcome::WaitHere);
            }
            // done at once: the next one
        }
    }

    async fn fail(&self, task: &mut Task, kind: &str, step: &str, cmd: &Command) -> DriverError {
        AgentRun::clear(task);
        let logs = collect_logs(task, kind).await;
        DriverError::Failed(format!(
            "Agent returned error for {kind} step {step}: {}{}",
            cmd.error_text(),
            logs.map(|p| format!(" (ramdisk logs: {p})")).unwrap_or_default()
        ))
    }

    async fn prepare_instance_boot(&self, driver: &Driver, task: &mut Task) -> DriverResult<()> {
        let agent = &task.services.agent;
        let t = agent::target(task)?;
        let uuids = agent.run(&t, "standby.get_partition_uuids", json!({}), true).await?;
        if uuids.failed() {
            return Err(DriverError::Failed(format!(
                "the agent could not read the partition UUIDs: {}",
                uuids.error_text()
            )));
        }
        let root = uuids.command_result.get("root uuid").and_then(Value::as_str).map(String::from);
        if let Some(r) = &root {
            task.node.driver_internal_info.insert("root_uuid_or_disk_id".into(), json!(r));
        }
        let uefi = crate::management::redfish::boot_mode(task) == crate::bmc::redfish::BootMode::Uefi;
        let whole_disk = text(&task.node.instance_info, "image_type").is_none_or(|t| t == "whole-disk");
        if uefi && whole_disk {
            let cmd = agent
                .run_and_follow(
                    &t,
                    "image.install_bootloader",
                    json!({"root_uuid": root, "efi_system_part_uuid": null, "prep_boot_part_uuid": null,
                           "target_boot_mode": "uefi"}),
                )
                .await?;
            if cmd.failed() {
                let logs = collect_logs(task, "bootloader").await;
                return Err(DriverError::Failed(format!(
                    "Failed to install a bootloader when deploying node {}: {}{}",
                    task.uuid(),
                    cmd.error_text(),
                    logs.map(|p| format!(" (ramdisk logs: {p})")).unwrap_or_default()
                )));
            }
        }
        driver.boot.prepare_instance(task).await
    }

    /// The ramdisk powers the machine off; the BMC makes sure.
    async fn tear_down_agent(&self, driver: &Driver, task: &mut Task) -> DriverResult<()> {
        let settings = task.services.agent.settings().clone();
        if let Ok(t) = agent::target(task) {
            match task.services.agent.run(&t, "standby.power_off", json!({}), false).await {
                Ok(_) => {
                    let deadline = std::time::Instant::now() + settings.power_off_timeout;
                    while std::time::Instant::now() < deadline {
                        if driver.power.get_power_state(task).await? == PowerState::Off {
                            task.node.power_state = Some(PowerState::Off.as_str().into());
                            crate::token::AgentTokens::end_session(&mut task.node);
                            return Ok(());
                        }
                        tokio::time::sleep(task.services.settings.power_poll).await;
                    }
                    warn!(node = %task.uuid(), "the ramdisk did not power its machine off in time; the BMC does it");
                }
                Err(e) => warn!(node = %task.uuid(), "standby.power_off: {e}; powering off through the BMC"),
            }
        }
        driver.power.set_power_state(task, PowerAction::Off, None).await?;
        crate::token::AgentTokens::end_session(&mut task.node);
        Ok(())
    }
}

#[async_trait]
impl DeployInterface for DirectDeploy {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::new()
    }

    async fn validate(&self, driver: &Driver, task: &Task) -> DriverResult<()> {
        driver.boot.validate_ramdisk(task).await?;
        // the image only matters for a deploy; cleaning needs none
        if task.node.instance_info.contains_key("image_source")
            || matches!(task.node.provision_state, ferric_common::states::ProvisionState::Deploying)
            || task.node.target_provision_state == Some(ferric_common::states::ProvisionState::Active)
        {
            image_info(task)?;
        }
        Ok(())
    }

    fn deploy_steps(&self, _task: &Task) -> Vec<Step> {
        vec![
            Step::new("deploy", "deploy", 100),
            Step::new("deploy", "write_image", 80),
            Step::new("deploy", "prepare_instance_boot", 60),
            Step::new("deploy", "tear_down_agent", 40),
            Step::new("deploy", "boot_instance", 20),
        ]
    }

    fn clean_steps(&self, _task: &Task) -> Vec<Step> {
        vec![
            Step::new("deploy", "prepare_cleaning", 100),
            Step::new("deploy", "run_clean_steps", 50),
            Step::new("deploy", "tear_down_cleaning", 1),
        ]
    }

    fn tear_down_steps(&self, _task: &Task) -> Vec<Step> {
        vec![Step::new("deploy", "tear_down", 0)]
    }

    async fn execute_step(&self, driver: &Driver, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        match step.step.as_str() {
            "deploy" => {
                image_info(task)?;
                AgentRun::clear(task);
                driver.boot.prepare_ramdisk(task, &BTreeMap::new()).await?;
                driver.power.set_power_state(task, PowerAction::Reboot, None).await?;
                Ok(StepOutcome::Wait)
            }
            "write_image" => self.agent_steps(task, "deploy").await,
            "prepare_instance_boot" => self.prepare_instance_boot(driver, task).await.map(|_| StepOutcome::Done),
            "tear_down_agent" => self.tear_down_agent(driver, task).await.map(|_| StepOutcome::Done),
            "boot_instance" => {
                driver.power.set_power_state(task, PowerAction::On, None).await?;
                Ok(StepOutcome::Done)
            }
            "prepare_cleaning" => {
                AgentRun::clear(task);
                driver.boot.prepare_ramdisk(task, &BTreeMap::new()).await?;
                driver.power.set_power_state(task, PowerAction::Reboot, None).await?;
                Ok(StepOutcome::Wait)
            }
            "run_clean_steps" => self.agent_steps(task, "clean").await,
            "tear_down_cleaning" => {
                driver.boot.clean_up_ramdisk(task).await?;
                Ok(StepOutcome::Done)
            }
            "tear_down" => {
                driver.power.set_power_state(task, PowerAction::Off, None).await?;
                driver.boot.clean_up_instance(task).await?;
                driver.boot.clean_up_ramdisk(task).await?;
                for k in ["root_uuid_or_disk_id", HMV_KEY, RUN_KEY] {
                    task.node.driver_internal_info.remove(k);
                }
                Ok(StepOutcome::Done)
            }
            other => Err(DriverError::Invalid(format!("deploy interface direct has no step {other}"))),
        }
    }

    async fn take_over(&self, _driver: &Driver, _task: &mut Task) -> DriverResult<()> {
        // the boot interface re-points the media; a command in flight is
        // followed through the agent, whoever sent it
        Ok(())
    }

    async fn heartbeat(&self, _driver: &Driver, task: &mut Task, _hb: &Heartbeat) -> DriverResult<HeartbeatOutcome> {
        let Some(run) = task.node.driver_internal_info.get(RUN_KEY).cloned() else {
            // the ramdisk came up: go on
            return Ok(HeartbeatOutcome::Resume);
        };
        let run: AgentRun = serde_json::from_value(run).unwrap_or_default();
        if run.current.is_none() {
            return Ok(HeartbeatOutcome::Resume);
        }
        let kind = run.kind.clone();
        let t = agent::target(task)?;
        match task.services.agent.latest(&t, &format!("{kind}.execute_{kind}_step")).await {
            Ok(Some(c)) if c.running() => Ok(HeartbeatOutcome::KeepWaiting),
            // done (or failed, or forgotten): the step looks and decides
            Ok(_) => Ok(HeartbeatOutcome::Resume),
            Err(e) => {
                warn!(node = %task.uuid(), "following the agent's command: {e}");
                Ok(HeartbeatOutcome::KeepWaiting)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_steps_by_priority_without_zero_priority_ones() {
        let result = json!({"clean_steps": {
            "GenericHardwareManager": [
                {"step": "erase_devices", "priority": 10, "interface": "deploy", "reboot_requested": false, "abortable": true},
                {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy"},
                {"step": "burnin_cpu", "priority": 0, "interface": "deploy"}],
            "VendorManager": [{"step": "erase_devices", "priority": 20, "interface": "deploy"}]},
            "hardware_manager_version": {"generic_hardware_manager": "1.1"}});
        let steps = runnable_steps(&result, "clean");
        let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
        assert_eq!(names, ["erase_devices_metadata", "erase_devices"]);
        assert_eq!(steps[1]["priority"], 20, "the higher priority of two managers wins");
    }

    #[test]
    fn write_image_runs_at_80_although_ipa_offers_it_at_0() {
        let result = json!({"deploy_steps": {"GenericHardwareManager": [
            {"step": "write_image", "priority": 0, "interface": "deploy", "reboot_requested": false},
            {"step": "burnin", "priority": 90, "interface": "deploy"},
            {"step": "inject_files", "priority": 50, "interface": "deploy"},
            {"step": "erase_devices_metadata", "priority": 0, "interface": "deploy"}]}});
        let mut steps = runnable_steps(&result, "deploy");
        assert!(with_write_image(&mut steps, &result));
        let order: Vec<(&str, u64)> =
            steps.iter().map(|s| (s["step"].as_str().unwrap(), s["priority"].as_u64().unwrap())).collect();
        assert_eq!(order, [("burnin", 90), ("write_image", 80), ("inject_files", 50)]);
        let none = json!({"deploy_steps": {"GenericHardwareManager": [{"step": "burnin", "priority": 90}]}});
        let mut steps = runnable_steps(&none, "deploy");
        assert!(!with_write_image(&mut steps, &none), "an agent without write_image");
    }
}
