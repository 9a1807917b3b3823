//! The test hooks of the `fake` interfaces, read from the node's
//! `driver_info`:
//!
//! * `fake_step_delay_ms`: every deploy/clean/other step and every
//!   take-over sleeps this long (to kill conductors mid-operation in chaos
//!   tests);
//! * `fake_fail_step`: the `interface.step` (or `power.set_power_state`,
//!   `boot.prepare_ramdisk`, ...) that fails, to drive the failure paths;
//! * `fake_power_delay_ms`: every power read and power change sleeps this
//!   long first (a slow BMC: to catch what happens while one answers);
//! * `fake_wait_after`: the deploy step (`deploy.deploy`,
//!   `deploy.write_image`, ...) after which the node waits for a ramdisk
//!   heartbeat (`wait call-back`), as a real agent deploy does.

use std::time::Duration;

use serde_json::Value;

use crate::driver::{DriverError, DriverResult, Task};

/// Sleep `fake_step_delay_ms`.
pub async fn delay(task: &Task) {
    if let Some(ms) = task.node.driver_info.get("fake_step_delay_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Sleep `fake_power_delay_ms` (a slow BMC).
pub async fn power_delay(task: &Task) {
    if let Some(ms) = task.node.driver_info.get("fake_power_delay_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The injected failure of `name`, if it is the one named.
pub fn fail(task: &Task, name: &str) -> DriverResult<()> {
    if task.node.driver_info.get("fake_fail_step").and_then(Value::as_str) == Some(name) {
        return Err(DriverError::Failed(format!("fake-hardware: injected failure in {name}")));
    }
    Ok(())
}

/// Delay, then the injected failure.
pub async fn step(task: &Task, name: &str) -> DriverResult<()> {
    delay(task).await;
    fail(task, name)
}

pub fn record(task: &mut Task, key: &str, value: Value) {
    task.node.driver_internal_info.insert(key.to_string(), value);
}

pub fn validate(task: &Task) -> DriverResult<()> {
    for key in ["fake_step_delay_ms", "fake_power_delay_ms"] {
        if let Some(v) = task.node.driver_info.get(key)
            && v.as_u64().is_none()
        {
            return Err(DriverError::Invalid(format!("driver_info.{key} must be a non-negative integer")));
        }
    }
    Ok(())
}
