//! HTTP basic authentication against an htpasswd file, as ironic-lib's
//! `auth_basic`: `user:hash` lines, bcrypt hashes only (`$2y$`, `$2a$`,
//! `$2b$`), blank lines ignored.
//!
//! The file is read at start (an unreadable file, or a line with another
//! hash, stops the start) and again whenever its modification time or
//! size changes, checked on each authenticated request (one `stat`). A
//! reload that fails keeps the users read last and logs why, so a
//! half-written file never locks every operator out. Unlike ironic-lib, a
//! malformed `Authorization` header answers 401 too (ironic-lib: 400), so
//! every refusal reads the same.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use axum::http::{HeaderMap, header};
use base64::Engine;

use crate::error::ApiError;

/// What identifies a version of the file.
type Stamp = (Option<SystemTime>, u64);

pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<(Stamp, HashMap<String, String>)>,
}

/// A bcrypt hash (cost 5, `htpasswd -B`'s default) of nothing anyone can
/// type, checked when the user is
/// unknown so that an unknown user costs the same time as a wrong
/// password.
const DECOY_HASH: &str = "$2b$05$6Jq9cx3fghY5qqhotgWipuUffv3J1YXetlj2KajISJLq/S8q/hGXC";

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

/// Parse the file's text: `user:bcrypt-hash` lines.
pub fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.trim();
        if entry.is_empty() || !entry.contains(':') {
            continue;
        }
        let (user, hash) = entry.split_once(':').expect("checked above");
        if !["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!("line {}: only bcrypt digested passwords are supported (user {user:?})", i + 1));
        }
        // the first line of a user wins, as in ironic-lib
        users.entry(user.to_string()).or_insert_with(|| hash.to_string());
    }
    Ok(users)
}

impl Htpasswd {
    pub fn open(path: &Path) -> anyhow::Result<Htpasswd> {
        let st = stamp(path).with_context(|| format!("reading auth.http_basic_auth_user_file {}", path.display()))?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading auth.http_basic_auth_user_file {}", path.display()))?;
        let users =
            parse(&text).map_err(|e| anyhow::anyhow!("auth.http_basic_auth_user_file {}: {e}", path.display()))?;
        Ok(Htpasswd { path: path.to_path_buf(), state: Mutex::new((st, users)) })
    }

    /// The stored hash of `user`, reading the file again if it changed.
    fn hash_of(&self, user: &str) -> Option<String> {
        let mut state = self.state.lock().expect("htpasswd lock");
        match stamp(&self.path) {
            Ok(now) if now != state.0 => {
                match std::fs::read_to_string(&self.path).map_err(|e| e.to_string()).and_then(|t| parse(&t)) {
                    Ok(users) => {
                        tracing::info!(path = %self.path.display(), users = users.len(), "htpasswd file read again");
                        *state = (now, users);
                    }
                    Err(e) => {
                        tracing::error!(path = %self.path.display(), "htpasswd file changed but cannot be used, keeping the users read before: {e}");
                        // try again only when it changes again
                        state.0 = now;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(path = %self.path.display(), "htpasswd file cannot be read, keeping the users read before: {e}")
            }
        }
        state.1.get(user).cloned()
    }

    /// The user named in a valid `Authorization: Basic` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let (user, password) = credentials(headers).ok_or_else(super::unauthorized)?;
        let hash = self.hash_of(&user);
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DECOY_HASH.to_string());
        // bcrypt takes tens of milliseconds of CPU on purpose: off the
        // async workers
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if known && ok {
            Ok(user)
        } else {
            tracing::info!(user = %user, "basic authentication failed");
            Err(super::unauthorized())
        }
    }
}

/// `(user, password)` from `Authorization: Basic base64(user:password)`.
pub fn credentials(headers: &HeaderMap) -> Option<(String, Vec<u8>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let pair = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let colon = pair.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(pair[..colon].to_vec()).ok()?;
    Some((user, pair[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_bcrypt_lines_are_taken() {
        let users = parse("\nadmin:$2y$05$abc\n  \nbob:$2b$05$def\nadmin:$2b$05$later\n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["admin"], "$2y$05$abc");
        let e = parse("admin:$apr1$xyz$abc\n").unwrap_err();
        assert!(e.contains("only bcrypt") && e.contains("admin") && e.contains("line 1"), "{e}");
        assert!(parse("alice:{SHA}abc=\n").is_err());
    }

    #[test]
    fn basic_header_is_decoded() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWRtaW46czNjcjN0OjE="));
        assert_eq!(credentials(&h), Some(("admin".into(), b"s3cr3t:1".to_vec())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("basic  YWRtaW46czNjcjN0OjE="));
        assert!(credentials(&h).is_some(), "the scheme is case-insensitive");
        for bad in ["Bearer YWRtaW46czNjcjN0", "Basic !!!", "Basic YWRtaW4=", "Basic"] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(credentials(&h), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
        std::fs::write(&path, format!("alice:{}\n", hash("one"))).unwrap();
        let file = Htpasswd::open(&path).unwrap();
        let auth = |u: &str, p: &str| {
            let mut h = HeaderMap::new();
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {v}")).unwrap());
            h
        };
        assert_eq!(file.authenticate(&auth("alice", "one")).await.unwrap(), "alice");
        let wrong = file.authenticate(&auth("alice", "two")).await.unwrap_err();
        let unknown = file.authenticate(&auth("bob", "one")).await.unwrap_err();
        assert_eq!(wrong, unknown, "an unknown user and a wrong password read the same");
        assert_eq!(wrong.status, axum::http::StatusCode::UNAUTHORIZED);
        // a new user, and a longer file (the size changes even within the
        // file system's time resolution)
        std::fs::write(&path, format!("alice:{}\nbob:{}\n", hash("one"), hash("three"))).unwrap();
        assert_eq!(file.authenticate(&auth("bob", "three")).await.unwrap(), "bob");
        // a broken file keeps the users read before
        std::fs::write(&path, "alice:plaintext-is-refused\n").unwrap();
        assert_eq!(file.authenticate(&auth("bob", "three")).await.unwrap(), "bob");
        assert!(Htpasswd::open(&path).is_err(), "a broken file stops a start");
        assert!(Htpasswd::open(&dir.path().join("missing")).is_err());
    }
}
