//! metalsmith (2.5.0, unchanged) deploys, lists, shows and undeploys an
//! instance on a real Ferric all-in-one with fake-hardware nodes, on SQLite
//! and on PostgreSQL: its first call is `POST /v1/allocations`, then it
//! patches the reserved node, validates it and deploys it with a config
//! drive given as a dict. Its output formats each instance with the
//! instance's Neutron ports, so a minimal networking endpoint
//! ([`NetworkStub`]) answers it — `list` and `show` are really exercised,
//! not silenced with `-q`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferric_tests::neutron::NetworkStub;
use ferric_tests::{Api, Ferric, Postgres, venv};
use reqwest::Method;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const IMAGE: &str = "http://127.0.0.1:1/disk.raw";
const CHECKSUM: &str = "9b7f3b1f0dbd0ec2c0a1e0e6c15ce5cd1c0ea6bd2ac6e2c3a3e59e7b1b1d8f3e";

struct Metalsmith {
    clouds: std::path::PathBuf,
}

impl Metalsmith {
    /// A `clouds.yaml` in `dir` pointing metalsmith at Ferric (no keystone)
    /// and at the networking stub.
    fn new(dir: &Path, ferric: &str, network: &str) -> Metalsmith {
        let clouds = dir.join("clouds.yaml");
        let yaml = format!(
            "clouds:\n  ferric:\n    auth_type: none\n    baremetal_endpoint_override: {ferric}\n    \
             network_endpoint_override: {network}\n"
        );
        std::fs::write(&clouds, yaml).expect("write clouds.yaml");
        Metalsmith { clouds }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(venv().join("bin/metalsmith"))
            .env("OS_CLIENT_CONFIG_FILE", &self.clouds)
            .args(["--os-cloud", "ferric", "-f", "json"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("metalsmith is missing from the venv (scripts/deps.sh installs it)")
    }

    /// Runs and insists on success; returns the JSON it printed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "metalsmith {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("metalsmith {args:?} printed no JSON ({e}): {stdout}"))
    }
}

async fn lifecycle(ferric: &Ferric) {
    let api = Api::new(&ferric.endpoint);
    let network = NetworkStub::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ms = Metalsmith::new(dir.path(), &ferric.endpoint, &network.endpoint);
    let key = dir.path().join("key.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerricTestKey test@ferric\n").expect("key");
    let key = key.display().to_string();

    // two nodes of the class metalsmith asks for, one of another class
    let mut nodes = Vec::new();
    for (name, rc) in [("ms-1", "baremetal"), ("ms-2", "baremetal"), ("ms-other", "gpu")] {
        let uuid = api.create_node(json!({"driver": "fake-hardware", "name": name, "resource_class": rc}), &[]).await;
        api.to_available(&uuid, WAIT).await;
        nodes.push(uuid);
    }

    let deploy = ["deploy", "--resource-class", "baremetal", "--image", IMAGE, "--image-checksum", CHECKSUM];
    let mut args = deploy.to_vec();
    args.extend(["--ssh-public-key", &key, "--hostname", "host1", "--wait", "120"]);
    let out = tokio::task::block_in_place(|| ms.json(&args));
    assert_eq!(out["hostname"], "host1", "{out}");
    assert_eq!(out["state"], "active", "{out}");
    let node = out["node"]["id"].as_str().expect("node id").to_string();
    assert!(nodes[..2].contains(&node), "metalsmith got {node}, not a baremetal node");
    let allocation = out["allocation"]["id"].as_str().expect("allocation id").to_string();
    assert_eq!(out["allocation"]["name"], "host1");
    assert_eq!(out["allocation"]["node_id"], node.as_str());

    // what metalsmith did, as Ferric stored it
    let n = api.node(&node).await;
    assert_eq!(n["provision_state"], "active");
    assert_eq!(n["instance_uuid"], allocation.as_str());
    assert_eq!(n["allocation_uuid"], allocation.as_str());
    assert_eq!(n["instance_info"]["image_source"], IMAGE);
    assert_eq!(n["instance_info"]["image_checksum"], CHECKSUM);
    assert_eq!(n["instance_info"]["capabilities"], json!({"boot_option": "local"}));
    assert_eq!(n["extra"]["metalsmith_attached_ports"], json!([]));
    let a = api.get(&format!("/v1/allocations/{allocation}")).await;
    assert_eq!((a["state"].as_str(), a["node_uuid"].as_str()), (Some("active"), Some(node.as_str())));

    // list and show print it, with its (stubbed) network ports
    let list = tokio::task::block_in_place(|| ms.json(&["list"]));
    assert_eq!(list.as_object().map(|o| o.len()), Some(1), "{list}");
    assert_eq!(list["host1"]["state"], "active", "{list}");
    assert_eq!(list["host1"]["allocation"]["id"], allocation.as_str());
    let show = tokio::task::block_in_place(|| ms.json(&["show", "host1"]));
    assert_eq!(show["host1"]["node"]["id"], node.as_str(), "{show}");
    assert_eq!(show["host1"]["ip_addresses"], json!({}));
    let asked = network.requests();
    let port_queries = asked.iter().filter(|r| r.contains("ports") && r.contains(&node)).count();
    assert!(port_queries >= 3, "deploy, list and show each look up the ports of {node}: {asked:?}");

    // undeploy: the node is torn down and forgets the instance and its allocation
    let out = tokio::task::block_in_place(|| ms.json(&["undeploy", "host1", "--wait", "120"]));
    assert_eq!(out["node"]["provision_state"], "available", "{out}");
    let n = api.node(&node).await;
    assert_eq!((n["instance_uuid"].clone(), n["allocation_uuid"].clone()), (Value::Null, Value::Null));
    assert_eq!(n["instance_info"], json!({}));
    assert!(n["extra"].get("metalsmith_attached_ports").is_none(), "{}", n["extra"]);
    let (status, _) = api.call(Method::GET, &format!("/v1/allocations/{allocation}"), None).await;
    assert_eq!(status, 404, "the allocation outlived the tear-down");
    let list = tokio::task::block_in_place(|| ms.json(&["list"]));
    assert_eq!(list, json!({}));

    // the hostname can be used again once its allocation is gone
    let mut args = deploy.to_vec();
    args.extend(["--hostname", "host1", "--wait", "120"]);
    let again = tokio::task::block_in_place(|| ms.json(&args));
    assert_eq!((again["hostname"].as_str(), again["state"].as_str()), (Some("host1"), Some("active")), "{again}");
    let out = tokio::task::block_in_place(|| ms.json(&["undeploy", "host1", "--wait", "120"]));
    assert_eq!(out["node"]["provision_state"], "available", "{out}");
    // the other class was never touched
    assert_eq!(api.node(&nodes[2]).await["instance_uuid"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn metalsmith_deploy_list_show_undeploy_sqlite() {
    let ferric = Ferric::start(None, &[]);
    lifecycle(&ferric).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metalsmith_deploy_list_show_undeploy_postgres() {
    let pg = Postgres::start();
    let url = pg.database("ferric_metalsmith");
    let ferric = Ferric::start(Some(&url), &[]);
    lifecycle(&ferric).await;
}
