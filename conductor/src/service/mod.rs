//! The gRPC service the API calls (`proto/ferric/v1/conductor.proto`),
//! by concern: [`provision`], [`power`], [`nodes`] (updates, traits,
//! ports, portgroups, validation, vendor passthru), [`allocations`],
//! [`agent`] (the ramdisk's callbacks),
//! [`admin`] (properties, drain, status). This file holds what they share:
//! error mapping, ownership checks and locking.
//!
//! Every handler that acts on a node first checks that the ring at this
//! conductor's epoch gives it the node (else NOT_OWNER with our epoch, and
//! the API retries against the right owner), then takes the node lock for
//! mutations. One exception: an update of a node the ring gives to nobody
//! is applied by its owner as updated (a move out of a group that lost its
//! last conductor; `nodes::update_node`). Provision and power actions
//! persist the transient state before replying and continue in the
//! background.
//!
//! Every node RPC runs in a server span (`ferric.v1.Conductor/<Method>`,
//! with `node.uuid` and the REST request's `request_id`) whose parent is
//! the API's client span, from the W3C trace context in the call's
//! metadata; the handler's task, and the power action or operation it
//! starts, run inside it (see `ferric_common::telemetry`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use ferric_common::db::{AppliedCall, DbError, INVALID_INPUT_MESSAGE};
use ferric_common::model::{Node, Port, normalize_mac};
use ferric_common::proto::conductor_server::Conductor;
use ferric_common::proto::*;
use ferric_common::rpc::{CALL_ID_HEADER, Reason, status};
use ferric_common::states::{Event, ProvisionState, Verb, transition};
use ferric_common::telemetry;
use ferric_deploy::driver::{DriverError, Heartbeat, InterfaceKind, PowerState, VendorReturn};
use serde_json::Value;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info, warn};
use uuid::Uuid;

mod admin;
mod agent;
mod allocations;
mod nodes;
mod power;
mod provision;

use crate::Inner;
use crate::lock::{LockError, NodeLock};
use crate::operation::{self, CLEAN_STEPS_KEY, DEPLOY_STEPS_KEY, RECORD_KEY, SERVICE_STEPS_KEY};

#[derive(Clone)]
pub struct ConductorService {
    inner: Arc<Inner>,
}

/// Provision states in which a node may be deleted (plus any state in
/// maintenance), as Ironic allows.
const DELETE_ALLOWED: [ProvisionState; 4] =
    [ProvisionState::Manageable, ProvisionState::Enroll, ProvisionState::AdoptFailed, ProvisionState::Available];

/// States in which a node may be updated while a target is set.
const UPDATE_ALLOWED_IN_TRANSITION: [ProvisionState; 13] = [
    ProvisionState::DeployFailed,
    ProvisionState::Inspecting,
    ProvisionState::InspectFailed,
    ProvisionState::InspectWait,
    ProvisionState::CleanFailed,
    ProvisionState::Error,
    ProvisionState::Verifying,
    ProvisionState::AdoptFailed,
    ProvisionState::RescueFailed,
    ProvisionState::UnrescueFailed,
    ProvisionState::ServiceHold,
    ProvisionState::ServiceFailed,
    ProvisionState::Servicing,
];

impl ConductorService {
    pub fn new(inner: Arc<Inner>) -> ConductorService {
        ConductorService { inner }
    }

    fn err(&self, reason: Reason, msg: impl Into<String>) -> Status {
        status(reason, msg, self.inner.epoch(), "")
    }

    fn db_err(&self, e: DbError) -> Status {
        match e {
            DbError::NotFound => self.err(Reason::NotFound, "Resource could not be found."),
            DbError::Duplicate { field } => self.err(Reason::Conflict, format!("duplicate {field}")),
            // the value came with the request: the client is at fault
            e if e.is_invalid_input() => self.err(Reason::Invalid, INVALID_INPUT_MESSAGE),
            // the driver's words go to the log, not to clients
            e if e.is_retryable() => {
                tracing::warn!("database unavailable: {e}");
                self.err(Reason::Unavailable, "The database is unavailable; retry later.")
            }
            e => {
                tracing::error!("database error: {e}");
                self.err(
                    Reason::Internal,
                    format!("Database error; the log of conductor {} has the details.", self.inner.id),
                )
            }
        }
    }

    fn lock_err(&self, e: LockError) -> Status {
        match e {
            LockError::Busy { ref holder, .. } => status(Reason::NodeLocked, e.to_string(), self.inner.epoch(), holder),
            LockError::NotFound(u) => self.err(Reason::NotFound, format!("Node {u} could not be found.")),
            LockError::Db(e) => self.db_err(e),
            // a fenced conductor owns nothing: the API asks the next owner
            LockError::Fenced(e) => self.err(Reason::NotOwner, e.to_string()),
        }
    }

    fn driver_err(&self, e: DriverError) -> Status {
        match e {
            DriverError::Retryable(m) => self.err(Reason::Unavailable, m),
            DriverError::Invalid(m) | DriverError::Unsupported(m) | DriverError::Failed(m) => {
                self.err(Reason::Invalid, m)
            }
        }
    }

    fn parse_uuid(&self, s: &str) -> Result<Uuid, Status> {
        Uuid::parse_str(s).map_err(|_| self.err(Reason::Invalid, format!("Expected a UUID but received {s}.")))
    }

    /// Load a node and check that we own it at our epoch — after catching
    /// up with the caller's epoch when it is newer than ours: a request is
    /// never acted on from an older ring than the one it was routed by.
    async fn load_owned(&self, uuid: &str, epoch: u64) -> Result<Node, Status> {
        self.load_if(uuid, epoch, |n| self.inner.owns(n)).await
    }

    /// [`Self::load_owned`] with another rule than "we own it": `may`.
    async fn load_if(&self, uuid: &str, epoch: u64, may: impl Fn(&Node) -> bool) -> Result<Node, Status> {
        let uuid = self.parse_uuid(uuid)?;
        if let Err(why) = self.inner.catch_up(epoch).await {
            return Err(self.err(Reason::Unavailable, why));
        }
        let node = match self.inner.db.get_node(uuid).await {
            Ok(n) => n,
            Err(DbError::NotFound) => {
                return Err(self.err(Reason::NotFound, format!("Node {uuid} could not be found.")));
            }
            Err(e) => return Err(self.db_err(e)),
        };
        if !may(&node) {
            return Err(self.err(Reason::NotOwner, format!("conductor {} does not own node {uuid}", self.inner.id)));
        }
        Ok(node)
    }

    async fn lock(&self, uuid: Uuid) -> Result<(NodeLock, Node), Status> {
        self.lock_if(uuid, |n| self.inner.owns(n)).await
    }

    /// [`Self::lock`] with another rule than "we own it": `may`, checked
    /// again once the lock is ours.
    async fn lock_if(&self, uuid: Uuid, may: impl Fn(&Node) -> bool) -> Result<(NodeLock, Node), Status> {
        let c = &self.inner.cfg.conductor;
        let (lock, node) = self
            .inner
            .locks
            .acquire(uuid, c.lock_attempts, self.inner.lock_interval())
            .await
            .map_err(|e| self.lock_err(e))?;
        // the ring may have moved while we waited for the lock
        if !may(&node) {
            let _ = lock.release().await;
            return Err(self.err(Reason::NotOwner, format!("conductor {} no longer owns node {uuid}", self.inner.id)));
        }
        Ok((lock, node))
    }

    /// A call that failed may have failed because an earlier attempt of it
    /// was applied meanwhile (the node is already deploying, already gone):
    /// then it is answered as applied, by `replay`.
    async fn unless_applied<T, F, Fut>(&self, res: Rpc<T>, call: &Option<String>, replay: F) -> Rpc<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Rpc<T>>,
    {
        match res {
            Err(e) if call.is_some() && matches!(self.already_applied(call).await, Ok(true)) => {
                let _ = e;
                replay().await
            }
            other => other,
        }
    }

    /// Locks the node for the API's `call`: `Ok(None)` when the call turns
    /// out to have been applied already — looked at under the lock, and
    /// when the lock cannot be had (another attempt of the same call may
    /// hold it for the operation it started, or have deleted the node).
    async fn lock_for(&self, uuid: Uuid, call: &Option<String>) -> Result<Option<(NodeLock, Node)>, Status> {
        self.lock_for_if(uuid, call, |n| self.inner.owns(n)).await
    }

    /// [`Self::lock_for`] with another rule than "we own it": `may`.
    async fn lock_for_if(
        &self,
        uuid: Uuid,
        call: &Option<String>,
        may: impl Fn(&Node) -> bool,
    ) -> Result<Option<(NodeLock, Node)>, Status> {
        match self.lock_if(uuid, may).await {
            Ok((lock, node)) => match self.already_applied(call).await {
                Ok(false) => Ok(Some((lock, node))),
                done => {
                    Self::give_back(lock).await;
                    done.map(|_| None)
                }
            },
            Err(e) if call.is_some() => {
                if self.already_applied(call).await? {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A node this conductor is about to write must stay within
    /// `api.max_node_document_bytes` (it travels to and from the API in one
    /// message, twice in an update): a PATCH merged onto a node that grew
    /// since the API's copy, a provision request's config drive.
    fn check_size(&self, node: &Node) -> Result<(), Status> {
        node.check_document_size(self.inner.cfg.api.max_node_document_bytes)
            .map_err(|e| self.err(Reason::TooLarge, e.to_string()))
    }

    async fn save(&self, lock: &NodeLock, node: &Node) -> Result<(), Status> {
        self.save_applying(lock, node, None).await
    }

    /// [`Self::save`], recording the API's call `call` with it: the change
    /// and the record land together (see `ferric_common::db::AppliedCall`).
    async fn save_applying(&self, lock: &NodeLock, node: &Node, call: Option<&AppliedCall<'_>>) -> Result<(), Status> {
        match lock.save_applying(node, call).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
            Err(DbError::Duplicate { field }) => Err(self.err(Reason::Conflict, duplicate_message(field, node))),
            Err(e) => Err(self.db_err(e)),
        }
    }

    /// [`Self::save_applying`], deleting the node's former allocation
    /// `allocation` in the same transaction.
    async fn save_dropping(
        &self,
        lock: &NodeLock,
        node: &Node,
        allocation: &str,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<(), Status> {
        match lock.save_dropping_allocation(node, allocation, call).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.err(Reason::Unavailable, "the node lock was lost; retry")),
            Err(DbError::Duplicate { field }) => Err(self.err(Reason::Conflict, duplicate_message(field, node))),
            Err(e) => Err(self.db_err(e)),
        }
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.inner.operations.clone().try_acquire_owned().map_err(|_| {
            self.err(Reason::Unavailable, "Requested action cannot be performed due to lack of free conductor workers.")
        })
    }

    /// Release a lock after a failed request, logging (not hiding) errors.
    async fn give_back(lock: NodeLock) {
        if let Err(e) = lock.release().await {
            warn!("releasing a node lock failed: {e}");
        }
    }
}

/// The id the API gave this call, if any.
fn call_id<T>(req: &Request<T>) -> Option<String> {
    req.metadata().get(CALL_ID_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(String::from)
}

impl ConductorService {
    /// The record of `call` (if the API gave one) as a change by this
    /// conductor of `node`.
    fn applied<'a>(&'a self, call: &'a Option<String>, node: Uuid, kind: &'a str) -> Option<AppliedCall<'a>> {
        call.as_deref().map(|id| AppliedCall { id, node, kind, conductor: self.inner.id.as_str() })
    }

    /// Whether `call` was applied already — by this conductor or another,
    /// before its reply was lost: the API sends a call again when it may
    /// not have arrived, and its effect must not be applied twice nor the
    /// call refused as conflicting with its own effect. Asked before
    /// anything else, and again under the node lock (an attempt still
    /// running holds the lock until it saved).
    async fn already_applied(&self, call: &Option<String>) -> Result<bool, Status> {
        let Some(id) = call else { return Ok(false) };
        let applied = self.inner.db.call_applied(id).await.map_err(|e| self.db_err(e))?;
        if applied {
            info!(call = %id, "a call already applied came again; answering it as applied");
            metrics::counter!(ferric_common::metrics::CALLS_REPLAYED_TOTAL).increment(1);
        }
        Ok(applied)
    }
}

fn duplicate_message(field: &str, node: &Node) -> String {
    match field {
        "name" => format!("A node with name {} already exists.", node.name.clone().unwrap_or_default()),
        "instance_uuid" => format!(
            "Instance {} is already associated with a node, it cannot be associated with this other node {}",
            node.instance_uuid.clone().unwrap_or_default(),
            node.uuid
        ),
        other => format!("A node with this {other} already exists."),
    }
}

fn parse_json(s: &str, what: &str) -> Result<Option<Value>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(s).map(Some).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// Check user-given steps: a list of objects with `interface` and `step`.
fn check_steps(v: &Value, what: &str) -> Result<Vec<ferric_deploy::driver::Step>, String> {
    let list = v.as_array().ok_or_else(|| format!("{what} must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let obj = s.as_object().ok_or_else(|| format!("{what}[{i}] must be an object"))?;
            for key in ["interface", "step"] {
                if !obj.get(key).is_some_and(Value::is_string) {
                    return Err(format!("{what}[{i}] is missing the required key {key:?}"));
                }
            }
            serde_json::from_value(s.clone()).map_err(|e| format!("{what}[{i}]: {e}"))
        })
        .collect()
}

type Rpc<T> = Result<Response<T>, Status>;

/// The node a request is about, named on its span.
trait NodeScoped {
    fn node_uuid(&self) -> &str {
        ""
    }
}

macro_rules! node_scoped {
    ($($t:ty),*) => {$(
        impl NodeScoped for $t {
            fn node_uuid(&self) -> &str {
                &self.node_uuid
            }
        }
    )*};
}

node_scoped!(
    ProvisionActionRequest,
    PowerStateRequest,
    UpdateNodeRequest,
    NodeRef,
    UpdatePortRequest,
    NodeVendorRequest,
    VendorMethodsRequest,
    HeartbeatRequest,
    NodeTraitsRequest,
    UpdatePortgroupRequest,
    AllocationRef
);
impl NodeScoped for AllocationRequest {}
impl NodeScoped for DriverVendorRequest {}
impl NodeScoped for DriverRef {}
impl NodeScoped for Empty {}

/// The server span of a call of `method`: a child of the API's span (the
/// trace context in its metadata), naming the node and the REST request.
fn rpc_span<R: NodeScoped>(method: &'static str, req: &Request<R>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("ferric.v1.Conductor/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "ferric.v1.Conductor",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        node.uuid = tracing::field::Empty,
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let node = req.get_ref().node_uuid();
    if !node.is_empty() {
        span.record(telemetry::NODE_UUID, node);
    }
    if let Some(id) = req.metadata().get(telemetry::REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        span.record(telemetry::REQUEST_ID, id);
    }
    telemetry::set_parent(&span, req.metadata().as_ref());
    span
}

impl ConductorService {
    /// Runs a handler as a task of its own that runs to completion even if
    /// the request is dropped (a deadline passed, the client went away):
    /// a locked section is never cut between "save the `*ING` state" and
    /// "spawn the operation". Only fencing cuts it — the handler selects on
    /// the fence, and an incarnation that may not act answers NOT_OWNER
    /// before it starts. The task runs in the call's `span` (what it spawns
    /// is its child), which records how the call ended.
    async fn guarded<T, F, Fut>(&self, span: tracing::Span, handler: F) -> Rpc<T>
    where
        T: Send + 'static,
        F: FnOnce(ConductorService) -> Fut,
        Fut: std::future::Future<Output = Rpc<T>> + Send + 'static,
    {
        let res = self.guarded_in(span.clone(), handler).await;
        if let Err(e) = &res {
            span.record("rpc.grpc.status_code", i32::from(e.code()));
            if matches!(
                e.code(),
                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::DataLoss
            ) {
                span.record("otel.status_code", "error");
            }
        }
        res
    }

    async fn guarded_in<T, F, Fut>(&self, span: tracing::Span, handler: F) -> Rpc<T>
    where
        T: Send + 'static,
        F: FnOnce(ConductorService) -> Fut,
        Fut: std::future::Future<Output = Rpc<T>> + Send + 'static,
    {
        if let Err(e) = self.inner.fence.check() {
            return Err(self.err(Reason::NotOwner, e.to_string()));
        }
        let fence = self.inner.fence.clone();
        let work = handler(self.clone());
        let task = self.inner.tasks.spawn(
            async move {
                tokio::select! {
                    r = work => Some(r),
                    _ = fence.cancelled() => None,
                }
            }
            .instrument(span),
        );
        match task.await {
            Ok(Some(r)) => r,
            Ok(None) => {
                Err(self.err(Reason::NotOwner, format!("conductor {} fenced itself mid-request", self.inner.id)))
            }
            Err(e) => {
                tracing::error!("a request handler failed: {e}");
                Err(self.err(Reason::Internal, format!("the handler failed on conductor {}", self.inner.id)))
            }
        }
    }
}

#[tonic::async_trait]
impl Conductor for ConductorService {
    async fn do_provision_action(&self, req: Request<ProvisionActionRequest>) -> Rpc<ActionReply> {
        self.guarded(rpc_span("DoProvisionAction", &req), |s| async move { s.do_provision_action_rpc(req).await }).await
    }

    async fn change_power_state(&self, req: Request<PowerStateRequest>) -> Rpc<ActionReply> {
        self.guarded(rpc_span("ChangePowerState", &req), |s| async move { s.change_power_state_rpc(req).await }).await
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Rpc<NodeReply> {
        self.guarded(rpc_span("UpdateNode", &req), |s| async move { s.update_node_rpc(req).await }).await
    }

    async fn destroy_node(&self, req: Request<NodeRef>) -> Rpc<Empty> {
        self.guarded(rpc_span("DestroyNode", &req), |s| async move { s.destroy_node_rpc(req).await }).await
    }

    async fn update_port(&self, req: Request<UpdatePortRequest>) -> Rpc<PortReply> {
        self.guarded(rpc_span("UpdatePort", &req), |s| async move { s.update_port_rpc(req).await }).await
    }

    async fn validate(&self, req: Request<NodeRef>) -> Rpc<ValidateReply> {
        self.guarded(rpc_span("Validate", &req), |s| async move { s.validate_rpc(req).await }).await
    }

    async fn node_vendor_passthru(&self, req: Request<NodeVendorRequest>) -> Rpc<VendorReply> {
        self.guarded(rpc_span("NodeVendorPassthru", &req), |s| async move { s.node_vendor_passthru_rpc(req).await })
            .await
    }

    async fn driver_vendor_passthru(&self, req: Request<DriverVendorRequest>) -> Rpc<VendorReply> {
        self.guarded(rpc_span("DriverVendorPassthru", &req), |s| async move { s.driver_vendor_passthru_rpc(req).await })
            .await
    }

    async fn get_vendor_methods(&self, req: Request<VendorMethodsRequest>) -> Rpc<VendorMethodsReply> {
        self.guarded(rpc_span("GetVendorMethods", &req), |s| async move { s.get_vendor_methods_rpc(req).await }).await
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Rpc<Empty> {
        self.guarded(rpc_span("Heartbeat", &req), |s| async move { s.heartbeat_rpc(req).await }).await
    }

    async fn lookup(&self, req: Request<NodeRef>) -> Rpc<LookupReply> {
        self.guarded(rpc_span("Lookup", &req), |s| async move { s.lookup_rpc(req).await }).await
    }

    async fn pass_deploy_info(&self, req: Request<NodeVendorRequest>) -> Rpc<Empty> {
        self.guarded(rpc_span("PassDeployInfo", &req), |s| async move { s.pass_deploy_info_rpc(req).await }).await
    }

    async fn get_driver_properties(&self, req: Request<DriverRef>) -> Rpc<DriverPropertiesReply> {
        self.guarded(rpc_span("GetDriverProperties", &req), |s| async move { s.get_driver_properties_rpc(req).await })
            .await
    }

    async fn drain(&self, req: Request<Empty>) -> Rpc<ConductorStatus> {
        self.guarded(rpc_span("Drain", &req), |s| async move { s.drain_rpc(req).await }).await
    }

    async fn get_conductor_status(&self, _req: Request<Empty>) -> Rpc<ConductorStatus> {
        self.get_conductor_status_rpc(_req).await
    }

    async fn set_node_traits(&self, req: Request<NodeTraitsRequest>) -> Rpc<NodeReply> {
        self.guarded(rpc_span("SetNodeTraits", &req), |s| async move { s.set_node_traits_rpc(req).await }).await
    }

    async fn update_portgroup(&self, req: Request<UpdatePortgroupRequest>) -> Rpc<PortgroupReply> {
        self.guarded(rpc_span("UpdatePortgroup", &req), |s| async move { s.update_portgroup_rpc(req).await }).await
    }

    async fn create_allocation(&self, req: Request<AllocationRequest>) -> Rpc<AllocationReply> {
        self.guarded(rpc_span("CreateAllocation", &req), |s| async move { s.create_allocation_rpc(req).await }).await
    }

    async fn destroy_allocation(&self, req: Request<AllocationRef>) -> Rpc<Empty> {
        self.guarded(rpc_span("DestroyAllocation", &req), |s| async move { s.destroy_allocation_rpc(req).await }).await
    }

    async fn whoami(&self, _req: Request<Empty>) -> Rpc<WhoamiReply> {
        Ok(Response::new(WhoamiReply {
            id: self.inner.id.to_string(),
            incarnation: self.inner.incarnation.to_string(),
        }))
    }
}
