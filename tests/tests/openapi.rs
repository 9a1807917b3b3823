//! The OpenAPI document (`api-server/openapi.json`) against a real
//! all-in-one on PostgreSQL (the stricter backend): schemathesis, from the
//! venv `scripts/deps.sh` makes, reads the document the server serves at
//! `/openapi.json` and generates requests from it — the schema's examples,
//! boundary values, random valid and invalid inputs, chains of calls — with
//! a fixed seed and a bounded number of examples per operation. Every
//! answer must be no 5xx and conform to the document: a documented status
//! code, content type, headers and body.
//!
//! The node and the port the document names in its examples are created
//! first (with a few more nodes, so lists have pages), and the run must
//! have reached them: each operation on them listed in [`REACHED`] got a
//! 2xx at least once, not only 404s.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferric_tests::{Api, Ferric, Postgres, venv};
use reqwest::Method;
use serde_json::{Value, json};

/// Examples per operation and phase: every phase reaches every documented
/// answer of the seeded resources; the run takes about a minute and a half
/// on 2 cores.
const MAX_EXAMPLES: &str = "15";
/// Any fixed seed: the same requests every run.
const SEED: &str = "21";
/// Bound of the whole run.
const RUN_BOUND: Duration = Duration::from_secs(400);

/// Operations on the document's example resources that must have answered
/// 2xx at least once: `(method, path after the endpoint)`, `{node}`,
/// `{port}` standing for the examples.
const REACHED: &[(&str, &str)] = &[
    ("GET", "/v1/nodes/{node}"),
    ("PATCH", "/v1/nodes/{node}"),
    ("GET", "/v1/nodes/{node}/states"),
    ("PUT", "/v1/nodes/{node}/states/provision"),
    ("PUT", "/v1/nodes/{node}/states/power"),
    ("GET", "/v1/nodes/{node}/validate"),
    ("PUT", "/v1/nodes/{node}/maintenance"),
    ("GET", "/v1/nodes/{node}/ports"),
    ("GET", "/v1/nodes/{node}/vendor_passthru/methods"),
    ("POST", "/v1/nodes/{node}/vendor_passthru/second_method"),
    ("GET", "/v1/ports/{port}"),
    ("GET", "/v1/drivers/fake-hardware"),
    ("GET", "/v1/drivers/fake-hardware/properties"),
    ("POST", "/v1/drivers/fake-hardware/vendor_passthru/driver_method"),
    ("GET", "/v1/conductors/conductor-1"),
    ("GET", "/v1/nodes"),
    ("POST", "/v1/nodes"),
];

fn example<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("openapi.json has no {pointer}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let schemathesis = venv().join("bin/schemathesis");
    assert!(schemathesis.exists(), "no schemathesis in {} — run scripts/deps.sh", venv().display());
    let pg = Postgres::start();
    let ferric = Ferric::start(Some(&pg.database("ferric_openapi")), &[]);
    let api = Api::new(&ferric.endpoint);

    let doc = api.get("/openapi.json").await;
    let node = example(&doc, "/components/parameters/node/example");
    let port = example(&doc, "/components/parameters/port/example");
    let mac = example(&doc, "/components/schemas/MacAddress/example");
    // protected: the document's delete example leaves it there for the others
    let body = json!({"uuid": node, "name": "openapi-example", "driver": "fake-hardware", "protected": true,
                      "driver_info": {"fake_password": "secret"}, "resource_class": "openapi"});
    assert_eq!(api.ok(Method::POST, "/v1/nodes", Some(body)).await["uuid"], node);
    api.ok(Method::POST, "/v1/ports", Some(json!({"uuid": port, "address": mac, "node_uuid": node}))).await;
    for i in 0..3 {
        let body = json!({"driver": "fake-hardware", "name": format!("openapi-{i}"), "resource_class": "openapi"});
        api.create_node(body, &[]).await;
    }

    // its reports and caches go to a directory of its own
    let work = tempfile::tempdir().expect("tempdir");
    let har = work.path().join("requests.har");
    let started = Instant::now();
    let mut child = Command::new(&schemathesis)
        .args(["--no-color", "run", &format!("{}/openapi.json", ferric.endpoint), "--url", &ferric.endpoint])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,\
             response_schema_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED, "--generation-database", "none"])
        .args(["--request-timeout", "20", "--max-failures", "50"])
        // the paths without /v1 are the same handlers as those with it
        .args(["--exclude-path-regex", "^/(nodes|ports|drivers|conductors|lookup|heartbeat)"])
        .args(["--report", "har", "--report-har-path"])
        .arg(&har)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run schemathesis");
    let (stdout, stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for schemathesis") {
            break Some(s);
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    eprintln!("schemathesis ran for {:.0?}", started.elapsed());
    let status = status.unwrap_or_else(|| panic!("schemathesis still ran after {RUN_BOUND:?}:\n{out}\n{err}"));
    assert!(status.success(), "schemathesis found problems ({status}):\n{out}\n{err}");

    // the run reached the seeded resources
    let har: Value = serde_json::from_slice(&std::fs::read(&har).expect("the HAR report")).expect("HAR is JSON");
    let answered: Vec<(String, String, u64)> = har["log"]["entries"]
        .as_array()
        .expect("HAR entries")
        .iter()
        .map(|e| {
            let url = e["request"]["url"].as_str().unwrap_or_default();
            let path = url.strip_prefix(&ferric.endpoint).unwrap_or(url).split('?').next().unwrap_or_default();
            let method = e["request"]["method"].as_str().unwrap_or_default().to_string();
            (method, path.to_string(), e["response"]["status"].as_u64().unwrap_or(0))
        })
        .collect();
    let missed: Vec<&(&str, &str)> = REACHED
        .iter()
        .filter(|(method, path)| {
            let path = path.replace("{node}", node).replace("{port}", port);
            !answered.iter().any(|(m, p, s)| m == method && *p == path && (200..300).contains(s))
        })
        .collect();
    assert!(missed.is_empty(), "no 2xx answer in {} requests for {missed:?}:\n{out}", answered.len());
}
