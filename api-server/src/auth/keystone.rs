//! Keystone token validation, as keystonemiddleware's `auth_token` does it:
//! the API holds a token of its own service user (`[keystone_authtoken]`)
//! and asks Keystone about each caller's `X-Auth-Token` with
//! `GET /v3/auth/tokens` (`X-Subject-Token`). 200 → the token's user,
//! scope and roles; 404 → not a valid token (401 to the caller); Keystone
//! unreachable or failing → 503, never a pass.
//!
//! A validated token is remembered for `token_cache_time` (never past its
//! own expiry) in a cache bounded by `token_cache_size` (the oldest entry
//! goes first), keyed by the token's SHA-256, so a token's text is not
//! kept. Invalid tokens are not remembered: each costs a Keystone request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use ferric_common::config::KeystoneAuthConfig;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::policy::Credentials;
use crate::error::ApiError;

/// Renew the service token this long before it expires.
const SERVICE_TOKEN_MARGIN: Duration = Duration::from_secs(60);

pub struct Validator {
    cfg: KeystoneAuthConfig,
    service_project_name: String,
    http: reqwest::Client,
    /// `<auth_url>` without a trailing `/v3`.
    base: String,
    service_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<[u8; 32], (Credentials, Instant)>,
    order: VecDeque<[u8; 32]>,
}

impl Cache {
    fn get(&mut self, key: &[u8; 32]) -> Option<Credentials> {
        match self.entries.get(key) {
            Some((c, until)) if Instant::now() < *until => Some(c.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: [u8; 32], c: Credentials, until: Instant, size: usize) {
        while self.entries.len() >= size
            && let Some(old) = self.order.pop_front()
        {
            self.entries.remove(&old);
        }
        if self.entries.insert(key, (c, until)).is_none() {
            self.order.push_back(key);
        }
        // keys of entries that expired and were removed on read stay in
        // `order` until they reach its front: bound it too
        if self.order.len() > 2 * size {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }
}

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    tracing::warn!("keystone: {what}");
    ApiError::unavailable("The identity service (Keystone) is unavailable; retry later.")
}

/// Seconds from now until an ISO 8601 `expires_at`, as an Instant.
fn instant_of(expires_at: &str) -> Option<Instant> {
    let at = chrono::DateTime::parse_from_rfc3339(expires_at).ok()?;
    let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(Instant::now() + left.to_std().unwrap_or(Duration::ZERO))
}

/// The caller a validated token's body describes.
pub fn credentials(token: &Value, service_project_name: &str) -> Credentials {
    let s = |v: &Value| v.as_str().map(String::from);
    let roles: HashSet<String> = token["roles"]
        .as_array()
        .map(|rs| rs.iter().filter_map(|r| r["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    Credentials {
        user_id: s(&token["user"]["id"]).unwrap_or_default(),
        user_name: s(&token["user"]["name"]).unwrap_or_default(),
        project_id: s(&token["project"]["id"]),
        project_name: s(&token["project"]["name"]),
        system_all: token["system"]["all"].as_bool().unwrap_or(false),
        roles,
        service_project_name: service_project_name.to_string(),
    }
}

impl Validator {
    pub fn new(cfg: KeystoneAuthConfig, service_project_name: String) -> anyhow::Result<Validator> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(cfg.http_request_timeout)).build()?;
        let base = cfg.auth_url.trim_end_matches('/').trim_end_matches("/v3").to_string();
        Ok(Validator {
            cfg,
            service_project_name,
            http,
            base,
            service_token: tokio::sync::Mutex::new(None),
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The `WWW-Authenticate` value of a 401 (keystonemiddleware's).
    pub fn challenge(&self) -> String {
        let uri =
            if self.cfg.www_authenticate_uri.is_empty() { &self.cfg.auth_url } else { &self.cfg.www_authenticate_uri };
        format!("Keystone uri=\"{uri}\"")
    }

    /// The API's own token, fetched again when near its expiry or when
    /// `stale` (Keystone refused it).
    async fn service_token(&self, stale: bool) -> Result<String, ApiError> {
        let mut held = self.service_token.lock().await;
        if !stale
            && let Some((t, until)) = held.as_ref()
            && Instant::now() + SERVICE_TOKEN_MARGIN < *until
        {
            return Ok(t.clone());
        }
        let c = &self.cfg;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.username, "domain": {"name": c.user_domain_name}, "password": c.password.expose()}}},
            "scope": {"project": {"name": c.project_name, "domain": {"name": c.project_domain_name}}}}});
        let resp = self
            .http
            .post(format!("{}/v3/auth/tokens", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(format!("getting the service token: {e}")))?;
        if !resp.status().is_success() {
            // the service user's own credentials are wrong: an operator's
            // error, logged; callers see Keystone as unavailable
            return Err(unavailable(format!(
                "the service user {:?} could not get a token: HTTP {} (check [keystone_authtoken])",
                c.username,
                resp.status()
            )));
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| unavailable("the service token answer has no X-Subject-Token"))?;
        let doc: Value = resp.json().await.map_err(|e| unavailable(format!("the service token answer: {e}")))?;
        let until = doc["token"]["expires_at"].as_str().and_then(instant_of).unwrap_or_else(Instant::now);
        *held = Some((token.clone(), until));
        Ok(token)
    }

    /// The caller whose `X-Auth-Token` this is, or 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Credentials, ApiError> {
        let token =
            headers.get("x-auth-token").and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty()).ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "The request you have made requires authentication.")
            })?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(c) = self.cache.lock().expect("token cache").get(&key) {
            return Ok(c);
        }
        let mut stale = false;
        for _ in 0..2 {
            let service = self.service_token(stale).await?;
            let resp = self
                .http
                .get(format!("{}/v3/auth/tokens", self.base))
                .header("X-Auth-Token", &service)
                .header("X-Subject-Token", token)
                .send()
                .await
                .map_err(|e| unavailable(format!("validating a token: {e}")))?;
            match resp.status().as_u16() {
                200 => {
                    let doc: Value = resp.json().await.map_err(|e| unavailable(format!("a token's answer: {e}")))?;
                    let creds = credentials(&doc["token"], &self.service_project_name);
                    let expires = doc["token"]["expires_at"].as_str().and_then(instant_of).unwrap_or_else(Instant::now);
                    let until = expires.min(Instant::now() + Duration::from_secs(self.cfg.token_cache_time));
                    self.cache.lock().expect("token cache").put(key, creds.clone(), until, self.cfg.token_cache_size);
                    return Ok(creds);
                }
                404 => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "The request you have made requires authentication.",
                    ));
                }
                // our own token expired or was revoked: once more with a new one
                401 | 403 if !stale => stale = true,
                s => return Err(unavailable(format!("validating a token: HTTP {s}"))),
            }
        }
        Err(unavailable("the service token is refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_body_becomes_credentials() {
        let t = json!({"user": {"id": "u1", "name": "alice"}, "project": {"id": "p1", "name": "demo"},
                       "roles": [{"id": "1", "name": "member"}, {"id": "2", "name": "reader"}]});
        let c = credentials(&t, "service");
        assert_eq!(c.project_id.as_deref(), Some("p1"));
        assert!(!c.system_all && c.roles.contains("member") && c.roles.contains("reader"));
        let s = credentials(&json!({"system": {"all": true}, "roles": [{"name": "admin"}]}), "service");
        assert!(s.system_all && s.project_id.is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_expired_tokens() {
        let mut cache = Cache::default();
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..10u8 {
            cache.put([i; 32], Credentials::default(), later, 4);
        }
        assert_eq!(cache.entries.len(), 4);
        assert!(cache.get(&[9; 32]).is_some() && cache.get(&[0; 32]).is_none(), "the oldest went first");
        cache.put([20; 32], Credentials::default(), Instant::now(), 4);
        assert!(cache.get(&[20; 32]).is_none(), "an expired entry is not used");
        for i in 30..100u8 {
            cache.put([i; 32], Credentials::default(), Instant::now(), 4);
            let _ = cache.get(&[i; 32]);
        }
        assert!(cache.order.len() <= 8, "the order list stays bounded: {}", cache.order.len());
    }
}
