//! `/v1/nodes/<node>/history` and `/v1/nodes/<node>/history/<event>`
//! (1.78): the node's entries of `node_history` (what conductors record
//! of every state change, step, take-over and failure; kept to
//! `conductor.node_history_max_entries` per node) in Ironic's shape.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State as AxState};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::policy::Rule;
use crate::context::{Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::render;

fn check_version(ctx: &Ctx) -> ApiResult<()> {
    if ctx.v.at_least(78) { Ok(()) } else { Err(ApiError::not_found("The resource could not be found.")) }
}

pub async fn list(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx)?;
    let detail = match q.get("detail").map(|d| d.to_ascii_lowercase()).as_deref() {
        None | Some("false" | "0" | "no") => false,
        Some("true" | "1" | "yes") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid value for detail: {other:?} is not a boolean")));
        }
    };
    let limit = match q.get("limit") {
        None => st.cfg.api.max_limit as usize,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => st.cfg.api.max_limit as usize,
            Ok(n) => n.min(st.cfg.api.max_limit as usize),
            Err(_) => return Err(ApiError::bad_request(format!("Invalid limit {l:?}: must be a positive integer"))),
        },
    };
    let marker = q
        .get("marker")
        .map(|m| Uuid::parse_str(m).map_err(|_| ApiError::bad_request(format!("Invalid marker {m}: expected a UUID"))))
        .transpose()?;
    let node = st.node_for(&ctx, &ident, Rule::NodeHistoryGet).await?;
    let entries = st.db.history(node.uuid).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let start = match marker {
        None => 0,
        Some(m) => {
            entries
                .iter()
                .position(|e| e.uuid() == m)
                .ok_or_else(|| ApiError::bad_request(format!("Marker {m} could not be found.")))?
                + 1
        }
    };
    let page: Vec<Value> =
        entries.iter().skip(start).take(limit).map(|e| render::history_view(e, &ctx.base, ctx.v, detail)).collect();
    let mut out = json!({"history": page});
    if entries.len() > start + limit
        && let Some(last) = entries.get(start + limit - 1)
    {
        let mut args = vec![format!("limit={limit}"), format!("marker={}", last.uuid())];
        if detail {
            args.insert(0, "detail=True".into());
        }
        out["next"] = Value::String(format!("{}/v1/nodes/{ident}/history?{}", ctx.base, args.join("&")));
    }
    Ok(Json(out))
}

pub async fn get(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path((ident, event)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_version(&ctx)?;
    let node = st.node_for(&ctx, &ident, Rule::NodeHistoryGet).await?;
    let not_found = || ApiError::not_found(format!("Node history record {event} could not be found."));
    let wanted = Uuid::parse_str(&event).map_err(|_| not_found())?;
    let entries = st.db.history(node.uuid).await.map_err(|e| ApiError::from_db(e, String::new))?;
    let entry = entries.iter().find(|e| e.uuid() == wanted).ok_or_else(not_found)?;
    Ok(Json(render::history_view(entry, &ctx.base, ctx.v, true)))
}
