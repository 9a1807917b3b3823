//! The Redfish client against a real Redfish service: the sushy-tools
//! emulator (fake driver), over plain HTTP, over TLS with basic auth, and
//! with a DMTF SessionService (which the lab adds; sushy-tools has none).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferric_deploy::bmc::redfish::{
    AuthType, Bmc, BmcError, BmcInfo, BootTarget, ClientSettings, Endpoint, MediaSlot, PowerState, RedfishClients,
    ResetType, Vendor, Verify,
};
use ferric_tests::redfish::{SushyLab, SushyOptions};
use serde_json::Value;

fn clients() -> Arc<RedfishClients> {
    Arc::new(RedfishClients::new(ClientSettings {
        attempts: 3,
        retry_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        cache_size: 16,
    }))
}

fn info(lab: &SushyLab, i: usize) -> BmcInfo {
    BmcInfo::parse(lab.driver_info(i).as_object().unwrap(), Vendor::Generic).unwrap()
}

async fn bmc(c: &Arc<RedfishClients>, lab: &SushyLab, i: usize) -> Bmc {
    Bmc::connect(c, &info(lab, i), Vendor::Generic, Duration::from_millis(20)).await.unwrap()
}

/// A file server for images the emulator downloads at InsertMedia.
async fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut app = axum::Router::new();
    for (name, body) in files {
        app = app.route(&format!("/{name}"), axum::routing::get(move || async move { body.clone() }));
    }
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn power_boot_override_and_virtual_media_over_tls_with_basic_auth() {
    let lab = SushyLab::start(SushyOptions {
        systems: 2,
        auth: Some(("admin".into(), "password".into())),
        tls: true,
        ..Default::default()
    });
    let c = clients();
    let b = bmc(&c, &lab, 0).await;

    // power: the state changes and is read back
    assert_eq!(b.power_state().await.unwrap(), PowerState::Off);
    b.reset(ResetType::On).await.unwrap();
    b.wait_power(&PowerState::On, Duration::from_secs(10)).await.unwrap();
    b.reset(ResetType::ForceOff).await.unwrap();
    b.wait_power(&PowerState::Off, Duration::from_secs(10)).await.unwrap();
    let e = b.wait_power(&PowerState::On, Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }) && e.to_string().contains("did not reach power state"), "{e}");

    // boot once from CD: sushy-tools stores it as Continuous, which the
    // read-back notices
    let current = b.boot_override().await.unwrap();
    assert!(current.allowed_targets.contains(&"Cd".to_string()), "{current:?}");
    let set = b.set_boot_override(BootTarget::Cd, true, None, &current).await.unwrap();
    assert!(set.once_ignored, "sushy-tools keeps a one-time override as Continuous");
    let now = b.boot_override().await.unwrap();
    assert_eq!(now.target.as_deref(), Some("Cd"));
    let set = b.set_boot_override(BootTarget::Hdd, false, None, &now).await.unwrap();
    assert!(!set.once_ignored);
    assert_eq!(lab.get(&lab.system_path(0)).await["Boot"]["BootSourceOverrideTarget"], "Hdd");

    // virtual media: discovered under the system, both slots
    let devices = b.discover_media().await.unwrap();
    let cd = Bmc::pick(&devices, MediaSlot::Cd).expect("a CD").clone();
    let floppy = Bmc::pick(&devices, MediaSlot::Removable).expect("a floppy").clone();
    assert!(cd.path.ends_with("/VirtualMedia/Cd") && floppy.path.ends_with("/VirtualMedia/Floppy"));
    let iso: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files = serve_files(vec![("boot.iso", iso.clone()), ("f.img", vec![0xF0; 1474560])]).await;
    let now = b.insert(&cd, &format!("{files}/boot.iso")).await.unwrap();
    assert!(now.holds(&format!("{files}/boot.iso")));
    assert_eq!(lab.media_bytes(&lab.systems[0], "Cd").await.unwrap(), iso, "the BMC fetched our bytes");
    b.insert(&floppy, &format!("{files}/f.img")).await.unwrap();
    assert_eq!(lab.media_bytes(&lab.systems[0], "Floppy").await.unwrap().len(), 1474560);
    // inserting over an inserted image replaces it
    let now = b.media(&cd.path).await.unwrap();
    b.insert(&now, &format!("{files}/f.img")).await.unwrap();
    let now = b.media(&cd.path).await.unwrap();
    b.eject(&now).await.unwrap();
    let doc = lab.media(&lab.systems[0], "Cd").await;
    assert_eq!(doc["Inserted"], false, "{doc}");
    assert!(lab.media_bytes(&lab.systems[0], "Cd").await.is_none());

    // a refusal carries the BMC's words
    let e = b.insert(&cd, &format!("{files}/missing.iso")).await.unwrap_err();
    match &e {
        BmcError::Refused { status: 400, message, .. } => {
            assert!(message.contains("Cannot download virtual media"), "{message}")
        }
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    assert!(!e.is_retryable());

    // every request used basic auth (no SessionService here) over one
    // connection of the pool
    let reqs = lab.requests().await;
    let redfish: Vec<_> = reqs.iter().filter(|r| r.path != "/redfish/v1/" && r.path.starts_with("/redfish")).collect();
    assert!(redfish.iter().all(|r| r.auth == "basic" || r.path.starts_with("/redfish/v1/SessionService")), "{reqs:?}");
    assert_eq!(c.len(), 1, "one connection per BMC");
}

#[tokio::test]
async fn tls_verification_follows_verify_ca_and_credentials_are_checked() {
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        auth: Some(("admin".into(), "password".into())),
        tls: true,
        ..Default::default()
    });
    let c = clients();
    let mut i = info(&lab, 0);
    // the system trust store does not know the lab's self-signed certificate
    i.endpoint.verify = Verify::System;
    let b = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    let e = b.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // no check at all (Ironic's False)
    i.endpoint.verify = Verify::Insecure;
    let b = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    assert_eq!(b.power_state().await.unwrap(), PowerState::Off);
    // a CA path that is not a certificate is a configuration error
    i.endpoint.verify = Verify::CaFile(lab.dir().join("emulator.conf"));
    let e = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(e, BmcError::Config(_)) && e.to_string().contains("redfish_verify_ca"), "{e}");
    // wrong password: an auth error naming the user, not retried
    let mut wrong = info(&lab, 0);
    wrong.endpoint.password = "nope".into();
    let b = Bmc::connect(&c, &wrong, Vendor::Generic, Duration::from_millis(20)).await;
    let e = match b {
        Ok(b) => b.power_state().await.unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(e, BmcError::Auth { status: 401, .. }), "{e:?}");
    assert!(e.to_string().contains("\"admin\""), "{e}");
}

#[tokio::test]
async fn sessions_are_used_renewed_and_basic_auth_is_the_fallback() {
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        auth: Some(("admin".into(), "password".into())),
        sessions: true,
        ..Default::default()
    });
    let c = clients();
    let b = bmc(&c, &lab, 0).await;
    for _ in 0..3 {
        b.power_state().await.unwrap();
    }
    let reqs = lab.requests().await;
    let logins = reqs.iter().filter(|r| r.method == "POST" && r.path.ends_with("/SessionService/Sessions")).count();
    assert_eq!(logins, 1, "one session for the connection: {reqs:?}");
    let system_reads: Vec<_> = reqs.iter().filter(|r| r.path == lab.system_path(0)).collect();
    assert_eq!(system_reads.len(), 3);
    assert!(system_reads.iter().all(|r| r.auth == "token"), "{reqs:?}");

    // the BMC forgets its sessions (a restart): the next request logs in
    // again by itself, once
    lab.expire_sessions().await;
    b.power_state().await.unwrap();
    let reqs = lab.requests().await;
    let logins = reqs.iter().filter(|r| r.method == "POST" && r.path.ends_with("/SessionService/Sessions")).count();
    assert_eq!(logins, 2, "{reqs:?}");

    // `basic` never logs in; `session` against a BMC without sessions is an
    // error that says so
    let mut basic = info(&lab, 0);
    basic.endpoint.auth = AuthType::Basic;
    let b = Bmc::connect(&c, &basic, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    b.power_state().await.unwrap();
    assert_eq!(lab.requests().await.last().unwrap().auth, "basic");

    // sushy-tools guards every path, the login too: `session` reports the
    // BMC's refusal
    let plain =
        SushyLab::start(SushyOptions { systems: 1, auth: Some(("u".into(), "p".into())), ..Default::default() });
    let seen_at_start = plain.requests().await.len();
    let mut only = info(&plain, 0);
    only.endpoint.auth = AuthType::Session;
    let b = Bmc::connect(&c, &only, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    let e = b.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Auth { status: 401, .. }), "{e:?}");
    // a BMC without auth and without sessions: `session` says what is missing
    let open = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
    let mut only = info(&open, 0);
    only.endpoint.username = "u".into();
    only.endpoint.password = "p".into();
    only.endpoint.auth = AuthType::Session;
    let b = Bmc::connect(&c, &only, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    let e = b.power_state().await.unwrap_err();
    assert!(e.to_string().contains("no SessionService"), "{e}");
    // auto falls back to basic auth for good: one failed login, then basic
    let auto = Bmc::connect(&c, &info(&plain, 0), Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    auto.power_state().await.unwrap();
    auto.power_state().await.unwrap();
    // (the refused logins never reach the emulator's routes; each login
    // attempt starts with a read of the service root)
    let reqs = plain.requests().await.split_off(seen_at_start);
    let tries = reqs.iter().filter(|r| r.path == "/redfish/v1/").count();
    assert_eq!(tries, 2, "one login attempt each for `session` and `auto`: {reqs:?}");
    let system = plain.system_path(0);
    let reads: Vec<_> = reqs.iter().filter(|r| r.path == system).collect();
    assert_eq!(reads.len(), 2, "{reqs:?}");
    assert!(reads.iter().all(|r| r.auth == "basic"), "{reqs:?}");
}

#[tokio::test]
async fn unreachable_bmcs_are_retried_a_bounded_number_of_times() {
    let c = clients();
    // a port nothing listens on
    let port = ferric_tests::free_port();
    let endpoint = Endpoint {
        address: format!("http://127.0.0.1:{port}"),
        username: String::new(),
        password: String::new(),
        verify: Verify::System,
        auth: AuthType::Auto,
    };
    let info = BmcInfo { endpoint, system: Some("/redfish/v1/Systems/1".into()) };
    let b = Bmc::connect(&c, &info, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    let before = c.requests.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let e = b.power_state().await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("unreachable") && e.to_string().to_lowercase().contains("refused"), "{e}");
    assert_eq!(c.requests.load(std::sync::atomic::Ordering::Relaxed) - before, 3, "three attempts in all");
    // 50 ms, then 100 ms between them
    assert!(start.elapsed() >= Duration::from_millis(150), "backed off: {:?}", start.elapsed());
}

#[tokio::test]
async fn a_bmc_with_one_system_needs_no_system_id_and_many_systems_need_one() {
    let one = SushyLab::start(SushyOptions { systems: 1, ..Default::default() });
    let c = clients();
    let mut i = info(&one, 0);
    i.system = None;
    let b = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    assert_eq!(b.system_path(), one.system_path(0));
    let many = SushyLab::start(SushyOptions { systems: 3, ..Default::default() });
    let mut i = info(&many, 0);
    i.system = None;
    let e = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(e, BmcError::Config(_)) && e.to_string().contains("redfish_system_id"), "{e}");
    // a system that does not exist: the BMC's 404, with its message
    let mut i = info(&many, 0);
    i.system = Some("/redfish/v1/Systems/nope".into());
    let b = Bmc::connect(&c, &i, Vendor::Generic, Duration::from_millis(20)).await.unwrap();
    let e = b.power_state().await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e:?}");
    assert!(e.to_string().contains("not found"), "{e}");
    let _: Value = many.get(&many.system_path(2)).await;
}
