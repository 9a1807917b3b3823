//! `/v1/chassis` and `/v1/chassis/<chassis>/nodes`. A chassis is no node's
//! and no lock guards it: the API writes it itself (stateless: the row is
//! the state). One that nodes name is not deleted (400, as Ironic's
//! `ChassisNotEmpty`), in one conditional statement.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use ferric_common::db::{CHASSIS_SORT_KEYS, ChassisDelete, DbError};
use ferric_common::model::{Chassis, JsonObject};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::policy::Rule;
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::fields::{object, opt_string};
use crate::render::{self, CHASSIS_FIELDS};
use crate::{paging, patch};

/// Ironic's limit on a chassis description.
const MAX_DESCRIPTION: usize = 255;

fn parse_uuid(ident: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(ident).map_err(|_| ApiError::bad_request(format!("Expected a UUID but received {ident}.")))
}

pub async fn get(st: &AppState, ident: &str) -> ApiResult<Chassis> {
    let uuid = parse_uuid(ident)?;
    st.db.get_chassis(uuid).await.map_err(|e| ApiError::from_db(e, || format!("Chassis {ident} could not be found.")))
}

fn description(v: &Value) -> ApiResult<Option<String>> {
    let d = opt_string("description", v)?;
    if d.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(ApiError::bad_request(format!("Invalid description: at most {MAX_DESCRIPTION} characters")));
    }
    Ok(d)
}

async fn list(st: &AppState, ctx: &Ctx, q: &HashMap<String, String>, detail: bool, path: &str) -> ApiResult<Value> {
    ctx.authorize(Rule::ChassisGet)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), CHASSIS_FIELDS, ctx.v)?;
    if detail && fields.is_some() {
        return Err(ApiError::bad_request("Can not specify ?detail=True and fields in the same request."));
    }
    let detail = detail || q.get("detail").is_some_and(|d| d.eq_ignore_ascii_case("true"));
    let mut paging = paging::parse(q, st.cfg.api.max_limit, CHASSIS_SORT_KEYS)?;
    let limit = paging.limit.unwrap_or(i64::from(st.cfg.api.max_limit));
    paging.limit = Some(limit + 1);
    let mut items = st.db.list_chassis(&paging).await.map_err(|e| match e {
        DbError::NotFound => ApiError::bad_request("Marker could not be found."),
        e => ApiError::from_db(e, String::new),
    })?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let list: Vec<Value> = items
        .iter()
        .map(|c| render::chassis_view(c, &ctx.base, ctx.v, fields.as_deref(), !detail && fields.is_none()))
        .collect();
    let mut out = json!({"chassis": list});
    if more && let Some(last) = items.last() {
        out["next"] = Value::String(paging::next_url(&ctx.base, path, q, limit, &last.uuid));
    }
    Ok(out)
}

pub async fn list_chassis(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&st, &ctx, &q, false, "chassis").await.map(Json)
}

pub async fn list_chassis_detail(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    list(&st, &ctx, &q, true, "chassis/detail").await.map(Json)
}

pub async fn get_chassis(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    ctx.authorize(Rule::ChassisGet)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), CHASSIS_FIELDS, ctx.v)?;
    let c = get(&st, &ident).await?;
    Ok(Json(render::chassis_view(&c, &ctx.base, ctx.v, fields.as_deref(), false)))
}

pub async fn create_chassis(AxState(st): AxState<State>, ctx: Ctx, body: Bytes) -> ApiResult<Response> {
    ctx.authorize(Rule::ChassisCreate)?;
    let body = crate::error::json_value(&body)?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The chassis must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !["uuid", "description", "extra"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("Unknown attribute for chassis: '{k}'")));
    }
    let uuid = match opt_string("uuid", obj.get("uuid").unwrap_or(&Value::Null))? {
        Some(s) => parse_uuid(&s)?,
        None => Uuid::new_v4(),
    };
    let c = Chassis {
        uuid,
        description: description(obj.get("description").unwrap_or(&Value::Null))?,
        extra: object("extra", obj.get("extra").unwrap_or(&Value::Null))?,
        created_at: Utc::now(),
        updated_at: None,
    };
    st.db.create_chassis(&c).await.map_err(|e| match e {
        DbError::Duplicate { .. } => ApiError::conflict(format!("A chassis with UUID {uuid} already exists.")),
        e => ApiError::from_db(e, String::new),
    })?;
    let stored = get(&st, &uuid.to_string()).await?;
    let loc = format!("{}/v1/chassis/{uuid}", ctx.base);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, loc)],
        Json(render::chassis_view(&stored, &ctx.base, ctx.v, None, false)),
    )
        .into_response())
}

pub async fn patch_chassis(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    ctx.authorize(Rule::ChassisUpdate)?;
    let body = crate::error::json_value(&body)?;
    let ops = patch::parse(&body)?;
    let c = get(&st, &ident).await?;
    let before = render::chassis_document(&c, &ctx.base);
    let mut after = before.clone();
    patch::apply(&mut after, &ops)?;
    let mut changed = c.clone();
    for (k, v) in &after {
        if before.get(k) == Some(v) {
            continue;
        }
        match k.as_str() {
            "description" => changed.description = description(v)?,
            "extra" => changed.extra = if v.is_null() { JsonObject::new() } else { object(k, v)? },
            other => {
                return Err(ApiError::bad_request(format!(
                    "'/{other}' is an internal attribute and can not be updated"
                )));
            }
        }
    }
    st.db
        .update_chassis(&changed)
        .await
        .map_err(|e| ApiError::from_db(e, || format!("Chassis {ident} could not be found.")))?;
    let stored = get(&st, &ident).await?;
    Ok(Json(render::chassis_view(&stored, &ctx.base, ctx.v, None, false)))
}

pub async fn delete_chassis(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<StatusCode> {
    ctx.authorize(Rule::ChassisDelete)?;
    let uuid = parse_uuid(&ident)?;
    match st.db.delete_chassis(uuid).await.map_err(|e| ApiError::from_db(e, String::new))? {
        ChassisDelete::Deleted => Ok(StatusCode::NO_CONTENT),
        ChassisDelete::NotEmpty => Err(ApiError::bad_request(format!(
            "Cannot complete the requested action because chassis {uuid} contains nodes."
        ))),
        ChassisDelete::NotFound => Err(ApiError::not_found(format!("Chassis {ident} could not be found."))),
    }
}
