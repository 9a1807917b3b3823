//! Power actions (`PUT /v1/nodes/<n>/states/power`): persist the target,
//! act in the background, record the outcome.
//!
//! Before a node that runs its instance is powered on or rebooted, the boot
//! interface re-attaches what it boots from (a virtual-media boot ISO whose
//! Swift URL expired is inserted again: the iLO spec's `IloPower.reboot`).
//! A power-off or reboot ends a ramdisk session that was not put into the
//! boot media (Ironic's `wipe_internal_info_on_power_off`), so the next
//! ramdisk can look up a new token.
//!
//! The background action is a `power action` span (`power.target`,
//! `node.uuid`), a child of the call's span: the BMC requests it makes are
//! in the trace of the REST request that asked for it.

use ferric_deploy::driver::PowerAction;
use ferric_deploy::token::AgentTokens;

use super::*;

impl ConductorService {
    pub(super) async fn change_power_state_rpc(&self, req: Request<PowerStateRequest>) -> Rpc<ActionReply> {
        let call = call_id(&req);
        if self.already_applied(&call).await? {
            return Ok(Response::new(ActionReply {}));
        }
        let res = self.power_action(req.into_inner(), &call).await;
        self.unless_applied(res, &call, || async { Ok(Response::new(ActionReply {})) }).await
    }

    async fn power_action(&self, r: PowerStateRequest, call: &Option<String>) -> Rpc<ActionReply> {
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let action = PowerAction::parse(&r.target)
            .ok_or_else(|| self.err(Reason::Invalid, format!("Invalid power state {}.", r.target)))?;
        let final_state = action.target();
        if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
            return Err(self.err(
                Reason::Invalid,
                format!(
                    "Can not change power state of node {} while it is in state {}.",
                    node.uuid, node.provision_state
                ),
            ));
        }
        if final_state == PowerState::Off && node.disable_power_off {
            return Err(self.err(Reason::Invalid, format!("Powering off is disabled for node {}", node.uuid)));
        }
        let driver = self.inner.registry.driver_for(&node).map_err(|e| self.driver_err(e))?;
        let permit = self.permit()?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(ActionReply {}));
        };
        node.target_power_state = Some(final_state.as_str().into());
        node.last_error = None;
        if let Err(e) = self.save_applying(&lock, &node, self.applied(call, node.uuid, "power").as_ref()).await {
            Self::give_back(lock).await;
            return Err(e);
        }
        let inner = self.inner.clone();
        let timeout = (r.timeout > 0).then(|| std::time::Duration::from_secs(u64::from(r.timeout)));
        let target = r.target.clone();
        let span = tracing::info_span!(
            "power action",
            power.target = %target,
            node.uuid = %node.uuid,
            request_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        telemetry::inherit(&span);
        telemetry::record_trace_id(&span);
        let act_span = span.clone();
        let task = async move {
            let mut task = inner.task_with_ports(node.clone()).await;
            let runs_instance = matches!(task.node.provision_state, ProvisionState::Active | ProvisionState::Rescue);
            let act = async {
                if final_state == PowerState::On && runs_instance {
                    driver.boot.prepare_reboot(&mut task).await?;
                }
                driver.power.set_power_state(&mut task, action, timeout).await
            };
            let limit = inner.step_timeout();
            let res = tokio::select! {
                r = tokio::time::timeout(limit, act) => r.unwrap_or_else(|_| Err(DriverError::Failed(format!(
                    "the BMC did not finish within {} s (conductor.step_timeout_secs)", limit.as_secs()
                )))),
                // fenced: drop the BMC call, write nothing
                _ = inner.fence.cancelled() => return,
            };
            let mut node = task.node;
            node.target_power_state = None;
            match res {
                Ok(()) => {
                    info!("power state set");
                    node.power_state = Some(final_state.as_str().into());
                    if final_state == PowerState::Off || action.is_reboot() {
                        AgentTokens::forget_agent(&mut node);
                        if !AgentTokens::is_pregenerated(&node) {
                            AgentTokens::end_session(&mut node);
                        }
                    }
                }
                Err(e) => {
                    act_span.record("otel.status_code", "error");
                    warn!("power action failed: {e}");
                    node.last_error = Some(format!("Failed to change power state to '{target}': {e}"));
                }
            }
            inner.history(node.uuid, "power", &target).await;
            match lock.save_and_release(&node).await {
                Ok(true) => {}
                Ok(false) => warn!(node = %node.uuid, "lost the node lock during a power action"),
                Err(e) => warn!(node = %node.uuid, "saving the power state failed: {e}"),
            }
            drop(permit);
        };
        self.inner.tasks.spawn(task.instrument(span));
        Ok(Response::new(ActionReply {}))
    }
}
