//! The Swift publisher: artefacts as objects in one container
//! (`[swift] swift_ilo_container`, created when missing), handed to BMCs as
//! temporary URLs.
//!
//! Auth: tempauth v1.0 (`GET auth_url` with `X-Auth-User`/`X-Auth-Key` →
//! `X-Storage-Url` + `X-Auth-Token`), or a fixed storage URL and token. A
//! 401 re-authenticates once and retries. Connection errors and 5xx are
//! retried 3 times with backoff; other 4xx are errors naming the method,
//! the object and Swift's answer.
//!
//! Temporary URLs: `<object url>?temp_url_sig=<hex>&temp_url_expires=<unix>`
//! with sig = HMAC(key, "GET\n<expires>\n<path>"), path being the object's
//! path as Swift sees it (`/v1/AUTH_x/<container>/<object>`, not
//! percent-encoded); HMAC-SHA256 by default, SHA-1 for old clusters
//! (`temp_url_digest`). The key is the account's `Temp-URL-Key`, set at
//! start-up when `set_temp_url_key` is true. Anyone holding the URL can
//! GET (and HEAD) the object until it expires, with no token.
//!
//! Expiry: objects put with a delete-after carry `X-Delete-After`; Swift's
//! object servers refuse them at once when it passes (its expirer removes
//! them from disk and listings later — a listing may still show an
//! expired object for a while). Metadata: Swift's object POST replaces all
//! user metadata *and* drops the expiry unless sent again, so
//! [`Store::set_metadata`] reads both first and re-sends them.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferric_common::config::SwiftConfig;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};

use super::{PublishError, Result, Store, check_name, is_private};

const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);
/// Swift's default (and maximum) page of a container listing.
const LISTING_PAGE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Digest {
    Sha256,
    Sha1,
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
    auth: tokio::sync::RwLock<Auth>,
}

fn err(message: impl Into<String>) -> PublishError {
    PublishError::Backend { backend: "swift", message: message.into() }
}

/// Percent-encodes a Swift path: every byte but unreserved ones and `/`.
fn encode_path(p: &str) -> String {
    p.split('/').map(super::http::encode_segment).collect::<Vec<_>>().join("/")
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
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

impl SwiftStore {
    /// Authenticates, sets the temp URL key if asked, and creates the
    /// container if it is missing.
    pub async fn connect(cfg: &SwiftConfig) -> Result<SwiftStore> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let digest = match cfg.temp_url_digest.as_str() {
            "sha256" => Digest::Sha256,
            "sha1" => Digest::Sha1,
            other => return Err(err(format!("swift.temp_url_digest must be sha256 or sha1, not {other:?}"))),
        };
        if cfg.temp_url_key.is_empty() {
            return Err(err("swift.temp_url_key is empty: BMCs could not be given temporary URLs"));
        }
        if cfg.swift_ilo_container.is_empty() || cfg.swift_ilo_container.contains('/') {
            return Err(err(format!(
                "swift.swift_ilo_container {:?} is not a container name",
                cfg.swift_ilo_container
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.request_timeout_secs.max(1)))
            .build()
            .map_err(|e| err(format!("HTTP client: {e}")))?;
        let auth = if cfg.auth_url.is_empty() {
            if cfg.storage_url.is_empty() {
                return Err(err("set swift.auth_url (tempauth) or swift.storage_url + swift.auth_token"));
            }
            Auth { storage_url: cfg.storage_url.trim_end_matches('/').to_string(), token: cfg.auth_token.clone() }
        } else {
            authenticate(&client, cfg).await?
        };
        let store = SwiftStore { client, cfg: cfg.clone(), digest, auth: tokio::sync::RwLock::new(auth) };
        if cfg.set_temp_url_key {
            store
                .send(
                    Method::POST,
                    "",
                    &[("X-Account-Meta-Temp-URL-Key", cfg.temp_url_key.clone())],
                    Body::Empty,
                    "account",
                )
                .await?;
        }
        store.send(Method::PUT, &store.container_path(), &[], Body::Empty, "container").await?;
        Ok(store)
    }

    pub fn container(&self) -> &str {
        &self.cfg.swift_ilo_container
    }

    fn container_path(&self) -> String {
        format!("/{}", super::http::encode_segment(&self.cfg.swift_ilo_container))
    }

    fn object_path(&self, name: &str) -> String {
        format!("{}/{}", self.container_path(), encode_path(name))
    }

    /// One request relative to the storage URL, with retries and re-auth.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body<'_>,
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let auth = self.auth.read().await.clone();
            let mut req = self.client.request(method.clone(), format!("{}{path}", auth.storage_url));
            req = req.header("X-Auth-Token", &auth.token);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            req = match &body {
                Body::Empty => req.header("Content-Length", "0"),
                Body::Bytes(b) => req.body(b.to_vec()),
                Body::File(p, len) => {
                    let f = tokio::fs::File::open(p).await.map_err(|e| PublishError::io(p, e))?;
                    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
                    req.header("Content-Length", len.to_string()).body(reqwest::Body::wrap_stream(stream))
                }
            };
            let retry_later = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed && !self.cfg.auth_url.is_empty() => {
                    reauthed = true;
                    *self.auth.write().await = authenticate(&self.client, &self.cfg).await?;
                    attempt -= 1;
                    continue;
                }
                Ok(resp) if resp.status().is_server_error() => {
                    format!("{method} {what}: {} {}", resp.status(), snippet(resp).await)
                }
                Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => return Ok(resp),
                Ok(resp) => {
                    return Err(err(format!("{method} {what}: {} {}", resp.status(), snippet(resp).await)));
                }
                Err(e) => format!("{method} {what}: {e}"),
            };
            if attempt >= ATTEMPTS {
                return Err(err(format!("{retry_later} (after {ATTEMPTS} attempts)")));
            }
            tracing::warn!("swift: {retry_later}; retrying");
            tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }

    async fn put(&self, name: &str, body: Body<'_>, delete_after: Option<Duration>) -> Result<()> {
        check_name(name)?;
        let mut headers = vec![("Content-Type", "application/octet-stream".to_string())];
        if let Some(d) = delete_after {
            headers.push(("X-Delete-After", d.as_secs().max(1).to_string()));
        }
        let resp = self.send(Method::PUT, &self.object_path(name), &headers, body, name).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(err(format!("PUT {name}: 404 (container {} is gone)", self.cfg.swift_ilo_container)));
        }
        Ok(())
    }

    /// An object POST that re-sends the metadata and expiry Swift would
    /// otherwise drop, after `change` edited them (lower-case names).
    async fn post_keeping(&self, name: &str, change: impl FnOnce(&mut Vec<(String, String)>)) -> Result<()> {
        let Some(current) = self.head(name).await? else { return Err(PublishError::NotFound(name.to_string())) };
        let mut headers: Vec<(String, String)> = current
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-object-meta-") || k.as_str() == "x-delete-at")
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        change(&mut headers);
        let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
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

async fn authenticate(client: &reqwest::Client, cfg: &SwiftConfig) -> Result<Auth> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client.get(&cfg.auth_url).header("X-Auth-User", &cfg.user).header("X-Auth-Key", &cfg.key).send().await {
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
            Ok(resp) if resp.status().is_server_error() => last = format!("{}", resp.status()),
            Ok(resp) => {
                return Err(err(format!("auth at {} as {:?}: {}", cfg.auth_url, cfg.user, resp.status())));
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }
    Err(err(format!("auth at {} failed after {ATTEMPTS} attempts: {last}", cfg.auth_url)))
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

    async fn put_bytes(&self, name: &str, bytes: Vec<u8>, delete_after: Option<Duration>) -> Result<()> {
        self.put(name, Body::Bytes(&bytes), delete_after).await
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
            let marker = out.last().map(|m| encode_path(m)).unwrap_or_default();
            let query = format!("?format=json&prefix={}&marker={marker}", encode_path(prefix));
            let resp = self
                .send(Method::GET, &format!("{}{query}", self.container_path()), &[], Body::Empty, "container listing")
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(err(format!("container {} is gone", self.cfg.swift_ilo_container)));
            }
            let page: Vec<serde_json::Value> =
                resp.json().await.map_err(|e| err(format!("container listing is not JSON: {e}")))?;
            let n = page.len();
            out.extend(page.iter().filter_map(|o| o["name"].as_str().map(str::to_string)));
            if n < LISTING_PAGE {
                break;
            }
        }
        Ok(out)
    }

    async fn set_metadata(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let meta_key = format!("x-object-meta-{}", key.to_ascii_lowercase());
        self.post_keeping(name, |headers| {
            headers.retain(|(k, _)| *k != meta_key);
            headers.push((meta_key.clone(), value.to_string()));
        })
        .await
    }

    async fn set_delete_after(&self, name: &str, delete_after: Option<Duration>) -> Result<()> {
        self.post_keeping(name, |headers| {
            headers.retain(|(k, _)| k != "x-delete-at");
            if let Some(d) = delete_after {
                headers.push(("x-delete-after".into(), d.as_secs().max(1).to_string()));
            }
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn metadata(&self, name: &str, key: &str) -> Result<Option<String>> {
        let Some(h) = self.head(name).await? else { return Err(PublishError::NotFound(name.to_string())) };
        let k = format!("x-object-meta-{}", key.to_ascii_lowercase());
        Ok(h.get(k.as_str()).and_then(|v| v.to_str().ok()).map(str::to_string))
    }

    fn url(&self, name: &str, valid_for: Duration) -> Result<String> {
        check_name(name)?;
        if is_private(name) {
            return Err(PublishError::Private(name.to_string()));
        }
        // the auth token is not needed, only the storage URL, which a
        // re-auth does not change: read it without waiting
        let storage_url = match self.auth.try_read() {
            Ok(a) => a.storage_url.clone(),
            Err(_) => return Err(err("storage URL is being refreshed; retry")),
        };
        let (origin, base_path) = split_url(&storage_url)?;
        let expires = now_secs() + valid_for.as_secs().max(1);
        let signed_path = format!("{base_path}/{}/{name}", self.cfg.swift_ilo_container);
        let sig = temp_url_signature(self.cfg.temp_url_key.as_bytes(), "GET", expires, &signed_path, self.digest);
        Ok(format!(
            "{origin}{base_path}{}/{}?temp_url_sig={sig}&temp_url_expires={expires}",
            self.container_path(),
            encode_path(name)
        ))
    }

    async fn expire(&self) -> Result<usize> {
        Ok(0)
    }
}

/// `http://host:port/v1/AUTH_x` → (`http://host:port`, `/v1/AUTH_x`).
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
}
