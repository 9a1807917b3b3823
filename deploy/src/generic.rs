//! The interface kinds without behaviour of their own yet (bios, console,
//! firmware, inspect, network, raid, rescue, storage): `fake`, which runs
//! named steps with the fake hooks, `noop` (network, storage), and
//! `no-<kind>`, which refuses every step.

use async_trait::async_trait;
use serde_json::json;

use crate::driver::*;
use crate::fake_hooks;

pub struct GenericImpl {
    kind: InterfaceKind,
    name: &'static str,
}

impl GenericImpl {
    /// `None` for names this kind does not have.
    pub fn new(kind: InterfaceKind, name: &str) -> Option<GenericImpl> {
        use InterfaceKind as K;
        let none = match kind {
            K::Bios => "no-bios",
            K::Console => "no-console",
            K::Firmware => "no-firmware",
            K::Inspect => "no-inspect",
            K::Raid => "no-raid",
            K::Rescue => "no-rescue",
            K::Network | K::Storage => "noop",
            _ => return None,
        };
        let name: &'static str = match name {
            "fake" => "fake",
            n if n == none => none,
            _ => return None,
        };
        Some(GenericImpl { kind, name })
    }

    fn implemented(&self) -> bool {
        matches!(self.name, "fake" | "noop")
    }
}

#[async_trait]
impl GenericInterface for GenericImpl {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn validate(&self, task: &Task) -> DriverResult<()> {
        if self.kind == InterfaceKind::Rescue && !self.implemented() {
            return Err(DriverError::Unsupported(format!(
                "Driver {} does not support rescue (disabled or not implemented).",
                task.node.driver
            )));
        }
        Ok(())
    }
    async fn execute_step(&self, task: &mut Task, step: &Step) -> DriverResult<StepOutcome> {
        if !self.implemented() {
            return Err(DriverError::Unsupported(format!(
                "the {} interface of this node ({}) does not implement {}",
                self.kind, self.name, step.step
            )));
        }
        fake_hooks::step(task, &step.full_name()).await?;
        match (self.kind, step.step.as_str()) {
            (InterfaceKind::Rescue, "rescue") => fake_hooks::record(task, "fake_rescued", json!(true)),
            (InterfaceKind::Rescue, "unrescue") => {
                task.node.driver_internal_info.remove("fake_rescued");
            }
            (InterfaceKind::Inspect, "inspect_hardware") => {
                task.node.properties.entry("cpus").or_insert(json!(4));
                task.node.properties.entry("memory_mb").or_insert(json!(8192));
            }
            _ => {}
        }
        Ok(StepOutcome::Done)
    }
}
