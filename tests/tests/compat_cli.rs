//! The `baremetal` CLI (python-ironicclient 6.3.0) drives a real Ferric
//! all-in-one through a node's whole life, on SQLite and on PostgreSQL.

use std::time::Duration;

use ferric_tests::{Baremetal, Ferric, Postgres};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn lifecycle(bm: &Baremetal) {
    // discovery of what runs
    let drivers = bm.json(&["driver", "list"]);
    let mut names: Vec<&str> = drivers.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["fake-hardware", "ilo", "redfish"], "{drivers}");
    assert!(drivers.as_array().unwrap().iter().all(|d| d["hosts"] == "conductor-1"), "{drivers}");
    let driver = bm.json(&["driver", "show", "fake-hardware"]);
    assert_eq!(driver["default_deploy_interface"], "fake");
    let redfish = bm.json(&["driver", "show", "redfish"]);
    assert_eq!(redfish["default_boot_interface"], "redfish-virtual-media");
    assert_eq!(redfish["default_power_interface"], "redfish");
    let ilo = bm.json(&["driver", "show", "ilo"]);
    assert_eq!(ilo["default_boot_interface"], "ilo-virtual-media");
    let props = bm.json(&["driver", "property", "list", "redfish"]);
    let keys: Vec<&str> = props.as_array().unwrap().iter().filter_map(|p| p["property"].as_str()).collect();
    for k in [
        "redfish_address",
        "redfish_system_id",
        "redfish_username",
        "redfish_password",
        "redfish_verify_ca",
        "deploy_kernel",
    ] {
        assert!(keys.contains(&k), "{k} missing from {props}");
    }
    let conductors = bm.json(&["conductor", "list"]);
    assert_eq!(conductors[0]["hostname"], "conductor-1");
    assert_eq!(conductors[0]["alive"], true);

    // enroll
    let node = bm.json(&[
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "n1",
        "--driver-info",
        "fake_password=s3cret",
        "--property",
        "cpus=4",
        "--resource-class",
        "baremetal",
    ]);
    let uuid = node["uuid"].as_str().unwrap().to_string();
    assert_eq!(node["provision_state"], "enroll");
    assert_eq!(node["conductor"], "conductor-1");
    assert_eq!(node["properties"]["cpus"], 4);
    assert_eq!(node["driver_info"]["fake_password"], "******", "secrets are masked");
    assert_eq!(node["boot_interface"], "fake", "defaults are filled in");

    let port = bm.json(&["port", "create", "52:54:00:12:34:56", "--node", &uuid]);
    assert_eq!(port["node_uuid"], uuid.as_str());
    let ports = bm.json(&["port", "list", "--node", "n1"]);
    assert_eq!(ports.as_array().unwrap().len(), 1);
    assert_eq!(ports[0]["address"], "52:54:00:12:34:56");

    // list / show / set / unset
    let list = bm.json(&["node", "list"]);
    assert_eq!(list[0]["uuid"], uuid.as_str());
    assert_eq!(list[0]["provision_state"], "enroll");
    let long = bm.json(&["node", "list", "--long"]);
    assert_eq!(long[0]["resource_class"], "baremetal");
    let narrow = bm.json(&["node", "list", "--fields", "uuid", "name"]);
    assert_eq!(narrow[0].as_object().unwrap().len(), 2, "{narrow}");
    assert_eq!(bm.json(&["node", "show", &uuid])["name"], "n1");
    bm.ok(&[
        "node",
        "set",
        "n1",
        "--extra",
        "foo=bar",
        "--extra",
        "n=1",
        "--description",
        "rack 7",
        "--driver-info",
        "k=v",
    ]);
    let shown = bm.json(&["node", "show", "n1"]);
    assert_eq!(shown["extra"]["foo"], "bar");
    assert_eq!(shown["extra"]["n"], 1);
    assert_eq!(shown["description"], "rack 7");
    assert_eq!(shown["driver_info"]["k"], "v");
    assert_eq!(shown["driver_info"]["fake_password"], "******");
    bm.ok(&["node", "unset", "n1", "--extra", "foo", "--description"]);
    let shown = bm.json(&["node", "show", "n1"]);
    assert!(shown["extra"].get("foo").is_none());
    assert_eq!(shown["extra"]["n"], 1);
    assert_eq!(shown["description"], Value::Null);

    // a verb the state does not allow
    let err = bm.fails(&["node", "provide", "n1"]);
    assert!(err.contains("can not be performed on node") && err.contains("(HTTP 400)"), "{err}");

    // enroll -> manageable -> available -> active
    bm.ok(&["node", "manage", "n1", "--wait", "60"]);
    assert_eq!(bm.field("n1", "provision_state"), "manageable");
    assert_eq!(bm.field("n1", "power_state"), "power off", "verify read the power state");
    bm.ok(&["node", "provide", "n1"]);
    bm.wait_state("n1", "available", WAIT);
    let err = bm.fails(&["node", "provide", "n1"]);
    assert!(err.contains("while it is in state \"available\""), "{err}");
    bm.ok(&["node", "set", "n1", "--instance-info", "image_source=http://127.0.0.1:1/disk.raw"]);
    bm.ok(&["node", "deploy", "n1"]);
    bm.wait_state("n1", "active", WAIT);
    let active = bm.json(&["node", "show", "n1"]);
    assert_eq!(active["power_state"], "power on");
    assert_eq!(active["target_provision_state"], Value::Null);
    assert_eq!(active["deploy_step"], serde_json::json!({}));
    assert_eq!(active["instance_info"]["image_source"], "http://127.0.0.1:1/disk.raw");

    // power
    bm.ok(&["node", "power", "off", "n1"]);
    wait_field(bm, "n1", "power_state", "power off");
    bm.ok(&["node", "power", "on", "n1"]);
    wait_field(bm, "n1", "power_state", "power on");
    bm.ok(&["node", "reboot", "n1"]);
    wait_field(bm, "n1", "power_state", "power on");

    // validate, vendor passthru
    let v = bm.json(&["node", "validate", "n1"]);
    for row in v.as_array().unwrap() {
        assert_eq!(row["Result"], true, "{row}");
    }
    let methods = bm.json(&["node", "passthru", "list", "n1"]);
    assert!(methods.as_array().unwrap().iter().any(|m| m["Name"] == "second_method"), "{methods}");
    let out = bm.ok(&["node", "passthru", "call", "n1", "second_method", "--arg", "a=1"]);
    assert!(out.contains("'a': 1"), "{out}");
    bm.ok(&["node", "passthru", "call", "n1", "first_method", "--arg", "bar=baz"]);
    assert_eq!(bm.json(&["node", "show", "n1"])["driver_internal_info"]["fake_vendor_bar"], "baz");

    // an active node cannot be deleted
    let err = bm.fails(&["node", "delete", "n1"]);
    assert!(err.contains("(HTTP 409)") && err.contains("Can not delete node"), "{err}");

    // undeploy -> cleaning -> available, instance forgotten
    bm.ok(&["node", "undeploy", "n1"]);
    bm.wait_state("n1", "available", WAIT);
    let n = bm.json(&["node", "show", "n1"]);
    assert_eq!(n["instance_info"], serde_json::json!({}));
    assert_eq!(n["power_state"], "power off");
    assert_eq!(n["driver_internal_info"]["fake_cleaned"], true, "automated cleaning ran");

    // delete port and node
    bm.ok(&["port", "delete", port["uuid"].as_str().unwrap()]);
    assert!(bm.json(&["port", "list"]).as_array().unwrap().is_empty());
    bm.ok(&["node", "delete", "n1"]);
    assert!(bm.json(&["node", "list"]).as_array().unwrap().is_empty());
    let err = bm.fails(&["node", "show", &uuid]);
    assert!(err.contains(&format!("Node {uuid} could not be found.")) && err.contains("(HTTP 404)"), "{err}");

    // an API version outside the server's range
    let out = bm.run(&["--os-baremetal-api-version", "1.200", "node", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Supported version range is 1.1 to 1.115"), "{err}");
}

fn wait_field(bm: &Baremetal, node: &str, field: &str, want: &str) {
    let start = std::time::Instant::now();
    while bm.field(node, field) != want {
        assert!(start.elapsed() < WAIT, "{field} of {node} never became {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn baremetal_cli_lifecycle_sqlite() {
    let ferric = Ferric::start(None, &[]);
    lifecycle(&Baremetal::new(&ferric.endpoint));
}

#[test]
fn baremetal_cli_lifecycle_postgres() {
    let pg = Postgres::start();
    let url = pg.database("ferric_cli");
    let ferric = Ferric::start(Some(&url), &[]);
    lifecycle(&Baremetal::new(&ferric.endpoint));
}
