//! Config drives built from Ironic's object form, read back by the tools
//! cloud-init's environment has: the volume label `blkid` reports and the
//! files a Joliet mount shows (isoinfo, xorriso).

mod common;

use std::io::Read as _;
use std::process::Command;

use base64::Engine as _;
use common::require;
use ferric_deploy::image::configdrive;
use serde_json::{Value, json};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn object_form_becomes_a_config_2_iso_cloud_init_can_read() {
    require("xorriso");
    require("isoinfo");
    let value = json!({
        "meta_data": {"hostname": "web-1", "public_keys": {"0": "ssh-ed25519 AAAA test"}},
        "user_data": {"runcmd": ["echo hello"]},
        "network_data": {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"}]},
    });
    let encoded = configdrive::for_agent(Some(&value), "0d6c7c7e-4d39-4b6c-9f6e-3b1c0e2a9d11", Some("node-1"))
        .unwrap()
        .expect("a config drive");
    // what the agent gets: base64 of gzip of the image
    let packed = base64::engine::general_purpose::STANDARD.decode(&encoded).unwrap();
    let mut image = Vec::new();
    flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut image).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("cd.iso");
    std::fs::write(&iso, &image).unwrap();

    let info = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso));
    assert!(info.contains("Volume id: config-2"), "cloud-init finds the drive by this label: {info}");
    assert!(info.contains("Joliet"), "{info}");
    let out = dir.path().join("x");
    run(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&iso).args(["-extract", "/"]).arg(&out));
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(out.join("openstack/latest").join(name)).unwrap()).unwrap()
    };
    let meta = read("meta_data.json");
    assert_eq!(meta["hostname"], "web-1");
    assert_eq!(meta["uuid"], "0d6c7c7e-4d39-4b6c-9f6e-3b1c0e2a9d11", "the node's uuid when the caller gave none");
    assert_eq!(meta["name"], "node-1");
    assert_eq!(read("user_data"), json!({"runcmd": ["echo hello"]}));
    assert_eq!(read("network_data.json")["links"][0]["id"], "eth0");
    assert!(!out.join("openstack/latest/vendor_data.json").exists());

    // the same node's caller-set uuid wins, and a string user_data is kept as it is
    let value = json!({"meta_data": {"uuid": "mine"}, "user_data": "#!/bin/sh\necho hi\n"});
    let image = configdrive::build(value.as_object().unwrap(), "node-uuid", None).unwrap();
    std::fs::write(&iso, &image).unwrap();
    let out2 = dir.path().join("y");
    run(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&iso).args(["-extract", "/"]).arg(&out2));
    let meta: Value =
        serde_json::from_slice(&std::fs::read(out2.join("openstack/latest/meta_data.json")).unwrap()).unwrap();
    assert_eq!(meta["uuid"], "mine");
    assert_eq!(std::fs::read_to_string(out2.join("openstack/latest/user_data")).unwrap(), "#!/bin/sh\necho hi\n");
}
