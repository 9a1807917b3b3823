//! `/v1/drivers` (hardware types served by live conductors) and
//! `/v1/conductors` (the ring's members).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::Method;
use axum::response::Response;
use ferric_common::proto::{DriverRef, DriverVendorRequest, VendorMethodsRequest};
use ferric_common::ring::{MemberState, Ring};
use serde_json::{Map, Value, json};

use crate::auth::Rule;
use crate::context::{Ctx, State};
use crate::error::{ApiError, ApiResult};
use crate::forward::Route;
use crate::nodes::{methods_json, vendor_body, vendor_response};
use crate::render::{self, CONDUCTOR_FIELDS, CONDUCTOR_LIST_FIELDS, link_pair};

/// `fields=` of a driver request: from 1.77 (406 before), checked against
/// the driver's fields.
fn driver_fields(ctx: &Ctx, q: &HashMap<String, String>) -> ApiResult<Option<Vec<String>>> {
    let Some(raw) = q.get("fields") else { return Ok(None) };
    if !ctx.v.at_least(77) {
        return Err(ApiError::too_old(77, "fields of drivers"));
    }
    let table = render::driver_fields();
    let table: Vec<(&str, u32)> = table.iter().map(|(k, m)| (k.as_str(), *m)).collect();
    render::parse_fields(Some(raw), &table, ctx.v)
}

/// Keeps the requested fields (and the links) of a driver document.
fn narrow(doc: Value, fields: Option<&[String]>) -> Value {
    match (doc, fields) {
        (Value::Object(m), Some(f)) => {
            Value::Object(m.into_iter().filter(|(k, _)| k == "links" || f.iter().any(|x| x == k)).collect())
        }
        (doc, _) => doc,
    }
}

/// hardware type → conductors that enable it (active members only).
fn hosts(ring: &Ring) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in ring.members().iter().filter(|m| m.state == MemberState::Active) {
        for hw in &m.hardware_types {
            out.entry(hw.clone()).or_default().push(m.id.to_string());
        }
    }
    out
}

fn driver_summary(ctx: &Ctx, name: &str, hosts: &[String]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("hosts".into(), json!(hosts));
    m.insert("type".into(), json!("dynamic"));
    m.insert("links".into(), link_pair(&ctx.base, "drivers", name));
    m.insert("properties".into(), link_pair(&ctx.base, "drivers", &format!("{name}/properties")));
    m
}

async fn driver_detail(st: &State, ctx: &Ctx, name: &str, hosts: &[String]) -> ApiResult<Value> {
    let props = st
        .fwd
        .call(Route::Driver(name), |mut c, epoch| {
            let driver = name.to_string();
            async move { c.get_driver_properties(DriverRef { epoch, driver }).await }
        })
        .await?;
    let mut m = driver_summary(ctx, name, hosts);
    for (kind, default) in &props.default_interfaces {
        m.insert(format!("default_{kind}_interface"), json!(default));
    }
    for (kind, list) in &props.enabled_interfaces {
        m.insert(format!("enabled_{kind}_interfaces"), json!(list.names));
    }
    Ok(Value::Object(m))
}

pub async fn list_drivers(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    ctx.authorize(Rule::SystemReader)?;
    match q.get("type").map(String::as_str) {
        None | Some("dynamic") => {}
        Some("classic") => return Ok(Json(json!({"drivers": []}))),
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid driver type {other:?}: must be classic or dynamic")));
        }
    }
    let fields = driver_fields(&ctx, &q)?;
    let detail = matches!(q.get("detail").map(|s| s.to_ascii_lowercase()).as_deref(), Some("true" | "1"));
    // fields of the detail view are read from a conductor
    let summary_only =
        |f: &[String]| f.iter().all(|x| ["name", "hosts", "type", "links", "properties"].contains(&x.as_str()));
    let detail = detail || fields.as_deref().is_some_and(|f| !summary_only(f));
    let mut out = Vec::new();
    for (name, h) in hosts(&st.fwd.ring()) {
        let doc = if detail {
            driver_detail(&st, &ctx, &name, &h).await?
        } else {
            Value::Object(driver_summary(&ctx, &name, &h))
        };
        out.push(narrow(doc, fields.as_deref()));
    }
    Ok(Json(json!({"drivers": out})))
}

fn unknown_driver(name: &str) -> ApiError {
    ApiError::not_found(format!("Could not find the following driver(s) or hardware type(s): {name}."))
}

pub async fn get_driver(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let fields = driver_fields(&ctx, &q)?;
    ctx.authorize(Rule::SystemReader)?;
    let all = hosts(&st.fwd.ring());
    let h = all.get(&name).ok_or_else(|| unknown_driver(&name))?;
    Ok(Json(narrow(driver_detail(&st, &ctx, &name, h).await?, fields.as_deref())))
}

pub async fn driver_properties(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    ctx.authorize(Rule::SystemReader)?;
    if !hosts(&st.fwd.ring()).contains_key(&name) {
        return Err(unknown_driver(&name));
    }
    let props = st
        .fwd
        .call(Route::Driver(&name), |mut c, epoch| {
            let driver = name.clone();
            async move { c.get_driver_properties(DriverRef { epoch, driver }).await }
        })
        .await?;
    Ok(Json(json!(props.properties.into_iter().collect::<BTreeMap<_, _>>())))
}

pub async fn driver_vendor_methods(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    ctx.authorize(Rule::DriverVendorPassthru)?;
    if !hosts(&st.fwd.ring()).contains_key(&name) {
        return Err(unknown_driver(&name));
    }
    let reply = st
        .fwd
        .call(Route::Driver(&name), |mut c, epoch| {
            let r = VendorMethodsRequest { epoch, node_uuid: String::new(), driver: name.clone() };
            async move { c.get_vendor_methods(r).await }
        })
        .await?;
    Ok(Json(methods_json(reply.methods)))
}

async fn driver_vendor(st: &State, name: &str, method_name: &str, method: Method, body: Bytes) -> ApiResult<Response> {
    if !hosts(&st.fwd.ring()).contains_key(name) {
        return Err(unknown_driver(name));
    }
    let body_json = vendor_body(&method, &body)?;
    let send = |mut c: crate::forward::Client, epoch| {
        let r = DriverVendorRequest {
            epoch,
            driver: name.to_string(),
            method: method_name.to_string(),
            http_method: method.as_str().to_string(),
            body_json: body_json.clone(),
        };
        async move { c.driver_vendor_passthru(r).await }
    };
    // a driver's method has effects of its own that no conductor records:
    // only a read may be sent twice
    let reply = if method == axum::http::Method::GET {
        st.fwd.call(Route::Driver(name), send).await?
    } else {
        st.fwd.call_once(Route::Driver(name), send).await?
    };
    Ok(vendor_response(reply))
}

pub async fn driver_vendor_call(
    AxState(st): AxState<State>,
    ctx: Ctx,
    method: Method,
    Path((name, m)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Rule::DriverVendorPassthru)?;
    driver_vendor(&st, &name, &m, method, body).await
}

pub async fn driver_vendor_call_query(
    AxState(st): AxState<State>,
    ctx: Ctx,
    method: Method,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult<Response> {
    ctx.authorize(Rule::DriverVendorPassthru)?;
    let m = q.get("method").ok_or_else(|| ApiError::bad_request("Missing argument: \"method\""))?;
    driver_vendor(&st, &name, m, method, body).await
}

fn conductor_json(ctx: &Ctx, m: &ferric_common::ring::Member, detail: bool) -> Value {
    let mut v = json!({
        "hostname": m.id,
        "conductor_group": m.conductor_group,
        "alive": true,
        "links": link_pair(&ctx.base, "conductors", &m.id),
    });
    if detail {
        v["drivers"] = json!(m.hardware_types);
        v["state"] = json!(match m.state {
            MemberState::Active => "active",
            MemberState::Draining => "draining",
        });
        v["created_at"] = Value::Null;
        v["updated_at"] = Value::Null;
    }
    v
}

fn check_conductors_version(ctx: &Ctx) -> ApiResult<()> {
    if ctx.v.at_least(49) { Ok(()) } else { Err(ApiError::not_found("The resource could not be found.")) }
}

pub async fn list_conductors(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_conductors_version(&ctx)?;
    ctx.authorize(Rule::SystemReader)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), CONDUCTOR_FIELDS, ctx.v)?;
    let detail = matches!(q.get("detail").map(|s| s.to_ascii_lowercase()).as_deref(), Some("true" | "1"));
    if detail && fields.is_some() {
        return Err(ApiError::bad_request("Can not specify ?detail=True and fields in the same request."));
    }
    let ring = st.fwd.ring();
    let list: Vec<Value> = ring
        .members()
        .iter()
        .map(|m| match &fields {
            Some(f) => narrow_conductor(conductor_json(&ctx, m, true), &ctx, Some(f)),
            None if detail => conductor_json(&ctx, m, true),
            None => narrow_conductor(conductor_json(&ctx, m, true), &ctx, None),
        })
        .collect();
    Ok(Json(json!({"conductors": list})))
}

/// A conductor document narrowed to `fields`, or to the list's fields.
fn narrow_conductor(doc: Value, ctx: &Ctx, fields: Option<&[String]>) -> Value {
    let Value::Object(m) = doc else { return doc };
    render::select(m, CONDUCTOR_FIELDS, ctx.v, fields, fields.is_none().then_some(CONDUCTOR_LIST_FIELDS))
}

pub async fn get_conductor(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(host): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    check_conductors_version(&ctx)?;
    ctx.authorize(Rule::SystemReader)?;
    let fields = render::parse_fields(q.get("fields").map(String::as_str), CONDUCTOR_FIELDS, ctx.v)?;
    let ring = st.fwd.ring();
    let m = ring
        .member(&host.as_str().into())
        .ok_or_else(|| ApiError::not_found(format!("Conductor {host} could not be found.")))?;
    let doc = conductor_json(&ctx, m, true);
    Ok(Json(if fields.is_some() { narrow_conductor(doc, &ctx, fields.as_deref()) } else { doc }))
}
