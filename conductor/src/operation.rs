//! The step engine that runs every long operation (verify, deploy, clean,
//! tear-down, inspect, adopt, rescue, unrescue, service).
//!
//! An operation is the list of steps planned when its `*ING` state is
//! entered, stored in the node's `driver_internal_info.ferric_operation`
//! together with the index of the next step. The engine saves the node
//! before a step runs (the API shows it as `deploy_step`/`clean_step`) and
//! after it, each save conditional on still holding the node lock. Steps
//! are idempotent, so whoever finds a node in an `*ING` state with a record
//! — this conductor after a restart, or a new owner after a take-over —
//! continues at `next` instead of failing the node. A step that answers
//! `Wait` parks the node in the matching wait state (e.g. `wait call-back`)
//! with `next` already advanced; the ramdisk's callback resumes it.
//!
//! Cancellation (shutdown, drain, fencing) is honoured between steps: the
//! record stays, the lock is released, the next owner resumes.
//!
//! Traces: a run is an `operation <state>` span ([`span`]), a child of
//! whatever started it (the REST request's call, a heartbeat, a take-over
//! pass), and every step a `<interface>.<step>` span inside it; both name
//! the node, and the BMC and agent requests of a step are its children.
//! The record keeps the `traceparent` of the run that planned it: a run
//! resumed in another trace — after a ramdisk's callback, or by a
//! take-over whose pass has no request behind it — links to that span and
//! records its trace id as `origin_trace_id`.

use std::sync::Arc;

use chrono::Utc;
use ferric_common::model::{JsonObject, Node};
use ferric_common::states::{Event, ProvisionState, Transition, transition};
use ferric_deploy::driver::{Driver, DriverError, Step, StepOutcome, Task};
use ferric_deploy::token::AgentTokens;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument as _, error, info, warn};

use ferric_common::ids::ConductorId;

use crate::Inner;
use crate::lock::NodeLock;

pub const RECORD_KEY: &str = "ferric_operation";
/// User-given steps for a manual clean / service, stored by the action.
pub const CLEAN_STEPS_KEY: &str = "clean_steps";
pub const DEPLOY_STEPS_KEY: &str = "user_deploy_steps";
pub const SERVICE_STEPS_KEY: &str = "service_steps";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The `*ING` state these steps belong to.
    pub state: ProvisionState,
    pub steps: Vec<Step>,
    /// Index of the next step to run.
    pub next: usize,
    /// Conductor that planned the operation.
    pub started_by: ConductorId,
    /// Conductor that ran the latest step.
    #[serde(default)]
    pub last_run_by: ConductorId,
    /// While waiting for a ramdisk callback: when to give up. Wall-clock
    /// time in the database, so it holds across owners.
    #[serde(default)]
    pub wait_deadline: Option<chrono::DateTime<Utc>>,
    /// The ramdisk of the latest wait called back (its
    /// `boot.ramdisk_called_back` step is in the list); a step that then
    /// waits in place for the ramdisk's command does not add another.
    #[serde(default)]
    pub ramdisk_up: bool,
    /// The W3C `traceparent` of the run that planned the operation, when
    /// traces are exported: a run resumed in another trace (after a
    /// ramdisk's callback, or by a take-over after its conductor died)
    /// links its span to that one and names its trace (`origin_trace_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl OperationRecord {
    pub fn load(node: &Node) -> Option<OperationRecord> {
        node.driver_internal_info.get(RECORD_KEY).and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    fn store(&self, node: &mut Node) {
        node.driver_internal_info.insert(RECORD_KEY.into(), serde_json::to_value(self).expect("a record serialises"));
    }
}

/// A ramdisk called back: the waiting operation resumes with a
/// `boot.ramdisk_called_back` step in front of its next one (recorded like
/// any step, so whoever resumes runs it: the boot interface resets a
/// one-time boot override a BMC kept, or ejects the ramdisk media).
pub fn note_callback(node: &mut Node) {
    if let Some(mut record) = OperationRecord::load(node) {
        let step = Step::new("boot", "ramdisk_called_back", 0);
        if !record.ramdisk_up && record.steps.get(record.next) != Some(&step) {
            record.steps.insert(record.next.min(record.steps.len()), step);
        }
        record.ramdisk_up = true;
        record.wait_deadline = None;
        record.store(node);
    }
}

/// The ramdisk is alive but has not finished what the operation waits
/// for (a long image write): the wait's deadline starts again, as
/// Ironic's callback timeout counts from the latest heartbeat.
pub fn note_heartbeat(node: &mut Node, callback_timeout_secs: u64) {
    if let Some(mut record) = OperationRecord::load(node) {
        record.wait_deadline = Some(Utc::now() + chrono::Duration::seconds(callback_timeout_secs as i64));
        record.store(node);
    }
}

fn user_steps(node: &Node, key: &str) -> Vec<Step> {
    node.driver_internal_info.get(key).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
}

/// The steps an operation in `state` runs, in order.
pub fn plan(driver: &Driver, task: &Task) -> Vec<Step> {
    let node = &task.node;
    match node.provision_state {
        ProvisionState::Verifying => vec![Step::new("power", "get_power_state", 0)],
        ProvisionState::Deploying => {
            let user = user_steps(node, DEPLOY_STEPS_KEY);
            if user.is_empty() { driver.deploy.deploy_steps(task) } else { user }
        }
        ProvisionState::Cleaning if node.target_provision_state == Some(ProvisionState::Manageable) => {
            user_steps(node, CLEAN_STEPS_KEY)
        }
        ProvisionState::Cleaning => {
            if node.automated_clean == Some(false) {
                Vec::new()
            } else {
                let mut steps = driver.deploy.clean_steps(task);
                steps.push(Step::new("power", "power_off", 0));
                steps
            }
        }
        ProvisionState::Deleting => driver.deploy.tear_down_steps(task),
        ProvisionState::Inspecting => vec![Step::new("inspect", "inspect_hardware", 0)],
        ProvisionState::Adopting => vec![Step::new("boot", "prepare_instance", 0)],
        ProvisionState::Rescuing => vec![Step::new("rescue", "rescue", 0)],
        ProvisionState::Unrescuing => vec![Step::new("rescue", "unrescue", 0)],
        ProvisionState::Servicing => user_steps(node, SERVICE_STEPS_KEY),
        _ => Vec::new(),
    }
}

/// Which node field shows the current step of an operation in `state`.
fn step_field(node: &mut Node) -> Option<&mut JsonObject> {
    match node.provision_state {
        ProvisionState::Deploying => Some(&mut node.deploy_step),
        ProvisionState::Cleaning => Some(&mut node.clean_step),
        ProvisionState::Servicing => Some(&mut node.service_step),
        _ => None,
    }
}

fn show_step(node: &mut Node, step: Option<&Step>) {
    if let Some(field) = step_field(node) {
        *field = match step {
            Some(s) => match serde_json::to_value(s) {
                Ok(Value::Object(m)) => m,
                _ => JsonObject::new(),
            },
            None => JsonObject::new(),
        };
    }
}

/// The span of one run of `node`'s operation: a child of the current span,
/// with the node and (inherited) the request that started it.
pub fn span(node: &Node) -> tracing::Span {
    let span = tracing::info_span!(
        "operation",
        otel.name = %format_args!("operation {}", node.provision_state),
        otel.status_code = Empty,
        provision_state = %node.provision_state,
        node.uuid = %node.uuid,
        request_id = Empty,
        trace_id = Empty,
        origin_trace_id = Empty,
        outcome = Empty,
    );
    ferric_common::telemetry::inherit(&span);
    ferric_common::telemetry::record_trace_id(&span);
    span
}

/// How an engine run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Reached a stable, failed or wait state; lock released.
    Settled,
    /// Stopped at a step boundary because of cancellation; record kept,
    /// lock released, to be resumed.
    HandedOff,
    /// The lock was no longer ours (we were declared dead): stopped
    /// without writing anything more.
    LostLock,
}

/// Run the node's operation from its recorded step until it settles.
/// Consumes the lock and always gives it up (unless it was lost).
/// `running` (the mark that this process runs the node's operation) is
/// dropped before the lock is released: whoever takes the lock next — a
/// heartbeat that resumes the operation at once — must not find the node
/// still marked as running here, or the operation it starts is refused and
/// its lock left held by nobody.
pub async fn run<R>(
    inner: Arc<Inner>,
    lock: NodeLock,
    mut node: Node,
    cancel: CancellationToken,
    running: R,
) -> Finish {
    let finish = drive(&inner, &lock, &mut node, &cancel).await;
    drop(running);
    let outcome = match finish {
        Finish::Settled if node.provision_state.is_failed() => "failed",
        Finish::Settled => "settled",
        Finish::HandedOff => "handed_off",
        Finish::LostLock => "stopped",
    };
    metrics::counter!(ferric_common::metrics::OPERATIONS_TOTAL, "outcome" => outcome).increment(1);
    let span = tracing::Span::current();
    span.record("outcome", outcome);
    if outcome == "failed" {
        span.record("otel.status_code", "error");
    }
    if finish != Finish::LostLock && !inner.fence.is_cancelled() {
        // the final state and the release in one write: nobody sees a
        // settled node that is still locked
        match lock.save_and_release(&node).await {
            Ok(true) => {}
            Ok(false) => error!(node = %node.uuid, "lost the node lock before the final save"),
            Err(e) => error!(node = %node.uuid, "the final save failed: {e}; the record stays for whoever resumes"),
        }
    }
    finish
}

async fn save(inner: &Inner, lock: &NodeLock, node: &Node) -> bool {
    save_dropping(inner, lock, node, None).await
}

/// [`save`], deleting the allocation `allocation` (if any) with it.
async fn save_dropping(inner: &Inner, lock: &NodeLock, node: &Node, allocation: Option<&str>) -> bool {
    if inner.fence.is_cancelled() {
        return false;
    }
    let saved = match allocation {
        Some(a) => lock.save_dropping_allocation(node, a, None).await,
        None => lock.save(node).await,
    };
    match saved {
        Ok(true) => true,
        Ok(false) => {
            error!(node = %node.uuid, conductor = %inner.id, "lost the node lock; stopping the operation");
            false
        }
        Err(e) => {
            // A database outage: stop here and leave the record; whoever
            // holds the node next resumes from it.
            error!(node = %node.uuid, "saving the node failed: {e}; stopping the operation");
            false
        }
    }
}

/// What the engine does next with an operation at a step boundary (pure).
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Stop here and leave the record for whoever holds the node next:
    /// shutdown or drain (`cancelled`), or the ring gave the node away.
    HandOff { ring_moved: bool },
    /// Run this step.
    Run(Step),
    /// Every step ran: the operation is done.
    Complete,
}

/// The decision at a step boundary.
pub fn next(record: &OperationRecord, cancelled: bool, owns: bool) -> Next {
    if cancelled || !owns {
        return Next::HandOff { ring_moved: !cancelled };
    }
    match record.steps.get(record.next) {
        Some(step) => Next::Run(step.clone()),
        None => Next::Complete,
    }
}

/// The record of a node's operation in `state`: the stored one, or a new
/// one with `planned` steps when there is none for this state (pure).
pub fn record_for(node: &Node, me: &ConductorId, planned: impl FnOnce() -> Vec<Step>) -> OperationRecord {
    match OperationRecord::load(node) {
        Some(r) if r.state == node.provision_state => r,
        _ => OperationRecord {
            state: node.provision_state,
            steps: planned(),
            next: 0,
            started_by: me.clone(),
            last_run_by: ConductorId::default(),
            wait_deadline: None,
            ramdisk_up: false,
            traceparent: None,
        },
    }
}

/// The node as it is saved before `step` runs: the step shown, and who ran
/// it last (pure).
pub fn start_step(node: &mut Node, record: &mut OperationRecord, step: &Step, me: &ConductorId) {
    record.last_run_by = me.clone();
    record.store(node);
    show_step(node, Some(step));
}

/// The node as it is left at a hand-off: the record (at the step to run
/// next) and no step shown (pure).
pub fn hand_off(node: &mut Node, record: &OperationRecord) {
    record.store(node);
    show_step(node, None);
}

/// What a step's outcome does to the operation.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterStep {
    /// Save, then go on with the next step.
    Continue,
    /// The node now waits for its ramdisk (its wait state is set): settled.
    Waiting,
    /// The operation fails with this message.
    Fail(String),
}

/// Applies a step's outcome to the node and its record (pure): the next
/// step on success; on a wait, the wait state with a deadline of
/// `callback_timeout` from `now` (and, for `Wait`, the next step after the
/// callback); the failure message otherwise.
pub fn after_step(
    node: &mut Node,
    record: &mut OperationRecord,
    step: &Step,
    outcome: Result<StepOutcome, DriverError>,
    now: chrono::DateTime<Utc>,
    callback_timeout: chrono::Duration,
) -> AfterStep {
    match outcome {
        Ok(StepOutcome::Done) => {
            record.next += 1;
            record.store(node);
            AfterStep::Continue
        }
        Ok(outcome @ (StepOutcome::Wait | StepOutcome::WaitHere)) => {
            if outcome == StepOutcome::Wait {
                // a ramdisk boots: its callback resumes at the next step
                record.next += 1;
                record.ramdisk_up = false;
            }
            // WaitHere: the running ramdisk's command ends the wait and the
            // same step looks how it ended
            record.wait_deadline = Some(now + callback_timeout);
            record.store(node);
            match transition(record.state, node.target_provision_state, Event::Wait) {
                Ok(t) => {
                    node.provision_state = t.to;
                    node.target_provision_state = t.target;
                    node.provision_updated_at = Some(now);
                    AfterStep::Waiting
                }
                Err(e) => AfterStep::Fail(e.to_string()),
            }
        }
        Err(e) => AfterStep::Fail(step_error(step, &e)),
    }
}

/// Every step ran: the node leaves its `*ING` state (pure). Returns the
/// transition taken, or why none could be.
pub fn complete(node: &mut Node, now: chrono::DateTime<Utc>) -> Result<Transition, String> {
    let state = node.provision_state;
    node.driver_internal_info.remove(RECORD_KEY);
    show_step(node, None);
    // the ramdisk session (if any) ended with the operation: the next one
    // gets a new token (Ironic's wipe_token_and_url)
    AgentTokens::end_session(node);
    finish_state(node, state);
    let t = transition(state, node.target_provision_state, Event::Done).map_err(|e| e.to_string())?;
    node.provision_state = t.to;
    node.target_provision_state = t.target;
    node.provision_updated_at = Some(now);
    node.last_error = None;
    Ok(t)
}

/// Runs the node's operation, step by step, until it settles, hands off or
/// loses its lock. The decisions are the pure functions above; this is the
/// executor: the save before each step (the step shown) and after it (the
/// step done), the history, the driver's step itself. Order of writes:
/// save(step shown) → run → save(next) … → (settled: written by `run`
/// with the release). A chained operation (deleting → cleaning) is saved
/// before it starts.
async fn drive(inner: &Arc<Inner>, lock: &NodeLock, node: &mut Node, cancel: &CancellationToken) -> Finish {
    loop {
        let state = node.provision_state;
        if !state.is_in_progress() {
            return Finish::Settled;
        }
        let driver = match inner.registry.driver_for(node) {
            Ok(d) => d,
            Err(e) => return fail(inner, node, &e.to_string()).await,
        };
        let ports = inner.ports_of(node.uuid).await;
        let mut record = record_for(node, &inner.id, || plan(&driver, &inner.task(node.clone(), ports.clone())));
        let span = tracing::Span::current();
        match &record.traceparent {
            Some(tp) => {
                ferric_common::telemetry::link(&span, tp);
            }
            // stored with the record's next save
            None => record.traceparent = ferric_common::telemetry::traceparent(&span),
        }
        if record.next > 0 {
            info!(node = %node.uuid, state = %state, next = record.next, "resuming operation at recorded step");
            inner.history(node.uuid, "resume", &format!("{state} at step {}", record.next)).await;
        }
        loop {
            match next(&record, cancel.is_cancelled(), inner.owns(node)) {
                Next::HandOff { ring_moved } => {
                    if ring_moved {
                        info!(node = %node.uuid, "the ring moved the node; handing the operation off at a step boundary");
                        inner.history(node.uuid, "hand_off", &format!("{state} at step {}", record.next)).await;
                    }
                    hand_off(node, &record);
                    return Finish::HandedOff;
                }
                Next::Run(step) => {
                    start_step(node, &mut record, &step, &inner.id);
                    if !save(inner, lock, node).await {
                        return Finish::LostLock;
                    }
                    inner.history(node.uuid, "step", &format!("{state} {}", step.full_name())).await;
                    let mut task = inner.task(node.clone(), ports.clone());
                    let limit = inner.step_timeout();
                    let span = tracing::info_span!(
                        "step",
                        otel.name = %step.full_name(),
                        otel.status_code = Empty,
                        node.uuid = %node.uuid,
                        request_id = Empty,
                    );
                    ferric_common::telemetry::inherit(&span);
                    let run_step = driver.execute_step(&mut task, &step).instrument(span.clone());
                    let outcome = tokio::select! {
                        r = tokio::time::timeout(limit, run_step) => r.unwrap_or_else(|_| {
                            Err(DriverError::Failed(format!(
                                "it did not finish within {} s (conductor.step_timeout_secs)",
                                limit.as_secs()
                            )))
                        }),
                        // fenced: drop the step mid-flight and write nothing more
                        _ = inner.fence.cancelled() => return Finish::LostLock,
                    };
                    if outcome.is_err() {
                        span.record("otel.status_code", "error");
                    }
                    *node = task.node;
                    let timeout = chrono::Duration::seconds(inner.cfg.conductor.callback_timeout_secs as i64);
                    match after_step(node, &mut record, &step, outcome, Utc::now(), timeout) {
                        AfterStep::Continue => {
                            if !save(inner, lock, node).await {
                                return Finish::LostLock;
                            }
                        }
                        AfterStep::Waiting => return Finish::Settled,
                        AfterStep::Fail(msg) => return fail(inner, node, &msg).await,
                    }
                }
                Next::Complete => {
                    let allocation = node.allocation_uuid.clone();
                    let t = match complete(node, Utc::now()) {
                        Ok(t) => t,
                        Err(e) => return fail(inner, node, &e).await,
                    };
                    // a tear-down deletes the node's allocation in the same
                    // transaction as the node forgets it
                    let dropped = allocation.filter(|_| node.allocation_uuid.is_none());
                    // a settled node is written by `run`, together with the
                    // release, so no client ever sees it settled and still
                    // locked; a chained operation is recorded before it starts
                    if (t.to.is_in_progress() || dropped.is_some())
                        && !save_dropping(inner, lock, node, dropped.as_deref()).await
                    {
                        return Finish::LostLock;
                    }
                    inner.history(node.uuid, "done", &format!("{state} -> {}", t.to)).await;
                    info!(node = %node.uuid, from = %state, to = %t.to, "operation finished");
                    break;
                }
            }
        }
    }
}

/// Side effects of completing the steps of `state` successfully.
fn finish_state(node: &mut Node, state: ProvisionState) {
    match state {
        ProvisionState::Deleting => {
            // an undeployed node forgets its instance and its allocation
            // (Ironic's tear-down; the executor deletes the allocation
            // with the save that records this)
            node.instance_info = JsonObject::new();
            node.instance_uuid = None;
            node.allocation_uuid = None;
            node.instance_name = None;
            node.driver_internal_info.remove(DEPLOY_STEPS_KEY);
        }
        ProvisionState::Cleaning => {
            node.driver_internal_info.remove(CLEAN_STEPS_KEY);
        }
        ProvisionState::Servicing => {
            node.driver_internal_info.remove(SERVICE_STEPS_KEY);
        }
        _ => {}
    }
}

fn step_error(step: &Step, e: &DriverError) -> String {
    format!("Step {} failed: {e}", step.full_name())
}

/// Move the node to its failure state with `message` as `last_error`; the
/// caller writes it (with the lock's release).
pub async fn fail(inner: &Inner, node: &mut Node, message: &str) -> Finish {
    let state = node.provision_state;
    warn!(node = %node.uuid, state = %state, "operation failed: {message}");
    node.driver_internal_info.remove(RECORD_KEY);
    show_step(node, None);
    AgentTokens::end_session(node);
    match transition(state, node.target_provision_state, Event::Fail) {
        Ok(t) => {
            node.provision_state = t.to;
            node.target_provision_state = t.target;
        }
        Err(_) => {
            node.provision_state = ProvisionState::Error;
            node.target_provision_state = None;
        }
    }
    if matches!(state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
        // as Ironic does: a node that failed cleaning must not be handed
        // out again until an operator looked at it
        node.maintenance = true;
        node.fault = Some("clean failure".into());
        node.maintenance_reason = Some(message.to_string());
    }
    node.last_error = Some(message.to_string());
    node.provision_updated_at = Some(Utc::now());
    inner.history(node.uuid, "fail", message).await;
    Finish::Settled
}

#[cfg(test)]
mod tests {
    use ferric_common::states::ProvisionState as S;
    use uuid::Uuid;

    use super::*;

    fn deploying() -> (Node, OperationRecord) {
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", S::Deploying);
        n.target_provision_state = Some(S::Active);
        let me = ConductorId::new("c1");
        let r =
            record_for(&n, &me, || vec![Step::new("deploy", "deploy", 100), Step::new("deploy", "write_image", 80)]);
        (n, r)
    }

    #[test]
    fn a_boundary_hands_off_runs_the_next_step_or_completes() {
        let (_, mut r) = deploying();
        assert_eq!(next(&r, false, true), Next::Run(Step::new("deploy", "deploy", 100)));
        assert_eq!(next(&r, true, true), Next::HandOff { ring_moved: false }, "shutdown or drain");
        assert_eq!(next(&r, false, false), Next::HandOff { ring_moved: true });
        r.next = 2;
        assert_eq!(next(&r, false, true), Next::Complete);
        assert_eq!(next(&r, true, true), Next::HandOff { ring_moved: false }, "even the last boundary hands off");
    }

    #[test]
    fn a_stored_record_of_this_state_is_resumed_another_is_replanned() {
        let (mut n, mut r) = deploying();
        r.next = 1;
        r.store(&mut n);
        let me = ConductorId::new("c2");
        let resumed = record_for(&n, &me, || panic!("a recorded operation was planned again"));
        assert_eq!((resumed.next, resumed.started_by.as_str()), (1, "c1"));
        // a record of another state (a failed clean's, say) is not resumed
        n.provision_state = S::Cleaning;
        let fresh = record_for(&n, &me, Vec::new);
        assert_eq!((fresh.state, fresh.next, fresh.started_by.as_str()), (S::Cleaning, 0, "c2"));
    }

    #[test]
    fn a_step_outcome_moves_the_record_and_the_node() {
        let now = Utc::now();
        let timeout = chrono::Duration::seconds(1800);
        let step = Step::new("deploy", "deploy", 100);
        // done: the next step, recorded in the node
        let (mut n, mut r) = deploying();
        start_step(&mut n, &mut r, &step, &ConductorId::new("c1"));
        assert_eq!(n.deploy_step["step"], "deploy", "the running step is shown");
        assert_eq!(after_step(&mut n, &mut r, &step, Ok(StepOutcome::Done), now, timeout), AfterStep::Continue);
        assert_eq!(OperationRecord::load(&n).unwrap().next, 1);
        // wait: the next step after the ramdisk's callback, a deadline, the wait state
        let (mut n, mut r) = deploying();
        assert_eq!(after_step(&mut n, &mut r, &step, Ok(StepOutcome::Wait), now, timeout), AfterStep::Waiting);
        let stored = OperationRecord::load(&n).unwrap();
        assert_eq!((stored.next, stored.ramdisk_up, stored.wait_deadline), (1, false, Some(now + timeout)));
        assert_eq!(n.provision_state, S::DeployWait);
        // wait here: the same step again after the callback
        let (mut n, mut r) = deploying();
        assert_eq!(after_step(&mut n, &mut r, &step, Ok(StepOutcome::WaitHere), now, timeout), AfterStep::Waiting);
        assert_eq!(OperationRecord::load(&n).unwrap().next, 0);
        // an error fails the operation, naming the step
        let (mut n, mut r) = deploying();
        let failed = after_step(&mut n, &mut r, &step, Err(DriverError::Failed("disk on fire".into())), now, timeout);
        assert_eq!(failed, AfterStep::Fail("Step deploy.deploy failed: disk on fire".into()));
    }

    #[test]
    fn completion_leaves_the_operation_and_forgets_what_it_used() {
        let now = Utc::now();
        let (mut n, mut r) = deploying();
        r.next = 2;
        r.store(&mut n);
        n.last_error = Some("an old failure".into());
        n.driver_internal_info.insert("agent_url".into(), serde_json::json!("http://10.0.0.9:9999"));
        let t = complete(&mut n, now).unwrap();
        assert_eq!((t.to, n.provision_state, n.target_provision_state), (S::Active, S::Active, None));
        assert!(!n.driver_internal_info.contains_key(RECORD_KEY) && !n.driver_internal_info.contains_key("agent_url"));
        assert_eq!((n.last_error.as_deref(), n.provision_updated_at), (None, Some(now)));
        // an undeploy forgets the instance and chains into cleaning
        let mut n = Node::new(Uuid::new_v4(), "fake-hardware", S::Deleting);
        n.target_provision_state = Some(S::Available);
        n.instance_uuid = Some("inst-1".into());
        n.allocation_uuid = Some("inst-1".into());
        n.instance_info.insert("image_source".into(), serde_json::json!("http://images/x.qcow2"));
        let t = complete(&mut n, now).unwrap();
        assert_eq!(t.to, S::Cleaning);
        assert!(t.to.is_in_progress(), "a chained operation starts at once");
        assert!(n.instance_uuid.is_none() && n.allocation_uuid.is_none() && n.instance_info.is_empty());
    }
}
