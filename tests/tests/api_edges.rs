//! Bad input at the edges of the REST API (issue 19, scenario 10), against
//! a real all-in-one: node documents that grow past their bound through
//! many PATCHes, clients that send their headers or their body slowly,
//! and more requests at once than the API takes.

use std::time::{Duration, Instant};

use ferric_tests::{Api, Ferric, error_body};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The node document bound the growth tests set: small, so that a few
/// PATCHes of a few KiB reach it.
const DOCUMENT_LIMIT: usize = 64 * 1024;

/// A client that opens a connection per request: the tests that shorten
/// the header read timeout would otherwise race the server closing an idle
/// pooled connection.
fn unpooled() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().expect("http client")
}

fn faultstring(body: &Value) -> String {
    Api::fault(body)
}

/// A call's status, and its error message when it failed (a node body
/// holding tens of KiB says nothing more).
fn outcome((status, body): &(u16, Value)) -> String {
    if (200..300).contains(status) { status.to_string() } else { format!("{status} {}", faultstring(body)) }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_grows_past_its_bound_is_refused_and_keeps_working() {
    let limit = DOCUMENT_LIMIT.to_string();
    let mut ferric = Ferric::start(None, &[("FERRIC_API__MAX_NODE_DOCUMENT_BYTES", &limit)]);
    let api = Api::new(&ferric.endpoint);
    let node = api.ok(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "grower"}))).await;
    let uuid = node["uuid"].as_str().expect("uuid").to_string();

    // 8 KiB at a time into each of the free-form fields in turn: every
    // body is far below the body limit, the node grows past its bound
    let value = "v".repeat(8 * 1024);
    let fields = ["extra", "instance_info", "properties", "driver_info"];
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..2 * DOCUMENT_LIMIT / value.len() {
        let before = api.node(&uuid).await;
        let path = format!("/{}/blob{i}", fields[i % fields.len()]);
        let (status, body) = api
            .call(
                Method::PATCH,
                &format!("/v1/nodes/{uuid}"),
                Some(json!([{"op": "add", "path": path, "value": value}])),
            )
            .await;
        match status {
            200 => accepted += 1,
            413 => {
                refused = Some((before, body));
                break;
            }
            other => panic!("PATCH {i} of a growing node: {other} {body}"),
        }
    }
    let (before, body) = refused.unwrap_or_else(|| {
        panic!("{accepted} PATCHes of 8 KiB were all taken: the node grew past {DOCUMENT_LIMIT} bytes unchecked")
    });
    assert!(accepted >= 4, "refused after only {accepted} PATCHes: the bound is not the node's size");
    let e = error_body(&body.to_string());
    assert_eq!(e["faultcode"], "Client", "{e}");
    let message = faultstring(&body);
    assert!(message.contains(&uuid), "the error names the node: {message}");
    assert!(message.contains(&limit) && message.contains("api.max_node_document_bytes"), "and the limit: {message}");
    assert_eq!(api.node(&uuid).await, before, "the refused PATCH changed the node");

    // the node keeps working: smaller changes are taken
    let n = api
        .ok(
            Method::PATCH,
            &format!("/v1/nodes/{uuid}"),
            Some(json!([{"op": "add", "path": "/extra/small", "value": "s"}])),
        )
        .await;
    assert_eq!(n["extra"]["small"], "s");
    let n = api.ok(Method::PATCH, "/v1/nodes/grower", Some(json!([{"op": "remove", "path": "/extra/blob0"}]))).await;
    assert!(n["extra"].get("blob0").is_none(), "{n}");

    // a node created too large is refused the same way, and not created
    let big = json!({"driver": "fake-hardware", "name": "born-too-big", "extra": {"blob": "v".repeat(DOCUMENT_LIMIT)}});
    let (status, body) = api.call(Method::POST, "/v1/nodes", Some(big)).await;
    assert_eq!(status, 413, "{body}");
    let message = faultstring(&body);
    assert!(message.contains("born-too-big") && message.contains(&limit), "{message}");
    let (status, _) = api.call(Method::GET, "/v1/nodes/born-too-big", None).await;
    assert_eq!(status, 404, "a refused create left a node behind");
    assert!(ferric.stop().is_some_and(|s| s.success()), "all-in-one did not stop cleanly");
}

/// Two PATCHes made to the same copy of a node, each small enough alone,
/// are merged by the conductor onto the node as it is under the lock: the
/// second merge would pass the bound, and the conductor refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn a_merge_past_the_bound_is_refused_by_the_conductor() {
    let limit = DOCUMENT_LIMIT.to_string();
    let mut ferric = Ferric::start(
        None,
        &[
            ("FERRIC_API__MAX_NODE_DOCUMENT_BYTES", &limit),
            // the PATCHes wait for the lock a failing clean step holds
            ("FERRIC_CONDUCTOR__LOCK_ATTEMPTS", "100"),
            ("FERRIC_CONDUCTOR__LOCK_RETRY_INTERVAL_MS", "100"),
        ],
    );
    let api = Api::new(&ferric.endpoint);
    let n = api
        .ok(
            Method::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware", "name": "merged",
                        "driver_info": {"fake_step_delay_ms": 2000,
                                        "fake_fail_step": "deploy.erase_devices_metadata"}})),
        )
        .await;
    let uuid = n["uuid"].as_str().expect("uuid").to_string();
    api.provision(&uuid, "manage").await;
    api.wait_state(&uuid, "manageable", Duration::from_secs(30)).await;
    api.provision(&uuid, "provide").await;
    let start = Instant::now();
    while api.node(&uuid).await["clean_step"]["step"] != "erase_devices_metadata" {
        assert!(start.elapsed() < Duration::from_secs(30), "the clean step never ran: {}", api.node(&uuid).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // each adds 36 KiB to a node of a few KiB: alone it fits (the API lets
    // it through), both do not
    let value = "m".repeat(36 * 1024);
    let rendered = api.node(&uuid).await.to_string().len();
    assert!(rendered + value.len() < DOCUMENT_LIMIT, "the node is already {rendered} bytes");
    assert!(rendered + 2 * value.len() > DOCUMENT_LIMIT);
    let patch = |key: &str| {
        let (api, uuid, value, key) = (api.clone(), uuid.clone(), value.clone(), key.to_string());
        tokio::spawn(async move {
            let ops = json!([{"op": "add", "path": format!("/extra/{key}"), "value": value}]);
            api.call(Method::PATCH, &format!("/v1/nodes/{uuid}"), Some(ops)).await
        })
    };
    let (a, b) = (patch("a"), patch("b"));
    let (a, b) = (a.await.expect("PATCH a"), b.await.expect("PATCH b"));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 413], "a: {}\nb: {}", outcome(&a), outcome(&b));
    let refused = if a.0 == 413 { &a.1 } else { &b.1 };
    let message = faultstring(refused);
    assert!(message.contains(&uuid) && message.contains(&limit), "{message}");
    let extra = api.node(&uuid).await["extra"].clone();
    assert!(
        extra.get("a").is_some() != extra.get("b").is_some(),
        "exactly the accepted PATCH's key is stored: {:?}",
        extra.as_object().map(|o| o.keys().collect::<Vec<_>>())
    );
    api.ok(
        Method::PATCH,
        &format!("/v1/nodes/{uuid}"),
        Some(json!([{"op": "add", "path": "/extra/small", "value": 1}])),
    )
    .await;
    assert!(ferric.stop().is_some_and(|s| s.success()), "all-in-one did not stop cleanly");
}

// ---- raw HTTP: what a slow or hostile client does ----------------------------

/// The server's answer on a raw connection.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Open a connection and send `bytes`: a request cut short.
async fn stalled(port: u16, bytes: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(bytes.as_bytes()).await.expect("send");
    s
}

/// The answer the server gives on `s`, or None when it gave none within
/// `guard` (a test failure guard, not a timing).
async fn answer(s: &mut TcpStream, guard: Duration) -> Option<Answer> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(guard, read).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer { status, head: head.to_string(), body: body.to_string() })
}

/// Whether the server closed `s` within `guard` (EOF or a reset), while
/// the client sends one more header byte every `trickle`, if any.
async fn closed_by_server(s: TcpStream, trickle: Option<Duration>, guard: Duration) -> bool {
    let (mut r, mut w) = s.into_split();
    let read_to_end = async move {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink).await;
    };
    let keep_sending = async move {
        match trickle {
            Some(every) => loop {
                tokio::time::sleep(every).await;
                if w.write_all(b"a").await.is_err() {
                    // the server is gone: wait for the reader to see it
                    std::future::pending::<()>().await;
                }
            },
            None => std::future::pending::<()>().await,
        }
    };
    tokio::time::timeout(guard, async {
        tokio::select! {
            _ = read_to_end => {}
            _ = keep_sending => {}
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_while_requests_are_served() {
    let mut ferric = Ferric::start(None, &[("FERRIC_API__HEADER_READ_TIMEOUT_MS", "1000")]);
    let client = unpooled();
    // 50 connections: 30 start a request and never finish its headers, 10
    // keep sending a header byte every 200 ms (each read makes progress),
    // 10 send nothing at all
    let mut attack = Vec::new();
    for i in 0..50 {
        let (start, trickle) = match i % 5 {
            0 => ("GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", Some(Duration::from_millis(200))),
            1 => ("", None),
            _ => ("GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", None),
        };
        let s = stalled(ferric.port, start).await;
        attack.push(tokio::spawn(closed_by_server(s, trickle, Duration::from_secs(30))));
    }
    // meanwhile the API serves
    let r = client.get(format!("{}/v1/nodes", ferric.endpoint)).send().await.expect("a request during the attack");
    assert_eq!(r.status(), 200, "a request during the attack");
    let mut still_open = 0;
    for a in attack {
        if !a.await.expect("connection task") {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "{still_open} of 50 connections with unfinished headers were still open after 30 s");
    let r = client.get(format!("{}/v1/nodes", ferric.endpoint)).send().await.expect("a request after the attack");
    assert_eq!(r.status(), 200);
    // graceful shutdown still ends the process, with a connection mid-headers
    let _mid_headers = stalled(ferric.port, "GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    assert!(ferric.stop().is_some_and(|s| s.success()), "all-in-one did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_longer_than_its_timeout_gets_an_ironic_error() {
    let mut ferric =
        Ferric::start(None, &[("FERRIC_API__REQUEST_DEADLINE_MS", "1000"), ("FERRIC_API__REQUEST_TIMEOUT_MS", "2000")]);
    // a create whose body never arrives in full: the handler waits for it
    let mut s = stalled(
        ferric.port,
        "POST /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-OpenStack-Ironic-API-Version: 1.115\r\nContent-Length: 200\r\n\r\n{\"driver\": ",
    )
    .await;
    let a = answer(&mut s, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no answer 30 s into a request whose timeout is 2 s"));
    assert_eq!(a.status, 503, "{}\n{}", a.head, a.body);
    assert_eq!(a.header("content-type"), Some("application/json"), "{}", a.head);
    assert!(a.header("x-openstack-ironic-api-maximum-version").is_some(), "errors carry the version headers");
    let e = error_body(&a.body);
    assert_eq!(e["faultcode"], "Server", "{e}");
    let message = e["faultstring"].as_str().unwrap_or_default();
    assert!(message.contains("api.request_timeout_ms") && message.contains("2000"), "{message}");
    // the API goes on serving
    let (status, body) = Api::new(&ferric.endpoint).call(Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(ferric.stop().is_some_and(|s| s.success()), "all-in-one did not stop cleanly");
}

/// `ferric_api_requests_shed_total` as the API's /metrics reports it.
async fn shed_total(client: &reqwest::Client, endpoint: &str) -> u64 {
    let text = client.get(format!("{endpoint}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("ferric_api_requests_shed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no ferric_api_requests_shed_total in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_concurrency_limit_are_shed_at_once() {
    let mut ferric = Ferric::start(None, &[("FERRIC_API__MAX_CONCURRENT_REQUESTS", "4")]);
    let client = unpooled();
    let nodes = format!("{}/v1/nodes", ferric.endpoint);
    // slow requests: creates whose bodies never arrive in full hold their
    // handlers (until the 60 s request timeout)
    const SLOW: &str = "POST /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                        Content-Length: 200\r\n\r\n{\"driver\": ";
    let mut holding = Vec::new();
    for _ in 0..4 {
        holding.push(stalled(ferric.port, SLOW).await);
    }
    // they reach their handlers: the API is full
    let start = Instant::now();
    loop {
        let status = client.get(&nodes).send().await.expect("request").status();
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        // on a busy machine a slow request can arrive while that probe is
        // in its handler, and is shed (the limit counts both): replace it
        for s in holding.iter_mut() {
            if let Some(a) = answer(s, Duration::from_millis(1)).await {
                assert_eq!(a.status, 503, "a slow request was answered: {}\n{}", a.head, a.body);
                *s = stalled(ferric.port, SLOW).await;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "4 slow requests in handlers, a 5th still served after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // more slow requests are answered at once, never queued
    for _ in 0..2 {
        let mut s = stalled(ferric.port, SLOW).await;
        let a = answer(&mut s, Duration::from_secs(20)).await.expect("no answer to a request beyond the limit");
        assert_eq!(a.status, 503, "{}\n{}", a.head, a.body);
        assert!(a.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "Retry-After: {}", a.head);
        assert_eq!(a.header("content-type"), Some("application/json"));
        let e = error_body(&a.body);
        assert_eq!(e["faultcode"], "Server", "{e}");
        let message = e["faultstring"].as_str().unwrap_or_default();
        assert!(message.contains("api.max_concurrent_requests"), "{message}");
    }
    let r = client.get(&nodes).send().await.expect("request");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // health is never shed
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client.get(format!("{}{path}", ferric.endpoint)).send().await.expect("health");
        assert_eq!(r.status(), 200, "{path} while the API is full");
    }
    let shed = shed_total(&client, &ferric.endpoint).await;
    assert!(shed >= 4, "ferric_api_requests_shed_total = {shed}, at least 4 requests were shed");

    // the load goes: every request is served again
    drop(holding);
    let start = Instant::now();
    while client.get(&nodes).send().await.expect("request").status() != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "still shedding 20 s after the slow requests went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let r = client.get(&nodes).send().await.expect("request");
        assert_eq!(r.status(), 200, "after the load");
    }
    assert!(ferric.stop().is_some_and(|s| s.success()), "all-in-one did not stop cleanly");
}
