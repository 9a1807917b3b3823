//! The boot device through the Redfish boot override, read back after
//! every change. A BMC that stores a one-time override as `Continuous`
//! (sushy-tools, libvirt) is remembered in the node
//! (`driver_internal_info.redfish_boot_once_ignored`) so the override can
//! be reset after the boot it was meant for.

use async_trait::async_trait;
use serde_json::json;

use crate::bmc::redfish::{BmcInfo, BootMode, BootTarget, Vendor};
use crate::driver::*;
use crate::power::redfish::bmc;

pub struct RedfishManagement {
    vendor: Vendor,
}

impl RedfishManagement {
    pub fn new(vendor: Vendor) -> RedfishManagement {
        RedfishManagement { vendor }
    }
}

pub const ONCE_IGNORED_KEY: &str = "redfish_boot_once_ignored";

/// The boot mode a node should boot in: `properties.capabilities`
/// `boot_mode` (`uefi` | `bios`), else `instance_info.deploy_boot_mode`,
/// else `[deploy] default_boot_mode`.
pub fn boot_mode(task: &Task) -> BootMode {
    let from = |v: Option<String>| match v.as_deref() {
        Some("uefi") => Some(BootMode::Uefi),
        Some("bios") => Some(BootMode::Legacy),
        _ => None,
    };
    from(crate::deploy::capability(&task.node.properties, "boot_mode"))
        .or_else(|| from(task.node.instance_info.get("deploy_boot_mode").and_then(|v| v.as_str()).map(String::from)))
        .unwrap_or(if task.services.settings.default_uefi { BootMode::Uefi } else { BootMode::Legacy })
}

/// Sets the node's boot device on its BMC; records whether a one-time
/// override was stored as persistent.
pub async fn set_boot(task: &mut Task, vendor: Vendor, device: BootDevice, persistent: bool) -> DriverResult<()> {
    let bmc = bmc(task, vendor).await?;
    let current = bmc.boot_override().await?;
    let target = match device {
        BootDevice::Pxe => BootTarget::Pxe,
        BootDevice::Disk => BootTarget::Hdd,
        BootDevice::Cdrom => current.cd_target(),
        BootDevice::Bios => BootTarget::BiosSetup,
    };
    let once = !persistent;
    let set = bmc.set_boot_override(target, once, Some(boot_mode(task)), &current).await?;
    if set.once_ignored {
        task.node.driver_internal_info.insert(ONCE_IGNORED_KEY.into(), json!(target.as_str()));
    } else {
        task.node.driver_internal_info.remove(ONCE_IGNORED_KEY);
    }
    Ok(())
}

#[async_trait]
impl ManagementInterface for RedfishManagement {
    fn name(&self) -> &'static str {
        match self.vendor {
            Vendor::Generic => "redfish",
            Vendor::Hpe => "ilo",
        }
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        BmcInfo::parse(&task.node.driver_info, self.vendor).map(drop).map_err(DriverError::Invalid)
    }
    async fn set_boot_device(&self, task: &mut Task, device: BootDevice, persistent: bool) -> DriverResult<()> {
        set_boot(task, self.vendor, device, persistent).await
    }
}
