//! `/v1/allocations` (1.52; PATCH 1.57; backfill 1.58; owner 1.60) and
//! `/v1/nodes/<node>/allocation`. Reads come from the database. A new
//! allocation goes to the conductor the ring gives its UUID to, which
//! picks its node in the background (or, for a backfill, to the node's
//! owner); deleting one that holds a node goes to the node's owner. A
//! client's change of an allocation's name or extra changes no node: the
//! API writes it.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferric_common::db::{ALLOCATION_SORT_KEYS, AllocationQuery, DbError};
use ferric_common::model::{Allocation, AllocationState};
use ferric_common::proto::{AllocationRef, AllocationRequest};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::policy::{Rule, Target};
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::fields::{check_name, object, opt_string};
use crate::forward::Route;
use crate::render::{self, ALLOCATION_FIELDS};
use crate::traits::traits_from;
use crate::{paging, patch};

pub const CREATE_KEYS: [&str; 8] =
    ["candidate_nodes", "extra", "name", "node", "owner", "resource_class", "traits", "uuid"];

fn gone_below(ctx: &Ctx, min: u32, status: StatusCode) -> ApiResult<()> {
    if ctx.v.at_least(min) {
        return Ok(());
    }
    let what = if min == 57 { "updating allocations" } else { "allocations" };
    Err(ApiError::new(status, format!("The API version does not allow {what}")))
}

/// An allocation by UUID or name.
async fn get(st: &AppState, ident: &str) -> ApiResult<Allocation> {
    let nf = || format!("Allocation {ident} could not be found.");
    let r = match Uuid::parse_str(ident) {
        Ok(u) => st.db.get_allocation(u).await,
        Err(_) => st.db.get_allocation_by_name(ident).await,
    };
    r.map_err(|e| ApiError::from_db(e, nf))
}

/// A node named in a request body or a filter (400 when it does not
/// exist, or the caller may not read it: Ironic's `baremetal:node:get`).
async fn body_node(st: &AppState, ctx: &Ctx, ident: &str) -> ApiResult<ferric_common::model::Node> {
    st.node_for(ctx, ident, Rule::NodeGet)
        .await
        .map_err(|e| if e.status == StatusCode::NOT_FOUND { ApiError::bad_request(e.message) } else { e })
}

/// 404 when the caller may not read `a` (Ironic answers so rather than
/// tell another project's allocation exists), 403 when it may but does
/// not pass `rule`.
fn authorize(ctx: &Ctx, a: &Allocation, ident: &str, rule: Rule) -> ApiResult<()> {
    ctx.authorize_own(rule)?;
    let t = Target { owner: a.owner.as_deref(), lessee: None };
    ctx.authorize_on(t, rule, Rule::AllocationGet, || format!("Allocation {ident} could not be found."))
}

/// The owner a project-scoped caller's list is limited to (Ironic's
/// `check_list_policy`): its own project; asking for another's is 403.
fn list_owner(ctx: &Ctx, asked: Option<&String>) -> ApiResult<Option<String>> {
    ctx.authorize(Rule::AllocationList)?;
    if ctx.caller.list_scope().is_none() {
        return Ok(asked.cloned());
    }
    match (ctx.caller.project(), asked) {
        (Some(p), None) => Ok(Some(p.to_string())),
        (Some(p), Some(a)) if a == p => Ok(Some(p.to_string())),
        _ => Err(crate::context::forbidden(Rule::AllocationListAll)),
    }
}

fn owner_gate(ctx: &Ctx, used: bool) -> ApiResult<()> {
    if used && !ctx.v.at_least(60) { Err(ApiError::too_old(60, "an allocation's owner")) } else { Ok(()) }
}

async fn list(st: &AppState, ctx: &Ctx, q: &HashMap<String, String>, node: Option<Uuid>) -> ApiResult<Value> {
    let fields = render::parse_fields(q.get("fields").map(String::as_str), ALLOCATION_FIELDS, ctx.v)?;
    owner_gate(ctx, q.contains_key("owner"))?;
    ctx.authorize(Rule::AllocationList)?;
    let paging = paging::parse(q, st.cfg.api.max_limit, ALLOCATION_SORT_KEYS)?;
    let limit = paging.limit.unwrap_or(i64::from(st.cfg.api.max_limit));
    let mut query = AllocationQuery { paging, node_uuid: node, ..Default::default() };
    if let Some(n) = q.get("node") {
        query.node_uuid = Some(body_node(st, ctx, n).await?.uuid);
    }
    query.resource_class = q.get("resource_class").cloned();
    query.owner = list_owner(ctx, q.get("owner"))?;
    if let Some(s) = q.get("state") {
        query.state =
            Some(AllocationState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid state {s:?}: one of allocating, active, error"))
            })?);
    }
    query.paging.limit = Some(limit + 1);
    let mut items = st.db.list_allocations(&query).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request("Marker could not be found."),
        e => ApiError::from_db(e, String::new),
    })?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let list: Vec<Value> =
        items.iter().map(|a| render::allocation_view(a, &ctx.base, ctx.v, fields.as_deref())).collect();
    let mut out = json!({"allocations": list});
    if more && let Some(last) = items.last() {
        out["next"] = Value::String(paging::next_url(&ctx.base, "allocations", q, limit, &last.uuid));
    }
    Ok(out)
}

pub async fn list_allocations(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    gone_below(&ctx, 52, StatusCode::NOT_FOUND)?;
    list(&st, &ctx, &q, None).await.map(Json)
}

pub async fn get_allocation(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    gone_below(&ctx, 52, StatusCode::NOT_FOUND)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), ALLOCATION_FIELDS, ctx.v)?;
    let a = get(&st, &ident).await?;
    authorize(&ctx, &a, &ident, Rule::AllocationGet)?;
    Ok(Json(render::allocation_view(&a, &ctx.base, ctx.v, fields.as_deref())))
}

/// The allocation a create request asks for, checked (the node of a
/// backfill resolved, candidate names turned into UUIDs).
async fn parse_create(st: &AppState, ctx: &Ctx, body: &Value) -> ApiResult<Allocation> {
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The allocation must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !CREATE_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Additional properties are not allowed ('{k}' was unexpected)")));
    }
    owner_gate(ctx, obj.contains_key("owner"))?;
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let node = match opt_string("node", get("node"))? {
        Some(_) if !ctx.v.at_least(58) => {
            return Err(ApiError::bad_request("Cannot set node when creating an allocation in this API version"));
        }
        Some(n) => Some(body_node(st, ctx, &n).await?),
        None => None,
    };
    let name = opt_string("name", get("name"))?;
    if let Some(n) = &name
        && check_name(n).is_err()
    {
        return Err(ApiError::bad_request(format!("Cannot create allocation with invalid name '{n}'")));
    }
    let mut resource_class = opt_string("resource_class", get("resource_class"))?.filter(|r| !r.is_empty());
    if resource_class.as_ref().is_some_and(|r| r.len() > 80) {
        return Err(ApiError::bad_request("Invalid resource_class: at most 80 characters"));
    }
    if resource_class.is_none() {
        match &node {
            Some(n) => resource_class = n.resource_class.clone(),
            None => return Err(ApiError::bad_request("The resource_class field is mandatory when not backfilling")),
        }
    }
    let uuid = match opt_string("uuid", get("uuid"))? {
        Some(s) => {
            Uuid::parse_str(&s).map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {s}.")))?
        }
        // a backfill takes the node's instance UUID, as Ironic's does
        None => node
            .as_ref()
            .and_then(|n| n.instance_uuid.as_deref())
            .and_then(|i| Uuid::parse_str(i).ok())
            .unwrap_or_else(Uuid::new_v4),
    };
    let mut a = Allocation::new(uuid, resource_class);
    a.name = name;
    a.node_uuid = node.map(|n| n.uuid);
    a.traits = traits_from(get("traits"), "traits")?;
    a.extra = object("extra", get("extra"))?;
    a.owner = opt_string("owner", get("owner"))?;
    // Ironic's baremetal:allocation:create_restricted: only a system member
    // names another owner; anyone else's allocation is their project's, and
    // its conductor picks only nodes that project owns or leases
    if !ctx.caller.allows(Rule::AllocationCreateRestricted, Target::default()) {
        let project = ctx.caller.project().ok_or_else(|| crate::context::forbidden(Rule::AllocationCreate))?;
        match &a.owner {
            Some(o) if o != project => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Cannot create allocation with an owner Project ID value {o} not matching the requestor \
                         Project ID {project}. Policy baremetal:allocation:create_restricted is required for this \
                         capability."
                    ),
                ));
            }
            _ => a.owner = Some(project.to_string()),
        }
    }
    match get("candidate_nodes") {
        Value::Null => {}
        Value::Array(list) => {
            for c in list {
                let ident = c.as_str().ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid value for candidate_nodes: {c} is not a string"))
                })?;
                let uuid = body_node(st, ctx, ident).await?.uuid;
                if !a.candidate_nodes.contains(&uuid) {
                    a.candidate_nodes.push(uuid);
                }
            }
        }
        other => {
            return Err(ApiError::bad_request(format!("Invalid value for candidate_nodes: {other} is not a list")));
        }
    }
    Ok(a)
}

pub async fn create_allocation(AxState(st): AxState<State>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    gone_below(&ctx, 52, StatusCode::METHOD_NOT_ALLOWED)?;
    ctx.authorize(Rule::AllocationCreate)?;
    let body = crate::error::json_value(&body)?;
    let a = parse_create(&st, &ctx, &body).await?;
    let allocation_json = serde_json::to_string(&a).expect("allocations serialise");
    let send = |mut c: crate::forward::Client, epoch| {
        let r = AllocationRequest { epoch, allocation_json: allocation_json.clone() };
        async move { c.create_allocation(r).await }
    };
    let reply = match a.node_uuid {
        Some(n) => {
            let node = st
                .db
                .get_node(n)
                .await
                .map_err(|e| ApiError::from_db(e, || format!("Node {n} could not be found.")))?;
            st.fwd.call(AppState::route(&node), send).await?
        }
        None => st.fwd.call(Route::Any(&a.uuid), send).await?,
    };
    let stored: Allocation = serde_json::from_str(&reply.allocation_json)
        .map_err(|e| ApiError::internal(format!("conductor sent a bad allocation: {e}")))?;
    let location = format!("{}/v1/allocations/{}", ctx.base, stored.uuid);
    let view = render::allocation_view(&stored, &ctx.base, ctx.v, None);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
}

pub async fn patch_allocation(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    gone_below(&ctx, 57, StatusCode::METHOD_NOT_ALLOWED)?;
    let body = crate::error::json_value(&body)?;
    let ops = patch::parse(&body)?;
    for op in &ops {
        let root = op.path.first().map(String::as_str).unwrap_or_default();
        if !["name", "extra"].contains(&root) {
            return Err(ApiError::bad_request(format!(
                "Cannot patch /{}. Only the following can be updated: name, extra",
                op.path.join("/")
            )));
        }
    }
    ctx.authorize_own(Rule::AllocationUpdate)?;
    let a = get(&st, &ident).await?;
    authorize(&ctx, &a, &ident, Rule::AllocationUpdate)?;
    let before = render::allocation_document(&a, &ctx.base);
    let mut after: Map<String, Value> = before.clone();
    patch::apply(&mut after, &ops)?;
    let name = opt_string("name", after.get("name").unwrap_or(&Value::Null))?;
    if let Some(n) = &name
        && check_name(n).is_err()
    {
        return Err(ApiError::bad_request(format!("Cannot update allocation with invalid name '{n}'")));
    }
    let extra = object("extra", after.get("extra").unwrap_or(&Value::Null))?;
    st.db.update_allocation_fields(a.uuid, name.as_deref(), &extra).await.map_err(|e| match e {
        DbError::Duplicate { .. } => {
            ApiError::conflict(format!("An allocation with name {} already exists.", name.clone().unwrap_or_default()))
        }
        e => ApiError::from_db(e, || format!("Allocation {ident} could not be found.")),
    })?;
    let stored = get(&st, &a.uuid.to_string()).await?;
    Ok(Json(render::allocation_view(&stored, &ctx.base, ctx.v, None)))
}

async fn destroy(st: &AppState, a: &Allocation) -> ApiResult<()> {
    let send = |mut c: crate::forward::Client, epoch| {
        let r = AllocationRef {
            epoch,
            allocation_uuid: a.uuid.to_string(),
            node_uuid: a.node_uuid.map(|u| u.to_string()).unwrap_or_default(),
        };
        async move { c.destroy_allocation(r).await }
    };
    match a.node_uuid {
        Some(n) => {
            let node = st
                .db
                .get_node(n)
                .await
                .map_err(|e| ApiError::from_db(e, || format!("Node {n} could not be found.")))?;
            st.fwd.call(AppState::route(&node), send).await?;
        }
        None => {
            st.fwd.call(Route::Any(&a.uuid), send).await?;
        }
    }
    Ok(())
}

pub async fn delete_allocation(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    gone_below(&ctx, 52, StatusCode::METHOD_NOT_ALLOWED)?;
    ctx.authorize_own(Rule::AllocationDelete)?;
    let a = get(&st, &ident).await?;
    authorize(&ctx, &a, &ident, Rule::AllocationDelete)?;
    destroy(&st, &a).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The allocation of a node (404 when it has none, or the caller may not
/// read the node or the allocation), if the caller passes `rule` on it.
async fn of_node(st: &AppState, ctx: &Ctx, ident: &str, rule: Rule) -> ApiResult<Allocation> {
    ctx.authorize_own(rule)?;
    let node = st.node_for(ctx, ident, Rule::NodeGet).await?;
    let q = AllocationQuery { node_uuid: Some(node.uuid), ..Default::default() };
    let found = st.db.list_allocations(&q).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let nf = || format!("Allocation for node {ident} was not found");
    let a = found.into_iter().next().ok_or_else(|| ApiError::not_found(nf()))?;
    let t = Target { owner: a.owner.as_deref(), lessee: None };
    ctx.authorize_on(t, rule, Rule::AllocationGet, nf)?;
    Ok(a)
}

pub async fn node_allocation(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    gone_below(&ctx, 52, StatusCode::NOT_FOUND)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), ALLOCATION_FIELDS, ctx.v)?;
    let a = of_node(&st, &ctx, &ident, Rule::AllocationGet).await?;
    Ok(Json(render::allocation_view(&a, &ctx.base, ctx.v, fields.as_deref())))
}

pub async fn delete_node_allocation(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    gone_below(&ctx, 52, StatusCode::NOT_FOUND)?;
    let a = of_node(&st, &ctx, &ident, Rule::AllocationDelete).await?;
    destroy(&st, &a).await?;
    Ok(StatusCode::NO_CONTENT)
}
