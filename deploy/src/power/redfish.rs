//! Power through Redfish `ComputerSystem.Reset`, waiting for the BMC to
//! report the new state. A node already in the wanted state is left alone
//! (no reset is sent), so repeated actions cost one GET.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::bmc::redfish::{self, Bmc, BmcInfo, ResetType, Vendor};
use crate::driver::*;

pub struct RedfishPower {
    vendor: Vendor,
}

impl RedfishPower {
    pub fn new(vendor: Vendor) -> RedfishPower {
        RedfishPower { vendor }
    }
}

/// The node's BMC (driver_info checked, connection from the pool).
pub async fn bmc(task: &Task, vendor: Vendor) -> DriverResult<Bmc> {
    let info = BmcInfo::parse(&task.node.driver_info, vendor).map_err(DriverError::Invalid)?;
    Ok(Bmc::connect(&task.services.redfish, &info, vendor, task.services.settings.power_poll).await?)
}

fn is_on(s: &redfish::PowerState) -> bool {
    matches!(s, redfish::PowerState::On | redfish::PowerState::PoweringOn | redfish::PowerState::Paused)
}

#[async_trait]
impl PowerInterface for RedfishPower {
    fn name(&self) -> &'static str {
        match self.vendor {
            Vendor::Generic => "redfish",
            Vendor::Hpe => "ilo",
        }
    }
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        self.vendor.properties()
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        BmcInfo::parse(&task.node.driver_info, self.vendor).map(drop).map_err(DriverError::Invalid)
    }
    async fn get_power_state(&self, task: &Task) -> DriverResult<PowerState> {
        let state = bmc(task, self.vendor).await?.power_state().await?;
        Ok(if is_on(&state) { PowerState::On } else { PowerState::Off })
    }
    async fn set_power_state(
        &self,
        task: &mut Task,
        action: PowerAction,
        timeout: Option<Duration>,
    ) -> DriverResult<()> {
        let bmc = bmc(task, self.vendor).await?;
        let timeout = timeout.unwrap_or(task.services.settings.power_timeout);
        let now = bmc.power_state().await?;
        let reset = match action {
            PowerAction::On if is_on(&now) => None,
            PowerAction::On => Some(ResetType::On),
            PowerAction::Off | PowerAction::SoftOff if now == redfish::PowerState::Off => None,
            PowerAction::Off => Some(ResetType::ForceOff),
            PowerAction::SoftOff => Some(ResetType::GracefulShutdown),
            // a reboot of a node that is off is a power-on
            PowerAction::Reboot | PowerAction::SoftReboot if !is_on(&now) => Some(ResetType::On),
            PowerAction::Reboot => Some(ResetType::ForceRestart),
            PowerAction::SoftReboot => Some(ResetType::GracefulRestart),
        };
        if let Some(r) = reset {
            bmc.reset(r).await?;
            let want = match action.target() {
                PowerState::On => redfish::PowerState::On,
                PowerState::Off => redfish::PowerState::Off,
            };
            // A hard request the BMC dropped (some do during POST or a
            // firmware task), or that something undid (the late poweroff of
            // a ramdisk a dead conductor had told to power off), is sent
            // once more halfway through the timeout; a graceful shutdown is
            // the OS's to finish and is not repeated.
            let again = match action {
                PowerAction::SoftOff => None,
                _ if want == redfish::PowerState::On => Some(ResetType::On),
                _ => Some(ResetType::ForceOff),
            };
            let started = std::time::Instant::now();
            let first = match again {
                Some(_) => bmc.wait_power(&want, timeout / 2).await,
                None => bmc.wait_power(&want, timeout).await,
            };
            match (first, again) {
                (Ok(()), _) => {}
                (Err(redfish::BmcError::Timeout { .. }), Some(again)) => {
                    let now = bmc.power_state().await?;
                    if now != want {
                        tracing::warn!(
                            node = %task.node.uuid,
                            bmc = %bmc.address(),
                            "the system is {now:?} {}s after {}: sending {} again",
                            started.elapsed().as_secs(),
                            r.as_str(),
                            again.as_str()
                        );
                        bmc.reset(again).await?;
                        bmc.wait_power(&want, timeout.saturating_sub(started.elapsed())).await?;
                    }
                }
                (Err(e), _) => return Err(e.into()),
            }
        }
        task.node.power_state = Some(action.target().as_str().into());
        Ok(())
    }
}
