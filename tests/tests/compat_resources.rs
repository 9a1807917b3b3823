//! The real `baremetal` CLI (python-ironicclient) against all-in-one on
//! the resources of issue 22: chassis, portgroups with a port in them,
//! node traits, allocations and node history.

use ferric_tests::{Baremetal, Ferric, Postgres};

fn resources(bm: &Baremetal) {
    // chassis
    let chassis = bm.json(&["chassis", "create", "--description", "rack 1"]);
    let c = chassis["uuid"].as_str().expect("chassis uuid").to_string();
    bm.ok(&["chassis", "set", &c, "--description", "rack 2"]);
    assert_eq!(bm.json(&["chassis", "show", &c])["description"], "rack 2");
    let list = bm.json(&["chassis", "list"]);
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");

    // a node in it, with traits
    let node = bm.json(&[
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "r1",
        "--chassis-uuid",
        &c,
        "--resource-class",
        "gold",
    ]);
    let uuid = node["uuid"].as_str().expect("node uuid").to_string();
    assert_eq!(node["chassis_uuid"], c.as_str());
    bm.ok(&["node", "add", "trait", "r1", "CUSTOM_GOLD", "HW_CPU_X86_VMX"]);
    let traits = bm.ok(&["node", "trait", "list", "r1", "-f", "value"]);
    let mut got: Vec<&str> = traits.lines().map(str::trim).collect();
    got.sort();
    assert_eq!(got, ["CUSTOM_GOLD", "HW_CPU_X86_VMX"]);
    bm.ok(&["node", "remove", "trait", "r1", "HW_CPU_X86_VMX"]);
    assert_eq!(bm.ok(&["node", "trait", "list", "r1", "-f", "value"]).trim(), "CUSTOM_GOLD");
    let err = bm.fails(&["node", "add", "trait", "r1", "gold"]);
    assert!(err.contains("Invalid trait") && err.contains("(HTTP 400)"), "{err}");
    let err = bm.fails(&["chassis", "delete", &c]);
    assert!(err.contains("contains nodes") && err.contains("(HTTP 400)"), "{err}");

    // a portgroup with a port in it
    let pg =
        bm.json(&["port", "group", "create", "--node", &uuid, "--name", "bond0", "--address", "52:54:00:aa:bb:01"]);
    assert_eq!((pg["name"].as_str(), pg["node_uuid"].as_str()), (Some("bond0"), Some(uuid.as_str())));
    // the client sends --port-group as portgroup_uuid, a UUID as in Ironic
    let pg_uuid = pg["uuid"].as_str().expect("portgroup uuid");
    let port = bm.json(&["port", "create", "52:54:00:aa:bb:02", "--node", &uuid, "--port-group", pg_uuid]);
    assert_eq!(port["portgroup_uuid"], pg["uuid"]);
    let ports = bm.json(&["port", "list", "--port-group", "bond0"]);
    assert_eq!(ports.as_array().map(|l| l.len()), Some(1), "{ports}");
    let err = bm.fails(&["port", "group", "delete", "bond0"]);
    assert!(err.contains("contains ports"), "{err}");
    bm.ok(&["port", "group", "set", "bond0", "--extra", "k=v"]);
    assert_eq!(bm.json(&["port", "group", "show", "bond0"])["extra"]["k"], "v");

    // an allocation takes the node once it is available
    bm.ok(&["node", "manage", "r1", "--wait", "60"]);
    bm.ok(&["node", "provide", "r1", "--wait", "60"]);
    let a = bm.json(&[
        "allocation",
        "create",
        "--resource-class",
        "gold",
        "--trait",
        "CUSTOM_GOLD",
        "--name",
        "a1",
        "--wait",
        "60",
    ]);
    assert_eq!((a["state"].as_str(), a["node_uuid"].as_str()), (Some("active"), Some(uuid.as_str())), "{a}");
    let list = bm.json(&["allocation", "list"]);
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");
    assert_eq!(bm.json(&["node", "show", "r1"])["allocation_uuid"], a["uuid"]);
    // nothing else of the class is free
    let out = bm.run(&["allocation", "create", "--resource-class", "gold", "--name", "a2", "--wait", "60"]);
    assert!(!out.status.success());
    let failed = bm.json(&["allocation", "show", "a2"]);
    assert_eq!(failed["state"], "error");
    assert!(
        failed["last_error"].as_str().unwrap_or_default().contains("no available nodes match the resource class gold")
    );
    bm.ok(&["allocation", "delete", "a1", "a2"]);
    assert_eq!(bm.json(&["node", "show", "r1"])["allocation_uuid"], serde_json::Value::Null);
    assert!(bm.json(&["allocation", "list"]).as_array().unwrap().is_empty());

    // the node's history shows what happened to it
    let history = bm.json(&["node", "history", "list", "r1"]);
    assert!(history.as_array().is_some_and(|h| !h.is_empty()), "{history}");

    // clean up in the order Ironic insists on
    bm.ok(&["port", "delete", port["uuid"].as_str().unwrap()]);
    bm.ok(&["port", "group", "delete", "bond0"]);
    bm.ok(&["node", "delete", "r1"]);
    bm.ok(&["chassis", "delete", &c]);
    assert!(bm.json(&["chassis", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn baremetal_cli_resources_sqlite() {
    let ferric = Ferric::start(None, &[]);
    resources(&Baremetal::new(&ferric.endpoint));
}

#[test]
fn baremetal_cli_resources_postgres() {
    let pg = Postgres::start();
    let ferric = Ferric::start(Some(&pg.database("ferric_resources")), &[]);
    resources(&Baremetal::new(&ferric.endpoint));
}
