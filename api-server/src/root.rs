//! Discovery documents (`/`, `/v1`) and the ramdisk endpoints (`/v1/lookup`,
//! `/v1/heartbeat/<node>`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferric_common::db::PortQuery;
use ferric_common::model::normalize_mac;
use ferric_common::proto::{HeartbeatRequest, NodeRef};
use ferric_common::states::ProvisionState;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::render::{MASK, link_pair, mask};
use crate::version::{MAX_MINOR, MIN_MINOR};

fn version_doc(base: &str) -> Value {
    json!({"id": "v1", "links": [{"href": format!("{base}/v1/"), "rel": "self"}], "status": "CURRENT",
           "min_version": format!("1.{MIN_MINOR}"), "version": format!("1.{MAX_MINOR}")})
}

pub async fn root(ctx: Ctx) -> Json<Value> {
    Json(json!({
        "name": "OpenStack Ironic API",
        "description": "Ironic is an OpenStack project which enables the provision and management of baremetal machines.",
        "default_version": version_doc(&ctx.base),
        "versions": [version_doc(&ctx.base)],
    }))
}

pub async fn v1(ctx: Ctx) -> Json<Value> {
    let b = &ctx.base;
    let mut doc = json!({
        "id": "v1",
        "links": [{"href": format!("{b}/v1/"), "rel": "self"},
                  {"href": "https://docs.openstack.org//ironic/latest/contributor//webapi.html", "rel": "describedby", "type": "text/html"}],
        "media_types": {"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"},
        "chassis": link_pair(b, "chassis", ""),
        "nodes": link_pair(b, "nodes", ""),
        "ports": link_pair(b, "ports", ""),
        "drivers": link_pair(b, "drivers", ""),
        "version": version_doc(b),
    });
    for (key, min) in [("lookup", 22), ("heartbeat", 22), ("portgroups", 23), ("conductors", 49), ("allocations", 52)] {
        if ctx.v.at_least(min) {
            doc[key] = link_pair(b, key, "");
        }
    }
    // the listing links end in a slash, as Ironic's do
    for key in
        ["chassis", "nodes", "ports", "drivers", "lookup", "heartbeat", "portgroups", "conductors", "allocations"]
    {
        if let Some(Value::Array(links)) = doc.get_mut(key) {
            for l in links {
                if let Some(Value::String(h)) = l.get_mut("href") {
                    h.push('/');
                }
            }
        }
    }
    Json(doc)
}

const LOOKUP_STATES: [ProvisionState; 9] = [
    ProvisionState::Deploying,
    ProvisionState::DeployWait,
    ProvisionState::Cleaning,
    ProvisionState::CleanWait,
    ProvisionState::Inspecting,
    ProvisionState::InspectWait,
    ProvisionState::Rescuing,
    ProvisionState::RescueWait,
    ProvisionState::ServiceWait,
];

fn generic_not_found() -> ApiError {
    ApiError::not_found("Resource could not be found.")
}

/// How many distinct MAC addresses one lookup may name (IPA sends every
/// interface's; a server with more than this many is not one we know).
pub const MAX_LOOKUP_ADDRESSES: usize = 64;

pub async fn lookup(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if !ctx.v.at_least(22) {
        return Err(ApiError { framework: true, ..generic_not_found() });
    }
    let node_uuid = q.get("node_uuid").and_then(|s| Uuid::parse_str(s).ok());
    let mut macs: Vec<String> =
        q.get("addresses").map(|a| a.split(',').filter_map(normalize_mac).collect()).unwrap_or_default();
    macs.sort();
    macs.dedup();
    // one query per address: a lookup is bounded like any request
    if macs.len() > MAX_LOOKUP_ADDRESSES {
        return Err(ApiError::bad_request(format!(
            "A lookup takes at most {MAX_LOOKUP_ADDRESSES} addresses, {} were given",
            macs.len()
        )));
    }
    if node_uuid.is_none() && macs.is_empty() {
        return Err(ApiError::bad_request("At least one of 'addresses' and 'node_uuid' parameters is required"));
    }
    let node = match node_uuid {
        Some(u) => st.db.get_node(u).await.map_err(|_| generic_not_found())?,
        None => {
            let mut found = None;
            for mac in &macs {
                let ports = st
                    .db
                    .list_ports(&PortQuery { address: Some(mac.clone()), ..Default::default() })
                    .await
                    .map_err(|e| ApiError::from_db(e, String::new))?;
                if let Some(p) = ports.first() {
                    found = Some(p.node_uuid);
                    break;
                }
            }
            let u = found.ok_or_else(generic_not_found)?;
            st.db.get_node(u).await.map_err(|_| generic_not_found())?
        }
    };
    if !LOOKUP_STATES.contains(&node.provision_state) {
        return Err(generic_not_found());
    }
    let reply = st
        .fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = NodeRef { epoch, node_uuid: node.uuid.to_string() };
            async move { c.lookup(r).await }
        })
        .await?;
    // the token is only ever handed out once, and only to agents that speak 1.62
    let token = if reply.agent_token.is_empty() || !ctx.v.at_least(62) { MASK.to_string() } else { reply.agent_token };
    Ok(Json(json!({
        "node": {
            "uuid": node.uuid,
            "properties": node.properties,
            "instance_info": mask(&node.instance_info, crate::render::INSTANCE_INFO_SECRET_KEYS),
            "driver_internal_info": crate::render::internal_info_view(&node.driver_internal_info),
            "links": link_pair(&ctx.base, "nodes", &node.uuid.to_string()),
        },
        "config": {"heartbeat_timeout": 300, "agent_token": token, "agent_token_required": true},
    })))
}

/// What a heartbeat may carry.
pub const HEARTBEAT_KEYS: [&str; 6] =
    ["callback_url", "agent_token", "agent_version", "agent_verify_ca", "agent_status", "agent_status_message"];

pub async fn heartbeat(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    if !ctx.v.at_least(22) {
        return Err(ApiError { framework: true, ..generic_not_found() });
    }
    let body = crate::error::json_value(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !HEARTBEAT_KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Unknown argument: \"{k}\"")));
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    if s("agent_version").is_empty() && s("agent_status").is_empty() {
        return Err(ApiError::bad_request(
            "Agent did not transmit a version, and a version is required. Please update the agent being used.",
        ));
    }
    let status = s("agent_status");
    if !status.is_empty() && !["start", "end", "error"].contains(&status.as_str()) {
        return Err(ApiError::bad_request(format!("Unknown agent status {status:?}: must be start, end or error")));
    }
    let node = st.node(&ident, ctx.v).await?;
    st.fwd
        .call(AppState::route(&node), |mut c, epoch| {
            let r = HeartbeatRequest {
                epoch,
                node_uuid: node.uuid.to_string(),
                callback_url: s("callback_url"),
                agent_token: s("agent_token"),
                agent_version: s("agent_version"),
                agent_verify_ca: s("agent_verify_ca"),
                agent_status: status.clone(),
                agent_status_message: s("agent_status_message"),
            };
            async move { c.heartbeat(r).await }
        })
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub async fn not_found() -> ApiError {
    ApiError { framework: true, ..ApiError::not_found("") }
}

/// A method the path does not take: Ironic's 405.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The server could not comply with the request since it is either malformed or otherwise incorrect.",
    )
}
