use async_trait::async_trait;
use serde_json::json;

use crate::driver::*;
use crate::fake_hooks;

/// Records the boot device it is given.
pub struct FakeManagement;

#[async_trait]
impl ManagementInterface for FakeManagement {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn set_boot_device(&self, task: &mut Task, device: BootDevice, persistent: bool) -> DriverResult<()> {
        fake_hooks::record(task, "fake_boot_device", json!({"boot_device": device.as_str(), "persistent": persistent}));
        Ok(())
    }
}
