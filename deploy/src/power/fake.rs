use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::driver::*;
use crate::fake_hooks;

/// Power that is whatever the database says, changed at once.
pub struct FakePower;

#[async_trait]
impl PowerInterface for FakePower {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            ("fake_step_delay_ms", "Milliseconds every fake step and take-over sleeps. Optional."),
            ("fake_power_delay_ms", "Milliseconds every power read and change sleeps (a slow BMC). Optional."),
            ("fake_fail_step", "The step (interface.step) that fails, for testing. Optional."),
            ("fake_wait_after", "The deploy step after which the deploy waits for a ramdisk callback. Optional."),
        ])
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        fake_hooks::validate(task)
    }
    async fn get_power_state(&self, task: &Task) -> DriverResult<PowerState> {
        fake_hooks::power_delay(task).await;
        Ok(match task.node.power_state.as_deref() {
            Some("power on") => PowerState::On,
            _ => PowerState::Off,
        })
    }
    async fn set_power_state(
        &self,
        task: &mut Task,
        action: PowerAction,
        _timeout: Option<Duration>,
    ) -> DriverResult<()> {
        fake_hooks::power_delay(task).await;
        fake_hooks::fail(task, "power.set_power_state")?;
        task.node.power_state = Some(action.target().as_str().into());
        Ok(())
    }
}
