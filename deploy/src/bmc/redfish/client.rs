//! HTTP to one Redfish service: authentication, retries, timeouts, errors.
//!
//! * **One connection per BMC** ([`RedfishClients`]): a reqwest client
//!   (its own connection pool) plus the BMC's session, shared by every
//!   task that talks to that BMC and kept in a bounded cache
//!   (`[redfish] connection_cache_size`, least recently used dropped).
//!   The key includes the credentials, so a changed password opens a new
//!   connection instead of reusing a session of the old one.
//! * **Auth** (`redfish_auth_type`, as Ironic): `session` logs in at the
//!   service's `SessionService` (the path from the service root's
//!   `Links.Sessions`) and sends `X-Auth-Token`; a 401 on a token logs in
//!   again once. `basic` sends HTTP basic auth. `auto` (default) tries a
//!   session and falls back to basic auth, for good, when the login is
//!   refused (no SessionService: 404/405/501; or every path guarded by
//!   basic auth, as sushy-tools does: 401) — wrong credentials then fail
//!   the basic-auth request, with the BMC's answer.
//! * **Retries**: connection errors, timeouts and 5xx answers (not 501,
//!   "not implemented", which no retry changes) are retried
//!   `connection_attempts` times in all, waiting `connection_retry_interval`
//!   doubled each time (at most 30 s). Every request has a timeout.
//! * **Errors** carry the BMC's own words: the `error.message` and every
//!   `@Message.ExtendedInfo` entry (`MessageId: Message`) of a refusal.
//! * **Traces**: every request sent (each retry too) is a client span
//!   `redfish <METHOD>` with `url.full` (no user info, no query), the
//!   status and the node of the work that sent it; its W3C `traceparent`
//!   goes to the BMC. Credentials never: the password travels only in the
//!   basic-auth header and the login body, the session token only in
//!   `X-Auth-Token`, and no header or body is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferric_common::telemetry;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;
use tracing::Instrument as _;
use tracing::field::Empty;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BmcError {
    /// The node's BMC settings are wrong (driver_info, a CA file).
    #[error("{0}")]
    Config(String),
    #[error("BMC {address} is unreachable: {message}")]
    Unreachable { address: String, message: String },
    #[error("BMC {address} refused the credentials of {user:?} ({status}){detail}")]
    Auth { address: String, user: String, status: u16, detail: String },
    /// A 4xx answer other than an authentication failure.
    #[error("BMC {address} refused {method} {path}: HTTP {status}: {message}")]
    Refused { address: String, method: String, path: String, status: u16, message: String },
    /// A 5xx answer, after the retries.
    #[error("BMC {address} failed {method} {path}: HTTP {status}: {message}")]
    Server { address: String, method: String, path: String, status: u16, message: String },
    /// The BMC answered, but not what Redfish says it should (missing
    /// resources, an unreadable document, a setting that did not stick).
    #[error("BMC {address}: {message}")]
    Unexpected { address: String, message: String },
    /// A state change did not happen within its time (power on, ...).
    #[error("BMC {address}: {message}")]
    Timeout { address: String, message: String },
    /// Not sent: this conductor may not act on machines (it is fenced).
    #[error("nothing sent to BMC {address}: {why}")]
    Fenced { address: String, why: String },
}

impl BmcError {
    /// Whether trying again later may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BmcError::Unreachable { .. } | BmcError::Server { .. } | BmcError::Timeout { .. } | BmcError::Fenced { .. }
        )
    }

    /// The HTTP status of a refusal, if the BMC answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            BmcError::Refused { status, .. } | BmcError::Server { status, .. } | BmcError::Auth { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl From<BmcError> for crate::driver::DriverError {
    fn from(e: BmcError) -> Self {
        use crate::driver::DriverError;
        match e {
            BmcError::Config(m) => DriverError::Invalid(m),
            e if e.is_retryable() => DriverError::Retryable(e.to_string()),
            e => DriverError::Failed(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, BmcError>;

/// How to check the BMC's TLS certificate (`redfish_verify_ca`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verify {
    /// The system's trust store.
    System,
    /// No check (self-signed BMC certificates; Ironic's `False`).
    Insecure,
    /// Only this CA bundle (PEM).
    CaFile(std::path::PathBuf),
}

/// `redfish_auth_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    Auto,
    Session,
    Basic,
}

impl AuthType {
    pub fn parse(s: &str) -> Option<AuthType> {
        match s {
            "auto" => Some(AuthType::Auto),
            "session" => Some(AuthType::Session),
            "basic" => Some(AuthType::Basic),
            _ => None,
        }
    }
}

/// Where a BMC is and how to log in.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `scheme://host[:port]`, no trailing slash.
    pub address: String,
    pub username: String,
    pub password: String,
    pub verify: Verify,
    pub auth: AuthType,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &"******")
            .field("verify", &self.verify)
            .field("auth", &self.auth)
            .finish()
    }
}

impl Endpoint {
    /// Normalises an address as Ironic reads `redfish_address`: a bare
    /// host (or host:port) means https; a path is not allowed.
    pub fn normalise_address(raw: &str) -> std::result::Result<String, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("is empty".into());
        }
        let with_scheme = if raw.contains("://") { raw.to_string() } else { format!("https://{raw}") };
        let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{raw:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{raw:?} must be http:// or https://"));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("{raw:?} has no host"));
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!("{raw:?} must be only scheme://host[:port]; the system goes into redfish_system_id"));
        }
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        Ok(match url.port() {
            Some(p) => format!("{}://{host}:{p}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        })
    }

    fn key(&self) -> String {
        let mut h = sha2::Sha256::new();
        for part in [&self.address, &self.username, &self.password] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(format!("{:?}|{:?}", self.verify, self.auth).as_bytes());
        hex::encode(h.finalize())
    }
}

/// Settings of every Redfish connection (`[redfish]`).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub retry_interval: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// BMC connections kept at most.
    pub cache_size: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            attempts: 5,
            retry_interval: Duration::from_secs(4),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            cache_size: 1000,
        }
    }
}

impl ClientSettings {
    pub fn from_config(cfg: &ferric_common::config::RedfishConfig) -> ClientSettings {
        ClientSettings {
            attempts: cfg.connection_attempts.max(1),
            retry_interval: Duration::from_millis(cfg.connection_retry_interval_ms),
            request_timeout: Duration::from_secs(cfg.request_timeout.max(1)),
            connect_timeout: Duration::from_secs(cfg.connect_timeout.max(1)),
            cache_size: cfg.connection_cache_size.max(1),
        }
    }
}

/// The BMC connections of a conductor.
pub struct RedfishClients {
    settings: ClientSettings,
    conns: Mutex<HashMap<String, Arc<Connection>>>,
    /// Asked before every request (a fenced conductor sends none).
    guard: Arc<dyn crate::services::ActGuard>,
    /// Requests sent (all BMCs), for metrics and tests.
    pub requests: AtomicU64,
}

impl std::fmt::Debug for RedfishClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishClients").field("settings", &self.settings).finish()
    }
}

impl RedfishClients {
    pub fn new(settings: ClientSettings) -> RedfishClients {
        RedfishClients {
            settings,
            conns: Mutex::new(HashMap::new()),
            guard: Arc::new(crate::services::Unguarded),
            requests: AtomicU64::new(0),
        }
    }

    /// Every request first asks `guard` whether it may be sent.
    pub fn with_guard(mut self, guard: Arc<dyn crate::services::ActGuard>) -> RedfishClients {
        self.guard = guard;
        self
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The connection to `endpoint`, opened (no I/O yet) if there is none.
    pub fn connect(self: &Arc<Self>, endpoint: &Endpoint) -> Result<Arc<Connection>> {
        let key = endpoint.key();
        let mut conns = self.conns.lock().expect("connection cache");
        if let Some(c) = conns.get(&key) {
            c.touch();
            return Ok(c.clone());
        }
        let conn = Arc::new(Connection::open(endpoint.clone(), &self.settings, Arc::downgrade(self))?);
        if conns.len() >= self.settings.cache_size {
            // drop the least recently used (a linear scan: the bound is in
            // the thousands and this happens only on a miss)
            if let Some(oldest) =
                conns.iter().min_by_key(|(_, c)| c.last_used.load(Ordering::Relaxed)).map(|(k, _)| k.clone())
                && let Some(old) = conns.remove(&oldest)
            {
                old.logout_in_background();
            }
        }
        conns.insert(key, conn.clone());
        Ok(conn)
    }

    /// How many BMC connections are open.
    pub fn len(&self) -> usize {
        self.conns.lock().expect("connection cache").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum SessionState {
    /// Not tried yet.
    Unknown,
    Open {
        token: String,
        location: Option<String>,
    },
    /// The service has no SessionService: basic auth from now on.
    Unsupported,
}

/// A BMC as a Redfish service.
pub struct Connection {
    endpoint: Endpoint,
    http: reqwest::Client,
    settings: ClientSettings,
    session: tokio::sync::Mutex<SessionState>,
    last_used: AtomicU64,
    clients: std::sync::Weak<RedfishClients>,
}

/// A decoded answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
}

fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Connection {
    fn open(
        endpoint: Endpoint,
        settings: &ClientSettings,
        clients: std::sync::Weak<RedfishClients>,
    ) -> Result<Connection> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            .user_agent(concat!("ferric/", env!("CARGO_PKG_VERSION")));
        match &endpoint.verify {
            Verify::System => {}
            Verify::Insecure => b = b.tls_danger_accept_invalid_certs(true),
            Verify::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    BmcError::Config(format!("redfish_verify_ca: cannot read CA bundle {}: {e}", path.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    BmcError::Config(format!("redfish_verify_ca: {} is not a PEM CA bundle: {e}", path.display()))
                })?;
                if certs.is_empty() {
                    return Err(BmcError::Config(format!(
                        "redfish_verify_ca: {} holds no certificate",
                        path.display()
                    )));
                }
                b = b.tls_certs_only(certs);
            }
        }
        let http = b.build().map_err(|e| BmcError::Config(format!("building the HTTP client: {e}")))?;
        let session = match endpoint.auth {
            AuthType::Basic => SessionState::Unsupported,
            _ => SessionState::Unknown,
        };
        Ok(Connection {
            endpoint,
            http,
            settings: settings.clone(),
            session: tokio::sync::Mutex::new(session),
            last_used: AtomicU64::new(now_ms()),
            clients,
        })
    }

    fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    pub fn address(&self) -> &str {
        &self.endpoint.address
    }

    fn count_request(&self) {
        if let Some(c) = self.clients.upgrade() {
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.endpoint.address, path.trim_start_matches('/'))
        }
    }

    /// GET, insisting on a 2xx with a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.request(Method::GET, path, None).await?.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(Method::PATCH, path, Some(body)).await
    }

    /// One request with authentication and retries; any non-2xx is an error.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        self.touch();
        let mut relogged = false;
        loop {
            let auth = self.auth_header().await?;
            let reply = self.send_with_retries(&method, path, body, auth.as_ref()).await?;
            if reply.status == 401 && matches!(auth, Some(Auth::Token(_))) && !relogged {
                // the session expired or the BMC restarted: log in once more
                relogged = true;
                *self.session.lock().await = SessionState::Unknown;
                continue;
            }
            return self.check(&method, path, reply);
        }
    }

    fn check(&self, method: &Method, path: &str, reply: Reply) -> Result<Reply> {
        let address = self.endpoint.address.clone();
        match reply.status {
            200..=299 => Ok(reply),
            401 | 403 => Err(BmcError::Auth {
                address,
                user: self.endpoint.username.clone(),
                status: reply.status,
                detail: match describe(&reply.body) {
                    d if d.is_empty() => String::new(),
                    d => format!(": {d}"),
                },
            }),
            s @ 400..=499 => Err(BmcError::Refused {
                address,
                method: method.to_string(),
                path: path.to_string(),
                status: s,
                message: describe_or_status(&reply.body, s),
            }),
            s => Err(BmcError::Server {
                address,
                method: method.to_string(),
                path: path.to_string(),
                status: s,
                message: describe_or_status(&reply.body, s),
            }),
        }
    }

    async fn send_with_retries(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        auth: Option<&Auth>,
    ) -> Result<Reply> {
        let attempts = self.settings.attempts.max(1);
        let mut wait = self.settings.retry_interval;
        let mut attempt = 1;
        loop {
            let outcome = self.send_once(method, path, body, auth).await;
            let retry = match &outcome {
                Ok(r) => (r.status >= 500 && r.status != 501) || (r.status == 400 && is_transient_refusal(&r.body)),
                Err(_) => true,
            };
            if !retry || attempt >= attempts {
                return outcome;
            }
            tracing::debug!(bmc = %self.endpoint.address, %method, path, attempt, "retrying a Redfish request");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    async fn send_once(&self, method: &Method, path: &str, body: Option<&Value>, auth: Option<&Auth>) -> Result<Reply> {
        if let Some(c) = self.clients.upgrade()
            && let Err(why) = c.guard.may_act()
        {
            return Err(BmcError::Fenced { address: self.endpoint.address.clone(), why });
        }
        self.count_request();
        let m: &'static str = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "other",
        };
        metrics::counter!(ferric_common::metrics::BMC_REQUESTS_TOTAL, "method" => m).increment(1);
        let url = self.url(path);
        let span = tracing::info_span!(
            "redfish",
            otel.name = %format_args!("redfish {m}"),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = m,
            url.full = %crate::traced_url(&url),
            http.response.status_code = Empty,
            node.uuid = Empty,
            request_id = Empty,
        );
        telemetry::inherit(&span);
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject(&span, &mut headers);
        let mut req = self.http.request(method.clone(), url).header("Accept", "application/json").headers(headers);
        match auth {
            Some(Auth::Token(t)) => req = req.header("X-Auth-Token", t),
            Some(Auth::Basic) => req = req.basic_auth(&self.endpoint.username, Some(&self.endpoint.password)),
            None => {}
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let reply = self.exchange(method, path, req).instrument(span.clone()).await;
        match &reply {
            Ok(r) => {
                span.record("http.response.status_code", r.status);
                if r.status >= 500 {
                    span.record("otel.status_code", "error");
                }
            }
            Err(_) => {
                span.record("otel.status_code", "error");
            }
        }
        reply
    }

    /// Sends `req` and reads the answer.
    async fn exchange(&self, method: &Method, path: &str, req: reqwest::RequestBuilder) -> Result<Reply> {
        let resp = req.send().await.map_err(|e| BmcError::Unreachable {
            address: self.endpoint.address.clone(),
            message: crate::error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(String::from);
        let token = resp.headers().get("x-auth-token").and_then(|v| v.to_str().ok()).map(String::from);
        let bytes = resp.bytes().await.map_err(|e| BmcError::Unreachable {
            address: self.endpoint.address.clone(),
            message: format!("reading the answer to {method} {path}: {}", crate::error_chain(&e)),
        })?;
        let mut body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if let Some(t) = token {
            // login answers carry the token in a header; keep it with the body
            if let Value::Object(m) = &mut body {
                m.insert("@ferric.token".into(), Value::String(t));
            } else {
                body = json!({"@ferric.token": t});
            }
        }
        Ok(Reply { status, body, location })
    }

    /// The credentials for the next request, logging in when needed.
    async fn auth_header(&self) -> Result<Option<Auth>> {
        if self.endpoint.username.is_empty() {
            return Ok(None);
        }
        let mut state = self.session.lock().await;
        match &*state {
            SessionState::Open { token, .. } => return Ok(Some(Auth::Token(token.clone()))),
            SessionState::Unsupported => return Ok(Some(Auth::Basic)),
            SessionState::Unknown => {}
        }
        match self.login().await {
            Ok(Some((token, location))) => {
                *state = SessionState::Open { token: token.clone(), location };
                Ok(Some(Auth::Token(token)))
            }
            Ok(None) if self.endpoint.auth == AuthType::Auto => {
                tracing::debug!(bmc = %self.endpoint.address, "no Redfish SessionService: using basic auth");
                *state = SessionState::Unsupported;
                Ok(Some(Auth::Basic))
            }
            Ok(None) => Err(BmcError::Unexpected {
                address: self.endpoint.address.clone(),
                message: "redfish_auth_type is session, but the BMC has no SessionService".into(),
            }),
            // a BMC that guards every path with basic auth refuses the login
            // request itself (sushy-tools): try basic auth; if the
            // credentials are wrong, that answer says so
            Err(BmcError::Auth { .. }) if self.endpoint.auth == AuthType::Auto => {
                *state = SessionState::Unsupported;
                Ok(Some(Auth::Basic))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a session; `None` when the service has none.
    async fn login(&self) -> Result<Option<(String, Option<String>)>> {
        let root = self.send_with_retries(&Method::GET, "/redfish/v1/", None, None).await?;
        let sessions = root
            .body
            .pointer("/Links/Sessions/@odata.id")
            .and_then(Value::as_str)
            .unwrap_or("/redfish/v1/SessionService/Sessions")
            .to_string();
        let body = json!({"UserName": self.endpoint.username, "Password": self.endpoint.password});
        let reply = self.send_with_retries(&Method::POST, &sessions, Some(&body), None).await?;
        match reply.status {
            200..=299 => {
                let token =
                    reply.body.get("@ferric.token").and_then(Value::as_str).ok_or_else(|| BmcError::Unexpected {
                        address: self.endpoint.address.clone(),
                        message: format!("POST {sessions} created a session without an X-Auth-Token header"),
                    })?;
                Ok(Some((token.to_string(), reply.location)))
            }
            404 | 405 | 501 => Ok(None),
            // refused as "no such session service" in words only
            400 if self.endpoint.auth == AuthType::Auto => Ok(None),
            _ => self.check(&Method::POST, &sessions, reply).map(|_| None),
        }
    }

    /// Ends the session (best effort), e.g. when the cache drops this
    /// connection: BMCs allow only a few sessions at once.
    pub async fn logout(&self) {
        let mut state = self.session.lock().await;
        if let SessionState::Open { token, location: Some(loc) } = &*state {
            let _ = self.send_once(&Method::DELETE, loc, None, Some(&Auth::Token(token.clone()))).await;
        }
        *state = SessionState::Unknown;
    }

    fn logout_in_background(self: Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { self.logout().await });
        }
    }
}

enum Auth {
    Token(String),
    Basic,
}

/// A 400 that only means "not now": iLO refuses boot changes while the
/// server is in POST and power requests right after a power change
/// (`iLO.2.x.UnableToModifyDuringSystemPOST`,
/// `iLO.2.x.InvalidOperationForSystemState`; the version part varies with
/// the firmware, so the key is matched).
pub fn is_transient_refusal(body: &Value) -> bool {
    const TRANSIENT: [&str; 2] = ["UnableToModifyDuringSystemPOST", "InvalidOperationForSystemState"];
    let err = body.get("error").unwrap_or(body);
    err.get("@Message.ExtendedInfo").and_then(Value::as_array).is_some_and(|list| {
        list.iter().any(|i| {
            let id = i.get("MessageId").or_else(|| i.get("MessageID")).and_then(Value::as_str).unwrap_or_default();
            TRANSIENT.iter().any(|t| id.rsplit('.').next() == Some(t))
        })
    })
}

/// The BMC's explanation of a refusal: `error.message` and the extended
/// info (`MessageId: Message`), as one line.
pub fn describe(body: &Value) -> String {
    let mut parts = Vec::new();
    let err = body.get("error").unwrap_or(body);
    if let Some(m) = err.get("message").and_then(Value::as_str) {
        parts.push(m.to_string());
    }
    let extended = err.get("@Message.ExtendedInfo").or_else(|| body.get("@Message.ExtendedInfo"));
    if let Some(list) = extended.and_then(Value::as_array) {
        for info in list {
            // iLO 4 spells it MessageID
            let id =
                info.get("MessageId").or_else(|| info.get("MessageID")).and_then(Value::as_str).unwrap_or_default();
            let msg = info.get("Message").and_then(Value::as_str).unwrap_or_default();
            let args = info
                .get("MessageArgs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter().map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).collect::<Vec<_>>()
                })
                .filter(|a| !a.is_empty() && msg.is_empty());
            let text = match (id.is_empty(), msg.is_empty(), args) {
                (false, false, _) => format!("{id}: {msg}"),
                (false, true, Some(a)) => format!("{id} ({})", a.join(", ")),
                (false, true, None) => id.to_string(),
                (true, false, _) => msg.to_string(),
                (true, true, _) => continue,
            };
            if !parts.contains(&text) {
                parts.push(text);
            }
        }
    }
    if parts.is_empty()
        && let Value::String(s) = body
    {
        let s = s.trim();
        if !s.is_empty() {
            parts.push(s.chars().take(300).collect());
        }
    }
    parts.join("; ")
}

fn describe_or_status(body: &Value, status: u16) -> String {
    match describe(body) {
        d if d.is_empty() => StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no explanation given")
            .to_string(),
        d => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_ironic_reads_them() {
        assert_eq!(Endpoint::normalise_address("10.0.0.5").unwrap(), "https://10.0.0.5");
        assert_eq!(Endpoint::normalise_address("bmc1.example:8443").unwrap(), "https://bmc1.example:8443");
        assert_eq!(Endpoint::normalise_address("http://127.0.0.1:8000/").unwrap(), "http://127.0.0.1:8000");
        assert_eq!(Endpoint::normalise_address("https://[fd00::5]:8443").unwrap(), "https://[fd00::5]:8443");
        // the default port is implied
        assert_eq!(Endpoint::normalise_address("https://bmc:443").unwrap(), "https://bmc");
        assert!(Endpoint::normalise_address("").unwrap_err().contains("empty"));
        assert!(Endpoint::normalise_address("ftp://x").unwrap_err().contains("http"));
        assert!(
            Endpoint::normalise_address("http://x/redfish/v1/Systems/1").unwrap_err().contains("redfish_system_id")
        );
    }

    #[test]
    fn refusals_carry_the_bmc_extended_info() {
        let sushy = json!({"error": {"code": "Base.1.0.GeneralError", "message": "Power state Nmi is not supported",
            "@Message.ExtendedInfo": [{"@odata.type": "/redfish/v1/$metadata#Message.1.0.0.Message", "MessageId": "Base.1.0.GeneralError"}]}});
        assert_eq!(describe(&sushy), "Power state Nmi is not supported; Base.1.0.GeneralError");
        let ilo = json!({"error": {"code": "iLO.0.10.ExtendedInfo", "message": "See @Message.ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [{"MessageId": "iLO.2.14.UnableToModifyDuringSystemPOST"},
                                      {"MessageId": "Base.1.4.PropertyValueNotInList", "MessageArgs": ["Floppy", "BootSourceOverrideTarget"]}]}});
        assert_eq!(
            describe(&ilo),
            "See @Message.ExtendedInfo for more information.; iLO.2.14.UnableToModifyDuringSystemPOST; \
             Base.1.4.PropertyValueNotInList (Floppy, BootSourceOverrideTarget)"
        );
        let dmtf = json!({"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.ActionNotSupported", "Message": "The action InsertMedia is not supported by the resource."}]}});
        assert_eq!(
            describe(&dmtf),
            "A general error has occurred.; Base.1.8.ActionNotSupported: The action InsertMedia is not supported by the resource."
        );
        assert_eq!(
            describe(&Value::String("Failed to save HttpBootUri field value.".into())),
            "Failed to save HttpBootUri field value."
        );
        assert_eq!(describe_or_status(&Value::Null, 404), "Not Found");
    }

    #[test]
    fn bmc_errors_classify() {
        let a = "https://bmc".to_string();
        assert!(BmcError::Unreachable { address: a.clone(), message: "refused".into() }.is_retryable());
        let server = BmcError::Server {
            address: a.clone(),
            method: "GET".into(),
            path: "/".into(),
            status: 503,
            message: String::new(),
        };
        assert!(server.is_retryable());
        let refused = BmcError::Refused {
            address: a.clone(),
            method: "PATCH".into(),
            path: "/".into(),
            status: 400,
            message: String::new(),
        };
        assert!(!refused.is_retryable());
        assert!(matches!(crate::driver::DriverError::from(refused), crate::driver::DriverError::Failed(_)));
        assert!(matches!(
            crate::driver::DriverError::from(BmcError::Config("x".into())),
            crate::driver::DriverError::Invalid(_)
        ));
    }

    #[test]
    fn endpoints_never_print_passwords_and_keys_cover_credentials() {
        let e = Endpoint {
            address: "https://bmc".into(),
            username: "admin".into(),
            password: "s3cret".into(),
            verify: Verify::Insecure,
            auth: AuthType::Auto,
        };
        assert!(!format!("{e:?}").contains("s3cret"));
        let mut other = e.clone();
        other.password = "changed".into();
        assert_ne!(e.key(), other.key(), "a new password opens a new connection");
    }
}
