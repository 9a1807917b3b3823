//! The Swift publisher: artefacts as objects in one container
//! (`[swift] swift_ilo_container`, created when missing), handed to BMCs as
//! temporary URLs.
//!
//! Auth: tempauth v1.0 (`GET auth_url` with `X-Auth-User`/`X-Auth-Key` →
//! `X-Storage-Url` + `X-Auth-Token`), or a fixed storage URL and token. A
//! 401 re-authenticates once and retries (tempauth tokens live only in
//! memcached and vanish with it); concurrent 401s share one re-auth.
//! Connection errors, timeouts, 5xx and rate limiting (429/498) are retried
//! up to 3 attempts with backoff; other 4xx are errors naming the method,
//! the object and the start of Swift's answer.
//!
//! Temporary URLs: `<object url>?temp_url_sig=<hex>&temp_url_expires=<unix>`
//! with sig = HMAC(key, "GET\n<expires>\n<path>"). The tempurl middleware
//! signs WSGI's `PATH_INFO`, which is the *decoded* path, so `<path>` is
//! `/v1/AUTH_x/<container>/<object>` with the raw name while the URL itself
//! carries it percent-encoded. HMAC-SHA256 by default, SHA-1 for old
//! clusters (`temp_url_digest`); Swift picks the digest by the hex length.
//! The key is the account's `Temp-URL-Key`, set at start-up when
//! `set_temp_url_key` is true. Anyone holding the URL can GET (and HEAD)
//! the object until it expires, with no token.
//!
//! Expiry: objects put with a delete-after carry `X-Delete-After`; Swift's
//! object servers refuse them (404) as soon as it passes, and its expirer
//! removes them from disk and listings later — a listing may still show an
//! expired object for a while. Metadata: Swift's object POST replaces all
//! user metadata *and* drops the expiry unless sent again, so
//! [`Store::set_metadata`] reads both first (HEAD) and re-sends them; two
//! writers racing on one object can still lose an update, which the
//! artefacts layer tolerates.
//!
//! Listings come in pages of at most the cluster's `container_listing_limit`
//! (read from `/info` at connect, 10 000 when it is not published), followed
//! with `marker`.

use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use ferric_common::config::SwiftConfig;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};

use super::{PublishError, Result, Store, check_name, is_private};
use crate::percent;

const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
/// Swift's default (and usual maximum) page of a container listing.
const LISTING_PAGE: usize = 10_000;
/// Uploads get the request timeout plus one second per this many bytes: a
/// total timeout alone would fail every multi-GB ISO on a slow link.
const UPLOAD_MIN_BYTES_PER_SEC: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Digest {
    Sha256,
    Sha1,
}

impl Digest {
    fn name(self) -> &'static str {
        match self {
            Digest::Sha256 => "sha256",
            Digest::Sha1 => "sha1",
        }
    }
}

#[derive(Clone)]
struct Auth {
    storage_url: String,
    token: String,
}

pub struct SwiftStore {
    client: reqwest::Client,
    cfg: SwiftConfig,
    digest: Digest,
    // std lock, never held across an await: url() is synchronous and must
    // never fail because a re-auth is under way
    auth: RwLock<Auth>,
    reauth: tokio::sync::Mutex<()>,
    listing_page: usize,
}

fn err(message: impl Into<String>) -> PublishError {
    PublishError::Backend { backend: "swift", message: message.into() }
}

/// The HMAC signature of a temporary URL for `method` on `path` until
/// `expires` (Unix seconds), as hex.
pub fn temp_url_signature(key: &[u8], method: &str, expires: u64, path: &str, digest: Digest) -> String {
    let msg = format!("{method}\n{expires}\n{path}");
    match digest {
        Digest::Sha256 => {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(msg.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
        Digest::Sha1 => {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(msg.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A request body that can be made again for a retry.
enum Body<'a> {
    Empty,
    Bytes(Bytes),
    File(&'a Path, u64),
}

/// What `/info` tells about the cluster, where it tells anything.
#[derive(Debug, PartialEq)]
struct ClusterInfo {
    listing_limit: Option<usize>,
    /// `None` when /info does not list tempurl's digests.
    tempurl_digests: Option<Vec<String>>,
    has_tempurl: bool,
}

fn parse_info(v: &serde_json::Value) -> ClusterInfo {
    let listing_limit = v["swift"]["container_listing_limit"].as_u64().map(|n| n as usize);
    let tempurl = &v["tempurl"];
    let tempurl_digests = tempurl["allowed_digests"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect());
    ClusterInfo { listing_limit, tempurl_digests, has_tempurl: tempurl.is_object() }
}

impl SwiftStore {
    /// Authenticates, reads the cluster's limits, sets the temp URL key if
    /// asked, and creates the container if it is missing.
    pub async fn connect(cfg: &SwiftConfig) -> Result<SwiftStore> {
        Self::with_client(client(cfg)?, cfg).await
    }

    /// [`SwiftStore::connect`] with a client of the caller's (proxies, CA
    /// roots, timeouts); the crypto provider must already be installed.
    pub async fn with_client(client: reqwest::Client, cfg: &SwiftConfig) -> Result<SwiftStore> {
        let digest = digest(cfg)?;
        if cfg.temp_url_key.is_empty() {
            return Err(err("swift.temp_url_key is empty: BMCs could not be given temporary URLs"));
        }
        if cfg.swift_ilo_container.is_empty() || cfg.swift_ilo_container.contains('/') {
            return Err(err(format!(
                "swift.swift_ilo_container {:?} is not a container name",
                cfg.swift_ilo_container
            )));
        }
        let auth = if cfg.auth_url.is_empty() {
            if cfg.storage_url.is_empty() || cfg.auth_token.is_empty() {
                return Err(err("set swift.auth_url (tempauth) or swift.storage_url + swift.auth_token"));
            }
            Auth {
                storage_url: cfg.storage_url.trim_end_matches('/').to_string(),
                token: cfg.auth_token.expose().to_string(),
            }
        } else {
            authenticate(&client, cfg).await?
        };
        split_url(&auth.storage_url)?;
        let info = cluster_info(&client, &auth.storage_url).await;
        if let Some(info) = &info {
            if !info.has_tempurl {
                tracing::warn!("swift: /info does not list the tempurl middleware; BMCs' temporary URLs may fail");
            }
            if let Some(allowed) = &info.tempurl_digests
                && !allowed.iter().any(|d| d == digest.name())
            {
                return Err(err(format!(
                    "swift.temp_url_digest {} is not allowed by the cluster's tempurl (allowed: {})",
                    digest.name(),
                    allowed.join(" ")
                )));
            }
        }
        let listing_page = info.and_then(|i| i.listing_limit).unwrap_or(LISTING_PAGE).clamp(1, LISTING_PAGE);
        let store = SwiftStore {
            client,
            cfg: cfg.clone(),
            digest,
            auth: RwLock::new(auth),
            reauth: tokio::sync::Mutex::new(()),
            listing_page,
        };
        if cfg.set_temp_url_key {
            let header = [(
                "x-account-meta-temp-url-key",
                HeaderValue::from_str(cfg.temp_url_key.expose())
                    .map_err(|_| err("swift.temp_url_key must be printable ASCII"))?,
            )];
            let resp = store.send(Method::POST, "", &header, Body::Empty, "account").await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(err("POST account: 404: the account does not exist (no account_autocreate?)"));
            }
        }
        // PUT is idempotent (201 new, 202 existing) and creates the account
        // too where account_autocreate is on
        let resp = store.send(Method::PUT, &store.container_path(), &[], Body::Empty, "container").await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(err(format!(
                "PUT container {}: 404: the account does not exist (no account_autocreate?)",
                cfg.swift_ilo_container
            )));
        }
        Ok(store)
    }

    /// Container listings in pages of `n` objects (at most the cluster's
    /// limit), for tests of the paging.
    pub fn with_listing_page(mut self, n: usize) -> Self {
        self.listing_page = n.clamp(1, self.listing_page);
        self
    }

    pub fn container(&self) -> &str {
        &self.cfg.swift_ilo_container
    }

    fn current_auth(&self) -> Auth {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn container_path(&self) -> String {
        format!("/{}", percent::encode_segment(&self.cfg.swift_ilo_container))
    }

    fn object_path(&self, name: &str) -> String {
        format!("{}/{}", self.container_path(), percent::encode_path(name))
    }

    /// Replaces the token the failed request used, unless another request
    /// already did.
    async fn reauthenticate(&self, stale_token: &str) -> Result<()> {
        let _one_at_a_time = self.reauth.lock().await;
        if self.current_auth().token != stale_token {
            return Ok(());
        }
        let fresh = authenticate(&self.client, &self.cfg).await?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// One request relative to the storage URL, with retries and re-auth.
    /// Returns 2xx, 404 and 412 answers; everything else is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, HeaderValue)],
        body: Body<'_>,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = self.current_auth();
            let mut req = self.client.request(method.clone(), format!("{}{path}", auth.storage_url));
            req = req.header("x-auth-token", &auth.token);
            for (k, v) in headers {
                req = req.header(*k, v.clone());
            }
            req = match &body {
                Body::Empty => req.header("content-length", "0"),
                Body::Bytes(b) => req.body(b.clone()),
                Body::File(p, len) => {
                    let f = tokio::fs::File::open(p).await.map_err(|e| PublishError::io(p, e))?;
                    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                    let timeout = Duration::from_secs(self.cfg.request_timeout_secs.max(1))
                        + Duration::from_secs(len / UPLOAD_MIN_BYTES_PER_SEC);
                    req.header("content-length", len.to_string())
                        .timeout(timeout)
                        .body(reqwest::Body::wrap_stream(stream))
                }
            };
            // a request that cannot be built (a header value Swift would
            // refuse anyway) fails now, not after three attempts
            let req = req.build().map_err(|e| err(format!("{method} {what}: {e}")))?;
            let retry_later = match self.client.execute(req).await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed && !self.cfg.auth_url.is_empty() => {
                    reauthed = true;
                    self.reauthenticate(&auth.token).await?;
                    attempt -= 1;
                    continue;
                }
                // 412 answers only a conditional request, whose caller reads it
                Ok(resp)
                    if resp.status().is_success()
                        || matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED) =>
                {
                    return Ok(resp);
                }
                Ok(resp) if resp.status().is_server_error() || matches!(resp.status().as_u16(), 429 | 498) => {
                    format!("{method} {what}: {} {}", resp.status(), snippet(resp).await)
                }
                Ok(resp) => {
                    return Err(err(format!("{method} {what}: {} {}", resp.status(), snippet(resp).await)));
                }
                Err(e) => format!("{method} {what}: {}", crate::error_chain(&e)),
            };
            if attempt >= ATTEMPTS {
                return Err(err(format!("{retry_later} (after {ATTEMPTS} attempts)")));
            }
            tracing::warn!("swift: {retry_later}; retrying");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn put(&self, name: &str, body: Body<'_>, delete_after: Option<Duration>) -> Result<()> {
        check_name(name)?;
        let mut headers = vec![("content-type", HeaderValue::from_static("application/octet-stream"))];
        if let Some(d) = delete_after {
            // Swift refuses 0 (400); a sub-second delay is "as soon as possible"
            headers.push(("x-delete-after", HeaderValue::from(d.as_secs().max(1))));
        }
        let resp = self.send(Method::PUT, &self.object_path(name), &headers, body, name).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(err(format!("PUT {name}: 404 (container {} is gone)", self.cfg.swift_ilo_container)));
        }
        Ok(())
    }

    /// An object POST that re-sends the metadata and expiry Swift would
    /// otherwise drop, after `change` edited them (lower-case names). Values
    /// are kept as Swift's bytes, so non-ASCII metadata survives.
    async fn post_keeping(&self, name: &str, change: impl FnOnce(&mut Vec<(String, HeaderValue)>)) -> Result<()> {
        let Some(current) = self.head(name).await? else { return Err(PublishError::NotFound(name.to_string())) };
        let mut headers: Vec<(String, HeaderValue)> = current
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-object-meta-") || k.as_str() == "x-delete-at")
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        let before = headers.clone();
        change(&mut headers);
        if same_headers(&before, &headers) {
            // a POST rewrites the object's metadata file, which a BMC
            // reading the object may see vanish (see Store::put_file_if_absent)
            return Ok(());
        }
        let headers: Vec<(&str, HeaderValue)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let resp = self.send(Method::POST, &self.object_path(name), &headers, Body::Empty, name).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(PublishError::NotFound(name.to_string()));
        }
        Ok(())
    }

    async fn head(&self, name: &str) -> Result<Option<reqwest::header::HeaderMap>> {
        check_name(name)?;
        let resp = self.send(Method::HEAD, &self.object_path(name), &[], Body::Empty, name).await?;
        Ok((resp.status() != StatusCode::NOT_FOUND).then(|| resp.headers().clone()))
    }
}

/// Whether two header lists say the same, in any order.
fn same_headers(a: &[(String, HeaderValue)], b: &[(String, HeaderValue)]) -> bool {
    let sorted = |h: &[(String, HeaderValue)]| {
        let mut v: Vec<(String, Vec<u8>)> = h.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
        v.sort();
        v
    };
    sorted(a) == sorted(b)
}

fn meta_header(key: &str) -> Result<String> {
    let h = format!("x-object-meta-{}", key.to_ascii_lowercase());
    HeaderName::from_bytes(h.as_bytes()).map_err(|_| err(format!("metadata key {key:?} is not a header name")))?;
    Ok(h)
}

/// 200 ms, 400 ms, ... plus up to 100 ms of jitter, so conductors retrying
/// the same outage do not come back in step.
fn backoff(attempt: u32) -> Duration {
    BACKOFF * 2u32.pow(attempt.saturating_sub(1)) + Duration::from_millis(rand::random_range(0..100))
}

async fn authenticate(client: &reqwest::Client, cfg: &SwiftConfig) -> Result<Auth> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client
            .get(&cfg.auth_url)
            .header("x-auth-user", &cfg.user)
            .header("x-auth-key", cfg.key.expose())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                let h = resp.headers();
                let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
                return match (get("x-storage-url"), get("x-auth-token")) {
                    (Some(storage_url), Some(token)) => {
                        Ok(Auth { storage_url: storage_url.trim_end_matches('/').to_string(), token })
                    }
                    _ => Err(err(format!("auth at {} answered without X-Storage-Url/X-Auth-Token", cfg.auth_url))),
                };
            }
            Ok(resp) if resp.status().is_server_error() => {
                last = format!("{} {}", resp.status(), snippet(resp).await);
            }
            Ok(resp) => {
                return Err(err(format!(
                    "auth at {} as {:?}: {} {}",
                    cfg.auth_url,
                    cfg.user,
                    resp.status(),
                    snippet(resp).await
                )));
            }
            Err(e) => last = crate::error_chain(&e),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    Err(err(format!("auth at {} failed after {ATTEMPTS} attempts: {last}", cfg.auth_url)))
}

/// `GET <origin>/info`, unauthenticated; `None` when the cluster does not
/// publish it (expose_info off, a gateway in front).
async fn cluster_info(client: &reqwest::Client, storage_url: &str) -> Option<ClusterInfo> {
    let (origin, _) = split_url(storage_url).ok()?;
    let resp = client.get(format!("{origin}/info")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    Some(parse_info(&resp.json::<serde_json::Value>().await.ok()?))
}

async fn snippet(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    text.chars().take(200).collect::<String>().trim().to_string()
}

#[async_trait]
impl Store for SwiftStore {
    fn kind(&self) -> &'static str {
        "swift"
    }

    async fn put_file(&self, name: &str, source: &Path, delete_after: Option<Duration>) -> Result<()> {
        let len = tokio::fs::metadata(source).await.map_err(|e| PublishError::io(source, e))?.len();
        self.put(name, Body::File(source, len), delete_after).await
    }

    async fn put_file_if_absent(&self, name: &str, source: &Path) -> Result<bool> {
        check_name(name)?;
        let len = tokio::fs::metadata(source).await.map_err(|e| PublishError::io(source, e))?.len();
        let headers = [
            ("content-type", HeaderValue::from_static("application/octet-stream")),
            ("if-none-match", HeaderValue::from_static("*")),
        ];
        let resp = self.send(Method::PUT, &self.object_path(name), &headers, Body::File(source, len), name).await?;
        match resp.status() {
            // there already (or a retried PUT of ours that had landed)
            StatusCode::PRECONDITION_FAILED => Ok(false),
            StatusCode::NOT_FOUND => {
                Err(err(format!("PUT {name}: 404 (container {} is gone)", self.cfg.swift_ilo_container)))
            }
            _ => Ok(true),
        }
    }

    async fn put_bytes(&self, name: &str, bytes: Vec<u8>, delete_after: Option<Duration>) -> Result<()> {
        self.put(name, Body::Bytes(Bytes::from(bytes)), delete_after).await
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.head(name).await?.is_some())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.send(Method::DELETE, &self.object_path(name), &[], Body::Empty, name).await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let marker = out.last().map(|m| percent::encode_path(m)).unwrap_or_default();
            let query = format!(
                "?format=json&limit={}&prefix={}&marker={marker}",
                self.listing_page,
                percent::encode_path(prefix)
            );
            let resp = self
                .send(Method::GET, &format!("{}{query}", self.container_path()), &[], Body::Empty, "container listing")
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(err(format!("container {} is gone", self.cfg.swift_ilo_container)));
            }
            let page: Vec<serde_json::Value> =
                resp.json().await.map_err(|e| err(format!("container listing is not JSON: {e}")))?;
            let before = out.len();
            out.extend(page.iter().filter_map(|o| o["name"].as_str().map(str::to_string)));
            // a short page is the last; a page that adds nothing would
            // repeat forever with the same marker
            if page.len() < self.listing_page || out.len() == before {
                break;
            }
        }
        Ok(out)
    }

    async fn set_metadata(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let meta_key = meta_header(key)?;
        // raw UTF-8 bytes, as python-swiftclient sends them; only control
        // characters are refused
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| err(format!("metadata value {value:?} for {key:?} has control characters")))?;
        self.post_keeping(name, |headers| {
            headers.retain(|(k, _)| *k != meta_key);
            headers.push((meta_key.clone(), value));
        })
        .await
    }

    async fn set_delete_after(&self, name: &str, delete_after: Option<Duration>) -> Result<()> {
        self.post_keeping(name, |headers| {
            headers.retain(|(k, _)| k != "x-delete-at");
            if let Some(d) = delete_after {
                headers.push(("x-delete-after".into(), HeaderValue::from(d.as_secs().max(1))));
            }
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn metadata(&self, name: &str, key: &str) -> Result<Option<String>> {
        let k = meta_header(key)?;
        let Some(h) = self.head(name).await? else { return Err(PublishError::NotFound(name.to_string())) };
        Ok(h.get(k.as_str()).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
    }

    fn url(&self, name: &str, valid_for: Duration) -> Result<String> {
        check_name(name)?;
        if is_private(name) {
            return Err(PublishError::Private(name.to_string()));
        }
        let storage_url = self.current_auth().storage_url;
        let (origin, base_path) = split_url(&storage_url)?;
        // rounded up: "valid for at least valid_for"
        let expires = now_secs() + valid_for.as_secs() + u64::from(valid_for.subsec_nanos() > 0) + 1;
        // signed over the decoded path (PATH_INFO); the account part of a
        // storage URL is ASCII (reseller prefix + project id)
        let signed_path = format!("{base_path}/{}/{name}", self.cfg.swift_ilo_container);
        let sig =
            temp_url_signature(self.cfg.temp_url_key.expose().as_bytes(), "GET", expires, &signed_path, self.digest);
        Ok(format!(
            "{origin}{base_path}{}/{}?temp_url_sig={sig}&temp_url_expires={expires}",
            self.container_path(),
            percent::encode_path(name)
        ))
    }

    fn url_is_current(&self, url: &str, name: &str, min_validity: Duration) -> bool {
        let Ok(fresh) = self.url(name, min_validity) else { return false };
        let object = |u: &str| u.split_once('?').map(|(o, _)| o.to_string()).unwrap_or_else(|| u.to_string());
        if object(url) != object(&fresh) {
            return false;
        }
        let expires = url
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("temp_url_expires="))
            .and_then(|v| v.parse::<u64>().ok());
        let has_sig = url.contains("temp_url_sig=");
        has_sig && expires.is_some_and(|e| e >= now_secs() + min_validity.as_secs())
    }

    async fn expire(&self) -> Result<usize> {
        // Swift's object expirer does it
        Ok(0)
    }
}

/// `http://host:port/v1/AUTH_x` → (`http://host:port`, `/v1/AUTH_x`).
/// `[swift] temp_url_digest`.
fn digest(cfg: &SwiftConfig) -> Result<Digest> {
    match cfg.temp_url_digest.as_str() {
        "sha256" => Ok(Digest::Sha256),
        "sha1" => Ok(Digest::Sha1),
        other => Err(err(format!("swift.temp_url_digest must be sha256 or sha1, not {other:?}"))),
    }
}

/// An HTTP client with `[swift] request_timeout_secs`.
fn client(cfg: &SwiftConfig) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = Duration::from_secs(cfg.request_timeout_secs.max(1));
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| err(format!("HTTP client: {e}")))
}

/// Signs temporary GET URLs of any object of one Swift account (iPXE's
/// kernels and ramdisks named `swift://<container>/<object>`), as the API
/// does at every `ipxe_config` request: no request to Swift is made.
#[derive(Clone)]
pub struct TempUrlSigner {
    storage_url: String,
    key: String,
    digest: Digest,
}

impl std::fmt::Debug for TempUrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempUrlSigner").field("storage_url", &self.storage_url).finish_non_exhaustive()
    }
}

impl TempUrlSigner {
    /// From `[swift]`: the storage URL (`storage_url`, or the one tempauth
    /// at `auth_url` answers — one request), the key and the digest.
    pub async fn from_config(cfg: &SwiftConfig) -> Result<TempUrlSigner> {
        let digest = digest(cfg)?;
        if cfg.temp_url_key.is_empty() {
            return Err(err("swift.temp_url_key is empty: no temporary URL can be signed"));
        }
        let storage_url = if !cfg.storage_url.is_empty() {
            cfg.storage_url.trim_end_matches('/').to_string()
        } else if !cfg.auth_url.is_empty() {
            authenticate(&client(cfg)?, cfg).await?.storage_url
        } else {
            return Err(err("set swift.storage_url (or swift.auth_url) to sign temporary URLs"));
        };
        split_url(&storage_url)?;
        Ok(TempUrlSigner { storage_url, key: cfg.temp_url_key.expose().to_string(), digest })
    }

    /// A GET URL of `container`/`object` valid for `valid_for`.
    pub fn sign(&self, container: &str, object: &str, valid_for: Duration) -> Result<String> {
        let (origin, base_path) = split_url(&self.storage_url)?;
        let expires = now_secs() + valid_for.as_secs().max(1);
        let signed_path = format!("{base_path}/{container}/{object}");
        let sig = temp_url_signature(self.key.as_bytes(), "GET", expires, &signed_path, self.digest);
        Ok(format!(
            "{origin}{base_path}/{}/{}?temp_url_sig={sig}&temp_url_expires={expires}",
            percent::encode_path(container),
            percent::encode_path(object)
        ))
    }
}

fn split_url(url: &str) -> Result<(&str, &str)> {
    let after_scheme =
        url.find("://").map(|i| i + 3).ok_or_else(|| err(format!("storage URL {url:?} has no scheme")))?;
    let path_start = url[after_scheme..].find('/').map(|i| i + after_scheme).unwrap_or(url.len());
    Ok((&url[..path_start], &url[path_start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_python_reference() {
        // Python's hmac module on the same input (notes/ironic-behaviour.md)
        let path = "/v1/AUTH_test/container/object";
        assert_eq!(
            temp_url_signature(b"mykey", "GET", 1_700_000_000, path, Digest::Sha256),
            "1aaf3e25a1392e4974914344d095f35b38c69fe1247497199cee4130bad1b899"
        );
        assert_eq!(
            temp_url_signature(b"mykey", "GET", 1_700_000_000, path, Digest::Sha1),
            "6ffadf7a9b4e2a5d0b0ce6f01d2ca81b61ea270d"
        );
    }

    #[test]
    fn storage_urls_split_into_origin_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/v1/AUTH_test").unwrap(),
            ("http://127.0.0.1:8080", "/v1/AUTH_test")
        );
        assert!(split_url("no-scheme").is_err());
    }

    #[test]
    fn info_gives_the_listing_limit_and_tempurl_digests() {
        let v = serde_json::json!({
            "swift": {"container_listing_limit": 500},
            "tempurl": {"allowed_digests": ["sha1", "sha256", "sha512"], "methods": ["GET"]}
        });
        let info = parse_info(&v);
        assert_eq!(info.listing_limit, Some(500));
        assert_eq!(info.tempurl_digests.as_deref(), Some(&["sha1".into(), "sha256".into(), "sha512".into()][..]));
        assert!(info.has_tempurl);
        let bare = parse_info(&serde_json::json!({"swift": {}}));
        assert_eq!(bare, ClusterInfo { listing_limit: None, tempurl_digests: None, has_tempurl: false });
    }

    #[test]
    fn metadata_keys_must_be_header_names() {
        assert_eq!(meta_header("Usage-Count").unwrap(), "x-object-meta-usage-count");
        assert!(meta_header("bad key").is_err());
    }
}
