//! The OpenAPI 3.0 document of the REST API, `api-server/openapi.json`,
//! served as it is at `GET /openapi.json` (a path Ironic does not have).
//!
//! It cannot drift from the code unnoticed: this module's tests check that
//! the document lists exactly the `(method, path)` pairs the router serves
//! ([`crate::routes`], built from the same declarations as the router), that
//! every path parameter is declared and every `$ref` resolves, and that the
//! field lists, sort keys, states, verbs, body keys and version range the
//! handlers use are the document's properties and enums.
//! `tests/tests/openapi.rs` fuzzes a real all-in-one with it (schemathesis).

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub const DOCUMENT: &str = include_str!("../openapi.json");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ferric_common::db::{
        ALLOCATION_SORT_KEYS, CHASSIS_SORT_KEYS, NODE_SORT_KEYS, PORT_SORT_KEYS, PORTGROUP_SORT_KEYS,
    };
    use ferric_common::model::{NODE_INTERFACES, normalize_mac};
    use ferric_common::states::{ProvisionState, Verb};
    use serde_json::Value;

    use super::DOCUMENT;
    use crate::render::{
        ALLOCATION_FIELDS, CHASSIS_FIELDS, CONDUCTOR_FIELDS, NODE_FIELDS, PORT_FIELDS, PORTGROUP_FIELDS,
    };
    use crate::version::{MAX_MINOR, MIN_MINOR};

    const OPERATIONS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// `v`, or what its local `$ref` points at.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
                resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("{r} points at nothing")))
            }
            None => v,
        }
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        doc.pointer(&format!("/components/schemas/{name}")).unwrap_or_else(|| panic!("no schema {name}"))
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{v} is not a list"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap_or_else(|| panic!("{v} is not an object")).keys().cloned().collect()
    }

    fn set<S: ToString>(items: impl IntoIterator<Item = S>) -> BTreeSet<String> {
        items.into_iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let doc = doc();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.0.")), "an OpenAPI 3.0 document");
        let routes = crate::routes();
        let served: BTreeSet<(String, String)> =
            routes.served().iter().map(|(m, p)| (m.as_str().to_string(), p.clone())).collect();
        assert_eq!(served.len(), routes.served().len(), "a route is declared twice");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let item = resolve(&doc, item);
            let ops: Vec<&str> = OPERATIONS.into_iter().filter(|m| item.get(*m).is_some()).collect();
            assert!(!ops.is_empty(), "{path} documents no operation");
            for m in ops {
                documented.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.json: {undocumented:?}\nin openapi.json but not served: {unserved:?}"
        );
    }

    #[test]
    fn public_operations_take_no_credentials_and_the_others_document_401_and_403() {
        let doc = doc();
        for scheme in ["httpBasic", "keystoneToken"] {
            assert!(doc["components"]["securitySchemes"].get(scheme).is_some(), "{scheme} is declared");
        }
        let mut public = 0;
        for (m, path) in crate::routes().served() {
            let item = resolve(&doc, &doc["paths"][path.as_str()]);
            let op = &item[m.as_str().to_ascii_lowercase().as_str()];
            // the middleware sees concrete paths: fill the parameters in
            let concrete = path.replace(['{', '}'], "");
            if crate::auth::is_public(m, &concrete, None) {
                public += 1;
                assert_eq!(op["security"], serde_json::json!([]), "{m} {path} is public: security []");
                assert!(op["responses"].get("401").is_none(), "{m} {path} is public: no 401");
            } else {
                assert!(op.get("security").is_none(), "{m} {path} takes the document's security");
                for code in ["401", "403"] {
                    assert!(op["responses"].get(code).is_some(), "{m} {path} documents {code}");
                }
            }
        }
        assert_eq!(public, 14, "the public routes are the few the auth module names");
    }

    #[test]
    fn every_path_parameter_is_declared_and_every_reference_resolves() {
        let doc = doc();
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            resolve(&doc, &serde_json::json!({ "$ref": r }));
        }
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let item = resolve(&doc, item);
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(String::from)
                .collect();
            for m in OPERATIONS.into_iter().filter(|m| item.get(*m).is_some()) {
                let params = item[m]["parameters"].as_array().cloned().unwrap_or_default();
                let declared: BTreeSet<String> = params
                    .iter()
                    .map(|p| resolve(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("a parameter name").to_string())
                    .collect();
                assert_eq!(declared, in_path, "{m} {path}: path parameters");
                assert!(item[m]["responses"].as_object().is_some_and(|r| !r.is_empty()), "{m} {path}: responses");
            }
        }
    }

    #[test]
    fn resources_have_the_fields_the_code_renders() {
        let doc = doc();
        for (name, table, list_param) in [
            ("Node", NODE_FIELDS, "nodeFields"),
            ("Port", PORT_FIELDS, "portFields"),
            ("Portgroup", PORTGROUP_FIELDS, "portgroupFields"),
            ("Chassis", CHASSIS_FIELDS, "chassisFields"),
            ("Allocation", ALLOCATION_FIELDS, "allocationFields"),
        ] {
            let props = &schema(&doc, name)["properties"];
            assert_eq!(keys(props), set(table.iter().map(|(f, _)| f)), "{name} properties");
            for (field, min) in table {
                let documented = props[*field].get("x-min-version").and_then(Value::as_str);
                let expected = (*min > 1).then(|| format!("1.{min}"));
                assert_eq!(documented, expected.as_deref(), "{name}.{field}: the version that introduced it");
            }
            let param = &doc["components"]["parameters"][list_param];
            assert_eq!(strings(&param["schema"]["items"]["enum"]), table.iter().map(|(f, _)| *f).collect::<Vec<_>>());
        }
        let params = &doc["components"]["parameters"];
        assert_eq!(strings(&params["nodeSortKey"]["schema"]["enum"]), NODE_SORT_KEYS);
        assert_eq!(strings(&params["portSortKey"]["schema"]["enum"]), PORT_SORT_KEYS);
        for (op, keys) in [
            ("/v1/portgroups", PORTGROUP_SORT_KEYS),
            ("/v1/chassis", CHASSIS_SORT_KEYS),
            ("/v1/allocations", ALLOCATION_SORT_KEYS),
        ] {
            let list = doc["paths"][op]["get"]["parameters"].as_array().expect("parameters");
            let sort = list.iter().find(|p| p["name"] == "sort_key").expect("a sort_key parameter");
            assert_eq!(strings(&sort["schema"]["enum"]), keys, "{op} sort keys");
        }
        let conductor: Vec<&str> = CONDUCTOR_FIELDS.iter().map(|(f, _)| *f).collect();
        assert_eq!(strings(&params["conductorFields"]["schema"]["items"]["enum"]), conductor);
        let driver: Vec<String> = crate::render::driver_fields().into_iter().map(|(f, _)| f).collect();
        assert_eq!(strings(&params["driverFields"]["schema"]["items"]["enum"]), driver);
        let driver = schema(&doc, "Driver");
        let interfaces: BTreeSet<String> = keys(&driver["properties"])
            .into_iter()
            .filter_map(|k| k.strip_prefix("default_").and_then(|k| k.strip_suffix("_interface")).map(String::from))
            .collect();
        assert_eq!(interfaces, set(NODE_INTERFACES));
    }

    #[test]
    fn request_bodies_take_what_the_handlers_take() {
        let doc = doc();
        let mut node_create = set(crate::fields::node_writable());
        // maintenance has its own endpoint; a new node is never in it
        node_create.remove("maintenance");
        node_create.remove("maintenance_reason");
        node_create.insert("uuid".into());
        assert_eq!(keys(&schema(&doc, "NodeCreate")["properties"]), node_create);
        assert_eq!(
            strings(&schema(&doc, "NodeCreate")["properties"]["driver"]["enum"]),
            ferric_deploy::hardware::HARDWARE_TYPES
        );
        let mut port_create = set(crate::ports::PORT_WRITABLE);
        port_create.extend(set(["uuid", "node_ident"]));
        assert_eq!(keys(&schema(&doc, "PortCreate")["properties"]), port_create);
        let provision = schema(&doc, "ProvisionRequest");
        assert_eq!(keys(&provision["properties"]), set(crate::nodes::PROVISION_KEYS));
        assert_eq!(strings(&provision["properties"]["target"]["enum"]), Verb::ALL.map(Verb::as_str));
        let power = schema(&doc, "PowerRequest");
        assert_eq!(keys(&power["properties"]), set(crate::nodes::POWER_KEYS));
        assert_eq!(strings(&power["properties"]["target"]["enum"]), crate::nodes::POWER_TARGETS);
        assert_eq!(keys(&schema(&doc, "Heartbeat")["properties"]), set(crate::root::HEARTBEAT_KEYS));
        assert_eq!(keys(&schema(&doc, "AllocationCreate")["properties"]), set(crate::allocations::CREATE_KEYS));
        let portgroup = crate::portgroups::WRITABLE.iter().map(|(f, _)| f);
        assert_eq!(keys(&schema(&doc, "PortgroupCreate")["properties"]), set(portgroup));
        assert_eq!(strings(&schema(&doc, "ProvisionState")["enum"]), ProvisionState::ALL.map(ProvisionState::as_str));
    }

    fn pattern(v: &Value) -> regex::Regex {
        regex::Regex::new(v["pattern"].as_str().unwrap_or_else(|| panic!("no pattern in {v}"))).expect("a regex")
    }

    #[test]
    fn versions_and_formats_are_the_codes() {
        let doc = doc();
        assert_eq!(doc["info"]["version"], format!("1.{MAX_MINOR}"));
        let headers = &doc["components"]["headers"];
        assert_eq!(strings(&headers["MinimumVersion"]["schema"]["enum"]), [format!("1.{MIN_MINOR}")]);
        assert_eq!(strings(&headers["MaximumVersion"]["schema"]["enum"]), [format!("1.{MAX_MINOR}")]);
        let params = &doc["components"]["parameters"];
        let legacy = pattern(&params["ApiVersion"]["schema"]);
        let standard = pattern(&params["StandardApiVersion"]["schema"]);
        for minor in 0..=MAX_MINOR + 5 {
            let supported = (MIN_MINOR..=MAX_MINOR).contains(&minor);
            let v = format!("1.{minor}");
            assert_eq!(legacy.is_match(&v), supported, "{v}");
            assert_eq!(standard.is_match(&format!("baremetal {v}")), supported, "baremetal {v}");
            assert_eq!(crate::version::negotiate(&version_header(&v)).is_ok(), supported, "{v}");
        }
        assert!(legacy.is_match("latest") && standard.is_match("baremetal latest"));
        let mac = pattern(schema(&doc, "MacAddress"));
        for m in ["52:54:00:AA:bb:01", "52-54-00-aa-bb-01", "52:54:00:aa:bb", "52:54:00:aa:bb:0g", "5254.00aa.bb01"] {
            assert_eq!(mac.is_match(m), normalize_mac(m).is_some(), "{m}");
        }
        let name = pattern(&schema(&doc, "NodeCreate")["properties"]["name"]);
        for n in ["n1", "rack-1.node_2~a", "a b", "ü", "", &"x".repeat(256)] {
            assert_eq!(name.is_match(n), crate::fields::check_name(n).is_ok(), "{n:?}");
        }
    }

    fn version_header(v: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-openstack-ironic-api-version", v.parse().expect("a header value"));
        h
    }
}
