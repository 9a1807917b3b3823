use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::driver::*;
use crate::fake_hooks;

/// Records which boot it prepared (`fake_boot`: `ramdisk` or `instance`)
/// and, on take-over, who regenerated it (`fake_take_over`).
pub struct FakeBoot;

#[async_trait]
impl BootInterface for FakeBoot {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn prepare_ramdisk(&self, task: &mut Task, _params: &BTreeMap<String, String>) -> DriverResult<()> {
        fake_hooks::fail(task, "boot.prepare_ramdisk")?;
        fake_hooks::record(task, "fake_boot", json!("ramdisk"));
        Ok(())
    }
    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()> {
        if task.node.driver_internal_info.get("fake_boot") == Some(&json!("ramdisk")) {
            task.node.driver_internal_info.remove("fake_boot");
        }
        Ok(())
    }
    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()> {
        fake_hooks::fail(task, "boot.prepare_instance")?;
        fake_hooks::record(task, "fake_boot", json!("instance"));
        Ok(())
    }
    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()> {
        task.node.driver_internal_info.remove("fake_boot");
        Ok(())
    }
    async fn take_over(&self, task: &mut Task) -> DriverResult<()> {
        fake_hooks::step(task, "boot.take_over").await?;
        let what = task.node.driver_internal_info.get("fake_boot").cloned().unwrap_or(Value::Null);
        let by = task.conductor_id.clone();
        fake_hooks::record(task, "fake_take_over", json!({"by": by, "regenerated": what}));
        Ok(())
    }
}
