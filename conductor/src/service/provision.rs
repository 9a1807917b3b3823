//! Provision actions (`PUT /v1/nodes/<n>/states/provision`): check the
//! transition and the interfaces it needs, persist the `*ING` state, and
//! run the operation in the background.

use super::*;

impl ConductorService {
    pub(super) async fn do_provision_action_rpc(&self, req: Request<ProvisionActionRequest>) -> Rpc<ActionReply> {
        let call = call_id(&req);
        if self.already_applied(&call).await? {
            return Ok(Response::new(ActionReply {}));
        }
        let res = self.provision_action(req.into_inner(), &call).await;
        self.unless_applied(res, &call, || async { Ok(Response::new(ActionReply {})) }).await
    }

    async fn provision_action(&self, r: ProvisionActionRequest, call: &Option<String>) -> Rpc<ActionReply> {
        let node = self.load_owned(&r.node_uuid, r.epoch).await?;
        let verb = Verb::parse(&r.target)
            .ok_or_else(|| self.err(Reason::Invalid, format!("\"{}\" is not a valid provision target", r.target)))?;
        let event = verb.event();
        let invalid_state = |n: &Node| {
            self.err(
                Reason::Invalid,
                format!(
                    "The requested action \"{}\" can not be performed on node \"{}\" while it is in state \"{}\".",
                    verb.as_str(),
                    n.uuid,
                    n.provision_state
                ),
            )
        };
        if transition(node.provision_state, node.target_provision_state, event).is_err() {
            if let Some(holder) = &node.reservation {
                return Err(status(
                    Reason::NodeLocked,
                    format!(
                        "Node {} is locked by host {holder}, please retry after the current operation is completed.",
                        node.uuid
                    ),
                    self.inner.epoch(),
                    holder,
                ));
            }
            return Err(invalid_state(&node));
        }
        // request arguments, checked before anything is locked
        let configdrive = parse_json(&r.configdrive_json, "configdrive").map_err(|m| self.err(Reason::Invalid, m))?;
        if let Some(cd) = &configdrive {
            // a bad one fails now, not in the ramdisk minutes later
            ferric_deploy::image::configdrive::for_agent(Some(cd), &node.uuid.to_string(), node.name.as_deref())
                .map_err(|e| self.err(Reason::Invalid, e.to_string()))?;
        }
        let mut steps_arg = None;
        for (json, e, key, name) in [
            (&r.clean_steps_json, Event::Clean, CLEAN_STEPS_KEY, "clean_steps"),
            (&r.service_steps_json, Event::Service, SERVICE_STEPS_KEY, "service_steps"),
            (&r.deploy_steps_json, Event::Deploy, DEPLOY_STEPS_KEY, "deploy_steps"),
        ] {
            let v = parse_json(json, name).map_err(|m| self.err(Reason::Invalid, m))?;
            if event == e || (name == "deploy_steps" && event == Event::Rebuild) {
                match v {
                    Some(v) => {
                        let steps = check_steps(&v, name).map_err(|m| self.err(Reason::Invalid, m))?;
                        steps_arg = Some((key, steps));
                    }
                    None if name != "deploy_steps" => {
                        return Err(self.err(
                            Reason::Invalid,
                            format!("\"{name}\" is required when setting target provision state to {}", verb.as_str()),
                        ));
                    }
                    None => {}
                }
            }
        }
        if event == Event::Rescue && r.rescue_password.is_empty() {
            return Err(self.err(
                Reason::Invalid,
                "A non-empty \"rescue_password\" is required when setting target provision state to rescue",
            ));
        }
        if matches!(event, Event::Deploy | Event::Rebuild) && node.maintenance {
            return Err(self.err(Reason::Invalid, format!("The node {} is in maintenance mode.", node.uuid)));
        }
        if matches!(event, Event::Rebuild | Event::Delete) && node.protected {
            return Err(self.err(
                Reason::Forbidden,
                format!("Node {} is protected and cannot be undeployed, rebuilt or deleted", node.uuid),
            ));
        }

        let permit = self.permit()?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(ActionReply {}));
        };
        let t = match transition(node.provision_state, node.target_provision_state, event) {
            Ok(t) => t,
            Err(_) => {
                let e = invalid_state(&node);
                Self::give_back(lock).await;
                return Err(e);
            }
        };
        // validate the interfaces the operation needs
        use InterfaceKind as K;
        let needs: &[InterfaceKind] = match event {
            Event::Deploy | Event::Rebuild => &[K::Power, K::Deploy, K::Boot],
            Event::Manage | Event::Provide | Event::Clean | Event::Adopt => &[K::Power],
            Event::Rescue | Event::Unrescue => &[K::Power, K::Rescue],
            _ => &[],
        };
        if !needs.is_empty() {
            let driver = match self.inner.registry.driver_for(&node) {
                Ok(d) => d,
                Err(e) => {
                    Self::give_back(lock).await;
                    return Err(self.driver_err(e));
                }
            };
            // validated as the node will be once the action starts (a
            // deploy's interfaces check the image it is about to need)
            let mut probe = node.clone();
            probe.provision_state = t.to;
            probe.target_provision_state = t.target;
            if let Some(cd) = &configdrive {
                probe.instance_info.insert("configdrive".into(), cd.clone());
            }
            let task = self.inner.task_with_ports(probe).await;
            for (iface, res) in driver.validate_kinds(&task, needs).await {
                if let Err(e) = res {
                    Self::give_back(lock).await;
                    return Err(
                        self.err(Reason::Invalid, format!("Failed to validate {iface} for node {}: {e}", node.uuid))
                    );
                }
            }
        }
        let from = node.provision_state;
        node.provision_state = t.to;
        node.target_provision_state = t.target;
        node.provision_updated_at = Some(Utc::now());
        node.last_error = None;
        node.driver_internal_info.remove(RECORD_KEY);
        // the operation's artefacts will live here
        node.conductor_affinity = Some(self.inner.id.clone());
        if let Some((key, steps)) = steps_arg {
            node.driver_internal_info.insert(key.into(), serde_json::to_value(steps).expect("steps serialise"));
        }
        if let Some(cd) = configdrive {
            node.instance_info.insert("configdrive".into(), cd);
        }
        if event == Event::Rescue {
            node.instance_info.insert("rescue_password".into(), Value::String(r.rescue_password.clone()));
        }
        if event == Event::Unrescue {
            node.instance_info.remove("rescue_password");
        }
        if let Err(e) = self.save_applying(&lock, &node, self.applied(call, node.uuid, "provision").as_ref()).await {
            Self::give_back(lock).await;
            return Err(e);
        }
        self.inner.history(node.uuid, "provision", &format!("{} : {from} -> {}", verb.as_str(), t.to)).await;
        info!(node = %node.uuid, verb = verb.as_str(), from = %from, to = %t.to, "provision action accepted");
        if t.to.is_in_progress() {
            self.inner.spawn_operation(lock, node, permit);
        } else {
            Self::give_back(lock).await;
        }
        Ok(Response::new(ActionReply {}))
    }
}
