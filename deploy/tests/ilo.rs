//! HPE iLO's documented differences from plain Redfish, checked against
//! documents shaped as HPE iLO returns them (deploy/tests/fixtures/ilo,
//! sources in its README): where virtual media live, which action
//! targets to use, the OEM boot-once flag, the boot targets, the request
//! bodies, and which refusals are "not now" rather than "no".

use ferric_deploy::bmc::redfish::client::{describe, is_transient_refusal};
use ferric_deploy::bmc::redfish::{
    BmcInfo, BootOverride, BootTarget, MediaDevice, MediaSlot, Vendor, Verify, eject_before_insert, insert_body,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ilo").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn virtual_media_live_under_the_manager_not_the_system() {
    let system = fixture("system.json");
    assert!(system.get("VirtualMedia").is_none(), "iLO's ComputerSystem has no VirtualMedia link");
    assert_eq!(system.pointer("/Links/ManagedBy/0/@odata.id").and_then(Value::as_str), Some("/redfish/v1/Managers/1"));
    let manager = fixture("manager.json");
    assert_eq!(
        manager.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str).map(|s| s.trim_end_matches('/')),
        Some("/redfish/v1/Managers/1/VirtualMedia")
    );
    let collection = fixture("virtual_media_collection.json");
    assert_eq!(collection["Members"].as_array().unwrap().len(), 2);
}

#[test]
fn media_are_picked_by_media_types_with_the_dmtf_actions() {
    let floppy = MediaDevice::parse(&fixture("virtual_media_1_floppy.json"), "/redfish/v1/Managers/1/VirtualMedia/1");
    let cd = MediaDevice::parse(&fixture("virtual_media_2_cd.json"), "/redfish/v1/Managers/1/VirtualMedia/2");
    let empty = MediaDevice::parse(&fixture("virtual_media_2_cd_empty.json"), "/redfish/v1/Managers/1/VirtualMedia/2");
    let devices = vec![floppy.clone(), cd.clone()];
    assert_eq!(ferric_deploy::bmc::redfish::Bmc::pick(&devices, MediaSlot::Cd).unwrap().path, cd.path);
    assert_eq!(ferric_deploy::bmc::redfish::Bmc::pick(&devices, MediaSlot::Removable).unwrap().path, floppy.path);
    assert_eq!(cd.insert_target, "/redfish/v1/Managers/1/VirtualMedia/2/Actions/VirtualMedia.InsertMedia");
    assert_eq!(cd.eject_target, "/redfish/v1/Managers/1/VirtualMedia/2/Actions/VirtualMedia.EjectMedia");
    assert!(cd.holds("http://192.0.2.10/ferric/deploy.iso"));
    assert_eq!(cd.hpe_oem.as_deref(), Some("Hpe"));
    assert_eq!(cd.boot_on_next_reset, Some(true));
    // an empty slot shows Image "" (not null): nothing inserted
    assert!(!empty.inserted && empty.image.is_none());
    assert_eq!(empty.boot_on_next_reset, Some(false));
}

#[test]
fn early_ilo5_firmware_has_only_hpe_actions() {
    let doc = fixture("virtual_media_2_cd_ilo5_v1_15_oem_actions_only.json");
    assert!(doc.get("Actions").is_none());
    let cd = MediaDevice::parse(&doc, "/redfish/v1/Managers/1/VirtualMedia/2/");
    assert_eq!(cd.path, "/redfish/v1/Managers/1/VirtualMedia/2", "trailing slash dropped");
    assert_eq!(
        cd.insert_target,
        "/redfish/v1/Managers/1/VirtualMedia/2/Actions/Oem/Hpe/HpeiLOVirtualMedia.InsertVirtualMedia/"
    );
    assert_eq!(
        cd.eject_target,
        "/redfish/v1/Managers/1/VirtualMedia/2/Actions/Oem/Hpe/HpeiLOVirtualMedia.EjectVirtualMedia/"
    );
    // iLO 4 spells the block Hp and the action HpiLOVirtualMedia
    let mut ilo4 = doc.clone();
    let hpe = ilo4["Oem"]["Hpe"].take();
    let text = hpe.to_string().replace("Hpe", "Hp");
    ilo4["Oem"] = json!({"Hp": serde_json::from_str::<Value>(&text).unwrap()});
    let cd4 = MediaDevice::parse(&ilo4, "/redfish/v1/Managers/1/VirtualMedia/2/");
    assert_eq!(cd4.hpe_oem.as_deref(), Some("Hp"));
    assert!(cd4.insert_target.contains("HpiLOVirtualMedia.InsertVirtualMedia"), "{}", cd4.insert_target);
}

#[test]
fn boot_override_targets_and_mode_as_ilo_lists_them() {
    let b = BootOverride::parse(&fixture("system.json"));
    assert_eq!(b.target.as_deref(), Some("None"));
    assert_eq!(b.enabled.as_deref(), Some("Disabled"));
    assert_eq!(b.mode.as_deref(), Some("UEFI"));
    assert!(!b.allowed_targets.contains(&"UsbCd".to_string()), "iLO's virtual CD is Cd");
    assert_eq!(b.cd_target(), BootTarget::Cd);
    assert!(b.allowed_targets.contains(&"None".to_string()));
    let reset = fixture("system.json");
    let allowed: Vec<&str> = reset["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in ["On", "ForceOff", "GracefulShutdown", "ForceRestart"] {
        assert!(allowed.contains(&t), "{t}");
    }
}

#[test]
fn request_bodies_and_eject_first() {
    assert_eq!(insert_body(Vendor::Hpe, "http://x/a.iso"), json!({"Image": "http://x/a.iso"}));
    assert_eq!(
        insert_body(Vendor::Generic, "http://x/a.iso"),
        json!({"Image": "http://x/a.iso", "Inserted": true, "WriteProtected": true})
    );
    let inserted = MediaDevice::parse(&fixture("virtual_media_2_cd.json"), "");
    let empty = MediaDevice::parse(&fixture("virtual_media_2_cd_empty.json"), "");
    assert!(eject_before_insert(Vendor::Hpe, &inserted));
    assert!(!eject_before_insert(Vendor::Hpe, &empty));
    assert!(!eject_before_insert(Vendor::Generic, &inserted), "elsewhere only after a refusal");
}

#[test]
fn not_now_refusals_are_retried_and_others_explained() {
    let post = fixture("error_unable_to_modify_during_post.json");
    assert!(is_transient_refusal(&post), "a boot change during POST is retried");
    assert!(describe(&post).contains("UnableToModifyDuringSystemPOST"), "{}", describe(&post));
    let state = fixture("error_invalid_operation_for_system_state.json");
    assert!(is_transient_refusal(&state));
    let list = fixture("error_property_value_not_in_list.json");
    assert!(!is_transient_refusal(&list));
    let d = describe(&list);
    assert!(d.contains("PropertyValueNotInList"), "{d}");
    let session = fixture("error_no_valid_session.json");
    assert!(!is_transient_refusal(&session));
    assert!(describe(&session).contains("NoValidSession"), "{}", describe(&session));
    // a 200 that carries an `error` object with Base.x.Success is a success:
    // the client goes by the status code, and describes it without alarm
    let ok = fixture("response_success.json");
    assert!(describe(&ok).contains("Success"), "{}", describe(&ok));
}

#[test]
fn ilo_driver_info_as_ironic_read_it() {
    let info = BmcInfo::parse(
        json!({"ilo_address": "192.0.2.20", "ilo_username": "Administrator", "ilo_password": "pw", "ilo_verify_ca": "/etc/ilo-ca.pem"})
            .as_object()
            .unwrap(),
        Vendor::Hpe,
    )
    .unwrap();
    assert_eq!(info.endpoint.address, "https://192.0.2.20", "port 443 by default");
    assert_eq!(info.system.as_deref(), Some("/redfish/v1/Systems/1"));
    assert_eq!(info.endpoint.verify, Verify::CaFile("/etc/ilo-ca.pem".into()));
    let e = BmcInfo::parse(json!({"ilo_username": "a", "ilo_password": "b"}).as_object().unwrap(), Vendor::Hpe)
        .unwrap_err();
    assert_eq!(e, "driver_info.ilo_address is required");
}
