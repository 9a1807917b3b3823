//! The conductor's client of a deploy ramdisk's agent API — the API of
//! ironic-python-agent, as Ironic 39 speaks it (notes/ironic-compat.md §8).
//!
//! * `POST <agent_url>/v1/commands/?wait=true|false&agent_token=<token>`
//!   with `{"name": "<extension>.<command>", "params": {...}}`; the answer
//!   is a command result `{id, command_name, command_status: RUNNING |
//!   SUCCEEDED | FAILED, command_result, command_error}`.
//! * `GET <agent_url>/v1/commands/?agent_token=<token>`: this boot's
//!   commands, newest last — how an asynchronous command is followed.
//! * The token is the node's session token (`token`); every request
//!   carries it. A command that cannot be delivered (connection refused,
//!   timeout) is tried `[agent] max_command_attempts` times in all.
//! * `https://` agent URLs are verified against the CA the agent sent with
//!   its heartbeat (`agent_verify_ca`), else the system trust store.
//! * Every request says who sends it in `User-Agent` (conductor id and
//!   incarnation), so a ramdisk's own log shows which conductor drove it.
//! * Every request (each attempt) is a client span `agent <METHOD>` with
//!   the command, `url.full` without the query (the token is in it) and
//!   the node of the work that sent it; its W3C `traceparent` goes to the
//!   agent. reqwest's errors name the URL they failed on: they are
//!   reported without it, for the same reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferric_common::model::Node;
use ferric_common::telemetry;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::driver::{DriverError, DriverResult};

/// Where the agent of a node's current ramdisk session listens.
pub const AGENT_URL_KEY: &str = "agent_url";
/// The PEM CA the agent sent (`agent_verify_ca` of its heartbeat).
pub const AGENT_CA_KEY: &str = "agent_verify_ca";

/// `[agent]` settings.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub max_command_attempts: u32,
    pub command_timeout: Duration,
    /// A command followed to its end in a step (`poll`): this many looks,
    /// `command_wait_interval` apart.
    pub command_wait_attempts: u32,
    pub command_wait_interval: Duration,
    pub require_tls: bool,
    /// How long the ramdisk gets to power its machine off (`standby.power_off`)
    /// before the BMC is told to.
    pub power_off_timeout: Duration,
}

impl AgentSettings {
    pub fn from_config(cfg: &ferric_common::config::AgentConfig) -> AgentSettings {
        AgentSettings {
            max_command_attempts: cfg.max_command_attempts.max(1),
            command_timeout: Duration::from_secs(cfg.command_timeout.max(1)),
            command_wait_attempts: cfg.command_wait_attempts.max(1),
            command_wait_interval: Duration::from_millis(cfg.command_wait_interval_ms.max(10)),
            require_tls: cfg.require_tls,
            power_off_timeout: Duration::from_secs(cfg.post_deploy_power_off_timeout),
        }
    }
}

/// One command as the agent reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub command_name: String,
    #[serde(default)]
    pub command_status: String,
    #[serde(default)]
    pub command_result: Value,
    #[serde(default)]
    pub command_error: Value,
}

impl Command {
    pub fn running(&self) -> bool {
        self.command_status == "RUNNING"
    }

    pub fn failed(&self) -> bool {
        self.command_status == "FAILED"
    }

    /// The agent's words for a failure (Ironic's `get_command_error`).
    pub fn error_text(&self) -> String {
        match &self.command_error {
            Value::Null => "the agent reported a failure without an error".into(),
            Value::String(s) => s.clone(),
            Value::Object(m) => m
                .get("details")
                .or_else(|| m.get("message"))
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| self.command_error.to_string()),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the node has no agent (no ramdisk has called back in this session)")]
    NoAgent,
    #[error("the agent at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("the agent at {url} refused {what}: HTTP {status}: {message}")]
    Refused { url: String, what: String, status: u16, message: String },
    #[error("the agent at {url} answered {what} with something that is not a command result: {message}")]
    BadAnswer { url: String, what: String, message: String },
    #[error("the agent's command {name} did not finish within {seconds} s")]
    Timeout { name: String, seconds: u64 },
    /// Not sent: this conductor may not act on machines (it is fenced).
    #[error("nothing sent to the agent: {0}")]
    Fenced(String),
}

impl AgentError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, AgentError::Unreachable { .. } | AgentError::Timeout { .. } | AgentError::Fenced(_))
    }
}

impl From<AgentError> for DriverError {
    fn from(e: AgentError) -> Self {
        if e.is_retryable() { DriverError::Retryable(e.to_string()) } else { DriverError::Failed(e.to_string()) }
    }
}

/// A node's agent, as far as a request needs it.
pub struct Target {
    pub url: String,
    token: String,
    ca: Option<String>,
}

impl Target {
    /// From the node: its agent URL and CA (recorded at the heartbeat) and
    /// its session token.
    pub fn of(node: &Node, token: Option<String>) -> Result<Target, AgentError> {
        let url = node
            .driver_internal_info
            .get(AGENT_URL_KEY)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AgentError::NoAgent)?
            .trim_end_matches('/')
            .to_string();
        let ca = node.driver_internal_info.get(AGENT_CA_KEY).and_then(Value::as_str).map(String::from);
        Ok(Target { url, token: token.unwrap_or_default(), ca })
    }
}

/// The agent client of one conductor incarnation.
pub struct AgentClient {
    settings: AgentSettings,
    /// Asked before every request (a fenced conductor sends none).
    guard: std::sync::Arc<dyn crate::services::ActGuard>,
    user_agent: String,
    /// Clients by CA (one per CA an agent presented), plus the default.
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("settings", &self.settings).field("user_agent", &self.user_agent).finish()
    }
}

impl AgentClient {
    pub fn new(settings: AgentSettings, conductor_id: &str, incarnation: &str) -> AgentClient {
        AgentClient {
            settings,
            user_agent: format!(
                "ferric-conductor/{} (conductor {conductor_id}; incarnation {incarnation})",
                env!("CARGO_PKG_VERSION")
            ),
            clients: Mutex::new(HashMap::new()),
            guard: std::sync::Arc::new(crate::services::Unguarded),
        }
    }

    /// Every request first asks `guard` whether it may be sent.
    pub fn with_guard(mut self, guard: std::sync::Arc<dyn crate::services::ActGuard>) -> AgentClient {
        self.guard = guard;
        self
    }

    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The HTTP client for an agent presenting `ca` — asked for before
    /// every request, so this is where the guard says no.
    fn client(&self, ca: Option<&str>) -> Result<reqwest::Client, AgentError> {
        self.guard.may_act().map_err(AgentError::Fenced)?;
        let key = ca.unwrap_or_default().to_string();
        let mut map = self.clients.lock().expect("agent clients");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(self.settings.command_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(&self.user_agent);
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| AgentError::BadAnswer {
                url: String::new(),
                what: "agent_verify_ca".into(),
                message: format!("the agent's CA is not PEM: {e}"),
            })?;
            b = b.tls_certs_only(certs);
        }
        let c = b.build().map_err(|e| AgentError::BadAnswer {
            url: String::new(),
            what: "a client".into(),
            message: e.to_string(),
        })?;
        if map.len() > 256 {
            map.clear();
        }
        map.insert(key, c.clone());
        Ok(c)
    }

    /// Runs `name` with `params`; with `wait`, the agent answers when the
    /// command is done. A FAILED result is returned as it is (the caller
    /// decides); refusals and undeliverable requests are errors.
    pub async fn run(&self, t: &Target, name: &str, params: Value, wait: bool) -> Result<Command, AgentError> {
        let client = self.client(t.ca.as_deref())?;
        let url = format!("{}/v1/commands/", t.url);
        let body = json!({"name": name, "params": params});
        let mut last = None;
        for attempt in 0..self.settings.max_command_attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            let span = request_span("POST", &url, name);
            let r = client
                .post(with_query(&url, &[("wait", if wait { "true" } else { "false" }), ("agent_token", &t.token)]))
                .headers(traceparent(&span))
                .json(&body)
                .send()
                .instrument(span.clone())
                .await;
            match r {
                Ok(resp) => {
                    span.record("http.response.status_code", resp.status().as_u16());
                    let res = Self::decode(&t.url, name, resp).instrument(span.clone()).await;
                    if res.is_err() {
                        span.record("otel.status_code", "error");
                    }
                    return res;
                }
                Err(e) => {
                    span.record("otel.status_code", "error");
                    last = Some(AgentError::Unreachable { url: t.url.clone(), message: unreachable(e) })
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn decode(url: &str, what: &str, resp: reqwest::Response) -> Result<Command, AgentError> {
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| AgentError::Unreachable {
            url: url.to_string(),
            message: format!("reading the answer to {what}: {}", unreachable(e)),
        })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status >= 400 {
            let message = v
                .get("faultstring")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(AgentError::Refused { url: url.to_string(), what: what.to_string(), status, message });
        }
        serde_json::from_value(v).map_err(|e| AgentError::BadAnswer {
            url: url.to_string(),
            what: what.to_string(),
            message: e.to_string(),
        })
    }

    /// This boot's commands, newest last.
    pub async fn commands(&self, t: &Target) -> Result<Vec<Command>, AgentError> {
        let client = self.client(t.ca.as_deref())?;
        let url = format!("{}/v1/commands/", t.url);
        let mut last = None;
        for attempt in 0..self.settings.max_command_attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            let span = request_span("GET", &url, "the command list");
            let sent = client
                .get(with_query(&url, &[("agent_token", &t.token)]))
                .headers(traceparent(&span))
                .send()
                .instrument(span.clone())
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    span.record("http.response.status_code", status);
                    if status >= 400 {
                        span.record("otel.status_code", "error");
                    }
                    let v: Value = resp.json().instrument(span).await.unwrap_or(Value::Null);
                    if status >= 400 {
                        let message = v.get("faultstring").and_then(Value::as_str).unwrap_or_default().to_string();
                        return Err(AgentError::Refused {
                            url: t.url.clone(),
                            what: "the command list".into(),
                            status,
                            message,
                        });
                    }
                    let list = v.get("commands").cloned().unwrap_or(Value::Null);
                    return serde_json::from_value(list).map_err(|e| AgentError::BadAnswer {
                        url: t.url.clone(),
                        what: "the command list".into(),
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    span.record("otel.status_code", "error");
                    last = Some(AgentError::Unreachable { url: t.url.clone(), message: unreachable(e) })
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The newest command called `name` (the part after the dot, as the
    /// agent lists it), if any.
    pub async fn latest(&self, t: &Target, name: &str) -> Result<Option<Command>, AgentError> {
        let short = name.split_once('.').map(|(_, c)| c).unwrap_or(name);
        Ok(self.commands(t).await?.into_iter().rev().find(|c| c.command_name == short || c.command_name == name))
    }

    /// Runs `name` asynchronously and follows it until it is done
    /// (Ironic's `poll=True`), within `command_wait_attempts` looks.
    pub async fn run_and_follow(&self, t: &Target, name: &str, params: Value) -> Result<Command, AgentError> {
        let first = self.run(t, name, params, false).await?;
        if !first.running() {
            return Ok(first);
        }
        for _ in 0..self.settings.command_wait_attempts {
            tokio::time::sleep(self.settings.command_wait_interval).await;
            if let Some(c) = self.latest(t, name).await?
                && !c.running()
            {
                return Ok(c);
            }
        }
        Err(AgentError::Timeout {
            name: name.to_string(),
            seconds: (self.settings.command_wait_interval * self.settings.command_wait_attempts).as_secs(),
        })
    }
}

/// The client span of one request to an agent: `url` is the agent's URL
/// without the query (which carries the token).
fn request_span(method: &'static str, url: &str, command: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "agent",
        otel.name = %format_args!("agent {method}"),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        url.full = %crate::traced_url(url),
        agent.command = command,
        http.response.status_code = Empty,
        node.uuid = Empty,
        request_id = Empty,
    );
    telemetry::inherit(&span);
    span
}

/// The W3C trace context of `span`, as headers.
fn traceparent(span: &tracing::Span) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    telemetry::inject(span, &mut headers);
    headers
}

/// A request that failed, in words without its URL (whose query carries
/// the agent token).
fn unreachable(e: reqwest::Error) -> String {
    crate::error_chain(&e.without_url())
}

/// `url?k=v&...`, percent-encoded.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// The node's agent target, with its session token.
pub fn target(task: &crate::driver::Task) -> DriverResult<Target> {
    Target::of(&task.node, task.services.tokens.token(&task.node)).map_err(DriverError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_errors_read_as_ironic_reads_them() {
        let c: Command = serde_json::from_value(json!({"command_name": "execute_deploy_step", "command_status": "FAILED",
            "command_error": {"type": "ImageChecksumError", "code": 500, "message": "Error verifying image checksum",
                              "details": "Image failed to verify against checksum. location: http://x/disk.img; image ID: disk.img; image checksum: abc; verification checksum: def"}}))
        .unwrap();
        assert!(c.failed() && !c.running());
        assert!(c.error_text().starts_with("Image failed to verify against checksum"));
        let c: Command =
            serde_json::from_value(json!({"command_name": "x", "command_status": "FAILED", "command_error": "boom"}))
                .unwrap();
        assert_eq!(c.error_text(), "boom");
    }
}
