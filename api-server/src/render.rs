//! How nodes and ports look on the wire: Ironic's field set for the
//! negotiated microversion, links from the request's base URL, and secrets
//! masked on every read.

use ferric_common::model::{Allocation, Chassis, JsonObject, NODE_INTERFACES, Node, Port, Portgroup};
use ferric_common::states::ProvisionState;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::version::Version;

/// Node fields and the microversion that introduced each (Ironic's API).
pub const NODE_FIELDS: &[(&str, u32)] = &[
    ("uuid", 1),
    ("instance_uuid", 1),
    ("power_state", 1),
    ("target_power_state", 1),
    ("provision_state", 1),
    ("target_provision_state", 1),
    ("maintenance", 1),
    ("maintenance_reason", 1),
    ("last_error", 1),
    ("console_enabled", 1),
    ("driver", 1),
    ("driver_info", 1),
    ("driver_internal_info", 1),
    ("extra", 1),
    ("instance_info", 1),
    ("properties", 1),
    ("chassis_uuid", 1),
    ("created_at", 1),
    ("updated_at", 1),
    ("provision_updated_at", 1),
    ("reservation", 1),
    ("links", 1),
    ("ports", 1),
    ("states", 1),
    ("name", 5),
    ("inspection_finished_at", 6),
    ("inspection_started_at", 6),
    ("clean_step", 7),
    ("raid_config", 12),
    ("target_raid_config", 12),
    ("network_interface", 20),
    ("resource_class", 21),
    ("portgroups", 24),
    ("boot_interface", 31),
    ("console_interface", 31),
    ("deploy_interface", 31),
    ("inspect_interface", 31),
    ("management_interface", 31),
    ("power_interface", 31),
    ("raid_interface", 31),
    ("vendor_interface", 31),
    ("storage_interface", 33),
    ("volume", 33),
    ("traits", 37),
    ("rescue_interface", 38),
    ("bios_interface", 40),
    ("fault", 42),
    ("deploy_step", 44),
    ("conductor_group", 46),
    ("automated_clean", 47),
    ("protected", 48),
    ("protected_reason", 48),
    ("conductor", 49),
    ("owner", 50),
    ("description", 51),
    ("allocation_uuid", 52),
    ("retired", 61),
    ("retired_reason", 61),
    ("lessee", 65),
    ("network_data", 66),
    ("boot_mode", 75),
    ("secure_boot", 75),
    ("shard", 82),
    ("parent_node", 83),
    ("firmware_interface", 86),
    ("service_step", 89),
    ("disable_power_off", 95),
    ("instance_name", 104),
    ("health", 109),
];

pub const NODE_LIST_FIELDS: &[&str] =
    &["uuid", "instance_uuid", "maintenance", "power_state", "provision_state", "name", "links"];

pub const PORT_FIELDS: &[(&str, u32)] = &[
    ("uuid", 1),
    ("address", 1),
    ("node_uuid", 1),
    ("extra", 1),
    ("created_at", 1),
    ("updated_at", 1),
    ("links", 1),
    ("internal_info", 18),
    ("local_link_connection", 19),
    ("pxe_enabled", 19),
    ("portgroup_uuid", 24),
    ("physical_network", 34),
    ("is_smartnic", 53),
    ("name", 88),
];

pub const PORT_LIST_FIELDS: &[&str] = &["uuid", "address", "links"];

/// Portgroup fields (the resource itself is 1.23).
pub const PORTGROUP_FIELDS: &[(&str, u32)] = &[
    ("uuid", 23),
    ("address", 23),
    ("name", 23),
    ("node_uuid", 23),
    ("standalone_ports_supported", 23),
    ("internal_info", 23),
    ("extra", 23),
    ("created_at", 23),
    ("updated_at", 23),
    ("links", 23),
    ("ports", 23),
    ("mode", 26),
    ("properties", 26),
    ("physical_network", 102),
    ("category", 103),
];

pub const PORTGROUP_LIST_FIELDS: &[&str] = &["uuid", "address", "name", "links"];

pub const CHASSIS_FIELDS: &[(&str, u32)] =
    &[("uuid", 1), ("description", 1), ("extra", 1), ("created_at", 1), ("updated_at", 1), ("links", 1), ("nodes", 1)];

pub const CHASSIS_LIST_FIELDS: &[&str] = &["uuid", "description", "links"];

/// Allocation fields (the resource itself is 1.52); a list shows them all.
pub const ALLOCATION_FIELDS: &[(&str, u32)] = &[
    ("uuid", 52),
    ("name", 52),
    ("node_uuid", 52),
    ("state", 52),
    ("last_error", 52),
    ("resource_class", 52),
    ("traits", 52),
    ("candidate_nodes", 52),
    ("extra", 52),
    ("created_at", 52),
    ("updated_at", 52),
    ("links", 52),
    ("owner", 60),
];

pub const CONDUCTOR_FIELDS: &[(&str, u32)] = &[
    ("hostname", 49),
    ("conductor_group", 49),
    ("alive", 49),
    ("drivers", 49),
    ("created_at", 49),
    ("updated_at", 49),
    ("links", 49),
];

pub const CONDUCTOR_LIST_FIELDS: &[&str] = &["hostname", "conductor_group", "alive", "links"];

/// Driver fields, which `fields=` selects from 1.77 on.
pub fn driver_fields() -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> =
        ["name", "hosts", "type", "links", "properties"].iter().map(|f| (f.to_string(), 1)).collect();
    for iface in NODE_INTERFACES {
        let min = match iface {
            "storage" => 33,
            "rescue" => 38,
            "bios" => 40,
            "firmware" => 86,
            _ => 30,
        };
        out.push((format!("default_{iface}_interface"), min));
        out.push((format!("enabled_{iface}_interfaces"), min));
    }
    out
}

/// Secrets are masked by the one list and function every process uses
/// (`ferric_common::secrets`): in nested objects and arrays too.
pub use ferric_common::secrets::{DRIVER_INFO_SECRET_KEYS, INSTANCE_INFO_SECRET_KEYS, MASK, mask};

/// `driver_internal_info` as clients see it: secrets masked, and the agent
/// session's nonce (from which conductors derive the token) shown as
/// Ironic shows a stored token, `agent_secret_token: "******"`.
pub fn internal_info_view(obj: &JsonObject) -> JsonObject {
    let mut out = mask(obj, &[]);
    if out.remove(ferric_deploy_token::NONCE_KEY).is_some() {
        out.insert(ferric_deploy_token::SHOWN_KEY.into(), Value::String(MASK.into()));
    }
    out
}

/// The names `ferric_deploy::token` keeps the session under (the API does
/// not link the drivers, DESIGN.md §2).
mod ferric_deploy_token {
    pub const NONCE_KEY: &str = "agent_token_nonce";
    pub const SHOWN_KEY: &str = "agent_secret_token";
}

pub fn link_pair(base: &str, kind: &str, id: &str) -> Value {
    let suffix = if id.is_empty() { String::new() } else { format!("/{id}") };
    json!([
        {"href": format!("{base}/v1/{kind}{suffix}"), "rel": "self"},
        {"href": format!("{base}/{kind}{suffix}"), "rel": "bookmark"},
    ])
}

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, false))).unwrap_or(Value::Null)
}

fn state_value(s: Option<ProvisionState>, v: Version) -> Value {
    s.and_then(|s| s.render(v.0)).map(|s| Value::String(s.into())).unwrap_or(Value::Null)
}

/// The node with every field (unmasked, unfiltered): the document JSON
/// Patch operates on.
pub fn node_document(n: &Node, base: &str, conductor: Option<&str>) -> Map<String, Value> {
    let id = n.uuid.to_string();
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("uuid", json!(id));
    put("name", json!(n.name));
    put("driver", json!(n.driver));
    for iface in NODE_INTERFACES {
        put(&format!("{iface}_interface"), json!(n.interfaces.get(iface).cloned().flatten()));
    }
    put("provision_state", json!(n.provision_state.as_str()));
    put("target_provision_state", json!(n.target_provision_state.map(|s| s.as_str())));
    put("provision_updated_at", ts(n.provision_updated_at));
    put("power_state", json!(n.power_state));
    put("target_power_state", json!(n.target_power_state));
    put("maintenance", json!(n.maintenance));
    put("maintenance_reason", json!(n.maintenance_reason));
    put("fault", json!(n.fault));
    put("reservation", json!(n.reservation));
    put("conductor_group", json!(n.conductor_group));
    put("conductor", json!(conductor));
    put("driver_info", Value::Object(n.driver_info.clone()));
    put("driver_internal_info", Value::Object(n.driver_internal_info.clone()));
    put("instance_info", Value::Object(n.instance_info.clone()));
    put("properties", Value::Object(n.properties.clone()));
    put("extra", Value::Object(n.extra.clone()));
    put("network_data", Value::Object(n.network_data.clone()));
    put("instance_uuid", json!(n.instance_uuid));
    put("instance_name", json!(n.instance_name));
    put("last_error", json!(n.last_error));
    put("resource_class", json!(n.resource_class));
    put("owner", json!(n.owner));
    put("lessee", json!(n.lessee));
    put("description", json!(n.description));
    put("shard", json!(n.shard));
    put("parent_node", json!(n.parent_node));
    put("chassis_uuid", json!(n.chassis_uuid));
    put("automated_clean", json!(n.automated_clean));
    put("protected", json!(n.protected));
    put("protected_reason", json!(n.protected_reason));
    put("retired", json!(n.retired));
    put("retired_reason", json!(n.retired_reason));
    put("disable_power_off", json!(n.disable_power_off));
    put("console_enabled", json!(n.console_enabled));
    put("boot_mode", json!(n.boot_mode));
    put("secure_boot", json!(n.secure_boot));
    put("traits", json!(n.traits));
    put("clean_step", Value::Object(n.clean_step.clone()));
    put("deploy_step", Value::Object(n.deploy_step.clone()));
    put("service_step", Value::Object(n.service_step.clone()));
    put("raid_config", Value::Object(n.raid_config.clone()));
    put("target_raid_config", Value::Object(n.target_raid_config.clone()));
    put("inspection_started_at", Value::Null);
    put("inspection_finished_at", Value::Null);
    put("allocation_uuid", json!(n.allocation_uuid));
    put("health", Value::Null);
    put("created_at", ts(Some(n.created_at)));
    put("updated_at", ts(n.updated_at));
    put("links", link_pair(base, "nodes", &id));
    put("ports", link_pair(base, "nodes", &format!("{id}/ports")));
    put("states", link_pair(base, "nodes", &format!("{id}/states")));
    put("portgroups", link_pair(base, "nodes", &format!("{id}/portgroups")));
    put("volume", link_pair(base, "nodes", &format!("{id}/volume")));
    m
}

/// Check a `fields=` list against what the version offers, as Ironic
/// does: not before 1.8 (406), a field of a later version (406), a field
/// the resource does not have (400 naming it).
pub fn parse_fields(raw: Option<&str>, table: &[(&str, u32)], v: Version) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    if !v.at_least(8) {
        return Err(ApiError::not_acceptable("The fields parameter is not supported at this API version (needs 1.8)."));
    }
    let fields: Vec<String> = raw.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let bad: Vec<&str> = fields.iter().filter(|f| !table.iter().any(|(k, _)| k == f)).map(String::as_str).collect();
    if !bad.is_empty() {
        return Err(ApiError::bad_request(format!("Field(s) \"{}\" are not valid", bad.join(", "))));
    }
    if let Some((field, min)) = fields.iter().find_map(|f| table.iter().find(|(k, min)| k == f && !v.at_least(*min))) {
        return Err(ApiError::too_old(*min, &format!("the field {field}")));
    }
    Ok(Some(fields))
}

/// Keep only the fields the version has (and, if given, the requested ones).
pub fn select(
    mut doc: Map<String, Value>,
    table: &[(&str, u32)],
    v: Version,
    only: Option<&[String]>,
    default: Option<&[&str]>,
) -> Value {
    let mut out = Map::new();
    for (k, min) in table {
        if !v.at_least(*min) {
            continue;
        }
        let wanted = match (only, default) {
            (Some(f), _) => f.iter().any(|x| x == k) || *k == "links",
            (None, Some(d)) => d.contains(k),
            (None, None) => true,
        };
        // moved, not cloned: a node's free-form objects are most of its bytes
        if wanted && let Some(val) = doc.remove(*k) {
            out.insert(k.to_string(), val);
        }
    }
    Value::Object(out)
}

/// A node as a client sees it: masked, versioned, optionally narrowed.
pub fn node_view(
    n: &Node,
    base: &str,
    conductor: Option<&str>,
    v: Version,
    fields: Option<&[String]>,
    list_item: bool,
) -> Value {
    let mut doc = node_document(n, base, conductor);
    doc.insert("driver_info".into(), Value::Object(mask(&n.driver_info, DRIVER_INFO_SECRET_KEYS)));
    doc.insert("driver_internal_info".into(), Value::Object(internal_info_view(&n.driver_internal_info)));
    doc.insert("instance_info".into(), Value::Object(mask(&n.instance_info, INSTANCE_INFO_SECRET_KEYS)));
    doc.insert("provision_state".into(), state_value(Some(n.provision_state), v));
    doc.insert("target_provision_state".into(), state_value(n.target_provision_state, v));
    select(doc, NODE_FIELDS, v, fields, list_item.then_some(NODE_LIST_FIELDS))
}

pub fn port_document(p: &Port, base: &str) -> Map<String, Value> {
    let id = p.uuid.to_string();
    let mut m = Map::new();
    m.insert("uuid".into(), json!(id));
    m.insert("address".into(), json!(p.address));
    m.insert("node_uuid".into(), json!(p.node_uuid.to_string()));
    m.insert("name".into(), json!(p.name));
    m.insert("pxe_enabled".into(), json!(p.pxe_enabled));
    m.insert("local_link_connection".into(), Value::Object(p.local_link_connection.clone()));
    m.insert("physical_network".into(), json!(p.physical_network));
    m.insert("extra".into(), Value::Object(p.extra.clone()));
    m.insert("internal_info".into(), Value::Object(p.internal_info.clone()));
    m.insert("is_smartnic".into(), json!(p.is_smartnic));
    m.insert("portgroup_uuid".into(), json!(p.portgroup_uuid));
    m.insert("created_at".into(), ts(Some(p.created_at)));
    m.insert("updated_at".into(), ts(p.updated_at));
    m.insert("links".into(), link_pair(base, "ports", &id));
    m
}

pub fn port_view(p: &Port, base: &str, v: Version, fields: Option<&[String]>, list_item: bool) -> Value {
    select(port_document(p, base), PORT_FIELDS, v, fields, list_item.then_some(PORT_LIST_FIELDS))
}

pub fn portgroup_document(p: &Portgroup, base: &str) -> Map<String, Value> {
    let id = p.uuid.to_string();
    let mut m = Map::new();
    m.insert("uuid".into(), json!(id));
    m.insert("address".into(), json!(p.address));
    m.insert("name".into(), json!(p.name));
    m.insert("node_uuid".into(), json!(p.node_uuid.to_string()));
    m.insert("standalone_ports_supported".into(), json!(p.standalone_ports_supported));
    m.insert("internal_info".into(), Value::Object(p.internal_info.clone()));
    m.insert("extra".into(), Value::Object(p.extra.clone()));
    m.insert("mode".into(), json!(p.mode));
    m.insert("properties".into(), Value::Object(p.properties.clone()));
    m.insert("physical_network".into(), json!(p.physical_network));
    m.insert("category".into(), json!(p.category));
    m.insert("created_at".into(), ts(Some(p.created_at)));
    m.insert("updated_at".into(), ts(p.updated_at));
    m.insert("links".into(), link_pair(base, "portgroups", &id));
    m.insert("ports".into(), link_pair(base, "portgroups", &format!("{id}/ports")));
    m
}

pub fn portgroup_view(p: &Portgroup, base: &str, v: Version, fields: Option<&[String]>, list_item: bool) -> Value {
    select(portgroup_document(p, base), PORTGROUP_FIELDS, v, fields, list_item.then_some(PORTGROUP_LIST_FIELDS))
}

pub fn chassis_document(c: &Chassis, base: &str) -> Map<String, Value> {
    let id = c.uuid.to_string();
    let mut m = Map::new();
    m.insert("uuid".into(), json!(id));
    m.insert("description".into(), json!(c.description));
    m.insert("extra".into(), Value::Object(c.extra.clone()));
    m.insert("created_at".into(), ts(Some(c.created_at)));
    m.insert("updated_at".into(), ts(c.updated_at));
    m.insert("links".into(), link_pair(base, "chassis", &id));
    m.insert("nodes".into(), link_pair(base, "chassis", &format!("{id}/nodes")));
    m
}

pub fn chassis_view(c: &Chassis, base: &str, v: Version, fields: Option<&[String]>, list_item: bool) -> Value {
    select(chassis_document(c, base), CHASSIS_FIELDS, v, fields, list_item.then_some(CHASSIS_LIST_FIELDS))
}

pub fn allocation_document(a: &Allocation, base: &str) -> Map<String, Value> {
    let id = a.uuid.to_string();
    let mut m = Map::new();
    m.insert("uuid".into(), json!(id));
    m.insert("name".into(), json!(a.name));
    m.insert("node_uuid".into(), json!(a.node_uuid.map(|u| u.to_string())));
    m.insert("state".into(), json!(a.state.as_str()));
    m.insert("last_error".into(), json!(a.last_error));
    m.insert("resource_class".into(), json!(a.resource_class));
    m.insert("traits".into(), json!(a.traits));
    let candidates: Vec<String> = a.candidate_nodes.iter().map(|u| u.to_string()).collect();
    m.insert("candidate_nodes".into(), json!(candidates));
    m.insert("extra".into(), Value::Object(a.extra.clone()));
    m.insert("owner".into(), json!(a.owner));
    m.insert("created_at".into(), ts(Some(a.created_at)));
    m.insert("updated_at".into(), ts(a.updated_at));
    m.insert("links".into(), link_pair(base, "allocations", &id));
    m
}

pub fn allocation_view(a: &Allocation, base: &str, v: Version, fields: Option<&[String]>) -> Value {
    select(allocation_document(a, base), ALLOCATION_FIELDS, v, fields, None)
}

/// A node history entry as Ironic shows it (1.78): `uuid, created_at,
/// severity, event` and a self link; with `detail` also `event_type,
/// conductor, user` (and from 1.115 `state, target_provision_state,
/// duration_seconds`, which Ferric does not record: null). The list
/// shortens an event past 255 characters, as Ironic's does.
pub fn history_view(e: &ferric_common::db::HistoryEntry, base: &str, v: Version, detail: bool) -> Value {
    let id = e.uuid().to_string();
    // failures are errors; everything else is information
    let severity = if matches!(e.event.as_str(), "fail" | "power_lost") { "ERROR" } else { "INFO" };
    let mut event = if e.detail.is_empty() { e.event.clone() } else { format!("{}: {}", e.event, e.detail) };
    if !detail && event.chars().count() > 255 {
        event = event.chars().take(251).collect::<String>() + "...";
    }
    let mut m = Map::new();
    m.insert("uuid".into(), json!(id));
    m.insert("created_at".into(), ts(Some(e.created_at)));
    m.insert("severity".into(), json!(severity));
    m.insert("event".into(), json!(event));
    if detail {
        m.insert("event_type".into(), json!(e.event));
        m.insert("conductor".into(), json!(e.conductor));
        m.insert("user".into(), Value::Null);
        if v.at_least(115) {
            m.insert("state".into(), Value::Null);
            m.insert("target_provision_state".into(), Value::Null);
            m.insert("duration_seconds".into(), Value::Null);
        }
    }
    m.insert("links".into(), json!([{"href": format!("{base}/v1/nodes/{}/history/{id}", e.node_uuid), "rel": "self"}]));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_recursively() {
        let o: JsonObject = serde_json::from_value(json!({
            "redfish_password": "p", "redfish_username": "u", "nested": {"agent_secret_token": "t", "x": 1},
            "snmp_auth_key": "k"
        }))
        .unwrap();
        let m = mask(&o, &["snmp_auth_key"]);
        assert_eq!(m["redfish_password"], MASK);
        assert_eq!(m["redfish_username"], "u");
        assert_eq!(m["nested"]["agent_secret_token"], MASK);
        assert_eq!(m["nested"]["x"], 1);
        assert_eq!(m["snmp_auth_key"], MASK);
    }

    #[test]
    fn node_view_hides_fields_newer_than_the_version() {
        let n = Node::new(uuid::Uuid::new_v4(), "fake-hardware", ProvisionState::Available);
        let v1 = node_view(&n, "http://h", None, Version(1), None, false);
        assert!(v1.get("name").is_none());
        assert_eq!(v1["provision_state"], Value::Null, "available renders as null below 1.2");
        let latest = node_view(&n, "http://h", None, Version(115), None, false);
        assert_eq!(latest.as_object().unwrap().len(), NODE_FIELDS.len());
        assert_eq!(latest["provision_state"], "available");
        let list = node_view(&n, "http://h", None, Version(115), None, true);
        assert_eq!(list.as_object().unwrap().len(), NODE_LIST_FIELDS.len());
    }
}
