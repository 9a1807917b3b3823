//! Provision actions (`PUT /v1/nodes/<n>/states/provision`): check the
//! transition and the interfaces it needs, persist the `*ING` state, and
//! run the operation in the background.
//!
//! The decisions are pure and tested on their own: [`ProvisionRequest::parse`]
//! (the request's arguments), [`decide`] (may this node take it now, and
//! into which state) and [`apply`] (the node as the action leaves it). The
//! handler around them reads, locks, validates the interfaces (I/O: a
//! driver may look at an image) and writes — and asks [`decide`] twice: on
//! the node as read (to refuse at once, before any lock) and under the lock
//! (the node may have moved meanwhile).

use ferric_common::ids::ConductorId;
use ferric_common::states::Transition;
use ferric_deploy::driver::Step;

use super::*;

/// Why a provision action is refused: the status to answer and Ironic's
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
    /// NODE_LOCKED: who holds it.
    pub holder: String,
}

impl Refusal {
    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal { reason: Reason::Invalid, message: message.into(), holder: String::new() }
    }
}

/// A provision request's arguments, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    pub verb: Verb,
    pub configdrive: Option<Value>,
    /// User steps for the operation (clean, service, deploy), under the
    /// key the operation reads them from.
    pub steps: Option<(&'static str, Vec<Step>)>,
    pub rescue_password: String,
}

impl ProvisionRequest {
    /// The request's arguments, or why they are wrong (all before anything
    /// is read or locked).
    pub fn parse(r: &ProvisionActionRequest) -> Result<ProvisionRequest, Refusal> {
        let verb = verb_of(r)?;
        let event = verb.event();
        let configdrive = parse_json(&r.configdrive_json, "configdrive").map_err(Refusal::invalid)?;
        let mut steps = None;
        for (json, e, key, name) in [
            (&r.clean_steps_json, Event::Clean, CLEAN_STEPS_KEY, "clean_steps"),
            (&r.service_steps_json, Event::Service, SERVICE_STEPS_KEY, "service_steps"),
            (&r.deploy_steps_json, Event::Deploy, DEPLOY_STEPS_KEY, "deploy_steps"),
        ] {
            let v = parse_json(json, name).map_err(Refusal::invalid)?;
            if event == e || (name == "deploy_steps" && event == Event::Rebuild) {
                match v {
                    Some(v) => steps = Some((key, check_steps(&v, name).map_err(Refusal::invalid)?)),
                    None if name != "deploy_steps" => {
                        return Err(Refusal::invalid(format!(
                            "\"{name}\" is required when setting target provision state to {}",
                            verb.as_str()
                        )));
                    }
                    None => {}
                }
            }
        }
        if event == Event::Rescue && r.rescue_password.is_empty() {
            return Err(Refusal::invalid(
                "A non-empty \"rescue_password\" is required when setting target provision state to rescue",
            ));
        }
        Ok(ProvisionRequest { verb, configdrive, steps, rescue_password: r.rescue_password.clone() })
    }

    /// The interfaces the operation needs valid before it starts.
    pub fn needs(&self) -> &'static [InterfaceKind] {
        use InterfaceKind as K;
        match self.verb.event() {
            Event::Deploy | Event::Rebuild => &[K::Power, K::Deploy, K::Boot],
            Event::Manage | Event::Provide | Event::Clean | Event::Adopt => &[K::Power],
            Event::Rescue | Event::Unrescue => &[K::Power, K::Rescue],
            _ => &[],
        }
    }
}

/// The verb a request names.
pub fn verb_of(r: &ProvisionActionRequest) -> Result<Verb, Refusal> {
    Verb::parse(&r.target).ok_or_else(|| Refusal::invalid(format!("\"{}\" is not a valid provision target", r.target)))
}

/// May `node` take `verb` now, and into which state. A transition the
/// state machine refuses on a node someone holds is "locked" (409: the
/// holder's operation is moving it), else "invalid state" (400).
pub fn decide(node: &Node, verb: Verb) -> Result<Transition, Refusal> {
    let event = verb.event();
    let t =
        transition(node.provision_state, node.target_provision_state, event).map_err(|_| match &node.reservation {
            Some(holder) => Refusal {
                reason: Reason::NodeLocked,
                message: format!(
                    "Node {} is locked by host {holder}, please retry after the current operation is completed.",
                    node.uuid
                ),
                holder: holder.to_string(),
            },
            None => Refusal::invalid(format!(
                "The requested action \"{}\" can not be performed on node \"{}\" while it is in state \"{}\".",
                verb.as_str(),
                node.uuid,
                node.provision_state
            )),
        })?;
    if matches!(event, Event::Deploy | Event::Rebuild) && node.maintenance {
        return Err(Refusal::invalid(format!("The node {} is in maintenance mode.", node.uuid)));
    }
    if matches!(event, Event::Rebuild | Event::Delete) && node.protected {
        return Err(Refusal {
            reason: Reason::Forbidden,
            message: format!("Node {} is protected and cannot be undeployed, rebuilt or deleted", node.uuid),
            holder: String::new(),
        });
    }
    Ok(t)
}

/// The node as the accepted action leaves it: its new state, the request's
/// arguments where the operation reads them, the operation's artefacts on
/// this conductor (`me`).
pub fn apply(node: &mut Node, req: &ProvisionRequest, t: &Transition, me: &ConductorId, now: chrono::DateTime<Utc>) {
    node.provision_state = t.to;
    node.target_provision_state = t.target;
    node.provision_updated_at = Some(now);
    node.last_error = None;
    node.driver_internal_info.remove(RECORD_KEY);
    node.conductor_affinity = Some(me.clone());
    if let Some((key, steps)) = &req.steps {
        node.driver_internal_info.insert((*key).into(), serde_json::to_value(steps).expect("steps serialise"));
    }
    if let Some(cd) = &req.configdrive {
        node.instance_info.insert("configdrive".into(), cd.clone());
    }
    match req.verb.event() {
        Event::Rescue => {
            node.instance_info.insert("rescue_password".into(), Value::String(req.rescue_password.clone()));
        }
        Event::Unrescue => {
            node.instance_info.remove("rescue_password");
        }
        _ => {}
    }
}

impl ConductorService {
    fn refused(&self, r: Refusal) -> Status {
        status(r.reason, r.message, self.inner.epoch(), &r.holder)
    }

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
        let verb = verb_of(&r).map_err(|e| self.refused(e))?;
        decide(&node, verb).map_err(|e| self.refused(e))?;
        let req = ProvisionRequest::parse(&r).map_err(|e| self.refused(e))?;
        if let Some(cd) = &req.configdrive {
            // a bad one fails now, not in the ramdisk minutes later
            ferric_deploy::image::configdrive::for_agent(Some(cd), &node.uuid.to_string(), node.name.as_deref())
                .map_err(|e| self.err(Reason::Invalid, e.to_string()))?;
        }
        let permit = self.permit()?;
        let Some((lock, mut node)) = self.lock_for(node.uuid, call).await? else {
            return Ok(Response::new(ActionReply {}));
        };
        let accepted = async {
            let t = decide(&node, verb).map_err(|e| self.refused(e))?;
            self.validate_for(&node, &req, &t).await?;
            let from = node.provision_state;
            apply(&mut node, &req, &t, &self.inner.id, Utc::now());
            self.check_size(&node)?;
            self.save_applying(&lock, &node, self.applied(call, node.uuid, "provision").as_ref()).await?;
            Ok::<_, Status>((from, t))
        }
        .await;
        let (from, t) = match accepted {
            Ok(x) => x,
            Err(e) => {
                Self::give_back(lock).await;
                return Err(e);
            }
        };
        self.inner.history(node.uuid, "provision", &format!("{} : {from} -> {}", req.verb.as_str(), t.to)).await;
        info!(node = %node.uuid, verb = req.verb.as_str(), from = %from, to = %t.to, "provision action accepted");
        if t.to.is_in_progress() {
            self.inner.spawn_operation(lock, node, permit);
        } else {
            Self::give_back(lock).await;
        }
        Ok(Response::new(ActionReply {}))
    }

    /// The interfaces the operation needs, validated on the node as it will
    /// be once the action starts (a deploy's interfaces check the image it
    /// is about to need, with the request's config drive).
    async fn validate_for(&self, node: &Node, req: &ProvisionRequest, t: &Transition) -> Result<(), Status> {
        let needs = req.needs();
        if needs.is_empty() {
            return Ok(());
        }
        let driver = self.inner.registry.driver_for(node).map_err(|e| self.driver_err(e))?;
        let mut probe = node.clone();
        probe.provision_state = t.to;
        probe.target_provision_state = t.target;
        if let Some(cd) = &req.configdrive {
            probe.instance_info.insert("configdrive".into(), cd.clone());
        }
        let task = self.inner.task_with_ports(probe).await;
        for (iface, res) in driver.validate_kinds(&task, needs).await {
            if let Err(e) = res {
                return Err(
                    self.err(Reason::Invalid, format!("Failed to validate {iface} for node {}: {e}", node.uuid))
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ferric_common::states::ProvisionState as S;

    use super::*;

    fn request(target: &str) -> ProvisionActionRequest {
        ProvisionActionRequest { target: target.into(), ..Default::default() }
    }

    fn node(state: S) -> Node {
        Node::new(Uuid::new_v4(), "fake-hardware", state)
    }

    #[test]
    fn arguments_are_refused_before_anything_is_read() {
        let bad = |r: ProvisionActionRequest| ProvisionRequest::parse(&r).unwrap_err();
        assert!(bad(request("fly")).message.contains("\"fly\" is not a valid provision target"));
        assert!(bad(request("clean")).message.contains("\"clean_steps\" is required"));
        assert!(bad(request("service")).message.contains("\"service_steps\" is required"));
        assert!(bad(request("rescue")).message.contains("rescue_password"));
        let mut r = request("active");
        r.configdrive_json = "{not json".into();
        assert!(bad(r).message.contains("configdrive is not valid JSON"));
        let mut r = request("clean");
        r.clean_steps_json = r#"[{"interface": "deploy"}]"#.into();
        assert!(bad(r).message.contains("missing the required key \"step\""));
        // deploy steps are optional; clean steps land where cleaning reads them
        assert_eq!(ProvisionRequest::parse(&request("active")).unwrap().steps, None);
        let mut r = request("clean");
        r.clean_steps_json = r#"[{"interface": "deploy", "step": "erase_devices"}]"#.into();
        let p = ProvisionRequest::parse(&r).unwrap();
        assert_eq!(p.steps.as_ref().map(|(k, s)| (*k, s.len())), Some((CLEAN_STEPS_KEY, 1)));
        assert_eq!(p.needs(), &[InterfaceKind::Power]);
    }

    #[test]
    fn decide_row_by_row() {
        let req = |t: &str| verb_of(&request(t)).unwrap();
        // accepted, into the state machine's next state
        assert_eq!(decide(&node(S::Available), req("active")).unwrap().to, S::Deploying);
        assert_eq!(decide(&node(S::Enroll), req("manage")).unwrap().to, S::Verifying);
        assert_eq!(decide(&node(S::Active), req("deleted")).unwrap().to, S::Deleting);
        // a transition the state machine refuses: invalid state (400) ...
        let r = decide(&node(S::Enroll), req("active")).unwrap_err();
        assert_eq!(r.reason, Reason::Invalid);
        assert!(r.message.contains("while it is in state \"enroll\""), "{}", r.message);
        // ... or locked (409) when someone holds the node: its operation moves it
        let mut busy = node(S::Deploying);
        busy.reservation = Some("c2/1".into());
        let r = decide(&busy, req("active")).unwrap_err();
        assert_eq!((r.reason, r.holder.as_str()), (Reason::NodeLocked, "c2/1"));
        // no deploy in maintenance, no undeploy of a protected node
        let mut m = node(S::Available);
        m.maintenance = true;
        assert!(decide(&m, req("active")).unwrap_err().message.contains("maintenance"));
        let mut p = node(S::Active);
        p.protected = true;
        assert_eq!(decide(&p, req("deleted")).unwrap_err().reason, Reason::Forbidden);
        assert_eq!(decide(&p, req("rebuild")).unwrap_err().reason, Reason::Forbidden);
    }

    #[test]
    fn apply_leaves_the_node_as_the_operation_reads_it() {
        let mut n = node(S::Available);
        n.last_error = Some("old".into());
        n.driver_internal_info.insert(RECORD_KEY.into(), serde_json::json!({"stale": true}));
        let mut r = request("active");
        r.configdrive_json = r#"{"meta_data": {"hostname": "h"}}"#.into();
        r.deploy_steps_json = r#"[{"interface": "deploy", "step": "write_image", "priority": 80}]"#.into();
        let req = ProvisionRequest::parse(&r).unwrap();
        let t = decide(&n, req.verb).unwrap();
        let me = ConductorId::new("c1");
        let now = Utc::now();
        apply(&mut n, &req, &t, &me, now);
        assert_eq!((n.provision_state, n.target_provision_state), (S::Deploying, Some(S::Active)));
        assert_eq!((n.last_error.as_deref(), n.provision_updated_at), (None, Some(now)));
        assert!(!n.driver_internal_info.contains_key(RECORD_KEY), "a stale operation record survived");
        assert!(n.driver_internal_info.contains_key(DEPLOY_STEPS_KEY));
        assert_eq!(n.instance_info["configdrive"]["meta_data"]["hostname"], "h");
        assert_eq!(n.conductor_affinity.as_ref(), Some(&me));
        // rescue keeps its password for the ramdisk; unrescue drops it
        let mut n = node(S::Active);
        let mut r = request("rescue");
        r.rescue_password = "pw".into();
        let req = ProvisionRequest::parse(&r).unwrap();
        let t = decide(&n, req.verb).unwrap();
        apply(&mut n, &req, &t, &me, now);
        assert_eq!(n.instance_info["rescue_password"], "pw");
        n.provision_state = S::Rescue;
        n.target_provision_state = None;
        let req = ProvisionRequest::parse(&request("unrescue")).unwrap();
        let t = decide(&n, req.verb).unwrap();
        apply(&mut n, &req, &t, &me, now);
        assert!(!n.instance_info.contains_key("rescue_password"));
    }
}
