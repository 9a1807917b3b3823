//! `/v1/nodes`: reads come from the database; every action on a node goes
//! to its owner over gRPC.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ferric_common::db::{DbError, NODE_SORT_KEYS, NodeQuery, PortQuery};
use ferric_common::model::{DocumentTooLarge, NODE_INTERFACES, Node};
use ferric_common::proto::{
    DriverRef, NodeRef, NodeVendorRequest, PowerStateRequest, ProvisionActionRequest, UpdateNodeRequest,
    VendorMethodsRequest,
};
use ferric_common::states::{ProvisionState, Verb, VerbError, verb_check};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::Rule;
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::fields::{self, check_node, set_node_field};
use crate::forward::Route;
use crate::node_cache::{self, AnswerKey};
use crate::render::{self, NODE_FIELDS};
use crate::{paging, patch};

fn parse_bool(name: &str, v: &str) -> ApiResult<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ApiError::bad_request(format!("Invalid value for {name}: {v:?} is not a boolean"))),
    }
}

/// Node list filters and the microversion each needs (Ironic's
/// `check_allow_filter_by_*`: 406 below it). The others (`maintenance`,
/// `associated`, `instance_uuid`, `chassis_uuid`, `retired`,
/// `description_contains`) have no gate.
const FILTER_VERSIONS: &[(&str, u32)] = &[
    ("provision_state", 9),
    ("driver", 16),
    ("resource_class", 21),
    ("fault", 42),
    ("conductor_group", 46),
    ("conductor", 49),
    ("owner", 50),
    ("lessee", 65),
    ("shard", 82),
    ("sharded", 82),
    ("instance_name", 104),
];

/// Ironic's `reject_fields_in_newer_versions` / `_in_newer_versions` of a
/// patch: a node field newer than the request's version may not be set
/// (406). On create a null (and an empty `conductor_group`) counts as not
/// set; in a patch every `add`/`replace` of the whole field counts.
fn check_field_versions<'a>(
    ctx: &Ctx,
    set: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>,
    null_is_unset: bool,
) -> ApiResult<()> {
    for (field, value) in set {
        let Some((_, min)) = NODE_FIELDS.iter().find(|(f, min)| *f == field && !ctx.v.at_least(*min)) else {
            continue;
        };
        let unset = null_is_unset
            && match value {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => field == "conductor_group" && s.is_empty(),
                Some(_) => false,
            };
        if !unset {
            return Err(ApiError::too_old(*min, &format!("the node field {field}")));
        }
    }
    Ok(())
}

/// The faults a node may be in maintenance for (Ironic's `VALID_FAULTS`).
const VALID_FAULTS: [&str; 4] = ["power failure", "clean failure", "rescue abort failure", "service failure"];

/// Refuses filters (and a sort key) of a later version than the request's.
fn check_list_version(ctx: &Ctx, q: &HashMap<String, String>) -> ApiResult<()> {
    for (filter, min) in FILTER_VERSIONS {
        if q.contains_key(*filter) && !ctx.v.at_least(*min) {
            return Err(ApiError::too_old(*min, &format!("the {filter} filter")));
        }
    }
    if let Some(key) = q.get("sort_key")
        && let Some((_, min)) = NODE_FIELDS.iter().find(|(f, min)| f == key && !ctx.v.at_least(*min))
    {
        return Err(ApiError::too_old(*min, &format!("sorting by {key}")));
    }
    if let Some(f) = q.get("fault")
        && !VALID_FAULTS.contains(&f.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "Unrecognized fault \"{f}\" is specified, allowed faults are {}",
            VALID_FAULTS.join(", ")
        )));
    }
    Ok(())
}

/// A node list; `chassis` restricts it to the nodes of one chassis
/// (`/v1/chassis/<c>/nodes`).
async fn list(
    st: &AppState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    detail: bool,
    path: &str,
    chassis: Option<Uuid>,
) -> ApiResult<Value> {
    let fields = render::parse_fields(q.get("fields").map(String::as_str), NODE_FIELDS, ctx.v)?;
    if detail && fields.is_some() {
        return Err(ApiError::bad_request("Can not specify ?detail=True and fields in the same request."));
    }
    check_list_version(ctx, q)?;
    let detail = detail || q.get("detail").map(|d| parse_bool("detail", d)).transpose()?.unwrap_or(false);
    let paging = paging::parse(q, st.cfg.api.max_limit, NODE_SORT_KEYS)?;
    let limit = paging.limit.unwrap_or(i64::from(st.cfg.api.max_limit));
    let chassis_uuid = match (chassis, q.get("chassis_uuid")) {
        (Some(c), _) => Some(c.to_string()),
        (None, Some(c)) => Some(
            Uuid::parse_str(c)
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID for chassis_uuid but received {c}.")))?
                .to_string(),
        ),
        (None, None) => None,
    };
    let mut query = NodeQuery {
        provision_state: q.get("provision_state").cloned(),
        driver: q.get("driver").cloned(),
        resource_class: q.get("resource_class").cloned(),
        conductor_group: q.get("conductor_group").cloned(),
        maintenance: q.get("maintenance").map(|v| parse_bool("maintenance", v)).transpose()?,
        associated: q.get("associated").map(|v| parse_bool("associated", v)).transpose()?,
        owner: q.get("owner").cloned(),
        lessee: q.get("lessee").cloned(),
        fault: q.get("fault").cloned(),
        retired: q.get("retired").map(|v| parse_bool("retired", v)).transpose()?,
        shard: q.get("shard").cloned(),
        sharded: q.get("sharded").map(|v| parse_bool("sharded", v)).transpose()?,
        instance_uuid: q.get("instance_uuid").cloned(),
        instance_name: q.get("instance_name").cloned(),
        chassis_uuid,
        description_contains: q.get("description_contains").cloned(),
        paging,
        ..Default::default()
    };
    if let Some(s) = &query.provision_state
        && ProvisionState::parse(s).is_none()
    {
        return Err(ApiError::bad_request(format!("Invalid provision_state filter {s:?}")));
    }
    ctx.authorize(Rule::NodeList)?;
    query.project = ctx.caller.list_scope();
    let conductor_filter = q.get("conductor").cloned();
    // fetch one more than a page to know whether there is a next one
    query.paging.limit = Some(limit + 1);
    let mut nodes = st.db.list_nodes(&query).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request(format!(
            "Marker {} could not be found.",
            query.paging.marker.map(|m| m.to_string()).unwrap_or_default()
        )),
        e => ApiError::from_db(e, String::new),
    })?;
    if let Some(c) = &conductor_filter {
        nodes.retain(|n| st.conductor_of(n).as_deref() == Some(c.as_str()));
    }
    let more = nodes.len() as i64 > limit;
    nodes.truncate(limit as usize);
    let items: Vec<Value> =
        nodes.iter().map(|n| view(st, ctx, n, fields.as_deref(), !detail && fields.is_none())).collect();
    let mut out = json!({"nodes": items});
    if more && let Some(last) = nodes.last() {
        out["next"] = Value::String(paging::next_url(&ctx.base, path, q, limit, &last.uuid));
    }
    Ok(out)
}

pub async fn list_nodes(
    AxState(st): AxState<State>,
    ctx: Ctx,
    uri: OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let key = AnswerKey { uri: uri.to_string(), version: ctx.v.0, base: ctx.base.clone() };
    node_cache::answer(&st, &ctx, key, list(&st, &ctx, &q, false, "nodes", None)).await
}

pub async fn list_nodes_detail(
    AxState(st): AxState<State>,
    ctx: Ctx,
    uri: OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let key = AnswerKey { uri: uri.to_string(), version: ctx.v.0, base: ctx.base.clone() };
    node_cache::answer(&st, &ctx, key, list(&st, &ctx, &q, true, "nodes/detail", None)).await
}

/// `GET /v1/chassis/<chassis>/nodes`: the nodes of a chassis.
pub async fn chassis_nodes(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let chassis = crate::chassis::get(&st, &ident).await?;
    if q.contains_key("chassis_uuid") {
        return Err(ApiError::bad_request("Chassis id not specified."));
    }
    list(&st, &ctx, &q, false, &format!("chassis/{ident}/nodes"), Some(chassis.uuid)).await.map(Json)
}

/// A node's `chassis_uuid` must name a chassis (400 otherwise, as Ironic's
/// `ChassisNotFound` on node create and update).
async fn check_chassis(st: &AppState, node: &Node) -> ApiResult<()> {
    let Some(c) = &node.chassis_uuid else { return Ok(()) };
    let uuid = Uuid::parse_str(c)
        .map_err(|_| ApiError::bad_request(format!("Expected a UUID for chassis_uuid but received {c}.")))?;
    match st.db.get_chassis(uuid).await {
        Ok(_) => Ok(()),
        Err(DbError::NotFound) => Err(ApiError::bad_request(format!("Chassis {c} could not be found."))),
        Err(e) => Err(ApiError::from_db(e, String::new)),
    }
}

pub async fn get_node(
    AxState(st): AxState<State>,
    ctx: Ctx,
    uri: OriginalUri,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let fields = render::parse_fields(q.get("fields").map(String::as_str), NODE_FIELDS, ctx.v)?;
    let key = AnswerKey { uri: uri.to_string(), version: ctx.v.0, base: ctx.base.clone() };
    node_cache::answer(&st, &ctx, key, async {
        let node = st.node_for(&ctx, &ident, Rule::NodeGet).await?;
        Ok(view(&st, &ctx, &node, fields.as_deref(), false))
    })
    .await
}

/// A node as this caller may see it: Ironic's rendering, and for a
/// caller below `baremetal:node:get:filter_threshold` (a lessee), the
/// fields that tell of the infrastructure redacted in Ironic's words.
fn view(st: &AppState, ctx: &Ctx, n: &Node, fields: Option<&[String]>, list_item: bool) -> Value {
    let mut v = render::node_view(n, &ctx.base, st.conductor_of(n).as_deref(), ctx.v, fields, list_item);
    if !ctx.caller.allows(Rule::NodeGetRestricted, crate::context::target(n))
        && let Some(doc) = v.as_object_mut()
    {
        redact(doc);
    }
    v
}

/// Ironic's `_node_sanitize_extended` for a caller who may read a node but
/// not its infrastructure details.
pub fn redact(doc: &mut Map<String, Value>) {
    const REDACTED: [(&str, &str); 4] = [
        ("last_error", "** Value Redacted - Requires baremetal:node:get:last_error permission. **"),
        ("reservation", "** Redacted - requires baremetal:node:get:reservation permission. **"),
        ("driver_internal_info", "** Redacted - Requires baremetal:node:get:driver_internal_info permission. **"),
        ("driver_info", "** Redacted - requires baremetal:node:get:driver_info permission. **"),
    ];
    for (field, text) in REDACTED {
        if let Some(slot) = doc.get_mut(field) {
            *slot = if field.starts_with("driver_") { json!({"content": text}) } else { json!(text) };
        }
    }
}

/// The node a PATCH changes, if the caller passes the rule of every field
/// it touches (Ironic's `_authorize_patch_and_get_node`).
async fn node_for_patch(st: &AppState, ctx: &Ctx, ident: &str, ops: &[patch::Op]) -> ApiResult<Node> {
    let node = st.node_for(ctx, ident, Rule::NodeGet).await?;
    let mut rules: Vec<Rule> = Vec::new();
    let mut generic = ops.is_empty();
    for op in ops {
        match crate::auth::policy::patch_rule(&format!("/{}", op.path.join("/")), op.value.as_ref()) {
            Some(r) => rules.push(r),
            None => generic = true,
        }
    }
    if generic {
        rules.push(Rule::NodeUpdate);
    }
    for r in rules {
        ctx.authorize_node(&node, ident, r)?;
    }
    Ok(node)
}

fn json_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("The request body is empty; a JSON document is required"));
    }
    crate::error::json_value(body)
}

/// Fill unset interfaces with the hardware type's defaults and check the
/// set ones are enabled, asking a conductor that serves the driver.
async fn resolve_interfaces(st: &AppState, node: &mut Node) -> ApiResult<()> {
    let driver = node.driver.clone();
    let props = st
        .fwd
        .call(Route::Driver(&driver), |mut c, epoch| {
            let driver = driver.clone();
            async move { c.get_driver_properties(DriverRef { epoch, driver }).await }
        })
        .await?;
    for iface in NODE_INTERFACES {
        let slot = node.interfaces.get_mut(iface).expect("known interface");
        let enabled = props.enabled_interfaces.get(iface).map(|l| l.names.clone()).unwrap_or_default();
        match slot {
            Some(chosen) if !enabled.contains(chosen) => {
                return Err(ApiError::bad_request(format!(
                    "Could not find the following interface in the 'ironic.hardware.interfaces.{iface}' entrypoint: {chosen}. Valid interfaces are {}.",
                    enabled.join(", ")
                )));
            }
            Some(_) => {}
            None => *slot = props.default_interfaces.get(iface).cloned(),
        }
    }
    Ok(())
}

fn no_valid_host(driver: &str, group: &str) -> ApiError {
    ApiError::bad_request(format!(
        "No valid host was found. Reason: No conductor service registered which supports driver {driver} for conductor group \"{group}\"."
    ))
}

pub async fn create_node(AxState(st): AxState<State>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    // a project's admin may create a node its project owns
    let self_owned = if ctx.caller.allows(Rule::NodeCreate, Default::default()) {
        None
    } else {
        ctx.authorize(Rule::NodeCreateSelfOwned)?;
        Some(ctx.caller.project().ok_or_else(|| crate::context::forbidden(Rule::NodeCreate))?.to_string())
    };
    let body = json_body(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The node must be a JSON object"))?;
    check_field_versions(&ctx, obj.iter().map(|(k, v)| (k.as_str(), Some(v))), true)?;
    let uuid = match obj.get("uuid") {
        None | Some(Value::Null) => Uuid::new_v4(),
        Some(Value::String(s)) => {
            Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {s}.")))?
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!("Expected a UUID but received {other}.")));
        }
    };
    let driver = match obj.get("driver") {
        Some(Value::String(d)) if !d.is_empty() => d.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value for field driver: expected a string, got {other}"
            )));
        }
        None => return Err(ApiError::bad_request("Mandatory field missing: 'driver'")),
    };
    // below 1.11 a new node is immediately available
    let state = if ctx.v.at_least(11) { ProvisionState::Enroll } else { ProvisionState::Available };
    let mut node = Node::new(uuid, &driver, state);
    let writable = fields::node_writable();
    for (k, v) in obj {
        if k == "uuid" || k == "driver" {
            continue;
        }
        if !writable.iter().any(|w| w == k) || k == "maintenance" || k == "maintenance_reason" {
            return Err(ApiError::bad_request(format!(
                "Unknown attribute for node: '{k}' is not a field a node can be created with"
            )));
        }
        set_node_field(&mut node, k, v)?;
    }
    if let Some(project) = self_owned {
        match node.owner.as_deref() {
            None => node.owner = Some(project),
            Some(o) if o == project => {}
            Some(_) => return Err(crate::context::forbidden(Rule::NodeCreate)),
        }
    }
    check_node(&mut node, obj.contains_key("protected_reason"))?;
    check_chassis(&st, &node).await?;
    if !st.fwd.ring().serves(&node.conductor_group, &node.driver) {
        return Err(no_valid_host(&node.driver, &node.conductor_group));
    }
    resolve_interfaces(&st, &mut node).await?;
    // a new node has no boot artefacts anywhere: its owner needs no take-over
    node.conductor_affinity = st.conductor_of(&node);
    node.created_at = Utc::now();
    node.check_document_size(st.cfg.api.max_node_document_bytes).map_err(too_large)?;
    st.db.create_node(&node).await.map_err(|e| match e {
        DbError::Duplicate { field: "name" } => {
            ApiError::conflict(format!("A node with name {} already exists.", node.name.clone().unwrap_or_default()))
        }
        DbError::Duplicate { field: "instance_uuid" } => ApiError::conflict(format!(
            "Instance {} is already associated with a node.",
            node.instance_uuid.clone().unwrap_or_default()
        )),
        DbError::Duplicate { .. } => ApiError::conflict(format!("A node with UUID {uuid} already exists.")),
        e => ApiError::from_db(e, String::new),
    })?;
    let stored = st.db.get_node(uuid).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let view = view(&st, &ctx, &stored, None, false);
    let location = format!("{}/v1/nodes/{uuid}", ctx.base);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
}

fn too_large(e: DocumentTooLarge) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
}

/// Send a changed node to its owner, which applies what changed from
/// `base` (the copy the change was made to) to the node under the lock
/// (and checks the size of the result again: `base` may be stale). The
/// owner of the node as stored applies a move too; the node's new owner
/// takes it over on its own (see [`Route::Update`]).
async fn push_update(st: &AppState, base: &Node, node: &Node) -> ApiResult<Node> {
    let node_json = serde_json::to_string(node).expect("nodes serialise");
    DocumentTooLarge::check(node, node_json.len(), st.cfg.api.max_node_document_bytes).map_err(too_large)?;
    let base_json = serde_json::to_string(base).expect("nodes serialise");
    let reply = st
        .fwd
        .call(AppState::route_update(base, node), |mut c, epoch| {
            let req = UpdateNodeRequest {
                epoch,
                node_uuid: node.uuid.to_string(),
                node_json: node_json.clone(),
                base_json: base_json.clone(),
            };
            async move { c.update_node(req).await }
        })
        .await?;
    serde_json::from_str(&reply.node_json).map_err(|e| ApiError::internal(format!("conductor sent a bad node: {e}")))
}

pub async fn patch_node(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let ops = patch::parse(&json_body(&body)?)?;
    let node = node_for_patch(&st, &ctx, &ident, &ops).await?;
    let whole_fields = ops.iter().filter(|op| op.path.len() == 1 && op.value.is_some());
    check_field_versions(&ctx, whole_fields.map(|op| (op.path[0].as_str(), op.value.as_ref())), false)?;
    let before = render::node_document(&node, &ctx.base, st.conductor_of(&node).as_deref());
    let mut after = before.clone();
    patch::apply(&mut after, &ops)?;
    let mut changed = node.clone();
    fields::apply_document(&mut changed, &before, &after)?;
    if changed.chassis_uuid != node.chassis_uuid {
        check_chassis(&st, &changed).await?;
    }
    if changed.driver != node.driver || changed.conductor_group != node.conductor_group {
        if !st.fwd.ring().serves(&changed.conductor_group, &changed.driver) {
            return Err(no_valid_host(&changed.driver, &changed.conductor_group));
        }
        if changed.driver != node.driver {
            // interfaces not set explicitly go back to the new type's defaults
            for iface in NODE_INTERFACES {
                let key = format!("{iface}_interface");
                if before.get(&key) == after.get(&key) {
                    *changed.interfaces.get_mut(iface).expect("known") = None;
                }
            }
        }
    }
    if changed.interfaces != node.interfaces || changed.driver != node.driver {
        resolve_interfaces(&st, &mut changed).await?;
    }
    let stored = push_update(&st, &node, &changed).await?;
    Ok(Json(view(&st, &ctx, &stored, None, false)))
}

pub async fn delete_node(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<StatusCode> {
    let node = st.node_for(&ctx, &ident, Rule::NodeGet).await?;
    if !ctx.caller.allows(Rule::NodeDelete, crate::context::target(&node)) {
        ctx.authorize_node(&node, &ident, Rule::NodeDeleteSelfOwned)?;
    }
    st.fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let req = NodeRef { epoch, node_uuid: node.uuid.to_string() };
            async move { c.destroy_node(req).await }
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_states(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<Json<Value>> {
    let n = st.node_for(&ctx, &ident, Rule::NodeGet).await?;
    let view = render::node_view(&n, &ctx.base, None, ctx.v, None, false);
    let mut out = Map::new();
    for k in [
        "console_enabled",
        "last_error",
        "power_state",
        "provision_state",
        "target_power_state",
        "target_provision_state",
        "provision_updated_at",
        "raid_config",
        "target_raid_config",
        "boot_mode",
        "secure_boot",
    ] {
        if let Some(v) = view.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    Ok(Json(Value::Object(out)))
}

fn accepted(ctx: &Ctx, ident: &str) -> Response {
    let loc = format!("{}/v1/nodes/{ident}/states", ctx.base);
    (StatusCode::ACCEPTED, [(header::LOCATION, loc)]).into_response()
}

fn json_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

/// What a provision request may carry.
pub const PROVISION_KEYS: [&str; 7] =
    ["target", "configdrive", "clean_steps", "deploy_steps", "service_steps", "rescue_password", "disable_ramdisk"];

pub async fn set_provision_state(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    // the policy first, as Ironic: a caller who may not act learns nothing of the body's faults
    let node = st.node_for(&ctx, &ident, Rule::NodeAction).await?;
    let body = json_body(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !PROVISION_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Unknown argument: \"{k}\"")));
    }
    let target = obj
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Mandatory field missing: 'target'"))?;
    let verb = Verb::parse(target)
        .ok_or_else(|| ApiError::bad_request(format!("\"{target}\" is not a valid provision target")))?;
    let only = |key: &str, verbs: &[Verb]| -> ApiResult<()> {
        if obj.get(key).is_some_and(|v| !v.is_null()) && !verbs.contains(&verb) {
            return Err(ApiError::bad_request(format!(
                "\"{key}\" is not valid when setting target provision state to {}",
                verb.as_str()
            )));
        }
        Ok(())
    };
    only("configdrive", &[Verb::Active, Verb::Deploy, Verb::Rebuild])?;
    only("deploy_steps", &[Verb::Active, Verb::Deploy, Verb::Rebuild])?;
    only("clean_steps", &[Verb::Clean])?;
    only("service_steps", &[Verb::Service])?;
    only("rescue_password", &[Verb::Rescue])?;
    only("disable_ramdisk", &[Verb::Clean, Verb::Service])?;
    let rescue_password = match obj.get("rescue_password") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!("rescue_password must be a string, not {other}")));
        }
    };
    match verb_check(verb, ctx.v.0, node.provision_state) {
        Ok(_) => {}
        Err(VerbError::NotAcceptable { min_minor }) => {
            return Err(ApiError::not_acceptable(format!(
                "The provision target \"{}\" needs API version 1.{min_minor} or later",
                verb.as_str()
            )));
        }
        Err(VerbError::InvalidState) => {
            if let Some(holder) = &node.reservation {
                return Err(ApiError::conflict(format!(
                    "Node {} is locked by host {holder}, please retry after the current operation is completed.",
                    node.uuid
                )));
            }
            return Err(ApiError::bad_request(format!(
                "The requested action \"{}\" can not be performed on node \"{}\" while it is in state \"{}\".",
                verb.as_str(),
                node.uuid,
                node.provision_state
            )));
        }
    }
    if matches!(verb, Verb::Active | Verb::Deploy | Verb::Rebuild) && node.maintenance {
        return Err(ApiError::bad_request(format!("The node {} is in maintenance mode.", node.uuid)));
    }
    let req = ProvisionActionRequest {
        epoch: 0,
        node_uuid: node.uuid.to_string(),
        target: verb.as_str().to_string(),
        configdrive_json: json_text(obj.get("configdrive")),
        clean_steps_json: json_text(obj.get("clean_steps")),
        deploy_steps_json: json_text(obj.get("deploy_steps")),
        service_steps_json: json_text(obj.get("service_steps")),
        rescue_password,
        disable_ramdisk: obj.get("disable_ramdisk").and_then(Value::as_bool).unwrap_or(false),
    };
    st.fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let mut r = req.clone();
            r.epoch = epoch;
            async move { c.do_provision_action(r).await }
        })
        .await?;
    Ok(accepted(&ctx, &ident))
}

/// What a power request may carry, and the targets it may name.
pub const POWER_KEYS: [&str; 2] = ["target", "timeout"];
pub const POWER_TARGETS: [&str; 5] = ["power on", "power off", "rebooting", "soft power off", "soft rebooting"];

pub async fn set_power_state(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    // the policy first, as Ironic: a caller who may not act learns nothing of the body's faults
    let node = st.node_for(&ctx, &ident, Rule::NodeUpdate).await?;
    let body = json_body(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !POWER_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Unknown argument: \"{k}\"")));
    }
    let target = obj
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Mandatory field missing: 'target'"))?;
    if !POWER_TARGETS.contains(&target) {
        return Err(ApiError::bad_request(format!("Invalid power state {target}.")));
    }
    if target.starts_with("soft") && !ctx.v.at_least(27) {
        return Err(ApiError::not_acceptable(format!("Power target \"{target}\" needs API version 1.27 or later")));
    }
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => 0,
        Some(_) if !ctx.v.at_least(27) => {
            return Err(ApiError::not_acceptable("\"timeout\" needs API version 1.27 or later"));
        }
        Some(v) => match v.as_u64() {
            Some(t) if t > 0 && t <= u64::from(u32::MAX) => t as u32,
            _ => {
                return Err(ApiError::bad_request(format!("Invalid timeout {v}: must be a positive integer")));
            }
        },
    };
    if matches!(node.provision_state, ProvisionState::Cleaning | ProvisionState::CleanWait) {
        return Err(ApiError::bad_request(format!(
            "Can not change power state of node {} while it is in state {}.",
            node.uuid, node.provision_state
        )));
    }
    st.fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = PowerStateRequest { epoch, node_uuid: node.uuid.to_string(), target: target.to_string(), timeout };
            async move { c.change_power_state(r).await }
        })
        .await?;
    Ok(accepted(&ctx, &ident))
}

pub async fn validate(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<Json<Value>> {
    let node = st.node_for(&ctx, &ident, Rule::NodeAction).await?;
    let reply = st
        .fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = NodeRef { epoch, node_uuid: node.uuid.to_string() };
            async move { c.validate(r).await }
        })
        .await?;
    let mut out = Map::new();
    for i in reply.interfaces {
        let mut entry = json!({"result": i.result});
        if !i.result {
            entry["reason"] = Value::String(i.reason);
        }
        out.insert(i.interface, entry);
    }
    Ok(Json(Value::Object(out)))
}

async fn set_maintenance(
    st: &AppState,
    ctx: &Ctx,
    ident: &str,
    on: bool,
    reason: Option<String>,
) -> ApiResult<Response> {
    let base = st.node_for(ctx, ident, Rule::NodeAction).await?;
    let mut node = base.clone();
    node.maintenance = on;
    node.maintenance_reason = if on { reason } else { None };
    if !on {
        node.fault = None;
    }
    push_update(st, &base, &node).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub async fn put_maintenance(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let reason = if body.is_empty() {
        None
    } else {
        match json_body(&body)? {
            Value::Object(m) => match m.get("reason") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(ApiError::bad_request(format!("reason must be a string, not {other}")));
                }
            },
            _ => {
                return Err(ApiError::bad_request("The request body must be a JSON object"));
            }
        }
    };
    set_maintenance(&st, &ctx, &ident, true, reason).await
}

pub async fn delete_maintenance(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
) -> ApiResult<Response> {
    set_maintenance(&st, &ctx, &ident, false, None).await
}

pub fn methods_json(methods: Vec<ferric_common::proto::VendorMethod>) -> Value {
    let mut out = Map::new();
    for m in methods {
        out.insert(
            m.name,
            json!({"http_methods": m.http_methods, "async": m.r#async, "description": m.description,
                   "attach": m.attach, "require_exclusive_lock": m.require_exclusive_lock}),
        );
    }
    Value::Object(out)
}

pub async fn vendor_methods(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
) -> ApiResult<Json<Value>> {
    let node = st.node_for(&ctx, &ident, Rule::NodeVendorPassthru).await?;
    let reply = st
        .fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = VendorMethodsRequest { epoch, node_uuid: node.uuid.to_string(), driver: String::new() };
            async move { c.get_vendor_methods(r).await }
        })
        .await?;
    Ok(Json(methods_json(reply.methods)))
}

/// Turn a vendor method's reply into the HTTP answer Ironic gives.
pub fn vendor_response(reply: ferric_common::proto::VendorReply) -> Response {
    if reply.r#async {
        return StatusCode::ACCEPTED.into_response();
    }
    if reply.attach {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
        return (StatusCode::OK, h, reply.return_value).into_response();
    }
    let body = if reply.return_value.is_empty() { b"null".to_vec() } else { reply.return_value };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub fn vendor_body(method: &Method, body: &Bytes) -> ApiResult<String> {
    if body.is_empty() || *method == Method::GET || *method == Method::DELETE {
        return Ok(String::new());
    }
    let v = json_body(body)?;
    Ok(v.to_string())
}

async fn node_vendor_call(
    st: &AppState,
    ctx: &Ctx,
    ident: &str,
    name: &str,
    method: Method,
    body: Bytes,
) -> ApiResult<Response> {
    let node = st.node(ident, ctx.v).await?;
    // the ramdisk's callback is public (guarded by the deploy's key)
    if name == "pass_deploy_info" {
        return pass_deploy_info(st, &node, &method, &body).await;
    }
    ctx.authorize_node(&node, ident, Rule::NodeVendorPassthru)?;
    let body_json = vendor_body(&method, &body)?;
    let send = |mut c: crate::forward::Client, epoch| {
        let r = NodeVendorRequest {
            epoch,
            node_uuid: node.uuid.to_string(),
            method: name.to_string(),
            http_method: method.as_str().to_string(),
            body_json: body_json.clone(),
        };
        async move { c.node_vendor_passthru(r).await }
    };
    // a driver's method has effects of its own that no conductor records:
    // only a read may be sent twice
    let reply = if method == Method::GET {
        st.fwd.call(AppState::route(&node), send).await?
    } else {
        st.fwd.call_once(AppState::route(&node), send).await?
    };
    Ok(vendor_response(reply))
}

/// The iSCSI ramdisk's callback (specs/ilo-virtualmedia-iscsi-deploy-
/// driver.rst): `{address, iqn, key, error}` (and optionally `port`,
/// `lun`), forwarded to the node's owner. 202: the image is written after
/// the answer.
async fn pass_deploy_info(st: &AppState, node: &Node, method: &Method, body: &Bytes) -> ApiResult<Response> {
    if *method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("pass_deploy_info takes POST, not {method}"),
        ));
    }
    let v = json_body(body)?;
    let obj = v.as_object().ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    const ALLOWED: [&str; 6] = ["address", "iqn", "key", "error", "port", "lun"];
    if let Some(k) = obj.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Unknown argument: \"{k}\"")));
    }
    let body_json = v.to_string();
    st.fwd
        .call(AppState::route(node), |mut c, epoch| {
            let r = NodeVendorRequest {
                epoch,
                node_uuid: node.uuid.to_string(),
                method: "pass_deploy_info".into(),
                http_method: "POST".into(),
                body_json: body_json.clone(),
            };
            async move { c.pass_deploy_info(r).await }
        })
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub async fn vendor_call(
    AxState(st): AxState<State>,
    ctx: Ctx,
    method: Method,
    Path((ident, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    node_vendor_call(&st, &ctx, &ident, &name, method, body).await
}

pub async fn vendor_call_query(
    AxState(st): AxState<State>,
    ctx: Ctx,
    method: Method,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Response> {
    let name = q.get("method").ok_or_else(|| ApiError::bad_request("Missing argument: \"method\""))?;
    node_vendor_call(&st, &ctx, &ident, name, method, body).await
}

pub async fn node_ports(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let node = st.node_for(&ctx, &ident, Rule::NodeGet).await?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), render::PORT_FIELDS, ctx.v)?;
    let query = PortQuery { node_uuid: Some(node.uuid), ..Default::default() };
    let ports = st.db.list_ports(&query).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let items: Vec<Value> =
        ports.iter().map(|p| render::port_view(p, &ctx.base, ctx.v, fields.as_deref(), fields.is_none())).collect();
    Ok(Json(json!({"ports": items})))
}
