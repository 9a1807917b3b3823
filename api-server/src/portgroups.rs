//! `/v1/portgroups` (1.23), `/v1/portgroups/<pg>/ports` and
//! `/v1/nodes/<node>/portgroups` (1.24). Writes take the node's lock on
//! its owner, as port writes do.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ferric_common::db::{DbError, PORTGROUP_SORT_KEYS, PortQuery, PortgroupQuery};
use ferric_common::model::{Portgroup, normalize_mac};
use ferric_common::proto::UpdatePortgroupRequest;
use ferric_common::proto::update_portgroup_request::Op;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::policy::Rule;
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::fields::{boolean, check_name, object, opt_string};
use crate::render::{self, PORT_FIELDS, PORTGROUP_FIELDS};
use crate::{paging, patch};

/// Fields a client writes, and the version each needs.
pub const WRITABLE: &[(&str, u32)] = &[
    ("address", 23),
    ("extra", 23),
    ("name", 23),
    ("node_uuid", 23),
    ("standalone_ports_supported", 23),
    ("uuid", 23),
    ("mode", 26),
    ("properties", 26),
    ("physical_network", 102),
    ("category", 103),
];

/// Ironic's `[DEFAULT] default_portgroup_mode`.
const DEFAULT_MODE: &str = "active-backup";

fn check_version(ctx: &Ctx, min: u32) -> ApiResult<()> {
    if ctx.v.at_least(min) { Ok(()) } else { Err(ApiError::not_found("The resource could not be found.")) }
}

async fn get(st: &AppState, ident: &str) -> ApiResult<Portgroup> {
    let nf = || format!("Portgroup {ident} could not be found.");
    let r = match Uuid::parse_str(ident) {
        Ok(u) => st.db.get_portgroup(u).await,
        Err(_) => st.db.get_portgroup_by_name(ident).await,
    };
    r.map_err(|e| ApiError::from_db(e, nf))
}

/// The portgroup `ident` names, if the caller passes `rule` on its node
/// (404 when it may not even read the node, as for a port).
async fn get_for(st: &AppState, ctx: &Ctx, ident: &str, rule: Rule) -> ApiResult<Portgroup> {
    ctx.authorize_own(rule)?;
    let pg = get(st, ident).await?;
    if matches!(ctx.caller, crate::auth::Caller::Keystone(_)) {
        let node = st.db.get_node(pg.node_uuid).await.map_err(|e| ApiError::from_db(e, String::new))?;
        ctx.authorize_on(crate::context::target(&node), rule, Rule::PortgroupGet, || {
            format!("Portgroup {ident} could not be found.")
        })?;
    }
    Ok(pg)
}

async fn list(
    st: &AppState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    detail: bool,
    path: &str,
    node: Option<Uuid>,
) -> ApiResult<Value> {
    ctx.authorize(Rule::PortgroupList)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), PORTGROUP_FIELDS, ctx.v)?;
    if detail && fields.is_some() {
        return Err(ApiError::bad_request("Can not specify ?detail=True and fields in the same request."));
    }
    let detail = detail || q.get("detail").is_some_and(|d| d.eq_ignore_ascii_case("true"));
    let paging = paging::parse(q, st.cfg.api.max_limit, PORTGROUP_SORT_KEYS)?;
    let limit = paging.limit.unwrap_or(i64::from(st.cfg.api.max_limit));
    let mut query =
        PortgroupQuery { paging, node_uuid: node, node_project: ctx.caller.list_scope(), ..Default::default() };
    if let Some(n) = q.get("node") {
        match st.node_for(ctx, n, Rule::NodeGet).await {
            Ok(node) => query.node_uuid = Some(node.uuid),
            Err(e) if e.status == StatusCode::NOT_FOUND => return Err(ApiError::bad_request(e.message)),
            Err(e) => return Err(e),
        }
    }
    if let Some(a) = q.get("address") {
        query.address = Some(
            normalize_mac(a)
                .ok_or_else(|| ApiError::bad_request(format!("Expected a MAC address but received {a}.")))?,
        );
    }
    if query.node_uuid.is_some() && query.address.is_some() {
        return Err(ApiError::bad_request("Filtering by node, address, or shard simultaneously is not supported."));
    }
    query.paging.limit = Some(limit + 1);
    let mut items = st.db.list_portgroups(&query).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request("Marker could not be found."),
        e => ApiError::from_db(e, String::new),
    })?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let list: Vec<Value> = items
        .iter()
        .map(|p| render::portgroup_view(p, &ctx.base, ctx.v, fields.as_deref(), !detail && fields.is_none()))
        .collect();
    let mut out = json!({"portgroups": list});
    if more && let Some(last) = items.last() {
        out["next"] = Value::String(paging::next_url(&ctx.base, path, q, limit, &last.uuid));
    }
    Ok(out)
}

pub async fn list_portgroups(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 23)?;
    list(&st, &ctx, &q, false, "portgroups", None).await.map(Json)
}

pub async fn list_portgroups_detail(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 23)?;
    list(&st, &ctx, &q, true, "portgroups/detail", None).await.map(Json)
}

pub async fn node_portgroups(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 24)?;
    let node = st.node_for(&ctx, &ident, Rule::PortgroupGet).await?;
    list(&st, &ctx, &q, false, &format!("nodes/{ident}/portgroups"), Some(node.uuid)).await.map(Json)
}

pub async fn get_portgroup(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 23)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), PORTGROUP_FIELDS, ctx.v)?;
    let p = get_for(&st, &ctx, &ident, Rule::PortgroupGet).await?;
    Ok(Json(render::portgroup_view(&p, &ctx.base, ctx.v, fields.as_deref(), false)))
}

/// `GET /v1/portgroups/<pg>/ports` (1.24): the portgroup's member ports.
pub async fn portgroup_ports(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 24)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), PORT_FIELDS, ctx.v)?;
    // Ironic's baremetal:port:get on the portgroup's node
    let pg = get_for(&st, &ctx, &ident, Rule::PortgroupGet).await?;
    let query = PortQuery { portgroup_uuid: Some(pg.uuid.to_string()), ..Default::default() };
    let ports = st.db.list_ports(&query).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let items: Vec<Value> =
        ports.iter().map(|p| render::port_view(p, &ctx.base, ctx.v, fields.as_deref(), fields.is_none())).collect();
    Ok(Json(json!({"ports": items})))
}

/// Set one writable field from JSON, refusing one of a later version.
fn set_field(ctx: &Ctx, p: &mut Portgroup, k: &str, v: &Value) -> ApiResult<()> {
    match WRITABLE.iter().find(|(f, _)| *f == k) {
        None => return Err(ApiError::bad_request(format!("Unknown attribute for portgroup: '{k}'"))),
        Some((_, min)) if !ctx.v.at_least(*min) => return Err(ApiError::too_old(*min, &format!("the field {k}"))),
        Some(_) => {}
    }
    match k {
        "address" => {
            p.address = match opt_string(k, v)? {
                None => None,
                Some(s) => Some(
                    normalize_mac(&s)
                        .ok_or_else(|| ApiError::bad_request(format!("Expected a MAC address but received {s}.")))?,
                ),
            }
        }
        "name" => {
            p.name = opt_string(k, v)?;
            if let Some(n) = &p.name
                && check_name(n).is_err()
            {
                return Err(ApiError::bad_request(format!("Cannot use portgroup name '{n}': not a valid name")));
            }
        }
        "extra" => p.extra = object(k, v)?,
        "properties" => p.properties = object(k, v)?,
        "mode" => p.mode = opt_string(k, v)?.or_else(|| Some(DEFAULT_MODE.into())),
        "standalone_ports_supported" => p.standalone_ports_supported = if v.is_null() { true } else { boolean(k, v)? },
        "physical_network" => {
            p.physical_network = opt_string(k, v)?;
            if p.physical_network.as_ref().is_some_and(|n| n.len() > 64) {
                return Err(ApiError::bad_request("Invalid physical_network: at most 64 characters"));
            }
        }
        "category" => {
            p.category = opt_string(k, v)?;
            if p.category.as_ref().is_some_and(|c| c.len() > 80) {
                return Err(ApiError::bad_request("Invalid category: at most 80 characters"));
            }
        }
        _ => return Err(ApiError::bad_request(format!("'/{k}' is an internal attribute and can not be updated"))),
    }
    Ok(())
}

async fn push(st: &AppState, op: Op, pg: &Portgroup) -> ApiResult<Portgroup> {
    let node = st.db.get_node(pg.node_uuid).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request(format!("Node {} could not be found.", pg.node_uuid)),
        e => ApiError::from_db(e, String::new),
    })?;
    let json = serde_json::to_string(pg).expect("portgroups serialise");
    let reply = st
        .fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = UpdatePortgroupRequest {
                epoch,
                node_uuid: node.uuid.to_string(),
                op: op as i32,
                portgroup_json: json.clone(),
            };
            async move { c.update_portgroup(r).await }
        })
        .await?;
    serde_json::from_str(&reply.portgroup_json)
        .map_err(|e| ApiError::internal(format!("conductor sent a bad portgroup: {e}")))
}

pub async fn create_portgroup(AxState(st): AxState<State>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    check_version(&ctx, 23)?;
    ctx.authorize_own(Rule::PortgroupCreate)?;
    let body = crate::error::json_value(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The portgroup must be a JSON object"))?;
    let uuid = match obj.get("uuid") {
        None | Some(Value::Null) => Uuid::new_v4(),
        Some(v) => Uuid::parse_str(v.as_str().unwrap_or_default())
            .map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {v}.")))?,
    };
    let node_ref = match obj.get("node_uuid") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad_request("Mandatory field missing: 'node_uuid'")),
    };
    let node = st
        .node_for(&ctx, &node_ref, Rule::PortgroupCreate)
        .await
        .map_err(|e| if e.status == StatusCode::NOT_FOUND { ApiError::bad_request(e.message) } else { e })?;
    let mut pg = Portgroup::new(uuid, node.uuid);
    pg.mode = Some(DEFAULT_MODE.into());
    for (k, v) in obj {
        if k == "uuid" || k == "node_uuid" {
            continue;
        }
        set_field(&ctx, &mut pg, k, v)?;
    }
    pg.created_at = Utc::now();
    let stored = push(&st, Op::Create, &pg).await?;
    let loc = format!("{}/v1/portgroups/{}", ctx.base, stored.uuid);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, loc)],
        Json(render::portgroup_view(&stored, &ctx.base, ctx.v, None, false)),
    )
        .into_response())
}

pub async fn patch_portgroup(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_version(&ctx, 23)?;
    let body = crate::error::json_value(&body)?;
    let ops = patch::parse(&body)?;
    let pg = get_for(&st, &ctx, &ident, Rule::PortgroupUpdate).await?;
    let before = render::portgroup_document(&pg, &ctx.base);
    let mut after = before.clone();
    patch::apply(&mut after, &ops)?;
    let mut changed = pg.clone();
    for (k, v) in &after {
        if before.get(k) == Some(v) {
            continue;
        }
        if k == "node_uuid" {
            return Err(ApiError::bad_request(
                "Moving a portgroup to another node is not supported; delete and re-create it",
            ));
        }
        set_field(&ctx, &mut changed, k, v)?;
    }
    let stored = push(&st, Op::Update, &changed).await?;
    Ok(Json(render::portgroup_view(&stored, &ctx.base, ctx.v, None, false)))
}

pub async fn delete_portgroup(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
) -> ApiResult<StatusCode> {
    check_version(&ctx, 23)?;
    let pg = get_for(&st, &ctx, &ident, Rule::PortgroupDelete).await?;
    push(&st, Op::Delete, &pg).await?;
    Ok(StatusCode::NO_CONTENT)
}
