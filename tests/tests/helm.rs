//! The Helm chart against the binaries: the rendered objects keep the
//! invariants an operator relies on (drain before stop, grace period, PDBs,
//! non-root, probes, stable conductor ids, no secret in a ConfigMap), and
//! the binaries run from the rendered manifests — command, args, env,
//! mounted ConfigMap and Secret content as a kubelet would give them — so
//! the chart cannot drift from the binaries' flags.
//!
//! Rendering needs `helm` and the YAML reader of the chart tools'
//! virtualenv, both installed by `scripts/helm-check.sh` (the test script
//! runs it before the suites).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferric_common::config::Config;
use ferric_tests::{Api, Etcd, Postgres, bin_dir};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/ferric");

fn tools() -> PathBuf {
    let dir = std::env::var_os("HELM_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache"));
        cache.join("ferric-helm-tools")
    });
    assert!(
        dir.join("bin/helm").exists() && dir.join("venv/bin/python3").exists(),
        "helm and the chart tools' venv are missing in {}: run scripts/helm-check.sh --install",
        dir.display()
    );
    dir
}

/// `helm template` with `args`, as a list of objects.
fn render(args: &[&str]) -> Vec<Value> {
    let t = tools();
    let out = Command::new(t.join("bin/helm"))
        .args(["template", "ferric", CHART, "--namespace", "bm"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut py = Command::new(t.join("venv/bin/python3"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 of the chart tools");
    use std::io::Write;
    py.stdin.take().expect("stdin").write_all(&out.stdout).expect("feed yaml");
    let json = py.wait_with_output().expect("yaml to json");
    assert!(json.status.success(), "the rendered YAML does not parse");
    serde_json::from_slice(&json.stdout).expect("json")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The configuration every process reads, from the rendered ConfigMap,
/// parsed by Ferric's own loader (unknown keys refused).
fn rendered_config(objs: &[Value], dir: &Path) -> Config {
    let toml = find(objs, "ConfigMap", "ferric-config")["data"]["ferric.toml"].as_str().expect("ferric.toml");
    let path = dir.join("ferric.toml");
    std::fs::write(&path, toml).expect("write config");
    Config::load(Some(&path), json!({})).unwrap_or_else(|e| panic!("the rendered config does not load: {e}\n{toml}"))
}

fn secret_values(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .filter(|o| o["kind"] == "Secret")
        .flat_map(|s| s["stringData"].as_object().cloned().unwrap_or_default().into_values())
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|v| !v.is_empty())
        .collect()
}

fn pod_specs(objs: &[Value]) -> Vec<(String, &Value)> {
    objs.iter()
        .filter(|o| ["Deployment", "StatefulSet", "Job"].contains(&o["kind"].as_str().unwrap_or("")))
        .map(|o| {
            (
                format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()),
                &o["spec"]["template"]["spec"],
            )
        })
        .collect()
}

#[test]
fn rendered_objects_keep_the_operational_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, Vec<&str>)] = &[
        // the defaults leave etcd to the operator (NOTES.txt says so)
        ("default values", vec!["--set", "etcd.endpoints={http://etcd.bm.svc:2379}"]),
        ("hostNetwork", vec!["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/test-values/hostnetwork.yaml")]),
        ("swift", vec!["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/test-values/swift.yaml")]),
        ("in-chart etcd", vec!["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/test-values/internal-etcd.yaml")]),
    ];
    for (case, args) in cases {
        let objs = render(args);
        let cfg = rendered_config(&objs, dir.path());
        let sts = find(&objs, "StatefulSet", "ferric-conductor");
        let spec = &sts["spec"]["template"]["spec"];
        let c = container(spec, "conductor");

        // drain before stop, within the grace period
        assert_eq!(
            c["lifecycle"]["preStop"]["exec"]["command"],
            json!(["ferricctl", "conductor", "drain", "--wait"]),
            "{case}: preStop"
        );
        let grace = spec["terminationGracePeriodSeconds"].as_u64().expect("grace period");
        assert!(
            grace * 1000 > cfg.conductor.drain_timeout_ms,
            "{case}: terminationGracePeriodSeconds {grace} is not above conductor.drain_timeout_ms {}",
            cfg.conductor.drain_timeout_ms
        );

        // stable conductor ids: a StatefulSet, id = the pod name
        let env = c["env"].as_array().expect("env");
        let var = |n: &str| env.iter().find(|e| e["name"] == n).unwrap_or_else(|| panic!("{case}: no env {n}"));
        assert_eq!(var("FERRIC_CONDUCTOR__ID")["value"], "$(POD_NAME)", "{case}");
        assert_eq!(var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "{case}");
        let idx = |n: &str| env.iter().position(|e| e["name"] == n).unwrap();
        assert!(idx("POD_NAME") < idx("FERRIC_CONDUCTOR__ID"), "{case}: $(POD_NAME) must be defined before it is used");

        // disruption budgets for both
        for (pdb, component) in [("ferric-conductor", "conductor"), ("ferric-api", "api")] {
            let p = find(&objs, "PodDisruptionBudget", pdb);
            assert_eq!(p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], component, "{case}");
        }
        assert!(find(&objs, "PodDisruptionBudget", "ferric-conductor")["spec"]["maxUnavailable"].as_u64() == Some(1));

        // probes on the endpoints the binaries serve
        let api_spec = &find(&objs, "Deployment", "ferric-api")["spec"]["template"]["spec"];
        for (what, ct) in [("conductor", c), ("api", container(api_spec, "api"))] {
            assert_eq!(ct["livenessProbe"]["httpGet"]["path"], "/healthz", "{case}: {what} liveness");
            assert_eq!(ct["readinessProbe"]["httpGet"]["path"], "/readyz", "{case}: {what} readiness");
            let port = ct["readinessProbe"]["httpGet"]["port"].as_str().unwrap();
            assert!(
                ct["ports"].as_array().unwrap().iter().any(|p| p["name"] == port),
                "{case}: {what} probes a port it does not declare"
            );
        }

        // non-root, read-only, no privileges, everywhere
        for (what, spec) in pod_specs(&objs) {
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{case}: {what}");
            assert!(spec["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0, "{case}: {what} runs as root");
            let all = spec["containers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(spec["initContainers"].as_array().into_iter().flatten());
            for ct in all {
                let sc = &ct["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{case}: {what}/{}", ct["name"]);
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{case}: {what}/{}", ct["name"]);
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{case}: {what}/{}", ct["name"]);
            }
        }

        // no secret in any ConfigMap: neither a value of a Secret nor a
        // secret-bearing key
        let secrets = secret_values(&objs);
        for cm in objs.iter().filter(|o| o["kind"] == "ConfigMap") {
            let text = cm["data"].to_string();
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "{case}: a Secret's value is in ConfigMap {}",
                    cm["metadata"]["name"]
                );
            }
        }
        assert!(cfg.database.url.is_empty(), "{case}: the database URL is in the ConfigMap");
        assert!(
            cfg.conductor.cluster_secret.is_empty() && cfg.swift.key.is_empty() && cfg.swift.temp_url_key.is_empty()
        );

        // the schema is migrated by the Job only
        assert!(!cfg.database.auto_migrate, "{case}: servers must not migrate");
        let job = objs.iter().find(|o| o["kind"] == "Job").expect("a migration Job");
        let jc = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!((jc["command"].clone(), jc["args"].clone()), (json!(["ferric"]), json!(["db", "migrate"])));
        for spec in [spec, api_spec] {
            let args = spec["initContainers"][0]["args"].as_array().expect("init container args");
            assert_eq!(args[0..2], [json!("db"), json!("check")], "{case}");
        }
        assert_eq!(cfg.membership.backend, "etcd");
    }

    // the per-mode specifics
    let host = render(&["-f", concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/test-values/hostnetwork.yaml")]);
    let spec = &find(&host, "StatefulSet", "ferric-conductor")["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert!(
        spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array(),
        "hostNetwork conductors must not share a host"
    );
    let default = render(&["--set", "etcd.endpoints={http://etcd.bm.svc:2379}"]);
    let per_pod: Vec<&Value> = default
        .iter()
        .filter(|o| {
            o["kind"] == "Service" && o["metadata"]["labels"]["app.kubernetes.io/component"] == "conductor-http"
        })
        .collect();
    assert_eq!(per_pod.len(), 3, "one HTTP-root Service per conductor pod");
    assert!(
        per_pod.iter().all(|s| s["spec"]["publishNotReadyAddresses"] == true),
        "a draining conductor still serves media"
    );
}

// ---- running the rendered manifests ------------------------------------------

/// One container of a rendered pod, run as a local process the way a
/// kubelet would: env resolved (fieldRef, secretKeyRef, `$(VAR)`), mounts
/// remapped under the pod's own directory.
struct PodRun {
    name: String,
    ip: String,
    root: PathBuf,
    mounts: Vec<(String, PathBuf)>,
}

impl PodRun {
    fn new(name: &str, ip: &str, base: &Path, pod_spec: &Value, objs: &[Value]) -> PodRun {
        let root = base.join(name);
        let mut mounts = Vec::new();
        let volumes = pod_spec["volumes"].as_array().cloned().unwrap_or_default();
        let all: Vec<&Value> = pod_spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod_spec["initContainers"].as_array().into_iter().flatten())
            .collect();
        for ct in all {
            for m in ct["volumeMounts"].as_array().into_iter().flatten() {
                let mp = m["mountPath"].as_str().unwrap().to_string();
                if mounts.iter().any(|(p, _)| *p == mp) {
                    continue;
                }
                let host = root.join(mp.trim_start_matches('/'));
                std::fs::create_dir_all(&host).unwrap();
                let vname = m["name"].as_str().unwrap();
                // a volume of the pod spec, or the StatefulSet's claim template (an empty directory here)
                if let Some(v) = volumes.iter().find(|v| v["name"] == vname)
                    && let Some(cm) = v["configMap"]["name"].as_str()
                {
                    let data = find(objs, "ConfigMap", cm)["data"].as_object().unwrap().clone();
                    for (file, content) in data {
                        std::fs::write(host.join(file), content.as_str().unwrap()).unwrap();
                    }
                }
                mounts.push((mp, host));
            }
        }
        // the longest mount path first, so /a/b wins over /a
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let pod = PodRun { name: name.into(), ip: ip.into(), root, mounts };
        // paths inside mounted config files point into the pod's filesystem too
        for (_, host) in &pod.mounts {
            for e in std::fs::read_dir(host).unwrap().flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    std::fs::write(e.path(), pod.remap_all(&text)).unwrap();
                }
            }
        }
        pod
    }

    /// A path in the pod's filesystem, moved under its directory.
    fn remap(&self, s: &str) -> String {
        for (mp, host) in &self.mounts {
            if s == mp || s.starts_with(&format!("{mp}/")) {
                return format!("{}{}", host.display(), &s[mp.len()..]);
            }
        }
        s.to_string()
    }

    /// Every quoted string of a config file that is a path in the pod,
    /// remapped (each once).
    fn remap_all(&self, text: &str) -> String {
        text.split('"')
            .enumerate()
            .map(|(i, part)| if i % 2 == 1 { self.remap(part) } else { part.to_string() })
            .collect::<Vec<_>>()
            .join("\"")
    }

    /// The container's environment, as the kubelet builds it.
    fn env(&self, ct: &Value, objs: &[Value]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        for e in ct["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                Some(expand(v, &vars))
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(match f {
                    "metadata.name" => self.name.clone(),
                    "status.podIP" | "status.hostIP" => self.ip.clone(),
                    other => panic!("fieldRef {other} is not simulated"),
                })
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                let found = objs
                    .iter()
                    .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == secret)
                    .and_then(|s| s["stringData"][key].as_str().map(str::to_string));
                if found.is_none() && r.get("optional") != Some(&json!(true)) {
                    panic!("{}: env {name} needs key {key} of Secret {secret}, which is not rendered", self.name);
                }
                found
            } else {
                panic!("env {name}: source not simulated: {e}");
            };
            if let Some(v) = value {
                vars.push((name, self.remap(&v)));
            }
        }
        vars
    }

    fn spawn(&self, what: &str, command: &[String], env: &[(String, String)]) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.root.join(format!("{what}.log"))).unwrap();
        let program = bin_dir().join(&command[0]);
        assert!(program.exists(), "{}: {} is not one of the built binaries", self.name, command[0]);
        Command::new(program)
            .args(&command[1..])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
            .envs(env.iter().cloned())
            .current_dir(&self.root)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: spawn {what}: {e}", self.name))
    }

    /// Start a container of the pod spec: command + args, `$(VAR)`-expanded
    /// and remapped.
    fn start(&self, ct: &Value, objs: &[Value]) -> Child {
        let env = self.env(ct, objs);
        let mut command: Vec<String> = Vec::new();
        for part in ct["command"].as_array().unwrap().iter().chain(ct["args"].as_array().into_iter().flatten()) {
            command.push(self.remap(&expand(part.as_str().unwrap(), &env)));
        }
        self.spawn(ct["name"].as_str().unwrap(), &command, &env)
    }

    fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{what}.log"))).unwrap_or_default()
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$`
/// is a literal `$`, anything else stays as written.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if rest.starts_with("$(")
            && let Some(end) = rest.find(')')
            && let Some((_, v)) = vars.iter().rev().find(|(k, _)| *k == rest[2..end])
        {
            out.push_str(v);
            rest = &rest[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

struct Running(Vec<(String, Child)>);

impl Running {
    fn replace(&mut self, name: &str, child: Child) {
        let slot = self.get(name);
        let _ = slot.kill();
        let _ = slot.wait();
        *slot = child;
    }

    fn get(&mut self, name: &str) -> &mut Child {
        &mut self.0.iter_mut().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not running")).1
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_exit(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn get_status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client.get(url).send().await.ok().map(|r| r.status().as_u16())
}

async fn wait_status(client: &reqwest::Client, url: &str, want: u16, timeout: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let got = get_status(client, url).await;
        if got == Some(want) {
            return;
        }
        assert!(start.elapsed() < timeout, "{what}: {url} answered {got:?}, not {want}, within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binaries_run_from_the_rendered_manifests_and_a_rolling_restart_fails_nothing() {
    let pg = Postgres::start();
    let db = pg.database("helm");
    let etcd = Etcd::start();
    let base = tempfile::Builder::new().prefix("ferric-helm").tempdir().unwrap();
    let objs = render(&[
        "--set",
        &format!("database.url={db}"),
        "--set",
        &format!("etcd.endpoints={{{}}}", etcd.endpoint),
        "--set",
        "conductor.replicas=3,api.replicas=2,clusterSecret=helm-test-secret,conductor.drainTimeoutSeconds=120",
        // BMCs reach the HTTP roots at the (host) IP: the per-pod Service
        // names of podService mode need the cluster's DNS
        "--set",
        "conductor.httpRoot.mode=hostNetwork",
    ]);
    // pods get their own loopback addresses, so the chart's fixed ports
    // (6385, 9090, 8080) do not collide between pods or with other tests
    let net = format!("127.{}.{}", 100 + std::process::id() % 100, rand::random::<u8>() % 250 + 1);
    let sts = find(&objs, "StatefulSet", "ferric-conductor");
    let dep = find(&objs, "Deployment", "ferric-api");
    let job = objs.iter().find(|o| o["kind"] == "Job").expect("migration Job");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(dep["spec"]["replicas"], 2);
    let cspec = &sts["spec"]["template"]["spec"];
    let aspec = &dep["spec"]["template"]["spec"];
    let jspec = &job["spec"]["template"]["spec"];
    let conductors: Vec<PodRun> = (0..3)
        .map(|i| PodRun::new(&format!("ferric-conductor-{i}"), &format!("{net}.{}", 10 + i), base.path(), cspec, &objs))
        .collect();
    let apis: Vec<PodRun> = ["ferric-api-7d9f-a", "ferric-api-7d9f-b"]
        .iter()
        .enumerate()
        .map(|(i, n)| PodRun::new(n, &format!("{net}.{}", 20 + i), base.path(), aspec, &objs))
        .collect();
    let migrate = PodRun::new("ferric-migrate", &format!("{net}.30"), base.path(), jspec, &objs);
    let mut running = Running(Vec::new());

    // an init container waits while the schema is not there yet…
    let init = &aspec["initContainers"][0];
    let mut waiting = apis[0].start(init, &objs);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the schema check did not wait:\n{}",
        apis[0].log("wait-for-schema")
    );
    assert!(apis[0].log("wait-for-schema").contains("ferric db migrate"), "{}", apis[0].log("wait-for-schema"));
    // …the migration Job applies it…
    let mut job_run = migrate.start(&jspec["containers"][0], &objs);
    let st = wait_exit(&mut job_run, Duration::from_secs(60)).expect("the migration Job did not finish");
    assert!(st.success(), "migration Job failed:\n{}", migrate.log("migrate"));
    assert!(migrate.log("migrate").contains("applied migration"), "{}", migrate.log("migrate"));
    // …and the waiting init container lets the pod start
    let st = wait_exit(&mut waiting, Duration::from_secs(30)).expect("the schema check did not notice the migration");
    assert!(st.success(), "{}", apis[0].log("wait-for-schema"));
    for pod in conductors.iter().chain(&apis[1..]) {
        let mut c =
            pod.start(&(if pod.name.contains("conductor") { cspec } else { aspec })["initContainers"][0], &objs);
        assert!(
            wait_exit(&mut c, Duration::from_secs(30)).is_some_and(|s| s.success()),
            "{}",
            pod.log("wait-for-schema")
        );
    }

    for pod in &conductors {
        running.0.push((pod.name.clone(), pod.start(container(cspec, "conductor"), &objs)));
    }
    for pod in &apis {
        running.0.push((pod.name.clone(), pod.start(container(aspec, "api"), &objs)));
    }
    let client = ferric_tests::http();
    // the kubelet's probes, on the ports and paths the manifests name
    let probe = |spec: &Value, ct: &str, kind: &str| {
        let c = container(spec, ct);
        let port_name = c[kind]["httpGet"]["port"].as_str().unwrap().to_string();
        let port =
            c["ports"].as_array().unwrap().iter().find(|p| p["name"] == port_name.as_str()).unwrap()["containerPort"]
                .as_u64()
                .unwrap();
        (port, c[kind]["httpGet"]["path"].as_str().unwrap().to_string())
    };
    for (pods, spec, ct) in [(&conductors, cspec, "conductor"), (&apis, aspec, "api")] {
        for pod in pods {
            for kind in ["livenessProbe", "readinessProbe"] {
                let (port, path) = probe(spec, ct, kind);
                let url = format!("http://{}:{port}{path}", pod.ip);
                let start = Instant::now();
                while get_status(&client, &url).await != Some(200) {
                    if let Some(s) = running.get(&pod.name).try_wait().unwrap() {
                        panic!("{} exited with {s}:\n{}", pod.name, pod.log(ct));
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "{}: {kind} {url} not 200:\n{}",
                        pod.name,
                        pod.log(ct)
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let api_port = probe(aspec, "api", "readinessProbe").0;
    let api: Vec<Api> = apis.iter().map(|p| Api::new(&format!("http://{}:{api_port}", p.ip))).collect();
    // every conductor joined the ring under its pod name
    let listed = api[1].get("/v1/conductors").await;
    let mut hosts: Vec<String> =
        listed["conductors"].as_array().unwrap().iter().map(|c| c["hostname"].as_str().unwrap().to_string()).collect();
    hosts.sort();
    assert_eq!(hosts, ["ferric-conductor-0", "ferric-conductor-1", "ferric-conductor-2"], "{listed}");

    let mut nodes = Vec::new();
    for i in 0..24 {
        let uuid = api[i % 2]
            .create_node(
                json!({"name": format!("helm-{i}"), "driver": "fake-hardware"}),
                &[&format!("52:54:00:aa:01:{i:02x}")],
            )
            .await;
        nodes.push(uuid);
    }
    for n in &nodes[..6] {
        api[0].to_available(n, Duration::from_secs(60)).await;
    }

    // requests through both APIs for as long as the drain lasts
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for w in 0..4usize {
        let (stop, ok, failed, failures) = (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        let endpoint = api[w % 2].endpoint.clone();
        let nodes = nodes.clone();
        let client = client.clone();
        load.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) {
                let node = &nodes[i % nodes.len()];
                let req = if i % 2 == 0 {
                    client.get(format!("{endpoint}/v1/nodes/{node}"))
                } else {
                    // a change: forwarded to the node's owner, under its lock
                    let patch = json!([{"op": "add", "path": format!("/extra/w{w}"), "value": i}]);
                    client.patch(format!("{endpoint}/v1/nodes/{node}")).json(&patch)
                };
                let res = req.header("X-OpenStack-Ironic-API-Version", "1.115").send().await;
                match res {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let s = r.status();
                        let text = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{s} {text}"));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        failures.lock().unwrap().push(e.to_string());
                    }
                }
                i += 4;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ok.load(Ordering::SeqCst);
    assert!(before > 0, "no request succeeded before the drain: {:?}", failures.lock().unwrap());

    // a rolling restart of the StatefulSet, as `kubectl rollout restart`
    // does it: highest ordinal first, each pod's preStop hook (run by the
    // kubelet in its container) drains it, the pod is recreated with the
    // same name, and the next waits until it is ready again
    let ct = container(cspec, "conductor");
    let hook: Vec<String> = ct["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let grace = cspec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let (ready_port, ready_path) = probe(cspec, "conductor", "readinessProbe");
    let roll_start = Instant::now();
    for victim in conductors.iter().rev() {
        let env = victim.env(ct, &objs);
        let drain_start = Instant::now();
        let mut pre_stop = victim.spawn("preStop", &hook, &env);
        let st =
            wait_exit(&mut pre_stop, Duration::from_secs(grace)).expect("the preStop drain outlasted the grace period");
        assert!(st.success(), "preStop failed:\n{}", victim.log("preStop"));
        assert!(victim.log("preStop").contains("drained"), "{}", victim.log("preStop"));
        let main =
            wait_exit(running.get(&victim.name), Duration::from_secs(30)).expect("the drained conductor did not exit");
        assert!(main.success(), "drained conductor exited with {main}:\n{}", victim.log("conductor"));
        eprintln!("{} drained in {:?}", victim.name, drain_start.elapsed());

        // the others hold every node now, and take changes for them
        let listed = api[0].get("/v1/conductors").await;
        let hosts: Vec<&str> =
            listed["conductors"].as_array().unwrap().iter().map(|c| c["hostname"].as_str().unwrap()).collect();
        assert_eq!(hosts.len(), 2, "{listed}");
        assert!(!hosts.contains(&victim.name.as_str()), "{listed}");
        for n in &nodes {
            let node = api[1].node(n).await;
            assert_ne!(node["conductor"], victim.name.as_str(), "{n} still names the drained conductor");
        }

        // the StatefulSet recreates the pod: init container, then the conductor, same id
        let mut init = victim.start(&cspec["initContainers"][0], &objs);
        assert!(wait_exit(&mut init, Duration::from_secs(30)).is_some_and(|s| s.success()));
        running.replace(&victim.name, victim.start(ct, &objs));
        let url = format!("http://{}:{ready_port}{ready_path}", victim.ip);
        wait_status(&client, &url, 200, Duration::from_secs(60), &victim.name).await;
        let listed = api[1].get("/v1/conductors").await;
        assert_eq!(listed["conductors"].as_array().unwrap().len(), 3, "{} did not rejoin: {listed}", victim.name);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(
        failed,
        0,
        "{failed} requests failed during the rollout ({ok} succeeded): {:?}",
        failures.lock().unwrap()
    );
    assert!(ok > before, "no request was served during the rollout");
    eprintln!("rolling restart of 3 conductors in {:?}: {ok} requests, 0 failed", roll_start.elapsed());
    for n in &nodes {
        let patch = json!([{"op": "add", "path": "/extra/after", "value": true}]);
        api[0].ok(reqwest::Method::PATCH, &format!("/v1/nodes/{n}"), Some(patch)).await;
    }

    // an API pod told to stop reports not-ready first, still serving
    let a1 = &apis[1];
    let pid = running.get(&a1.name).id();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let ready = format!("http://{}:{api_port}/readyz", a1.ip);
    wait_status(&client, &ready, 503, Duration::from_secs(3), "a stopping API's readiness").await;
    assert_eq!(get_status(&client, &format!("http://{}:{api_port}/v1/nodes", a1.ip)).await, Some(200));
    let st = wait_exit(running.get(&a1.name), Duration::from_secs(30)).expect("the API did not stop");
    assert!(st.success(), "{}", a1.log("api"));

    // the rest stop on SIGTERM; the second one makes the last conductors
    // stop at once instead of waiting drain_timeout for a successor
    for signal in 0..2 {
        for name in ["ferric-conductor-0", "ferric-conductor-1", "ferric-conductor-2", "ferric-api-7d9f-a"] {
            let c = running.get(name);
            if c.try_wait().unwrap().is_none() {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            }
        }
        if signal == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mut codes = BTreeMap::new();
    for name in ["ferric-conductor-0", "ferric-conductor-1", "ferric-conductor-2", "ferric-api-7d9f-a"] {
        codes.insert(name, wait_exit(running.get(name), Duration::from_secs(60)).map(|s| s.success()));
    }
    assert!(codes.values().all(|c| *c == Some(true)), "{codes:?}");
    drop(etcd);
}
