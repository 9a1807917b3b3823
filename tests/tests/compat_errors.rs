//! Bad input gets the status and Ironic error body a client expects, and
//! the protocol details clients rely on (versions, headers, paging,
//! fields, masking, locks) hold. Raw HTTP against a real all-in-one.

use std::time::Duration;

use ferric_tests::{Ferric, Postgres, error_body, http};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Api {
    base: String,
    c: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        version: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut req = self.c.request(method, format!("{}{path}", self.base));
        if !version.is_empty() {
            req = req.header("X-OpenStack-Ironic-API-Version", version);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.expect("body"))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, _, b) = self.call(method.clone(), path, "1.115", body).await;
        assert!(s.is_success(), "{method} {path} -> {s}: {b}");
        if b.is_empty() { Value::Null } else { serde_json::from_str(&b).expect("json") }
    }

    /// Expect an application error: status and a faultstring containing `text`.
    async fn fault(
        &self,
        method: Method,
        path: &str,
        version: &str,
        body: Option<Value>,
        status: u16,
        text: &str,
    ) -> Value {
        let (s, h, b) = self.call(method.clone(), path, version, body).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {b}");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert!(h.contains_key("x-openstack-ironic-api-maximum-version"), "errors carry the version headers");
        let e = error_body(&b);
        let msg = e
            .get("faultstring")
            .or(e.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no message in {e}"));
        assert!(msg.contains(text), "{method} {path}: expected {text:?} in {msg:?}");
        e
    }

    async fn wait_state(&self, node: &str, state: &str) {
        let start = std::time::Instant::now();
        loop {
            let n = self.ok(Method::GET, &format!("/v1/nodes/{node}"), None).await;
            if n["provision_state"] == state {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{node} stuck in {}", n["provision_state"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_protocol_details() {
    // short lock retries so the 409 path is quick
    let ferric = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__LOCK_ATTEMPTS", "2"), ("FERRIC_CONDUCTOR__LOCK_RETRY_INTERVAL_MS", "100")],
    );
    let api = Api { base: ferric.endpoint.clone(), c: http() };
    use Method as M;

    // --- versions
    let (s, h, b) = api.call(M::GET, "/v1/nodes", "1.200", None).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(h["x-openstack-ironic-api-minimum-version"], "1.1");
    assert_eq!(h["x-openstack-ironic-api-maximum-version"], "1.115");
    assert!(!h.contains_key("x-openstack-ironic-api-version"), "a 406 has no negotiated version");
    let e = error_body(&b);
    assert_eq!(e["code"], 406);
    assert!(e["description"].as_str().unwrap().contains("The supported version range is: [1.1, 1.115]."));
    api.fault(M::GET, "/v1/nodes", "2.1", None, 406, "Mutually exclusive versions requested").await;
    api.fault(M::GET, "/v1/nodes", "1.abc", None, 406, "Invalid value for X-OpenStack-Ironic-API-Version header").await;
    let (s, h, _) = api.call(M::GET, "/v1", "", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-openstack-ironic-api-version"], "1.1", "no header means 1.1");
    assert_eq!(h["x-openstack-ironic-api-maximum-version"], "1.115");
    assert!(h["openstack-request-id"].to_str().unwrap().starts_with("req-"));
    let (s, _, _) = api.call(M::POST, "/v1", "", Some(json!({}))).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    // every path answers a method it does not take with Ironic's 405
    let no = "could not comply with the request";
    api.fault(M::POST, "/v1/nodes/n1", "1.115", Some(json!({})), 405, no).await;
    api.fault(M::PUT, "/ports", "1.115", Some(json!({})), 405, no).await;
    api.fault(M::OPTIONS, "/v1/nodes/n1/vendor_passthru/x", "1.115", None, 405, no).await;
    let (s, _, b) = api.call(M::GET, "/v1/nope", "1.115", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_body(&b), json!({"code": 404, "title": "Not Found", "description": ""}));
    let root = api.ok(M::GET, "/", None).await;
    assert_eq!(root["default_version"]["version"], "1.115");

    // --- node create
    api.fault(M::POST, "/v1/nodes", "1.115", Some(json!({"driver": "fake-hardware", "bogus": 1})), 400, "'bogus'")
        .await;
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.115",
        Some(json!({"driver": "fake-hardware", "uuid": "zzz"})),
        400,
        "Expected a UUID but received zzz.",
    )
    .await;
    api.fault(M::POST, "/v1/nodes", "1.115", Some(json!({"name": "x"})), 400, "'driver'").await;
    api.fault(M::POST, "/v1/nodes", "1.115", Some(json!({"driver": "ipmi"})), 400, "No valid host was found").await;
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.115",
        Some(json!({"driver": "fake-hardware", "deploy_interface": "anaconda"})),
        400,
        "Valid interfaces are fake",
    )
    .await;
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.115",
        Some(json!({"driver": "fake-hardware", "driver_info": "x"})),
        400,
        "driver_info",
    )
    .await;
    api.fault(M::POST, "/v1/nodes", "1.115", Some(json!({"driver": "fake-hardware", "name": "a b"})), 400, "a b").await;
    let (s, _, b) = api.call(M::POST, "/v1/nodes", "1.115", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, h, b) = api
        .call(M::POST, "/v1/nodes", "1.115", Some(json!({"driver": "fake-hardware", "name": "n1", "driver_info": {"fake_password": "pw", "fake_step_delay_ms": 0}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let n1: Value = serde_json::from_str(&b).unwrap();
    let uuid = n1["uuid"].as_str().unwrap().to_string();
    assert_eq!(h["location"].to_str().unwrap(), format!("{}/v1/nodes/{uuid}", ferric.endpoint));
    assert_eq!(n1["driver_info"]["fake_password"], "******");
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.115",
        Some(json!({"driver": "fake-hardware", "name": "n1"})),
        409,
        "A node with name n1 already exists.",
    )
    .await;
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.115",
        Some(json!({"driver": "fake-hardware", "uuid": uuid})),
        409,
        "already exists",
    )
    .await;
    // a field newer than the request's version may not be set (Ironic's
    // reject_fields_in_newer_versions), on create or by a patch; a null name
    // and an empty conductor group count as unset, a removal is no setting
    api.fault(M::POST, "/v1/nodes", "1.4", Some(json!({"driver": "fake-hardware", "name": "old"})), 406, "1.5").await;
    api.fault(
        M::POST,
        "/v1/nodes",
        "1.45",
        Some(json!({"driver": "fake-hardware", "conductor_group": "g"})),
        406,
        "1.46",
    )
    .await;
    let (s, _, b) = api
        .call(
            M::POST,
            "/v1/nodes",
            "1.4",
            Some(json!({"driver": "fake-hardware", "name": null, "conductor_group": ""})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let unset: Value = serde_json::from_str(&b).unwrap();
    api.ok(M::DELETE, &format!("/v1/nodes/{}", unset["uuid"].as_str().unwrap()), None).await;
    let add_class = json!([{"op": "add", "path": "/resource_class", "value": "gold"}]);
    api.fault(M::PATCH, "/v1/nodes/n1", "1.20", Some(add_class.clone()), 406, "1.21").await;
    let owner_null = json!([{"op": "replace", "path": "/owner", "value": null}]);
    api.fault(M::PATCH, "/v1/nodes/n1", "1.49", Some(owner_null), 406, "1.50").await;
    let (_, _, b) = api.call(M::GET, "/v1/nodes/n1", "1.115", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&b).unwrap()["resource_class"],
        Value::Null,
        "a refused patch changes nothing"
    );
    let (s, _, b) =
        api.call(M::PATCH, "/v1/nodes/n1", "1.20", Some(json!([{"op": "remove", "path": "/resource_class"}]))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // below 1.11 a new node is available at once; below 1.2 that renders as null
    let old = api.call(M::POST, "/v1/nodes", "1.10", Some(json!({"driver": "fake-hardware"}))).await;
    let old: Value = serde_json::from_str(&old.2).unwrap();
    assert_eq!(old["provision_state"], "available");
    let (_, _, b) = api.call(M::GET, &format!("/v1/nodes/{}", old["uuid"].as_str().unwrap()), "1.1", None).await;
    let v1: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v1["provision_state"], Value::Null);
    assert!(v1.get("name").is_none(), "fields newer than the version are hidden");
    // names in URLs only from 1.5
    api.fault(M::GET, "/v1/nodes/n1", "1.4", None, 404, "Node n1 could not be found.").await;
    api.fault(M::GET, "/v1/nodes/00000000-0000-0000-0000-000000000000", "1.115", None, 404, "could not be found").await;

    // --- node patch
    let p = |ops: Value| Some(ops);
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "add", "path": "/foo", "value": 1}])),
        400,
        "Adding a new attribute (/foo) to the root of the resource is not allowed",
    )
    .await;
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "replace", "path": "/provision_state", "value": "active"}])),
        400,
        "internal attribute",
    )
    .await;
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "remove", "path": "/extra/none"}])),
        400,
        "non-existent",
    )
    .await;
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "move", "path": "/extra", "from": "/name"}])),
        400,
        "not supported",
    )
    .await;
    api.fault(M::PATCH, "/v1/nodes/n1", "1.115", p(json!({"op": "add"})), 400, "list of operations").await;
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "add", "path": "/instance_uuid", "value": "nope"}])),
        400,
        "Expected a UUID for instance_uuid",
    )
    .await;
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "add", "path": "/driver", "value": "ipmi"}])),
        400,
        "No valid host",
    )
    .await;
    let n = api.ok(M::PATCH, "/v1/nodes/n1", p(json!([{"op": "add", "path": "/extra/a", "value": {"b": [1]}}, {"op": "add", "path": "/extra/a/b/-", "value": 2}]))).await;
    assert_eq!(n["extra"], json!({"a": {"b": [1, 2]}}));
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert_eq!(n["driver_info"]["fake_password"], "******");

    // --- provision and power verbs
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "provide"})),
        400,
        &format!(
            "The requested action \"provide\" can not be performed on node \"{uuid}\" while it is in state \"enroll\"."
        ),
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "fly"})),
        400,
        "not a valid provision target",
    )
    .await;
    api.fault(
        M::PUT,
        &format!("/v1/nodes/{uuid}/states/provision"),
        "1.3",
        Some(json!({"target": "manage"})),
        406,
        "1.4",
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "manage", "clean_steps": []})),
        400,
        "clean_steps",
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "manage", "x": 1})),
        400,
        "Unknown argument",
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/power",
        "1.115",
        Some(json!({"target": "power sideways"})),
        400,
        "Invalid power state",
    )
    .await;
    api.fault(M::PUT, "/v1/nodes/n1/states/power", "1.26", Some(json!({"target": "soft power off"})), 406, "1.27")
        .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/power",
        "1.115",
        Some(json!({"target": "power on", "timeout": -1})),
        400,
        "timeout",
    )
    .await;
    let (s, h, _) = api.call(M::PUT, "/v1/nodes/n1/states/provision", "1.115", Some(json!({"target": "manage"}))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(h["location"].to_str().unwrap(), format!("{}/v1/nodes/n1/states", ferric.endpoint));
    api.wait_state("n1", "manageable").await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "clean"})),
        400,
        "\"clean_steps\" is required",
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "clean", "clean_steps": [{"step": "x"}]})),
        400,
        "interface",
    )
    .await;
    // a manual clean with given steps returns to manageable
    api.ok(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        Some(json!({"target": "clean", "clean_steps": [{"interface": "deploy", "step": "erase_devices"}]})),
    )
    .await;
    api.wait_state("n1", "manageable").await;
    api.ok(M::PUT, "/v1/nodes/n1/states/provision", Some(json!({"target": "provide"}))).await;
    api.wait_state("n1", "available").await;

    // a slow deploy holds the lock: changes get 409 NodeLocked, delete 409
    api.ok(
        M::PATCH,
        "/v1/nodes/n1",
        p(json!([{"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": 1500}])),
    )
    .await;
    api.ok(M::PUT, "/v1/nodes/n1/states/provision", Some(json!({"target": "active"}))).await;
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert_eq!(n["provision_state"], "deploying", "the transient state is persisted before the 202");
    assert_eq!(n["target_provision_state"], "active");
    assert!(n["reservation"].as_str().unwrap().starts_with("conductor-1/"), "{n}");
    api.fault(
        M::PATCH,
        "/v1/nodes/n1",
        "1.115",
        p(json!([{"op": "add", "path": "/name", "value": "n2"}])),
        409,
        "is locked by host",
    )
    .await;
    api.fault(
        M::PUT,
        "/v1/nodes/n1/states/provision",
        "1.115",
        Some(json!({"target": "active"})),
        409,
        "is locked by host",
    )
    .await;
    api.fault(M::DELETE, "/v1/nodes/n1", "1.115", None, 409, "locked").await;
    api.wait_state("n1", "active").await;
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert_eq!(n["reservation"], Value::Null, "the lock is released");
    api.fault(M::DELETE, "/v1/nodes/n1", "1.115", None, 409, "Can not delete node").await;
    api.fault(M::PUT, "/v1/nodes/n1/states/provision", "1.72", Some(json!({"target": "undeploy"})), 406, "1.73").await;
    // a failing step fails the deploy with a clear last_error
    api.ok(
        M::PATCH,
        "/v1/nodes/n1",
        p(json!([
        {"op": "add", "path": "/driver_info/fake_step_delay_ms", "value": 0},
        {"op": "add", "path": "/driver_info/fake_fail_step", "value": "deploy.write_image"}])),
    )
    .await;
    api.ok(M::PUT, "/v1/nodes/n1/states/provision", Some(json!({"target": "rebuild"}))).await;
    api.wait_state("n1", "deploy failed").await;
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert!(n["last_error"].as_str().unwrap().contains("deploy.write_image"), "{n}");
    assert_eq!(n["target_provision_state"], Value::Null);

    // --- maintenance
    let (s, _, _) = api.call(M::PUT, "/v1/nodes/n1/maintenance", "1.115", Some(json!({"reason": "disk"}))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert_eq!((n["maintenance"].clone(), n["maintenance_reason"].clone()), (json!(true), json!("disk")));
    api.fault(M::PUT, "/v1/nodes/n1/states/provision", "1.115", Some(json!({"target": "active"})), 400, "maintenance")
        .await;
    api.call(M::DELETE, "/v1/nodes/n1/maintenance", "1.115", None).await;
    assert_eq!(api.ok(M::GET, "/v1/nodes/n1", None).await["maintenance"], false);

    // --- a ramdisk's lookup is bounded: one query per address
    let many: Vec<String> = (0..65).map(|i| format!("52:54:00:00:01:{i:02x}")).collect();
    api.fault(
        M::GET,
        &format!("/v1/lookup?addresses={}", many.join(",")),
        "1.115",
        None,
        400,
        "A lookup takes at most 64 addresses, 65 were given",
    )
    .await;
    // duplicates count once; 64 unknown ones are simply not found
    let dup = format!("/v1/lookup?addresses={}", [many[..64].join(","), many[0].clone()].join(","));
    api.fault(M::GET, &dup, "1.115", None, 404, "Resource could not be found.").await;

    // --- ports
    api.fault(
        M::POST,
        "/v1/ports",
        "1.115",
        Some(json!({"address": "zz:zz", "node_uuid": uuid})),
        400,
        "Expected a MAC address but received zz:zz.",
    )
    .await;
    api.fault(M::POST, "/v1/ports", "1.115", Some(json!({"address": "52:54:00:00:00:01"})), 400, "node_uuid").await;
    api.fault(
        M::POST,
        "/v1/ports",
        "1.115",
        Some(json!({"address": "52:54:00:00:00:01", "node_uuid": "00000000-0000-0000-0000-000000000000"})),
        400,
        "could not be found",
    )
    .await;
    api.ok(M::POST, "/v1/ports", Some(json!({"address": "52:54:00:00:00:01", "node_uuid": uuid}))).await;
    api.fault(
        M::POST,
        "/v1/ports",
        "1.115",
        Some(json!({"address": "52:54:00:00:00:01", "node_uuid": uuid})),
        409,
        "A port with MAC address 52:54:00:00:00:01 already exists.",
    )
    .await;
    api.fault(M::GET, "/v1/ports/00000000-0000-0000-0000-000000000000", "1.115", None, 404, "could not be found").await;

    // --- lists: paging, sorting, fields, filters
    for i in 0..5 {
        api.ok(
            M::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware", "name": format!("page-{i}"), "resource_class": "rc-page"})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut url = "/v1/nodes?limit=2&resource_class=rc-page".to_string();
    loop {
        let page = api.ok(M::GET, &url, None).await;
        let items = page["nodes"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|n| n["name"].as_str().unwrap().to_string()));
        match page.get("next").and_then(Value::as_str) {
            Some(next) => url = next.strip_prefix(&ferric.endpoint).unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);
    let desc = api.ok(M::GET, "/v1/nodes?resource_class=rc-page&sort_key=name&sort_dir=desc&limit=3", None).await;
    let names: Vec<&str> = desc["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["page-4", "page-3", "page-2"]);
    api.fault(M::GET, "/v1/nodes?sort_key=driver_info", "1.115", None, 400, "is an invalid field for sorting").await;
    api.fault(M::GET, "/v1/nodes?sort_dir=up", "1.115", None, 400, "Invalid sort direction").await;
    api.fault(M::GET, "/v1/nodes?limit=-1", "1.115", None, 400, "Limit must be positive").await;
    api.fault(M::GET, "/v1/nodes?marker=00000000-0000-0000-0000-000000000000", "1.115", None, 400, "Marker").await;
    api.fault(M::GET, "/v1/nodes?fields=uuid,bogus", "1.115", None, 400, "bogus").await;
    api.fault(M::GET, "/v1/nodes?fields=uuid", "1.7", None, 406, "1.8").await;
    let narrow = api.ok(M::GET, "/v1/nodes?fields=uuid,provision_state&resource_class=rc-page", None).await;
    let keys: Vec<&String> = narrow["nodes"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["links", "provision_state", "uuid"]);
    let list = api.ok(M::GET, "/v1/nodes?resource_class=rc-page", None).await;
    assert_eq!(list["nodes"][0].as_object().unwrap().len(), 7, "a list item has Ironic's seven fields");
    let detail = api.ok(M::GET, "/v1/nodes/detail?resource_class=rc-page", None).await;
    assert_eq!(detail["nodes"][0].as_object().unwrap().len(), 69, "detail has every field at 1.115");
    let maint = api.ok(M::GET, "/v1/nodes?maintenance=true", None).await;
    assert!(maint["nodes"].as_array().unwrap().is_empty());
    api.fault(M::GET, "/v1/nodes?maintenance=maybe", "1.115", None, 400, "maintenance").await;
    api.fault(M::GET, "/v1/nodes?provision_state=flying", "1.115", None, 400, "provision_state").await;

    // --- drivers and conductors
    api.fault(M::GET, "/v1/drivers/ipmi", "1.115", None, 404, "ipmi").await;
    api.fault(M::GET, "/v1/conductors", "1.48", None, 404, "").await;
    api.fault(M::GET, "/v1/conductors/nope", "1.115", None, 404, "Conductor nope could not be found.").await;
    api.fault(
        M::POST,
        "/v1/nodes/n1/vendor_passthru/nope",
        "1.115",
        Some(json!({})),
        400,
        "No handler for method nope",
    )
    .await;
    api.fault(M::GET, "/v1/nodes/n1/vendor_passthru/second_method", "1.115", None, 400, "does not support HTTP GET")
        .await;
    let (s, h, b) = api.call(M::GET, "/v1/nodes/n1/vendor_passthru?method=get_log", "1.115", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-disposition"], "attachment");
    assert_eq!(b, format!("log of node {uuid}\n"));
    let r = api.ok(M::POST, "/v1/drivers/fake-hardware/vendor_passthru/driver_method", Some(json!({"x": 1}))).await;
    assert_eq!(r, json!({"args": {"x": 1}}));

    // --- operations: health and Prometheus metrics of API and conductor
    let (s, _, b) = api.call(M::GET, "/healthz", "", None).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "ok"));
    let (s, h, m) = api.call(M::GET, "/metrics", "", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"));
    for metric in [
        "ferric_api_requests_total{method=\"GET\",status=\"404\"}",
        "ferric_api_request_seconds",
        "ferric_operations_total{outcome=\"failed\"}",
        "ferric_operations_total{outcome=\"settled\"}",
        "ferric_owned_nodes",
        "ferric_locks_held",
    ] {
        assert!(m.contains(metric), "{metric} missing from /metrics:\n{m}");
    }
}

/// PostgreSQL cannot store or compare a NUL character in text: a request
/// carrying one in a path, a filter or a body was answered 500 with the
/// database's error (by the API, or by the conductor for changes). It is
/// bad input, refused before it reaches the database.
#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_is_bad_input_on_postgresql() {
    let pg = Postgres::start();
    let ferric = Ferric::start(Some(&pg.database("ferric_nul")), &[]);
    let api = Api { base: ferric.endpoint.clone(), c: http() };
    use Method as M;
    let n = api.ok(M::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "n1"}))).await;
    let uuid = n["uuid"].as_str().unwrap().to_string();
    let bad = "Invalid input: a text value contains a NUL character";
    for path in ["/v1/nodes/a%00b", "/v1/ports/a%00b", "/v1/nodes?driver=%00", "/v1/nodes?description_contains=a%00"] {
        api.fault(M::GET, path, "1.115", None, 400, bad).await;
    }
    let with_nul = |field: &str| json!({"driver": "fake-hardware", field: "a\u{0}b"});
    api.fault(M::POST, "/v1/nodes", "1.115", Some(with_nul("description")), 400, bad).await;
    api.fault(M::POST, "/v1/nodes", "1.115", Some(with_nul("owner")), 400, bad).await;
    let patch = json!([{"op": "add", "path": "/description", "value": "x\u{0}"}]);
    api.fault(M::PATCH, "/v1/nodes/n1", "1.115", Some(patch), 400, bad).await;
    api.fault(M::PUT, "/v1/nodes/n1/maintenance", "1.115", Some(json!({"reason": "\u{0}"})), 400, bad).await;
    let port = json!({"address": "52:54:00:00:00:0a", "node_uuid": uuid, "name": "p\u{0}"});
    api.fault(M::POST, "/v1/ports", "1.115", Some(port), 400, bad).await;
    // nothing was written; a JSON field takes it (escaped in the column)
    let n = api.ok(M::GET, "/v1/nodes/n1", None).await;
    assert_eq!((n["description"].clone(), n["maintenance"].clone()), (Value::Null, json!(false)));
    assert_eq!(api.ok(M::GET, "/v1/nodes", None).await["nodes"].as_array().unwrap().len(), 1);
    assert!(api.ok(M::GET, "/v1/ports", None).await["ports"].as_array().unwrap().is_empty());
    let patch = json!([{"op": "add", "path": "/extra/k", "value": "v\u{0}"}]);
    assert_eq!(api.ok(M::PATCH, "/v1/nodes/n1", Some(patch)).await["extra"]["k"], "v\u{0}");
}
