//! The ramdisk's callbacks: lookup (a token for a new session),
//! heartbeat (resumes a waiting operation), pass_deploy_info.
//!
//! Tokens are never stored: a node holds its session's nonce and any
//! conductor derives the token from it (`ferric_deploy::token`). A session
//! opens when the boot interface puts a token into the boot media
//! (pregenerated) or at the first lookup; it ends with the operation, and a
//! power-off or reboot ends a session that was not pregenerated (the next
//! ramdisk looks up again).

use ferric_deploy::driver::HeartbeatOutcome;
use ferric_deploy::token::AgentTokens;

use super::*;

impl ConductorService {
    pub(super) async fn heartbeat_rpc(&self, req: Request<HeartbeatRequest>) -> Rpc<Empty> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        if r.agent_token.is_empty() {
            return Err(self.err(Reason::Invalid, "Agent token is required for heartbeat processing."));
        }
        if r.callback_url.is_empty() {
            return Err(self.err(Reason::Invalid, "Missing argument: \"callback_url\""));
        }
        if self.inner.cfg.agent.require_tls && !r.callback_url.starts_with("https://") {
            return Err(self.err(
                Reason::Invalid,
                format!(
                    "TLS is required by configuration ([agent] require_tls): callback_url {} is not https://",
                    r.callback_url
                ),
            ));
        }
        let tokens = &self.inner.services.tokens;
        if !tokens.verify(&node, &r.agent_token) {
            return Err(self.err(Reason::Invalid, "Invalid or missing agent token received."));
        }
        let (lock, mut node) = self.lock(node.uuid).await?;
        // a new session may have begun while we waited for the lock
        if !tokens.verify(&node, &r.agent_token) {
            Self::give_back(lock).await;
            return Err(self.err(Reason::Invalid, "Invalid or missing agent token received."));
        }
        // the same session from another address is somebody else holding
        // the token: never send them commands
        if let Some(known) = node.driver_internal_info.get("agent_url").and_then(Value::as_str)
            && known != r.callback_url
        {
            let msg = format!(
                "Detected change in ramdisk provided \"callback_url\" (was {known}, now {}) within one ramdisk session",
                r.callback_url
            );
            Self::give_back(lock).await;
            return Err(self.err(Reason::Invalid, msg));
        }
        let info = &mut node.driver_internal_info;
        info.insert("agent_url".into(), Value::String(r.callback_url.clone()));
        info.insert("agent_last_heartbeat".into(), Value::String(Utc::now().to_rfc3339()));
        if !r.agent_version.is_empty() {
            info.insert("agent_version".into(), Value::String(r.agent_version.clone()));
        }
        if !r.agent_verify_ca.is_empty() {
            info.insert("agent_verify_ca".into(), Value::String(r.agent_verify_ca.clone()));
        }
        let hb = Heartbeat {
            callback_url: r.callback_url,
            agent_version: r.agent_version,
            agent_status: r.agent_status,
            agent_status_message: r.agent_status_message,
            agent_verify_ca: r.agent_verify_ca,
        };
        let outcome = if node.provision_state.is_wait() {
            let driver = match self.inner.registry.driver_for(&node) {
                Ok(d) => d,
                Err(e) => {
                    Self::give_back(lock).await;
                    return Err(self.driver_err(e));
                }
            };
            let mut task = self.inner.task(node.clone(), Vec::new());
            match driver.deploy.heartbeat(&driver, &mut task, &hb).await {
                Ok(o) => {
                    node = task.node;
                    o
                }
                Err(e) => {
                    Self::give_back(lock).await;
                    return Err(self.driver_err(e));
                }
            }
        } else {
            HeartbeatOutcome::KeepWaiting
        };
        match outcome {
            HeartbeatOutcome::Resume => {
                if let Ok(t) = transition(node.provision_state, node.target_provision_state, Event::Resume) {
                    return self.resume_on_callback(lock, node, t, None).await;
                }
            }
            HeartbeatOutcome::KeepWaiting => {
                if node.provision_state.is_wait() {
                    operation::note_heartbeat(&mut node, self.inner.cfg.conductor.callback_timeout_secs);
                }
            }
            HeartbeatOutcome::Fail(msg) => {
                operation::fail(&self.inner, &mut node, &msg).await;
                self.inner.history(node.uuid, "fail", &msg).await;
                return match lock.save_and_release(&node).await {
                    Ok(_) => Ok(Response::new(Empty {})),
                    Err(e) => Err(self.err(Reason::Internal, format!("saving node {}: {e}", node.uuid))),
                };
            }
        }
        let res = self.save(&lock, &node).await;
        Self::give_back(lock).await;
        res.map(|_| Response::new(Empty {}))
    }

    pub(super) async fn lookup_rpc(&self, req: Request<NodeRef>) -> Rpc<LookupReply> {
        let r = req.into_inner();
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        // the reply is the token alone: what the agent is told of its node
        // the API reads from the database and masks
        let existing = || LookupReply { agent_token: String::new() };
        if AgentTokens::has_session(&node) {
            // the agent already holds it (from the boot media, or an
            // earlier lookup): Ironic answers "******"
            return Ok(Response::new(existing()));
        }
        // one attempt, as Ironic: the agent backs off on 409 by itself
        let (lock, mut node) =
            self.inner.locks.acquire(node.uuid, 1, self.inner.lock_interval()).await.map_err(|e| self.lock_err(e))?;
        if AgentTokens::has_session(&node) {
            Self::give_back(lock).await;
            return Ok(Response::new(existing()));
        }
        let token = self.inner.services.tokens.mint(&mut node, false);
        let res = self.save(&lock, &node).await;
        Self::give_back(lock).await;
        res?;
        Ok(Response::new(LookupReply { agent_token: token }))
    }

    /// A ramdisk's callback resumes the node's operation: a worker first
    /// (never save a resumed state nobody will run), then the new state,
    /// then the operation on its own task with the lock.
    async fn resume_on_callback(
        &self,
        lock: NodeLock,
        mut node: Node,
        t: ferric_common::states::Transition,
        call: Option<&AppliedCall<'_>>,
    ) -> Rpc<Empty> {
        let permit = match self.permit() {
            Ok(p) => p,
            Err(e) => {
                Self::give_back(lock).await;
                return Err(e);
            }
        };
        operation::note_callback(&mut node);
        node.provision_state = t.to;
        node.target_provision_state = t.target;
        if let Err(e) = self.save_applying(&lock, &node, call).await {
            Self::give_back(lock).await;
            return Err(e);
        }
        self.inner.spawn_operation(lock, node, permit);
        Ok(Response::new(Empty {}))
    }

    /// The iSCSI ramdisk's `pass_deploy_info`: checked in the order that
    /// changes nothing until everything is right (the node's deploy
    /// interface, its state, the deploy key), then the operation resumes
    /// (or fails with the ramdisk's error).
    pub(super) async fn pass_deploy_info_rpc(&self, req: Request<NodeVendorRequest>) -> Rpc<Empty> {
        let call = call_id(&req);
        if self.already_applied(&call).await? {
            return Ok(Response::new(Empty {}));
        }
        let res = self.pass_deploy_info(req.into_inner(), &call).await;
        self.unless_applied(res, &call, || async { Ok(Response::new(Empty {})) }).await
    }

    async fn pass_deploy_info(&self, r: NodeVendorRequest, call: &Option<String>) -> Rpc<Empty> {
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let names = self.inner.registry.resolve(&node).map_err(|e| self.driver_err(e))?;
        let deploy = names.get(&InterfaceKind::Deploy).copied().unwrap_or_default();
        if deploy != "iscsi" {
            return Err(self.err(
                Reason::Invalid,
                format!(
                    "pass_deploy_info is only accepted from the iscsi deploy interface; node {} uses {deploy}",
                    node.uuid
                ),
            ));
        }
        let body: Value = parse_json(&r.body_json, "body")
            .map_err(|m| self.err(Reason::Invalid, m))?
            .unwrap_or(Value::Object(Default::default()));
        let Some(obj) = body.as_object() else {
            return Err(self.err(Reason::Invalid, "The request body must be a JSON object"));
        };
        let key = match obj.get("key") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            _ => return Err(self.err(Reason::Invalid, "Missing argument: \"key\" (the deploy key)")),
        };
        // Ironic's InvalidState: a conflict with the node's state, 409
        let not_waiting = |node: &Node| {
            self.err(
                Reason::Conflict,
                format!(
                    "Node {} is not waiting to be deployed (provision state {}); pass_deploy_info is only accepted \
                     in wait call-back",
                    node.uuid, node.provision_state
                ),
            )
        };
        if node.provision_state != ProvisionState::DeployWait {
            return Err(not_waiting(&node));
        }
        let tokens = &self.inner.services.tokens;
        if !tokens.verify(&node, &key) {
            return Err(self.err(Reason::Invalid, "Deploy key does not match"));
        }
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(Empty {}));
        };
        // the node may have moved on while we waited for the lock
        if node.provision_state != ProvisionState::DeployWait {
            let e = not_waiting(&node);
            Self::give_back(lock).await;
            return Err(e);
        }
        if !tokens.verify(&node, &key) {
            Self::give_back(lock).await;
            return Err(self.err(Reason::Invalid, "Deploy key does not match"));
        }
        let driver = match self.inner.registry.driver_for(&node) {
            Ok(d) => d,
            Err(e) => {
                Self::give_back(lock).await;
                return Err(self.driver_err(e));
            }
        };
        let mut task = self.inner.task(node.clone(), Vec::new());
        let outcome = match driver.deploy.pass_deploy_info(&driver, &mut task, &body).await {
            Ok(o) => o,
            Err(e) => {
                Self::give_back(lock).await;
                return Err(self.driver_err(e));
            }
        };
        node = task.node;
        match outcome {
            HeartbeatOutcome::Fail(msg) => {
                operation::fail(&self.inner, &mut node, &msg).await;
                self.inner.history(node.uuid, "fail", &msg).await;
                match lock.save_and_release(&node).await {
                    Ok(_) => Ok(Response::new(Empty {})),
                    Err(e) => Err(self.err(Reason::Internal, format!("saving node {}: {e}", node.uuid))),
                }
            }
            HeartbeatOutcome::Resume => {
                let t = match transition(node.provision_state, node.target_provision_state, Event::Resume) {
                    Ok(t) => t,
                    Err(e) => {
                        Self::give_back(lock).await;
                        return Err(self.err(Reason::Invalid, e.to_string()));
                    }
                };
                let uuid = node.uuid;
                self.resume_on_callback(lock, node, t, self.applied(call, uuid, "pass_deploy_info").as_ref()).await
            }
            HeartbeatOutcome::KeepWaiting => {
                let res = self.save(&lock, &node).await;
                Self::give_back(lock).await;
                res.map(|_| Response::new(Empty {}))
            }
        }
    }
}
