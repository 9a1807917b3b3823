//! Who may call the REST API: Ironic's `[DEFAULT]auth_strategy` and its
//! companions (`http_basic_auth_user_file`, `[keystone_authtoken]`), in
//! sections of their own so the rest of the configuration is untouched.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secrets::Secret;

/// `[auth]`: the REST API's authentication strategy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `noauth` (anyone is admin), `http_basic` (an htpasswd file of bcrypt
    /// hashes, Metal3's scheme) or `keystone` (tokens validated by a
    /// Keystone, Ironic's default policy roles). Ironic's
    /// `[DEFAULT]auth_strategy`. Default noauth: the all-in-one quick start
    /// on loopback needs no setup; a non-loopback listener refuses it
    /// unless `insecure_noauth` says so.
    pub auth_strategy: String,
    /// Let `noauth` serve on an address other than loopback. Off: anyone
    /// who can reach the port could do anything, so that must be said out
    /// loud (`--insecure-noauth`), never be a default.
    pub insecure_noauth: bool,
    /// The htpasswd file for `http_basic` (Ironic's
    /// `http_basic_auth_user_file`): `user:$2y$...` lines, bcrypt only, as
    /// `htpasswd -B` writes. Read again when its modification time or size
    /// changes, so users are added without a restart.
    pub http_basic_auth_user_file: PathBuf,
    /// The project whose `service` role holders pass Ironic's
    /// `service_role` rule (Ironic's `[DEFAULT]rbac_service_project_name`).
    pub rbac_service_project_name: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            auth_strategy: "noauth".into(),
            insecure_noauth: false,
            http_basic_auth_user_file: PathBuf::new(),
            rbac_service_project_name: "service".into(),
        }
    }
}

/// `[keystone_authtoken]`: how the API validates tokens with `keystone`
/// (keystonemiddleware's option names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeystoneAuthConfig {
    /// Keystone's identity endpoint the API talks to, e.g.
    /// `http://keystone:5000/v3` (a trailing `/v3` is optional).
    pub auth_url: String,
    /// Told to clients in `WWW-Authenticate: Keystone uri=...` on a 401;
    /// empty = `auth_url`.
    pub www_authenticate_uri: String,
    /// The API's own service user, whose token validates callers' tokens.
    pub username: String,
    /// Printed as `***` (a [`Secret`]).
    pub password: Secret,
    pub user_domain_name: String,
    /// The service user's project (its token is project-scoped).
    pub project_name: String,
    pub project_domain_name: String,
    /// Seconds a validated token is trusted without asking Keystone again
    /// (keystonemiddleware's `token_cache_time`): a revoked token keeps
    /// working this long at most; a token is never trusted past its expiry.
    pub token_cache_time: u64,
    /// Validated tokens kept at most; beyond it the oldest are forgotten.
    /// Bounds the memory a flood of distinct tokens can take.
    pub token_cache_size: usize,
    /// Seconds one request to Keystone may take before the caller gets 503.
    pub http_request_timeout: u64,
}

impl Default for KeystoneAuthConfig {
    fn default() -> Self {
        KeystoneAuthConfig {
            auth_url: String::new(),
            www_authenticate_uri: String::new(),
            username: "ironic".into(),
            password: Secret::default(),
            user_domain_name: "Default".into(),
            project_name: "service".into(),
            project_domain_name: "Default".into(),
            token_cache_time: 300,
            token_cache_size: 10_000,
            http_request_timeout: 10,
        }
    }
}

/// The strategies `auth.auth_strategy` takes.
pub const AUTH_STRATEGIES: [&str; 3] = ["noauth", "http_basic", "keystone"];

pub(super) fn validate(auth: &AuthConfig, ks: &KeystoneAuthConfig) -> Result<(), ConfigError> {
    match auth.auth_strategy.as_str() {
        "noauth" => Ok(()),
        "http_basic" if auth.http_basic_auth_user_file.as_os_str().is_empty() => Err(ConfigError(
            "auth.auth_strategy = \"http_basic\" needs auth.http_basic_auth_user_file (an htpasswd file of bcrypt \
             hashes)"
                .into(),
        )),
        "http_basic" => Ok(()),
        "keystone" => {
            if ks.auth_url.is_empty() || ks.password.is_empty() {
                return Err(ConfigError(
                    "auth.auth_strategy = \"keystone\" needs keystone_authtoken.auth_url and the API's service user \
                     (keystone_authtoken.username, password, project_name)"
                        .into(),
                ));
            }
            if ks.token_cache_size == 0 || ks.http_request_timeout == 0 {
                return Err(ConfigError(
                    "keystone_authtoken.token_cache_size and http_request_timeout must be at least 1".into(),
                ));
            }
            if ks.token_cache_time > 3600 {
                return Err(ConfigError(format!(
                    "keystone_authtoken.token_cache_time = {} is longer than an hour: a revoked token would keep \
                     working that long",
                    ks.token_cache_time
                )));
            }
            Ok(())
        }
        other => {
            Err(ConfigError(format!("auth.auth_strategy must be one of {}, not {other:?}", AUTH_STRATEGIES.join(", "))))
        }
    }
}
