//! API authentication and authorization on a real all-in-one: for each
//! `auth.auth_strategy`, every route the API declares (read from
//! `ferric_api::routes()`, so a new route cannot escape) refuses anonymous
//! and wrong credentials with 401 unless it is one of the few public ones,
//! which answer anyone; with Keystone (a real one, `tests/src/keystone.rs`)
//! wrong roles get 403 and projects see only the nodes they own or lease.
//! The real `baremetal` CLI logs in with basic auth and with a Keystone
//! password.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferric_tests::keystone::{ADMIN_PASSWORD, Keystone, Scope};
use ferric_tests::{Api, Baremetal, Ferric, error_body, ferric_bin, free_port, venv};
use reqwest::Method;
use serde_json::{Value, json};

/// The routes that take no credentials, written out here (not taken from
/// the code) so that making a route public is a visible decision.
const PUBLIC: [(&str, &str); 14] = [
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/boot.ipxe"),
    ("GET", "/v1"),
    ("GET", "/v1/"),
    ("GET", "/v1/lookup"),
    ("GET", "/lookup"),
    ("POST", "/v1/heartbeat/{node}"),
    ("POST", "/heartbeat/{node}"),
    ("GET", "/v1/drivers/{driver}/vendor_passthru/ipxe_config"),
    ("GET", "/drivers/{driver}/vendor_passthru/ipxe_config"),
];

/// One request per declared (method, route), with the path's parameters
/// filled in and a well-formed body, so that what answers is the policy.
struct Call {
    method: Method,
    route: String,
    path: String,
    body: Option<Value>,
}

/// The other objects a route may name: a portgroup, a chassis and an
/// allocation that exist.
struct Objects<'a> {
    portgroup: &'a str,
    chassis: &'a str,
    allocation: &'a str,
}

fn calls(node: &str, port: &str, o: &Objects) -> Vec<Call> {
    ferric_api::routes()
        .served()
        .iter()
        .map(|(m, route)| {
            let path = route
                .replace("{node}", node)
                .replace("{port}", port)
                .replace("{pg}", o.portgroup)
                .replace("{chassis}", o.chassis)
                .replace("{allocation}", o.allocation)
                .replace("{trait}", "CUSTOM_WALKED")
                .replace("{event}", "00000000-0000-4000-8000-000000000000")
                .replace("{driver}", "fake-hardware")
                .replace("{host}", "conductor-1")
                .replace("{method}", "no_such_method")
                // the query form of vendor passthru names its method
                + if route.ends_with("/vendor_passthru") { "?method=no_such_method" } else { "" };
            let bare = route.trim_start_matches("/v1");
            let body = match (m.as_str(), bare) {
                ("POST", "/nodes") => Some(json!({"driver": "fake-hardware"})),
                ("POST", "/ports") => Some(json!({"node_uuid": node, "address": "52:54:00:12:34:99"})),
                ("POST", "/portgroups") => Some(json!({"node_uuid": node})),
                ("POST", "/allocations") => Some(json!({"resource_class": "walked"})),
                ("PUT", "/nodes/{node}/traits") => Some(json!({"traits": ["CUSTOM_WALKED"]})),
                ("PUT", "/nodes/{node}/traits/{trait}") => None,
                ("PATCH", _) => Some(json!([{"op": "add", "path": "/extra/touched", "value": 1}])),
                ("PUT", "/nodes/{node}/states/provision") => Some(json!({"target": "manage"})),
                ("PUT", "/nodes/{node}/states/power") => Some(json!({"target": "power on"})),
                ("PUT" | "POST", _) => Some(json!({})),
                _ => None,
            };
            Call { method: Method::from_bytes(m.as_str().as_bytes()).unwrap(), route: route.clone(), path, body }
        })
        .collect()
}

fn is_public(c: &Call) -> bool {
    PUBLIC.iter().any(|(m, r)| *m == c.method.as_str() && *r == c.route)
}

async fn send(api: &Api, c: &Call) -> reqwest::Response {
    let mut r = api
        .client
        .request(c.method.clone(), format!("{}{}", api.endpoint, c.path))
        .header("X-OpenStack-Ironic-API-Version", "1.115");
    if let Some((h, v)) = &api.auth {
        r = r.header(h.as_str(), v.as_str());
    }
    if let Some(b) = &c.body {
        r = r.json(b);
    }
    r.send().await.expect("request")
}

/// Every non-public route answers `api` with 401, Ironic's error body
/// carrying `message`, and the `challenge`; every public one answers
/// something else.
async fn every_private_route_refuses(api: &Api, calls: &[Call], challenge: &str, message: &str) {
    let mut private = 0;
    for c in calls {
        let resp = send(api, c).await;
        let status = resp.status().as_u16();
        let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap_or_default();
        if is_public(c) {
            assert_ne!(status, 401, "public {} {} asked for credentials: {text}", c.method, c.route);
            continue;
        }
        private += 1;
        assert_eq!(status, 401, "{} {} without valid credentials: {status} {text}", c.method, c.route);
        assert_eq!(www.as_deref(), Some(challenge), "{} {}", c.method, c.route);
        let err = error_body(&text);
        assert_eq!(err["faultstring"], message, "{} {}: {text}", c.method, c.route);
        assert_eq!(err["faultcode"], "Client");
    }
    assert!(private >= 60, "only {private} private routes were tried");
}

fn bcrypt_line(user: &str, password: &str) -> String {
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(5)).decode())"])
        .args([user, password])
        .output()
        .expect("python bcrypt");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{user}:{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn http_basic_guards_every_private_route_and_the_cli_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, format!("{}\n", bcrypt_line("admin", "s3cret"))).unwrap();
    let ferric = Ferric::start(
        None,
        &[
            ("FERRIC_AUTH__AUTH_STRATEGY", "http_basic"),
            ("FERRIC_AUTH__HTTP_BASIC_AUTH_USER_FILE", file.to_str().unwrap()),
        ],
    );
    let admin = Api::basic(&ferric.endpoint, "admin", "s3cret");
    let node = admin.ok(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "n1"}))).await;
    let node = node["uuid"].as_str().unwrap().to_string();
    let port =
        admin.ok(Method::POST, "/v1/ports", Some(json!({"node_uuid": node, "address": "52:54:00:12:34:56"}))).await;
    let port = port["uuid"].as_str().unwrap().to_string();
    // the 401 comes before any look-up: objects that do not exist will do
    let none = "00000000-0000-4000-8000-000000000001";
    let calls = calls(&node, &port, &Objects { portgroup: none, chassis: none, allocation: none });

    let realm = "Basic realm=\"Baremetal API\"";
    let refused = "Incorrect username or password";
    every_private_route_refuses(&Api::new(&ferric.endpoint), &calls, realm, refused).await;
    every_private_route_refuses(&Api::basic(&ferric.endpoint, "admin", "wrong"), &calls, realm, refused).await;
    // an unknown user reads exactly like a wrong password
    every_private_route_refuses(&Api::basic(&ferric.endpoint, "nobody", "s3cret"), &calls, realm, refused).await;
    let bearer = Api { auth: Some(("Authorization".into(), "Bearer abc".into())), ..Api::new(&ferric.endpoint) };
    every_private_route_refuses(&bearer, &calls, realm, refused).await;

    // the real CLI
    let bm = Baremetal::basic(&ferric.endpoint, "admin", "s3cret");
    let listed = bm.json(&["node", "list"]);
    assert_eq!(listed[0]["uuid"], node.as_str(), "{listed}");
    assert_eq!(bm.field("n1", "driver"), "fake-hardware");
    bm.ok(&["node", "set", "n1", "--extra", "via=cli"]);
    assert_eq!(admin.node(&node).await["extra"]["via"], "cli");
    let err = Baremetal::basic(&ferric.endpoint, "admin", "nope").fails(&["node", "list"]);
    assert!(err.contains("401"), "{err}");
    let err = Baremetal::new(&ferric.endpoint).fails(&["node", "list"]);
    assert!(err.contains("401"), "{err}");

    // a user added to the file works at once, without a restart
    std::fs::write(&file, format!("{}\n{}\n", bcrypt_line("admin", "s3cret"), bcrypt_line("operator", "0p"))).unwrap();
    Baremetal::basic(&ferric.endpoint, "operator", "0p").ok(&["node", "show", "n1"]);
}

/// `noauth` on an address that is not loopback is refused at start, with
/// a message saying what to do; nothing is bound.
#[test]
fn noauth_refuses_to_start_off_loopback() {
    let data = tempfile::tempdir().unwrap();
    // an address of this host that is not loopback is not needed: the
    // refusal comes before binding, from the address alone
    for listen in [format!("0.0.0.0:{}", free_port()), format!("[::]:{}", free_port())] {
        let mut child = Command::new(ferric_bin())
            .args(["all-in-one", "--listen", &listen, "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferric");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferric all-in-one --listen {listen} with noauth kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!status.success(), "{text}");
        assert!(text.contains("refusing to serve the API without authentication"), "{text}");
        assert!(text.contains("--insecure-noauth"), "the message names the way out: {text}");
    }
}

#[tokio::test]
async fn keystone_tokens_roles_and_project_visibility() {
    let ks = Keystone::start();
    // the API's service user, as a deployment has it
    let service = ks.project("service").await;
    let ironic = ks.user("ironic", "ironic-pw").await;
    ks.grant(&ironic, "service", Scope::Project(&service)).await;
    let (p1, p2, p3) = (ks.project("p1").await, ks.project("p2").await, ks.project("p3").await);
    for (name, role, on) in [
        ("sysreader", "reader", None),
        ("owner-member", "member", Some(&p1)),
        ("owner-admin", "admin", Some(&p1)),
        ("lessee-member", "member", Some(&p2)),
        ("lessee-admin", "admin", Some(&p2)),
        ("stranger-admin", "admin", Some(&p3)),
    ] {
        let id = ks.user(name, "pw").await;
        ks.grant(&id, role, on.map(|p| Scope::Project(p)).unwrap_or(Scope::System)).await;
    }
    let ferric = Ferric::start(
        None,
        &[
            ("FERRIC_AUTH__AUTH_STRATEGY", "keystone"),
            ("FERRIC_KEYSTONE_AUTHTOKEN__AUTH_URL", &ks.url),
            ("FERRIC_KEYSTONE_AUTHTOKEN__USERNAME", "ironic"),
            ("FERRIC_KEYSTONE_AUTHTOKEN__PASSWORD", "ironic-pw"),
            ("FERRIC_KEYSTONE_AUTHTOKEN__PROJECT_NAME", "service"),
        ],
    );
    let token = |user: &'static str, scope: &'static str| {
        let ks = &ks;
        async move {
            let s = if scope == "system" { Scope::System } else { Scope::Project(scope) };
            ks.token(user, if user == "admin" { ADMIN_PASSWORD } else { "pw" }, s).await
        }
    };
    let api = |t: &str| Api::token(&ferric.endpoint, t);
    let admin = api(&token("admin", "system").await);
    let n1 = admin
        .ok(
            Method::POST,
            "/v1/nodes",
            Some(json!({"driver": "fake-hardware", "name": "leased", "owner": p1, "lessee": p2,
                        "driver_info": {"fake_address": "10.9.8.7"}})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let n2 =
        admin.ok(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "house"}))).await["uuid"]
            .as_str()
            .unwrap()
            .to_string();
    let port = admin
        .ok(Method::POST, "/v1/ports", Some(json!({"node_uuid": n1, "address": "52:54:00:12:34:57"})))
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let uuid = |v: Value| v["uuid"].as_str().unwrap().to_string();
    let pg = uuid(admin.ok(Method::POST, "/v1/portgroups", Some(json!({"node_uuid": n1, "name": "pg1"}))).await);
    let chassis = uuid(admin.ok(Method::POST, "/v1/chassis", Some(json!({"description": "rack 1"}))).await);
    let alloc = uuid(admin.ok(Method::POST, "/v1/allocations", Some(json!({"resource_class": "sys"}))).await);
    let calls = calls(&n1, &port, &Objects { portgroup: &pg, chassis: &chassis, allocation: &alloc });

    // no token, a made-up token: 401 everywhere but the public routes
    let challenge = format!("Keystone uri=\"{}\"", ks.url);
    let needs = "The request you have made requires authentication.";
    every_private_route_refuses(&Api::new(&ferric.endpoint), &calls, &challenge, needs).await;
    every_private_route_refuses(&api("gAAAAABnot-a-token"), &calls, &challenge, needs).await;

    // a system reader reads everything but vendor methods and validation, and changes
    // nothing: 403 with Ironic's body
    let reader = api(&token("sysreader", "system").await);
    for c in &calls {
        if is_public(c) {
            continue;
        }
        let resp = send(&reader, c).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        // Ironic: validating is acting (baremetal:node:validate is the
        // provision rule); vendor methods are the system admin's
        let reads = c.method == Method::GET && !c.route.contains("vendor_passthru") && !c.route.ends_with("/validate");
        if reads {
            assert!(status != 401 && status != 403, "reader: {} {}: {status} {text}", c.method, c.route);
        } else {
            assert_eq!(status, 403, "reader: {} {}: {text}", c.method, c.route);
            let err = error_body(&text);
            assert!(err["faultstring"].as_str().unwrap().ends_with("is disallowed by policy"), "{text}");
        }
    }
    assert_eq!(admin.node(&n1).await["extra"], json!({}), "nothing was changed by the refused calls");

    // projects: the owner and the lessee see the leased node, nobody else does
    let patch_extra = || Some(json!([{"op": "add", "path": "/extra/by", "value": "x"}]));
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            v["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&admin.get("/v1/nodes").await), ["house", "leased"]);
    assert_eq!(names(&reader.get("/v1/nodes").await), ["house", "leased"]);
    let owner = api(&token("owner-member", "p1").await);
    let owner_admin = api(&token("owner-admin", "p1").await);
    let lessee = api(&token("lessee-member", "p2").await);
    let lessee_admin = api(&token("lessee-admin", "p2").await);
    let stranger = api(&token("stranger-admin", "p3").await);
    assert_eq!(names(&owner.get("/v1/nodes").await), ["leased"]);
    assert_eq!(names(&lessee.get("/v1/nodes/detail").await), ["leased"]);
    assert_eq!(names(&stranger.get("/v1/nodes").await), Vec::<String>::new());
    // all-in-one keeps rendered node answers: one rendered for a caller is
    // never served to another, asked back to back for the same URI
    for _ in 0..3 {
        assert_eq!(names(&admin.get("/v1/nodes").await), ["house", "leased"]);
        assert_eq!(names(&owner.get("/v1/nodes").await), ["leased"]);
        assert_eq!(names(&stranger.get("/v1/nodes").await), Vec::<String>::new());
        let full = admin.get(&format!("/v1/nodes/{n1}")).await;
        assert_eq!(full["driver_info"]["fake_address"], "10.9.8.7");
        let seen_by_lessee = lessee.get(&format!("/v1/nodes/{n1}")).await;
        assert!(seen_by_lessee["driver_info"]["content"].as_str().unwrap().contains("Redacted"), "{seen_by_lessee}");
    }
    let (s, _) = stranger.call(Method::GET, &format!("/v1/nodes/{n1}"), None).await;
    assert_eq!(s, 404, "a node of another project does not exist for the caller");
    let (s, _) = owner.call(Method::GET, &format!("/v1/nodes/{n2}"), None).await;
    assert_eq!(s, 404);
    let (s, _) = stranger.call(Method::DELETE, &format!("/v1/nodes/{n1}"), None).await;
    assert_eq!(s, 404, "not 403: that would tell the node exists");
    let (s, _) = stranger.call(Method::GET, "/v1/drivers", None).await;
    assert_eq!(s, 403, "drivers are the system's");
    // ports follow their node
    let ports = |v: Value| v["ports"].as_array().unwrap().len();
    assert_eq!(ports(owner.get("/v1/ports").await), 1);
    assert_eq!(ports(stranger.get("/v1/ports").await), 0);
    let (s, _) = stranger.call(Method::GET, &format!("/v1/ports/{port}"), None).await;
    assert_eq!(s, 404);
    // portgroups too; creating one is the owner admin's
    let pgs = |v: Value| v["portgroups"].as_array().unwrap().len();
    assert_eq!(pgs(owner.get("/v1/portgroups").await), 1);
    assert_eq!(pgs(lessee.get("/v1/portgroups/detail").await), 1);
    assert_eq!(pgs(stranger.get("/v1/portgroups").await), 0);
    let (s, _) = stranger.call(Method::GET, &format!("/v1/portgroups/{pg}"), None).await;
    assert_eq!(s, 404, "a portgroup of another project's node does not exist for the caller");
    let (s, v) = stranger.call(Method::POST, "/v1/portgroups", Some(json!({"node_uuid": n1}))).await;
    assert_eq!(s, 400, "nor does its node: {v}");
    let (s, v) = lessee_admin.call(Method::POST, "/v1/portgroups", Some(json!({"node_uuid": n1}))).await;
    assert_eq!(s, 403, "a lessee reads the node but does not add portgroups: {v}");
    assert!(v.to_string().contains("baremetal:portgroup:create is disallowed by policy"), "{v}");
    let (s, v) = lessee.call(Method::PATCH, &format!("/v1/portgroups/{pg}"), patch_extra()).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = owner_admin.call(Method::PATCH, &format!("/v1/portgroups/{pg}"), patch_extra()).await;
    assert_eq!(s, 200, "an owner admin updates its node's portgroup: {v}");
    // traits: an owner admin sets them, a lessee reads them
    let (s, v) = owner_admin.call(Method::PUT, &format!("/v1/nodes/{n1}/traits/CUSTOM_GPU"), None).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(lessee.get(&format!("/v1/nodes/{n1}/traits")).await["traits"], json!(["CUSTOM_GPU"]));
    let (s, v) = lessee_admin.call(Method::DELETE, &format!("/v1/nodes/{n1}/traits/CUSTOM_GPU"), None).await;
    assert_eq!(s, 403, "{v}");
    // node history is the owner's, not the lessee's
    let (s, _) = owner.call(Method::GET, &format!("/v1/nodes/{n1}/history"), None).await;
    assert_eq!(s, 200);
    let (s, v) = lessee.call(Method::GET, &format!("/v1/nodes/{n1}/history"), None).await;
    assert_eq!(s, 403, "{v}");
    // chassis are the system's
    let (s, v) = owner_admin.call(Method::GET, "/v1/chassis", None).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = owner_admin.call(Method::POST, "/v1/chassis", Some(json!({}))).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = reader.call(Method::GET, &format!("/v1/chassis/{chassis}"), None).await;
    assert_eq!(s, 200, "{v}");
    // allocations are their project's: a member makes one its project owns,
    // sees only its project's, and may not name another owner
    let allocs = |v: Value| -> Vec<String> {
        v["allocations"].as_array().unwrap().iter().map(|a| a["uuid"].as_str().unwrap().to_string()).collect()
    };
    let mine = owner.ok(Method::POST, "/v1/allocations", Some(json!({"resource_class": "p1-class"}))).await;
    assert_eq!(mine["owner"].as_str(), Some(p1.as_str()), "{mine}");
    let mine = uuid(mine);
    let (s, v) =
        owner.call(Method::POST, "/v1/allocations", Some(json!({"resource_class": "x", "owner": p3.clone()}))).await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("baremetal:allocation:create_restricted"), "{v}");
    assert_eq!(allocs(owner.get("/v1/allocations").await), vec![mine.clone()]);
    assert!(allocs(stranger.get("/v1/allocations").await).is_empty());
    let (s, v) = stranger.call(Method::GET, &format!("/v1/allocations?owner={p1}"), None).await;
    assert_eq!(s, 403, "another project's allocations are not listed: {v}");
    let mut all = allocs(reader.get("/v1/allocations").await);
    all.sort();
    let mut want = vec![alloc.clone(), mine.clone()];
    want.sort();
    assert_eq!(all, want, "a system reader lists every allocation");
    let (s, _) = stranger.call(Method::GET, &format!("/v1/allocations/{mine}"), None).await;
    assert_eq!(s, 404, "another project's allocation does not exist for the caller");
    let (s, _) = owner.call(Method::GET, &format!("/v1/allocations/{alloc}"), None).await;
    assert_eq!(s, 404, "nor does the system's");
    let (s, v) = stranger.call(Method::DELETE, &format!("/v1/allocations/{mine}"), None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = owner.call(Method::PATCH, &format!("/v1/allocations/{mine}"), patch_extra()).await;
    assert_eq!(s, 200, "{v}");
    // its conductor finds no node of the class in p1 and fails it (bounded wait)
    let mut state = Value::Null;
    for _ in 0..200 {
        state = owner.get(&format!("/v1/allocations/{mine}")).await["state"].clone();
        if state != "allocating" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state, "error");
    let (s, v) = owner.call(Method::DELETE, &format!("/v1/allocations/{mine}"), None).await;
    assert_eq!(s, 204, "a member deletes its project's allocation: {v}");

    // what each may see: a lessee gets the infrastructure fields redacted
    let seen = owner.node(&n1).await;
    assert_eq!(seen["driver_info"]["fake_address"], "10.9.8.7");
    let seen = lessee.node(&n1).await;
    assert_eq!(
        seen["driver_info"],
        json!({"content": "** Redacted - requires baremetal:node:get:driver_info permission. **"})
    );
    assert_eq!(seen["reservation"], "** Redacted - requires baremetal:node:get:reservation permission. **");

    // what each may do
    let patch = |path: &str| Some(json!([{"op": "add", "path": path, "value": "x"}]));
    let (s, v) = owner.call(Method::PATCH, &format!("/v1/nodes/{n1}"), patch("/extra/by_owner")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = lessee.call(Method::PATCH, &format!("/v1/nodes/{n1}"), patch("/extra/by_lessee")).await;
    assert_eq!(s, 200, "a lessee member updates extra: {v}");
    let (s, v) = lessee_admin.call(Method::PATCH, &format!("/v1/nodes/{n1}"), patch("/driver_info/x")).await;
    assert_eq!(s, 403, "driver_info is the owner's: {v}");
    let (s, v) = owner_admin.call(Method::PATCH, &format!("/v1/nodes/{n1}"), patch("/owner")).await;
    assert_eq!(s, 403, "only the system gives a node away: {v}");
    let manage = Some(json!({"target": "manage"}));
    let (s, v) = lessee.call(Method::PUT, &format!("/v1/nodes/{n1}/states/provision"), manage.clone()).await;
    assert_eq!(s, 403, "a lessee needs admin to provision: {v}");
    let (s, v) = lessee_admin.call(Method::PUT, &format!("/v1/nodes/{n1}/states/provision"), manage).await;
    assert_eq!(s, 202, "{v}");
    let (s, _) = owner.call(Method::DELETE, &format!("/v1/nodes/{n1}"), None).await;
    assert_eq!(s, 403, "an owner member may not delete");
    // a project admin creates nodes its project owns, and no others
    let (s, v) =
        owner_admin.call(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "name": "mine"}))).await;
    assert_eq!((s, v["owner"].as_str()), (201, Some(p1.as_str())), "{v}");
    let (s, v) = owner_admin
        .call(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware", "owner": p3.clone()})))
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = owner.call(Method::POST, "/v1/nodes", Some(json!({"driver": "fake-hardware"}))).await;
    assert_eq!(s, 403, "a member does not create nodes: {v}");
    let (s, _) = owner_admin.call(Method::DELETE, "/v1/nodes/mine", None).await;
    assert_eq!(s, 204, "an owner admin deletes its own node");

    // the real CLI, logging in to Keystone with a password and finding
    // the API in its catalog
    ks.catalog("baremetal", &ferric.endpoint).await;
    let login = |user: &str, password: &str, scope: &[&str]| {
        let mut a = vec![
            "--os-auth-type",
            "password",
            "--os-auth-url",
            ks.url.as_str(),
            "--os-username",
            user,
            "--os-password",
            password,
            "--os-user-domain-id",
            "default",
        ];
        a.extend_from_slice(scope);
        Baremetal::with_auth(&ferric.endpoint, &a)
    };
    let cli_admin = login("admin", ADMIN_PASSWORD, &["--os-system-scope", "all"]);
    let listed: Vec<String> = cli_admin
        .json(&["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let cli_owner = login("owner-member", "pw", &["--os-project-name", "p1", "--os-project-domain-id", "default"]);
    let listed = cli_owner.json(&["node", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "leased");
    let err = cli_owner.fails(&["node", "delete", "leased"]);
    assert!(err.contains("403") || err.contains("disallowed by policy"), "{err}");
    let err = login("owner-member", "wrong", &["--os-project-name", "p1", "--os-project-domain-id", "default"])
        .fails(&["node", "list"]);
    assert!(err.contains("401") || err.to_lowercase().contains("authenticat"), "{err}");
}
