//! Typed reading of user-writable resource fields from JSON (node create
//! bodies and patched documents), with errors that name the field.

use ferric_common::model::{JsonObject, NODE_INTERFACES, Node};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// Node fields a client may set (create and PATCH).
pub fn node_writable() -> Vec<String> {
    let mut v: Vec<String> = [
        "name",
        "driver",
        "driver_info",
        "instance_info",
        "properties",
        "extra",
        "network_data",
        "instance_uuid",
        "instance_name",
        "resource_class",
        "owner",
        "lessee",
        "description",
        "shard",
        "parent_node",
        "chassis_uuid",
        "automated_clean",
        "protected",
        "protected_reason",
        "retired",
        "retired_reason",
        "disable_power_off",
        "maintenance",
        "maintenance_reason",
        "conductor_group",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(NODE_INTERFACES.iter().map(|i| format!("{i}_interface")));
    v
}

fn bad_type(field: &str, want: &str, got: &Value) -> ApiError {
    ApiError::bad_request(format!("Invalid value for field {field}: expected {want}, got {got}"))
}

pub fn opt_string(field: &str, v: &Value) -> ApiResult<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(bad_type(field, "a string or null", other)),
    }
}

pub fn string(field: &str, v: &Value) -> ApiResult<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(bad_type(field, "a string", other)),
    }
}

pub fn object(field: &str, v: &Value) -> ApiResult<JsonObject> {
    match v {
        Value::Null => Ok(JsonObject::new()),
        Value::Object(m) => Ok(m.clone()),
        other => Err(bad_type(field, "an object", other)),
    }
}

pub fn boolean(field: &str, v: &Value) -> ApiResult<bool> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(bad_type(field, "a boolean", other)),
    }
}

pub fn opt_bool(field: &str, v: &Value) -> ApiResult<Option<bool>> {
    match v {
        Value::Null => Ok(None),
        other => boolean(field, other).map(Some),
    }
}

/// Ironic's node names: RFC 3986 unreserved characters, not a UUID.
pub fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        && Uuid::parse_str(name).is_err();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Cannot use name \"{name}\": a node name must be made of letters, digits and -._~ and must not be a UUID"
        )))
    }
}

/// Set one writable field of `node` from JSON.
pub fn set_node_field(node: &mut Node, field: &str, v: &Value) -> ApiResult<()> {
    if let Some(iface) = field.strip_suffix("_interface")
        && let Some(slot) = node.interfaces.get_mut(iface)
    {
        *slot = opt_string(field, v)?;
        return Ok(());
    }
    match field {
        "name" => {
            node.name = opt_string(field, v)?;
            if let Some(n) = &node.name {
                check_name(n)?;
            }
        }
        "driver" => node.driver = string(field, v)?,
        "driver_info" => node.driver_info = object(field, v)?,
        "instance_info" => node.instance_info = object(field, v)?,
        "properties" => node.properties = object(field, v)?,
        "extra" => node.extra = object(field, v)?,
        "network_data" => node.network_data = object(field, v)?,
        "instance_uuid" => {
            node.instance_uuid = opt_string(field, v)?;
            if let Some(u) = &node.instance_uuid
                && Uuid::parse_str(u).is_err()
            {
                return Err(ApiError::bad_request(format!("Expected a UUID for instance_uuid but received {u}.")));
            }
        }
        "instance_name" => node.instance_name = opt_string(field, v)?,
        "resource_class" => node.resource_class = opt_string(field, v)?,
        "owner" => node.owner = opt_string(field, v)?,
        "lessee" => node.lessee = opt_string(field, v)?,
        "description" => node.description = opt_string(field, v)?,
        "shard" => node.shard = opt_string(field, v)?,
        "parent_node" => node.parent_node = opt_string(field, v)?,
        "chassis_uuid" => node.chassis_uuid = opt_string(field, v)?,
        "automated_clean" => node.automated_clean = opt_bool(field, v)?,
        "protected" => node.protected = boolean(field, v)?,
        "protected_reason" => node.protected_reason = opt_string(field, v)?,
        "retired" => node.retired = boolean(field, v)?,
        "retired_reason" => node.retired_reason = opt_string(field, v)?,
        "disable_power_off" => node.disable_power_off = boolean(field, v)?,
        "maintenance" => node.maintenance = boolean(field, v)?,
        "maintenance_reason" => node.maintenance_reason = opt_string(field, v)?,
        "conductor_group" => {
            let g = opt_string(field, v)?.unwrap_or_default().to_ascii_lowercase();
            if g.len() > 255 || !g.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) {
                return Err(ApiError::bad_request(format!(
                    "Invalid conductor_group {g:?}: letters, digits and -._: only"
                )));
            }
            node.conductor_group = g;
        }
        other => {
            return Err(ApiError::bad_request(format!("'/{other}' is an internal attribute and can not be updated")));
        }
    }
    Ok(())
}

/// Cross-field rules, after all fields were set.
pub fn check_node(node: &mut Node, reason_given: bool) -> ApiResult<()> {
    if !node.protected {
        if reason_given && node.protected_reason.is_some() {
            return Err(ApiError::bad_request("Cannot set protected_reason without protected=True"));
        }
        node.protected_reason = None;
    }
    Ok(())
}

/// Apply a whole document's writable fields to `node`, refusing changes to
/// internal ones.
pub fn apply_document(node: &mut Node, before: &Map<String, Value>, after: &Map<String, Value>) -> ApiResult<()> {
    let writable = node_writable();
    for (k, v) in after {
        if before.get(k) == Some(v) {
            continue;
        }
        if !writable.iter().any(|w| w == k) {
            return Err(ApiError::bad_request(format!("'/{k}' is an internal attribute and can not be updated")));
        }
        set_node_field(node, k, v)?;
    }
    let reason_given = before.get("protected_reason") != after.get("protected_reason");
    check_node(node, reason_given)
}
