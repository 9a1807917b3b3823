//! The `iscsi` deploy (specs/ilo-virtualmedia-iscsi-deploy-driver.rst):
//! the deploy ramdisk exports the machine's disk as an iSCSI target, says
//! so with `pass_deploy_info`, and the conductor writes the image into it.
//!
//! Ironic removed this interface in 2021 (its ramdisk side went with
//! diskimage-builder's `deploy-ironic` element); Ferric keeps it because
//! the specs ask for it, and because it needs nothing in the ramdisk but a
//! target: the image never travels through the ramdisk's own network
//! stack and tools.
//!
//! | step | priority | what |
//! |---|---|---|
//! | `deploy.deploy` | 100 | the instance image into this conductor's cache (checksum verified), the ramdisk's media with `iscsi_target_iqn` and the deploy key (`deploy_key`: the session's token, minted into the media), reboot, wait for `pass_deploy_info` |
//! | `deploy.write_image` | 80 | `qemu-img convert -n -O raw <cached image> iscsi://<address>:<port>/<iqn>/<lun>` (qcow2 converted on the way) |
//! | `deploy.prepare_instance_boot` | 60 | `boot.prepare_instance` (boot from disk) |
//! | `deploy.boot_instance` | 20 | the session ends, reboot through the BMC |
//!
//! `pass_deploy_info` carries `{address, iqn, key, error}` (plus Ferric's
//! optional `port`, `lun`). The key must be the node's (constant-time
//! comparison, checked by the conductor before this module sees the
//! call); a non-empty `error` fails the deploy with the ramdisk's words.
//! The target is recorded on the node (`driver_internal_info.
//! iscsi_target`), so if the conductor dies mid-write the next owner
//! writes the whole image again from its own cache: a raw write is
//! idempotent. The writer dies with its conductor (`PR_SET_PDEATHSIG`)
//! and with its step (a fenced conductor drops the step), so two
//! conductors never write one disk at once.
//!
//! Whole-disk images only: the partitioning of the old ramdisk-side
//! deploy (root, swap, ephemeral partitions) is not implemented.
//!
//! Cleaning and tear-down are the agent's (the same ramdisk image speaks
//! the agent API when it is booted for cleaning), as in Ironic, whose
//! iscsi deploy cleaned through the agent too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use ferric_common::states::ProvisionState;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tracing::info;

use super::direct::DirectDeploy;
use super::text;
use crate::driver::*;
use crate::image::cache::{CachedImage, ImageSource};
use crate::token::AgentTokens;

pub struct IscsiDeploy;

const TARGET_KEY: &str = "iscsi_target";

/// The IQN the ramdisk is told to export the disk under.
pub fn iqn_for(node: &uuid::Uuid) -> String {
    format!("iqn.2008-10.org.openstack:{node}")
}

/// Where the ramdisk exports the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IscsiTarget {
    pub address: String,
    pub port: u16,
    pub iqn: String,
    pub lun: u32,
}

impl IscsiTarget {
    pub fn url(&self) -> String {
        let host = match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => format!("[{a}]"),
            _ => self.address.clone(),
        };
        format!("iscsi://{host}:{}/{}/{}", self.port, self.iqn, self.lun)
    }

    /// The target from a `pass_deploy_info` body, every field checked.
    pub fn parse(body: &Map<String, Value>, default_port: u16) -> Result<IscsiTarget, String> {
        let text = |k: &str| -> Result<String, String> {
            match body.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("Missing argument: \"{k}\"")),
                Some(_) => Err(format!("Argument \"{k}\" must be a string")),
            }
        };
        let address = text("address")?;
        let hostname_ok = !address.is_empty()
            && address.len() <= 253
            && address
                .split('.')
                .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if address.parse::<IpAddr>().is_err() && !hostname_ok {
            return Err(format!("Argument \"address\" {address:?} is neither an IP address nor a host name"));
        }
        let iqn = text("iqn")?;
        let iqn_ok = (iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
            && iqn.len() <= 223
            && iqn.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
        if !iqn_ok {
            return Err(format!("Argument \"iqn\" {iqn:?} is not an iSCSI name (iqn.…, eui.… or naa.…)"));
        }
        let number = |k: &str, default: u64, max: u64| -> Result<u64, String> {
            let n = match body.get(k) {
                None | Some(Value::Null) => return Ok(default),
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                Some(_) => None,
            };
            n.filter(|n| (1..=max).contains(n) || (k == "lun" && *n == 0))
                .ok_or_else(|| format!("Argument \"{k}\" must be a number from 1 to {max}"))
        };
        let port = number("port", u64::from(default_port), 65535)? as u16;
        let lun = number("lun", 1, 16383)? as u32;
        Ok(IscsiTarget { address, port, iqn, lun })
    }
}

/// The instance image as a cache source (`image_source` and its
/// checksum: `image_checksum`, or `image_os_hash_algo` +
/// `image_os_hash_value`).
fn instance_image(task: &Task) -> DriverResult<ImageSource> {
    let ii = &task.node.instance_info;
    let url = text(ii, "image_source").ok_or_else(|| {
        DriverError::Invalid("the iscsi deploy needs instance_info.image_source (the image's URL)".into())
    })?;
    if text(ii, "image_type").is_some_and(|t| t != "whole-disk") {
        return Err(DriverError::Invalid(
            "the iscsi deploy writes whole-disk images only; instance_info.image_type must be whole-disk".into(),
        ));
    }
    let checksum = match (text(ii, "image_os_hash_algo"), text(ii, "image_os_hash_value"), text(ii, "image_checksum")) {
        (Some(a), Some(v), _) => Some(format!("{a}:{v}")),
        (_, _, c) => c,
    };
    ImageSource::new(&url, checksum.as_deref()).map_err(|e| DriverError::Invalid(format!("instance_info: {e}")))
}

async fn fetch(task: &Task) -> DriverResult<CachedImage> {
    let src = instance_image(task)?;
    task.media().images.fetch(&src).await.map_err(|e| DriverError::Failed(format!("the instance image: {e}")))
}

/// `qcow2` or `raw`, by the image's first bytes.
fn detect_format(path: &std::path::Path) -> DriverResult<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| DriverError::Failed(format!("{}: {e}", path.display())))?;
    let n = f.read(&mut magic).map_err(|e| DriverError::Failed(format!("{}: {e}", path.display())))?;
    Ok(if n == 4 && &magic == b"QFI\xfb" { "qcow2" } else { "raw" })
}

/// Writes `image` into the target; killed with the step or the conductor.
async fn write(task: &Task, target: &IscsiTarget, image: &CachedImage) -> DriverResult<()> {
    let settings = &task.services.settings;
    let format = detect_format(&image.path)?;
    let url = target.url();
    let mut cmd = tokio::process::Command::new(&settings.qemu_img);
    cmd.args(["convert", "-n", "-f", format, "-O", "raw"]);
    if settings.iscsi_write_rate_limit > 0 {
        cmd.arg("-r").arg(settings.iscsi_write_rate_limit.to_string());
    }
    cmd.arg(&image.path)
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours;
    // the writer must not outlive a conductor that was SIGKILLed
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    info!(node = %task.uuid(), target = %url, image = %image.sha256, size = image.size, format, "writing the image over iSCSI");
    let child = cmd.spawn().map_err(|e| {
        DriverError::Failed(format!(
            "the iscsi deploy needs qemu-img built with libiscsi ([iscsi] qemu_img = {:?}; Debian: qemu-utils and \
             qemu-block-extra): {e}",
            settings.qemu_img
        ))
    })?;
    let out = match tokio::time::timeout(settings.iscsi_write_timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| DriverError::Failed(format!("running qemu-img: {e}")))?,
        Err(_) => {
            return Err(DriverError::Failed(format!(
                "writing the image to {url} took longer than [iscsi] write_timeout_secs ({} s)",
                settings.iscsi_write_timeout.as_secs()
            )));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let hint =
            if err.contains("Unknown protocol") { " (install qemu-block-extra for iscsi:// support)" } else { "" };
        return Err(DriverError::Failed(format!("writing the image to {url} failed: {err}{hint}")));
    }
    info!(node = %task.uuid(), target = %url, seconds = started.elapsed().as_secs_f64(), "image written");
    Ok(())
}

fn target(task: &Task) -> DriverResult<IscsiTarget> {
    task.node.driver_internal_info.get(TARGET_KEY).and_then(|v| serde_json::from_value(v.clone()).ok()).ok_or_else(
        || DriverError::Failed("no iSCSI target is recorded: the ramdisk has not sent pass_deploy_info".into()),
    )
}

#[async_trait]
impl DeployInterface for IscsiDeploy {
    fn name(&self) -> &'static str {
        "iscsi"
    }

    async fn validate(&self, driver: &Driver, task: &Task) -> DriverResult<()> {
        driver.boot.validate_ramdisk(task).await?;
        if task.node.instance_info.contains_key("image_source")
            || task.node.target_provision_state == Some(ProvisionState::Active)
        {
            let src = instance_image(task)?;
            task.media().images.check_allowed(&src).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        }
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

    fn clean_steps(&self, task: &Task) -> Vec<Step> {
        DirectDeploy.clean_steps(task)
    }

    fn tear_down_steps(&self, task: &Task) -> Vec<Step> {
        DirectDeploy.tear_down_steps(task)
    }

    async fn execute_step(&self, driver: &Driver, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        match step.step.as_str() {
            "deploy" => {
                // the image first: a bad URL or checksum fails before any reboot
                drop(fetch(task).await?);
                task.node.driver_internal_info.remove(TARGET_KEY);
                let params = BTreeMap::from([
                    ("iscsi_target_iqn".to_string(), iqn_for(&task.node.uuid)),
                    ("deploy_key".to_string(), SESSION_TOKEN.to_string()),
                ]);
                driver.boot.prepare_ramdisk(task, &params).await?;
                if !AgentTokens::has_session(&task.node) {
                    return Err(DriverError::Invalid(
                        "the iscsi deploy hands its deploy key over in the ramdisk's boot media, and this node's \
                         media carry no parameters (a prebuilt deploy ISO and no virtual floppy): give \
                         driver_info.deploy_kernel and deploy_ramdisk instead"
                            .into(),
                    ));
                }
                driver.power.set_power_state(task, PowerAction::Reboot, None).await?;
                Ok(StepOutcome::Wait)
            }
            "write_image" => {
                let t = target(task)?;
                let image = fetch(task).await?;
                write(task, &t, &image).await?;
                Ok(StepOutcome::Done)
            }
            "prepare_instance_boot" => driver.boot.prepare_instance(task).await.map(|_| StepOutcome::Done),
            "boot_instance" => {
                task.node.driver_internal_info.remove(TARGET_KEY);
                AgentTokens::end_session(&mut task.node);
                driver.power.set_power_state(task, PowerAction::Reboot, None).await?;
                Ok(StepOutcome::Done)
            }
            _ => DirectDeploy.execute_step(driver, task, step).await,
        }
    }

    async fn take_over(&self, _driver: &Driver, _task: &mut Task) -> DriverResult<()> {
        // the boot interface re-points the media; a write is redone whole
        // by whoever runs write_image next
        Ok(())
    }

    async fn heartbeat(&self, driver: &Driver, task: &mut Task, hb: &Heartbeat) -> DriverResult<HeartbeatOutcome> {
        if task.node.provision_state == ProvisionState::DeployWait {
            // a deploy resumes on pass_deploy_info, never on a heartbeat
            return Ok(HeartbeatOutcome::KeepWaiting);
        }
        DirectDeploy.heartbeat(driver, task, hb).await
    }

    async fn pass_deploy_info(
        &self,
        _driver: &Driver,
        task: &mut Task,
        body: &Value,
    ) -> DriverResult<HeartbeatOutcome> {
        let obj = body.as_object().ok_or_else(|| DriverError::Invalid("the body must be a JSON object".into()))?;
        if let Some(e) = text(obj, "error") {
            return Ok(HeartbeatOutcome::Fail(format!(
                "Failed to start the iSCSI target to deploy the node {}. Error: {e}",
                task.node.uuid
            )));
        }
        let t = IscsiTarget::parse(obj, task.services.settings.iscsi_default_port).map_err(DriverError::Invalid)?;
        info!(node = %task.uuid(), target = %t.url(), "the ramdisk exports the disk");
        task.node.driver_internal_info.insert(TARGET_KEY.into(), json!(t));
        Ok(HeartbeatOutcome::Resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn targets_are_checked_field_by_field() {
        let t = IscsiTarget::parse(
            &body(json!({"address": "127.0.0.1", "iqn": "iqn.2008-10.org.openstack:x", "key": "k"})),
            3260,
        )
        .unwrap();
        assert_eq!(t.url(), "iscsi://127.0.0.1:3260/iqn.2008-10.org.openstack:x/1");
        let t = IscsiTarget::parse(&body(json!({"address": "::1", "iqn": "iqn.a:b", "port": "13260", "lun": 0})), 3260)
            .unwrap();
        assert_eq!(t.url(), "iscsi://[::1]:13260/iqn.a:b/0");
        let err = |v: Value| IscsiTarget::parse(&body(v), 3260).unwrap_err();
        assert_eq!(err(json!({"iqn": "iqn.a:b"})), "Missing argument: \"address\"");
        assert!(err(json!({"address": "a b", "iqn": "iqn.a:b"})).contains("neither an IP address"));
        assert!(err(json!({"address": "h", "iqn": "iqn.a:b/../c"})).contains("not an iSCSI name"));
        assert!(err(json!({"address": "h", "iqn": "iqn.a:b", "port": 70000})).contains("\"port\""));
        assert!(err(json!({"address": 3, "iqn": "iqn.a:b"})).contains("must be a string"));
    }
}
