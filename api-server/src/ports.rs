//! `/v1/ports`. Port writes take the node's lock on its owner.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ferric_common::db::{DbError, PORT_SORT_KEYS, PortQuery};
use ferric_common::model::{Port, normalize_mac};
use ferric_common::proto::UpdatePortRequest;
use ferric_common::proto::update_port_request::Op;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Rule;
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::fields::{boolean, object, opt_string};
use crate::render::{self, PORT_FIELDS};
use crate::{paging, patch};

/// Port fields a client may set (create and PATCH).
pub const PORT_WRITABLE: &[&str] = &[
    "address",
    "node_uuid",
    "name",
    "pxe_enabled",
    "local_link_connection",
    "physical_network",
    "extra",
    "is_smartnic",
    "portgroup_uuid",
];

async fn get(st: &AppState, ident: &str) -> ApiResult<Port> {
    let nf = || format!("Port {ident} could not be found.");
    let r = match Uuid::parse_str(ident) {
        Ok(u) => st.db.get_port(u).await,
        Err(_) => st.db.get_port_by_name(ident).await,
    };
    r.map_err(|e| ApiError::from_db(e, nf))
}

/// The port `ident` names, if the caller passes `rule` on its node: a
/// caller who may not read the node gets the 404 of a missing port.
async fn port_for(st: &AppState, ctx: &Ctx, ident: &str, rule: Rule) -> ApiResult<Port> {
    let port = get(st, ident).await?;
    if matches!(ctx.caller, crate::auth::Caller::Admin) {
        return Ok(port);
    }
    let node = st.db.get_node(port.node_uuid).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let t = crate::context::target(&node);
    if !ctx.caller.allows(Rule::NodeGet, t) {
        return Err(ApiError::not_found(format!("Port {ident} could not be found.")));
    }
    if !ctx.caller.allows(rule, t) {
        return Err(crate::context::forbidden(rule));
    }
    Ok(port)
}

pub async fn list_ports(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&st, &ctx, &q, false, "ports").await.map(Json)
}

pub async fn list_ports_detail(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&st, &ctx, &q, true, "ports/detail").await.map(Json)
}

async fn list(st: &AppState, ctx: &Ctx, q: &HashMap<String, String>, detail: bool, path: &str) -> ApiResult<Value> {
    let fields = render::parse_fields(q.get("fields").map(String::as_str), PORT_FIELDS, ctx.v)?;
    let paging = paging::parse(q, st.cfg.api.max_limit, PORT_SORT_KEYS)?;
    let limit = paging.limit.unwrap_or(i64::from(st.cfg.api.max_limit));
    ctx.authorize(Rule::NodeList)?;
    let mut query = PortQuery { paging, node_project: ctx.caller.list_scope(), ..Default::default() };
    if let Some(n) = q.get("node").or(q.get("node_uuid")) {
        match st.node_for(ctx, n, Rule::NodeGet).await {
            Ok(node) => query.node_uuid = Some(node.uuid),
            Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(json!({"ports": []})),
            Err(e) => return Err(e),
        }
    }
    if let Some(g) = q.get("portgroup") {
        if !ctx.v.at_least(24) {
            return Err(ApiError::too_old(24, "the portgroup filter"));
        }
        match Uuid::parse_str(g) {
            Ok(u) => query.portgroup_uuid = Some(u.to_string()),
            Err(_) => match st.db.get_portgroup_by_name(g).await {
                Ok(pg) => query.portgroup_uuid = Some(pg.uuid.to_string()),
                Err(DbError::NotFound) => {
                    return Err(ApiError::bad_request(format!("Portgroup {g} could not be found.")));
                }
                Err(e) => return Err(ApiError::from_db(e, String::new)),
            },
        }
    }
    if let Some(a) = q.get("address") {
        query.address = Some(
            normalize_mac(a)
                .ok_or_else(|| ApiError::bad_request(format!("Expected a MAC address but received {a}.")))?,
        );
    }
    query.paging.limit = Some(limit + 1);
    let mut ports = st.db.list_ports(&query).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request("Marker could not be found."),
        e => ApiError::from_db(e, String::new),
    })?;
    let more = ports.len() as i64 > limit;
    ports.truncate(limit as usize);
    let items: Vec<Value> = ports
        .iter()
        .map(|p| render::port_view(p, &ctx.base, ctx.v, fields.as_deref(), !detail && fields.is_none()))
        .collect();
    let mut out = json!({"ports": items});
    if more && let Some(last) = ports.last() {
        out["next"] = Value::String(paging::next_url(&ctx.base, path, q, limit, &last.uuid));
    }
    Ok(out)
}

pub async fn get_port(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let fields = render::parse_fields(q.get("fields").map(String::as_str), PORT_FIELDS, ctx.v)?;
    let p = port_for(&st, &ctx, &ident, Rule::NodeGet).await?;
    Ok(Json(render::port_view(&p, &ctx.base, ctx.v, fields.as_deref(), false)))
}

fn set_field(p: &mut Port, k: &str, v: &Value) -> ApiResult<()> {
    match k {
        "address" => {
            let s = opt_string(k, v)?.unwrap_or_default();
            p.address = normalize_mac(&s)
                .ok_or_else(|| ApiError::bad_request(format!("Expected a MAC address but received {s}.")))?;
        }
        "node_uuid" => {
            let s = opt_string(k, v)?.unwrap_or_default();
            p.node_uuid = Uuid::parse_str(&s)
                .map_err(|_| ApiError::bad_request(format!("Expected a UUID for node_uuid but received {s}.")))?;
        }
        "name" => p.name = opt_string(k, v)?,
        "pxe_enabled" => p.pxe_enabled = if v.is_null() { true } else { boolean(k, v)? },
        "local_link_connection" => p.local_link_connection = object(k, v)?,
        "physical_network" => p.physical_network = opt_string(k, v)?,
        "extra" => p.extra = object(k, v)?,
        "is_smartnic" => p.is_smartnic = boolean(k, v)?,
        "portgroup_uuid" => {
            p.portgroup_uuid = match opt_string(k, v)? {
                None => None,
                Some(g) => Some(
                    Uuid::parse_str(&g)
                        .map_err(|_| {
                            ApiError::bad_request(format!("Expected a UUID for portgroup_uuid but received {g}."))
                        })?
                        .to_string(),
                ),
            }
        }
        other => {
            return Err(ApiError::bad_request(format!("'/{other}' is an internal attribute and can not be updated")));
        }
    }
    Ok(())
}

async fn push(st: &AppState, op: Op, port: &Port) -> ApiResult<Port> {
    let node = st.db.get_node(port.node_uuid).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request(format!("Node {} could not be found.", port.node_uuid)),
        e => ApiError::from_db(e, String::new),
    })?;
    let port_json = serde_json::to_string(port).expect("ports serialise");
    let reply = st
        .fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = UpdatePortRequest {
                epoch,
                node_uuid: node.uuid.to_string(),
                op: op as i32,
                port_json: port_json.clone(),
            };
            async move { c.update_port(r).await }
        })
        .await?;
    serde_json::from_str(&reply.port_json).map_err(|e| ApiError::internal(format!("conductor sent a bad port: {e}")))
}

pub async fn create_port(AxState(st): AxState<State>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    let body = crate::error::json_value(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The port must be a JSON object"))?;
    let uuid = match obj.get("uuid") {
        None | Some(Value::Null) => Uuid::new_v4(),
        Some(v) => {
            let s = v.as_str().unwrap_or_default();
            Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {v}.")))?
        }
    };
    let node_ref = match (obj.get("node_uuid"), obj.get("node_ident")) {
        (Some(Value::String(s)), _) => s.clone(),
        (_, Some(Value::String(s))) if ctx.v.at_least(94) => s.clone(),
        _ => {
            return Err(ApiError::bad_request("Mandatory field missing: 'node_uuid'"));
        }
    };
    let node = st
        .node_for(&ctx, &node_ref, Rule::PortCreateDelete)
        .await
        .map_err(|e| if e.status == StatusCode::NOT_FOUND { ApiError::bad_request(e.message) } else { e })?;
    let address = obj.get("address").ok_or_else(|| ApiError::bad_request("Mandatory field missing: 'address'"))?;
    let mut port = Port::new(uuid, "", node.uuid);
    set_field(&mut port, "address", address)?;
    for (k, v) in obj {
        if matches!(k.as_str(), "uuid" | "address" | "node_uuid" | "node_ident") {
            continue;
        }
        if !PORT_WRITABLE.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("Unknown attribute for port: '{k}'")));
        }
        set_field(&mut port, k, v)?;
    }
    port.created_at = Utc::now();
    let stored = push(&st, Op::Create, &port).await?;
    let loc = format!("{}/v1/ports/{}", ctx.base, stored.uuid);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, loc)],
        Json(render::port_view(&stored, &ctx.base, ctx.v, None, false)),
    )
        .into_response())
}

pub async fn patch_port(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body = crate::error::json_value(&body)?;
    let ops = patch::parse(&body)?;
    let port = port_for(&st, &ctx, &ident, Rule::PortUpdate).await?;
    let before = render::port_document(&port, &ctx.base);
    let mut after = before.clone();
    patch::apply(&mut after, &ops)?;
    let mut changed = port.clone();
    for (k, v) in &after {
        if before.get(k) != Some(v) {
            set_field(&mut changed, k, v)?;
        }
    }
    if changed.node_uuid != port.node_uuid {
        return Err(ApiError::bad_request("Moving a port to another node is not supported; delete and re-create it"));
    }
    let stored = push(&st, Op::Update, &changed).await?;
    Ok(Json(render::port_view(&stored, &ctx.base, ctx.v, None, false)))
}

pub async fn delete_port(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<StatusCode> {
    let port = port_for(&st, &ctx, &ident, Rule::PortCreateDelete).await?;
    push(&st, Op::Delete, &port).await?;
    Ok(StatusCode::NO_CONTENT)
}
