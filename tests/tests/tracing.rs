//! Distributed tracing end to end: Ferric processes export their spans
//! over OTLP/gRPC to a collector in this test (`ferric_tests::otlp`), and a
//! power action sent with a W3C `traceparent` comes back as one trace —
//! the REST request, the API's gRPC call, the conductor's handler, the
//! power action it runs in the background and every Redfish request to the
//! BMC (the sushy-tools emulator, with a password and sessions) — each
//! naming the node, none carrying a secret.
//!
//! Twice: in `ferric all-in-one` (API and conductor in one process, the
//! gRPC hop over loopback; its spans reach the collector only through the
//! flush at shutdown) and in a cluster (an API process and a conductor
//! process on etcd and PostgreSQL). And off: with `OTEL_SDK_DISABLED=true`
//! or without an endpoint, nothing is exported, the power action works
//! and the log says traces are off.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferric_tests::cluster::Cluster;
use ferric_tests::otlp::{Collector, Span};
use ferric_tests::ramdisk::{EmulatorConfig, RamdiskSim, SimConfig, lab_mac};
use ferric_tests::redfish::{SushyLab, SushyOptions};
use ferric_tests::{Api, Ferric, free_port};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "Redfish-Pass-5e1c7";
const CLUSTER_SECRET: &str = "cluster-secret-0b9d3f6a2c";

fn lab() -> SushyLab {
    SushyLab::start(SushyOptions {
        systems: 1,
        auth: Some(("admin".into(), PASSWORD.into())),
        sessions: true,
        ..Default::default()
    })
}

/// What every Ferric process of these tests is started with; spans are
/// exported `delay_ms` after they end.
fn env(collector: &Collector, delay_ms: u32) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ("FERRIC_CONDUCTOR__CLUSTER_SECRET", CLUSTER_SECRET.into()),
        ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50".into()),
        ("FERRIC_REDFISH__CONNECTION_RETRY_INTERVAL_MS", "100".into()),
    ]
}

/// A fresh W3C trace id and parent span id, as a client would send them.
fn client_trace() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (id, parent)
}

/// Powers the node on with a `traceparent`; returns the request id the API
/// answered once the node is on.
async fn power_on(api: &Api, node: &str, trace_id: &str, parent: &str) -> String {
    let resp = api
        .client
        .put(format!("{}/v1/nodes/{node}/states/power", api.endpoint))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .json(&json!({"target": "power on"}))
        .send()
        .await
        .expect("PUT power");
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let request_id = resp.headers()["x-openstack-request-id"].to_str().unwrap().to_string();
    assert!(request_id.starts_with("req-"), "{request_id}");
    let start = Instant::now();
    loop {
        let n = api.node(node).await;
        if n["power_state"] == "power on" && n["target_power_state"].is_null() {
            assert!(n["last_error"].is_null(), "{n}");
            return request_id;
        }
        assert!(start.elapsed() < WAIT, "the node did not power on: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_reset(s: &Span) -> bool {
    s.kind == "client" && s.attr("url.full").is_some_and(|u| u.ends_with("/Actions/ComputerSystem.Reset"))
}

/// The spans from `span` up to the root of its trace, `span` first.
fn ancestry<'a>(span: &'a Span, by_id: &HashMap<&str, &'a Span>) -> Vec<&'a Span> {
    let mut out = vec![span];
    while let Some(p) = by_id.get(out.last().unwrap().parent_span_id.as_str()) {
        out.push(p);
    }
    out
}

fn describe(spans: &[&Span]) -> String {
    spans
        .iter()
        .map(|s| format!("{} {} {:?} {:?}", s.service, s.kind, s.name, s.attributes))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The acceptance: one trace from the client's `traceparent` to the BMC's
/// reset, linked span to parent span, with the node and the request id on
/// every span of it, and no secret anywhere in what was exported.
async fn assert_one_trace(
    collector: &Collector,
    trace_id: &str,
    parent: &str,
    node: &str,
    request_id: &str,
    services: (&str, &str),
) {
    let spans = collector
        .wait_for("the trace of the power action, down to the BMC's reset", WAIT, |spans| {
            // the power action's span ends after its last BMC request
            spans.iter().any(|s| s.trace_id == trace_id && is_reset(s))
                && spans.iter().any(|s| s.trace_id == trace_id && s.name == "power action")
        })
        .await;
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &Span> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let reset = trace.iter().find(|s| is_reset(s)).expect("a Redfish reset");
    let chain = ancestry(reset, &by_id);
    let all = describe(&trace);

    // reset ← … ← power action ← … ← gRPC server ← gRPC client ← … ← REST request ← the client's parent
    let at = |what: &str, pred: &dyn Fn(&Span) -> bool| {
        chain.iter().position(|s| pred(s)).unwrap_or_else(|| {
            panic!("no {what} among the reset's ancestors:\n{}\n-- the whole trace --\n{all}", describe(&chain))
        })
    };
    let power = at("power action span", &|s| s.name == "power action" && s.service == services.1);
    assert_eq!(chain[power].attr("power.target"), Some("power on"));
    let server = at("gRPC server span", &|s| {
        s.kind == "server" && s.attr("rpc.system") == Some("grpc") && s.service == services.1
    });
    let client = at("gRPC client span", &|s| {
        s.kind == "client" && s.attr("rpc.system") == Some("grpc") && s.service == services.0
    });
    let request = at("REST request span", &|s| s.kind == "server" && s.attr("http.route").is_some());
    assert!(power < server && server < client && client < request, "out of order:\n{}", describe(&chain));
    assert_eq!(
        chain[server].parent_span_id, chain[client].span_id,
        "the gRPC hop: server span's parent is the client's"
    );
    assert_eq!(chain.last().unwrap().span_id, chain[request].span_id, "the REST request span is the root here");
    assert_eq!(chain[request].parent_span_id, parent, "the client's traceparent is the request span's parent");
    assert_eq!(chain[request].name, "PUT /v1/nodes/{node}/states/power");
    assert_eq!(chain[request].attr("http.response.status_code"), Some("202"));
    assert_eq!(chain[request].service, services.0);
    assert_eq!(chain[server].attr("rpc.method"), Some("ChangePowerState"));
    assert_eq!(chain[client].name, "ferric.v1.Conductor/ChangePowerState");

    // the node and the request on every span from the request down
    for s in chain[..=request].iter().chain(trace.iter().filter(|s| s.attr("url.full").is_some())) {
        assert_eq!(s.attr("node.uuid"), Some(node), "node.uuid of {} {:?}:\n{all}", s.kind, s.name);
        assert_eq!(s.attr("request_id"), Some(request_id), "request_id of {} {:?}:\n{all}", s.kind, s.name);
    }
    let bmc = trace.iter().filter(|s| s.attr("url.full").is_some_and(|u| u.contains("/redfish/v1/"))).count();
    assert!(bmc >= 2, "a Redfish client span per BMC request (the reset and the power state reads):\n{all}");

    // nothing secret in anything exported: names, attributes, events, resources
    let exported = collector.exported_bytes();
    assert!(!exported.is_empty());
    for secret in [PASSWORD, CLUSTER_SECRET] {
        assert!(!exported.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} was exported");
    }
}

fn assert_no_secret_in(log: &str, what: &str) {
    assert!(!log.is_empty(), "{what} has no log");
    for secret in [PASSWORD, CLUSTER_SECRET] {
        assert!(!log.contains(secret), "{secret} is in the log of {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_action_is_one_trace_from_the_rest_request_to_the_bmc_in_all_in_one() {
    let collector = Collector::start().await;
    let lab = lab();
    // no export before the process stops (the batch is sent every 10
    // minutes): what arrives was sent by the shutdown's flush
    let env = env(&collector, 600_000);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("FERRIC_LOG__FORMAT", "json"));
    let mut ferric = Ferric::start(None, &env);
    let api = Api::new(&ferric.endpoint);
    let node =
        api.create_node(json!({"driver": "redfish", "name": "traced", "driver_info": lab.driver_info(0)}), &[]).await;

    let (trace_id, parent) = client_trace();
    let request_id = power_on(&api, &node, &trace_id, &parent).await;
    assert_eq!(lab.get(&lab.system_path(0)).await["PowerState"], "On");
    let stopped = ferric.stop().expect("a running process");
    assert!(stopped.success(), "ferric all-in-one did not stop cleanly: {stopped:?}");
    assert_one_trace(&collector, &trace_id, &parent, &node, &request_id, ("ferric", "ferric")).await;

    // the JSON log line of the outcome says which node, request and trace
    let log = ferric.process.log_tail(100_000);
    assert_no_secret_in(&log, "ferric all-in-one");
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "power state set")
        .unwrap_or_else(|| panic!("no JSON line says the power state was set:\n{log}"));
    let span = &line["span"];
    assert_eq!(span["name"], "power action", "{line}");
    assert_eq!(span["node.uuid"], node.as_str(), "{line}");
    assert_eq!(span["request_id"], request_id.as_str(), "{line}");
    assert_eq!(span["trace_id"], trace_id.as_str(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_action_is_one_trace_across_the_api_and_conductor_processes() {
    let collector = Collector::start().await;
    let lab = lab();
    // export within a fraction of a second of a span's end (default 5 s)
    let env = env(&collector, 100);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start(1, 6, &env);
    cluster.wait_conductors(1).await;
    let api = Api::new(&cluster.api_url);
    let node =
        api.create_node(json!({"driver": "redfish", "name": "traced", "driver_info": lab.driver_info(0)}), &[]).await;

    let (trace_id, parent) = client_trace();
    let request_id = power_on(&api, &node, &trace_id, &parent).await;
    assert_one_trace(&collector, &trace_id, &parent, &node, &request_id, ("ferric-api", "ferric-conductor")).await;
    assert_no_secret_in(&cluster.api.log_tail(100_000), "the API process");
    assert_no_secret_in(&cluster.conductors[0].0.log_tail(100_000), "the conductor process");
}

/// The JSON lines of a log.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_or_with_the_sdk_disabled_nothing_is_exported_and_power_works() {
    let collector = Collector::start().await;
    let lab = SushyLab::start(SushyOptions {
        systems: 2,
        auth: Some(("admin".into(), PASSWORD.into())),
        sessions: true,
        ..Default::default()
    });
    let json = ("FERRIC_LOG__FORMAT", "json");
    let fast = ("FERRIC_CONDUCTOR__POWER_STATE_POLL_INTERVAL_MS", "50");
    // OTEL_SDK_DISABLED wins over an endpoint that reaches the collector
    let disabled = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SDK_DISABLED", "true"),
        json,
        fast,
    ];
    // other OTEL_* variables but no endpoint: no exporter either
    let unset = [("OTEL_SERVICE_NAME", "ferric-untraced"), ("OTEL_TRACES_SAMPLER", "always_on"), json, fast];
    for (i, env) in [&disabled[..], &unset[..]].into_iter().enumerate() {
        let mut ferric = Ferric::start(None, env);
        let api = Api::new(&ferric.endpoint);
        let node = api
            .create_node(json!({"driver": "redfish", "name": "untraced", "driver_info": lab.driver_info(i)}), &[])
            .await;
        let (trace_id, parent) = client_trace();
        let request_id = power_on(&api, &node, &trace_id, &parent).await;
        assert_eq!(lab.get(&lab.system_path(i)).await["PowerState"], "On");
        // the shutdown would flush a batch if there were one
        let stopped = ferric.stop().expect("a running process");
        assert!(stopped.success(), "ferric all-in-one did not stop cleanly: {stopped:?}");

        let log = ferric.process.log_tail(100_000);
        let lines = json_lines(&log);
        assert!(
            lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("traces not exported"))),
            "no line says traces are not exported:\n{log}"
        );
        // request ids and nodes are on the lines all the same; no trace id
        let done = lines
            .iter()
            .find(|l| l["fields"]["message"] == "power state set")
            .unwrap_or_else(|| panic!("no JSON line says the power state was set:\n{log}"));
        assert_eq!(done["span"]["node.uuid"], node.as_str(), "{done}");
        assert_eq!(done["span"]["request_id"], request_id.as_str(), "{done}");
        assert!(
            !log.contains("trace_id") && !log.contains(&trace_id),
            "a trace id in the log of an untraced process:\n{log}"
        );
        assert_no_secret_in(&log, "ferric all-in-one");
    }
    assert!(collector.spans().is_empty(), "spans were exported: {:?}", collector.spans());
    assert!(collector.exported_bytes().is_empty());
}

/// An operation planned in one trace and resumed in another links back:
/// `provide` (sent with a `traceparent`) starts cleaning, which boots the
/// ramdisk and waits; the ramdisk's heartbeat (a REST request of its own,
/// without a `traceparent`) resumes it in the heartbeat's trace, whose
/// `operation cleaning` span links to the planning run's span and names
/// its trace in `origin_trace_id`. A take-over's resume uses the same
/// record. The agent's requests are client spans without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_resumed_by_the_ramdisk_links_to_the_trace_that_planned_it() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let lab = SushyLab::start(SushyOptions {
        systems: 1,
        notify_url: Some(format!("http://127.0.0.1:{sim_port}/notify")),
        ..Default::default()
    });
    let sim = RamdiskSim::start(SimConfig {
        listen: format!("127.0.0.1:{sim_port}"),
        emulators: vec![EmulatorConfig::from_lab(&lab)],
        disks_dir: Some(dir.path().join("disks")),
        log_path: Some(dir.path().join("ramdisk-sim.jsonl")),
        disk_size_bytes: 1024 * 1024,
        boot_delay_ms: 100,
        heartbeat_interval_ms: Some(1000),
        heartbeat_retry_ms: Some(500),
        forced_heartbeat_min_ms: 200,
        lookup_interval_ms: 200,
        lookup_max_interval_ms: 2000,
        agent_restart_ms: 1000,
        // the agent API over HTTPS (Ferric requires it), its CA handed
        // over in the heartbeat
        tls: true,
        ..Default::default()
    })
    .await
    .expect("ramdisk simulator");
    let _sim_log = SimLog(&sim);
    let http = format!("127.0.0.1:{}", free_port());
    let env = env(&collector, 100);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("FERRIC_CONDUCTOR__HTTP_LISTEN", http.as_str()));
    let ferric = Ferric::start(None, &env);
    let api = Api::new(&ferric.endpoint);
    let (kernel, ramdisk) = (dir.path().join("vmlinuz"), dir.path().join("initrd"));
    std::fs::write(&kernel, "deploy kernel ".repeat(4000)).unwrap();
    std::fs::write(&ramdisk, "deploy ramdisk ".repeat(8000)).unwrap();
    let mut info = lab.driver_info(0);
    info["deploy_kernel"] = format!("file://{}", kernel.display()).into();
    info["deploy_ramdisk"] = format!("file://{}", ramdisk.display()).into();
    let node = api.create_node(json!({"driver": "redfish", "name": "cleaned", "driver_info": info}), &[]).await;
    api.ok(Method::POST, "/v1/ports", Some(json!({"address": lab_mac(0), "node_uuid": node}))).await;
    api.provision(&node, "manage").await;
    api.wait_state(&node, "manageable", WAIT).await;

    let (trace_id, parent) = client_trace();
    let resp = api
        .client
        .put(format!("{}/v1/nodes/{node}/states/provision", api.endpoint))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .json(&json!({"target": "provide"}))
        .send()
        .await
        .expect("PUT provide");
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let done = api.wait_state(&node, "available", Duration::from_secs(120)).await;
    assert!(done["last_error"].is_null(), "{done}");

    let is_cleaning = |s: &Span| s.name == "operation cleaning" && s.attr("node.uuid") == Some(node.as_str());
    let spans = collector
        .wait_for("the planning and the resumed cleaning runs", WAIT, |spans| {
            spans.iter().any(|s| is_cleaning(s) && s.trace_id == trace_id)
                && spans.iter().any(|s| is_cleaning(s) && s.trace_id != trace_id)
        })
        .await;
    let planned = spans.iter().find(|s| is_cleaning(s) && s.trace_id == trace_id).unwrap();
    assert_eq!(planned.attr("origin_trace_id"), None, "the planning run resumes nothing: {planned:?}");
    assert!(planned.links.is_empty(), "{planned:?}");
    let resumed: Vec<&Span> = spans.iter().filter(|s| is_cleaning(s) && s.trace_id != trace_id).collect();
    for r in &resumed {
        assert_eq!(r.attr("origin_trace_id"), Some(trace_id.as_str()), "{r:?}");
        assert_eq!(r.links, vec![(trace_id.clone(), planned.span_id.clone())], "{r:?}");
    }
    // the resumed run is the heartbeat's: its trace holds the REST heartbeat
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let root = *ancestry(resumed[0], &by_id).last().unwrap();
    assert_eq!(root.attr("http.route"), Some("/v1/heartbeat/{node}"), "{}", describe(&ancestry(resumed[0], &by_id)));

    // the agent's requests: client spans naming the node, no token
    let agent: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("agent ")).collect();
    assert!(!agent.is_empty(), "no agent request span");
    for a in &agent {
        assert_eq!(a.kind, "client");
        assert_eq!(a.attr("node.uuid"), Some(node.as_str()), "{a:?}");
        assert!(a.attr("url.full").is_some_and(|u| u.contains("/v1/commands") && !u.contains('?')), "{a:?}");
    }
    let exported = collector.exported_bytes();
    assert!(!exported.windows(11).any(|w| w == b"agent_token"), "an agent token's query was exported");
}

/// Prints the tail of the ramdisk simulator's log when a test fails.
struct SimLog<'a>(&'a RamdiskSim);

impl Drop for SimLog<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.0.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("---- ramdisk-sim log (tail) ----\n{}", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
    }
}
