//! A long operation survives its conductor: killed (SIGKILL) or stopped
//! (SIGTERM) mid-deploy, the next start resumes the deploy at its recorded
//! step instead of failing the node or starting over.

use std::time::{Duration, Instant};

use ferric_common::db::Db;
use ferric_tests::{Ferric, http};
use serde_json::{Value, json};

async fn get(c: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = c.get(format!("{base}{path}")).header("X-OpenStack-Ironic-API-Version", "1.115").send().await.unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

async fn send(c: &reqwest::Client, method: reqwest::Method, base: &str, path: &str, body: Value) -> Value {
    let r = c
        .request(method, format!("{base}{path}"))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn wait_for(c: &reqwest::Client, base: &str, node: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let n = get(c, base, &format!("/v1/nodes/{node}")).await;
        if pred(&n) {
            return n;
        }
        let s = n["provision_state"].as_str().unwrap_or_default().to_string();
        assert!(!s.ends_with("failed") && s != "error", "node failed while waiting for {what}: {n}");
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bring a slow node to `available`, start a deploy, and wait until its
/// second step runs.
async fn deploy_until_second_step(c: &reqwest::Client, base: &str) -> String {
    let n = send(
        c,
        reqwest::Method::POST,
        base,
        "/v1/nodes",
        json!({"driver": "fake-hardware", "name": "slow",
        "driver_info": {"fake_step_delay_ms": 700}}),
    )
    .await;
    let uuid = n["uuid"].as_str().unwrap().to_string();
    for (verb, state) in [("manage", "manageable"), ("provide", "available")] {
        send(c, reqwest::Method::PUT, base, "/v1/nodes/slow/states/provision", json!({"target": verb})).await;
        wait_for(c, base, "slow", state, |n| n["provision_state"] == state).await;
    }
    send(c, reqwest::Method::PUT, base, "/v1/nodes/slow/states/provision", json!({"target": "active"})).await;
    wait_for(c, base, "slow", "step write_image", |n| n["deploy_step"]["step"] == "write_image").await;
    uuid
}

async fn history(ferric: &Ferric, uuid: &str) -> Vec<(String, String, String)> {
    let db = Db::connect(&format!("sqlite://{}/ferric.sqlite", ferric.data_dir.path().display()), 1).await.unwrap();
    let h = db.history(uuid.parse().unwrap()).await.unwrap();
    db.close().await;
    h.into_iter().map(|e| (e.incarnation, e.event, e.detail)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_deploy_then_restart_resumes() {
    let mut ferric = Ferric::start(None, &[]);
    let c = http();
    let base = ferric.endpoint.clone();
    let uuid = deploy_until_second_step(&c, &base).await;
    let before = get(&c, &base, "/v1/nodes/slow").await;
    let dead = before["reservation"].as_str().unwrap().to_string();

    ferric.restart();
    let n = wait_for(&c, &base, "slow", "active", |n| n["provision_state"] == "active").await;
    assert_eq!(n["reservation"], Value::Null);
    assert_eq!(n["power_state"], "power on");
    assert!(n["driver_internal_info"].get("ferric_operation").is_none(), "the operation record is gone: {n}");

    let h = history(&ferric, &uuid).await;
    let steps = |name: &str| h.iter().filter(|(_, e, d)| e == "step" && d.ends_with(name)).count();
    assert_eq!(steps("deploy.deploy"), 1, "the finished first step is not run again: {h:?}");
    assert!(steps("deploy.write_image") >= 1);
    let resumed: Vec<_> = h.iter().filter(|(_, e, _)| e == "resume").collect();
    assert_eq!(resumed.len(), 1, "{h:?}");
    assert_ne!(resumed[0].0, dead, "a new incarnation resumed it");
    let done = h.iter().find(|(_, e, d)| e == "done" && d.starts_with("deploying")).expect("deploy finished");
    assert_ne!(done.0, dead);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_deploy_hands_off_at_a_step_boundary() {
    let mut ferric = Ferric::start(None, &[]);
    let c = http();
    let base = ferric.endpoint.clone();
    let uuid = deploy_until_second_step(&c, &base).await;

    let status = ferric.stop().expect("was running");
    assert!(status.success(), "graceful stop exits 0, got {status}");
    // stopped between steps: lock released, record kept, still deploying
    let db = Db::connect(&format!("sqlite://{}/ferric.sqlite", ferric.data_dir.path().display()), 1).await.unwrap();
    let n = db.get_node(uuid.parse().unwrap()).await.unwrap();
    db.close().await;
    assert_eq!(n.reservation, None, "the lock was released on shutdown");
    assert_eq!(n.provision_state.as_str(), "deploying");
    let record = &n.driver_internal_info["ferric_operation"];
    assert!(record["next"].as_u64().unwrap() >= 2, "{record}");

    ferric.restart();
    wait_for(&c, &base, "slow", "active", |n| n["provision_state"] == "active").await;
    let h = history(&ferric, &uuid).await;
    assert_eq!(h.iter().filter(|(_, e, d)| e == "step" && d.ends_with("deploy.write_image")).count(), 1, "{h:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_wait_resumes_on_heartbeat_and_times_out_without_one() {
    let ferric = Ferric::start(
        None,
        &[("FERRIC_CONDUCTOR__CALLBACK_TIMEOUT_SECS", "3"), ("FERRIC_CONDUCTOR__PERIODIC_INTERVAL_SECS", "1")],
    );
    let c = http();
    let base = ferric.endpoint.clone();
    let mut uuids = Vec::new();
    for name in ["hb", "silent"] {
        let n = send(
            &c,
            reqwest::Method::POST,
            &base,
            "/v1/nodes",
            json!({"driver": "fake-hardware", "name": name,
            "driver_info": {"fake_wait_after": "deploy.write_image"}}),
        )
        .await;
        uuids.push(n["uuid"].as_str().unwrap().to_string());
        for (verb, state) in [("manage", "manageable"), ("provide", "available"), ("active", "wait call-back")] {
            send(
                &c,
                reqwest::Method::PUT,
                &base,
                &format!("/v1/nodes/{name}/states/provision"),
                json!({"target": verb}),
            )
            .await;
            wait_for(&c, &base, name, state, |n| n["provision_state"] == state).await;
        }
    }
    let n = get(&c, &base, "/v1/nodes/hb").await;
    assert_eq!(n["target_provision_state"], "active");
    assert_eq!(n["reservation"], Value::Null, "nobody holds a waiting node");

    // the ramdisk looks itself up: the token is minted once, then masked
    let lookup = |v: &'static str| {
        let c = c.clone();
        let url = format!("{base}/v1/lookup?node_uuid={}", uuids[0]);
        async move { c.get(url).header("X-OpenStack-Ironic-API-Version", v).send().await.unwrap() }
    };
    let first: Value = lookup("1.62").await.json().await.unwrap();
    let token = first["config"]["agent_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 43, "{first}");
    let again: Value = lookup("1.62").await.json().await.unwrap();
    assert_eq!(again["config"]["agent_token"], "******");
    let n = get(&c, &base, "/v1/nodes/hb").await;
    assert_eq!(n["driver_internal_info"]["agent_secret_token"], "******", "an open session shows as Ironic shows it");
    assert!(!n.to_string().contains(&token), "the token is never shown: {n}");
    assert!(n["driver_internal_info"].get("agent_token_nonce").is_none(), "{n}");
    assert_eq!(lookup("1.21").await.status(), 404, "no lookup before 1.22");
    let heartbeat = |token: String| {
        let c = c.clone();
        let url = format!("{base}/v1/heartbeat/{}", uuids[0]);
        async move {
            c.post(url)
                .header("X-OpenStack-Ironic-API-Version", "1.68")
                .json(
                    &json!({"callback_url": "https://127.0.0.1:9999", "agent_token": token, "agent_version": "10.0.0"}),
                )
                .send()
                .await
                .unwrap()
        }
    };
    let bad = heartbeat("nope".into()).await;
    assert_eq!(bad.status(), 400);
    let body = ferric_tests::error_body(&bad.text().await.unwrap());
    assert_eq!(body["faultstring"], "Invalid or missing agent token received.");
    assert_eq!(heartbeat(token.clone()).await.status(), 202);
    let n = wait_for(&c, &base, "hb", "active", |n| n["provision_state"] == "active").await;
    // the session ended with the deploy (Ironic's wipe_token_and_url)
    assert_eq!(n["driver_internal_info"].get("agent_url"), None, "{n}");
    assert_eq!(n["driver_internal_info"].get("agent_secret_token"), None, "{n}");

    // the next ramdisk session (cleaning after the undeploy) gets a token of
    // its own, and the old one is refused
    send(
        &c,
        reqwest::Method::PATCH,
        &base,
        "/v1/nodes/hb",
        json!([{"op": "add", "path": "/driver_info/fake_wait_after", "value": "deploy.erase_devices_metadata"}]),
    )
    .await;
    send(&c, reqwest::Method::PUT, &base, "/v1/nodes/hb/states/provision", json!({"target": "deleted"})).await;
    wait_for(&c, &base, "hb", "clean wait", |n| n["provision_state"] == "clean wait").await;
    let second: Value = lookup("1.62").await.json().await.unwrap();
    let token2 = second["config"]["agent_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(token2.len(), 43, "a second session gets a token: {second}");
    assert_ne!(token2, token);
    assert_eq!(heartbeat(token).await.status(), 400, "the first session's token is dead");
    assert_eq!(heartbeat(token2).await.status(), 202);
    wait_for(&c, &base, "hb", "available", |n| n["provision_state"] == "available").await;

    // without a heartbeat the deadline fails the deploy
    let n = wait_for(&c, &base, "silent", "deploy failed", |n| {
        n["provision_state"] == "deploy failed" || n["provision_state"] == "active"
    })
    .await;
    assert_eq!(n["provision_state"], "deploy failed");
    assert!(n["last_error"].as_str().unwrap().contains("Timeout reached while waiting for callback"), "{n}");
}

/// A lock cleared in the database under a running operation (an operator's
/// UPDATE, a stale dead-lock clearing) must not let this conductor start
/// the same operation a second time while its task still runs: the running
/// task stops at its next save (the lock is no longer its own) and the
/// operation resumes once, from its recorded step. Before, the orphan pass
/// started a second task that ran every remaining step next to the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_cleared_under_a_running_operation_never_runs_it_twice() {
    let ferric = Ferric::start(None, &[]);
    let c = http();
    let base = ferric.endpoint.clone();
    let uuid = deploy_until_second_step(&c, &base).await;
    let db = Db::connect(&format!("sqlite://{}/ferric.sqlite", ferric.data_dir.path().display()), 1).await.unwrap();
    // write_image sleeps 700 ms; the orphan pass looks every second
    let holder = get(&c, &base, "/v1/nodes/slow").await["reservation"].as_str().unwrap().into();
    assert!(db.release_node(uuid.parse().unwrap(), &holder).await.unwrap());
    db.close().await;
    wait_for(&c, &base, "slow", "active", |n| n["provision_state"] == "active" && n["reservation"].is_null()).await;
    // a second task would have been done later than the first: give it time
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let h = history(&ferric, &uuid).await;
    let done: Vec<_> = h.iter().filter(|(_, e, d)| e == "done" && d.starts_with("deploying")).collect();
    assert_eq!(done.len(), 1, "the deploy finished once: {h:?}");
    for step in ["deploy.prepare_instance_boot", "deploy.boot_instance"] {
        let runs = h.iter().filter(|(_, e, d)| e == "step" && d.ends_with(step)).count();
        assert_eq!(runs, 1, "{step} ran {runs} times: {h:?}");
    }
}
