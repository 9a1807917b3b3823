//! Secrets that must not leak: configuration values in a type that does
//! not print ([`Secret`]), and the masking of secret keys in a node's JSON
//! fields ([`mask`]) that the API, the gRPC replies, logs and `Debug`
//! output all use — one list, one function.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a masked value reads as (Ironic's).
pub const MASK: &str = "******";

/// A configuration value that is a secret (a password, a key, a URL with
/// a password in it): `Debug` and `Display` print `***`, so a config
/// logged or printed with `{:?}` shows none. Serialised as the plain
/// string (the configuration layers round-trip through serde); read it
/// with [`Secret::expose`], where it is used.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.into())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

/// Substrings of a key that mark its value as secret (oslo's list).
pub const SECRET_KEYS: &[&str] = &[
    "adminpass",
    "admin_pass",
    "password",
    "admin_password",
    "auth_token",
    "new_pass",
    "auth_password",
    "secret_uuid",
    "secret",
    "sys_pswd",
    "token",
    "configdrive",
    "chappassword",
    "encrypted_key",
    "private_key",
    "fernetkey",
    "sslkey",
    "passphrase",
    "cephclusterfsid",
    "octaviaheartbeatkey",
    "rabbitcookie",
    "cephmanilaclientkey",
    "pacemakerremoteauthkey",
    "designaterndckey",
    "cephadminkey",
    "heatauthencryptionkey",
    "cephclientkey",
    "keystonecredential",
    "barbicansimplecryptokek",
    "cephrgwkey",
    "swifthashsuffix",
    "migrationsshkey",
    "cephmdskey",
    "cephmonkey",
    "chapsecret",
];

/// Keys of `driver_info` that are secret though no substring says so.
pub const DRIVER_INFO_SECRET_KEYS: &[&str] = &["snmp_auth_key", "snmp_priv_key"];

/// Keys of `instance_info` that are secret: an image URL may be a signed
/// temporary URL; a config drive holds user data.
pub const INSTANCE_INFO_SECRET_KEYS: &[&str] = &["image_url", "configdrive"];

fn is_secret(key: &str, extra_keys: &[&str]) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| lower.contains(s)) || extra_keys.iter().any(|k| k.eq_ignore_ascii_case(key))
}

fn mask_value(v: &Value, extra_keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(mask(m, extra_keys)),
        Value::Array(a) => Value::Array(a.iter().map(|v| mask_value(v, extra_keys)).collect()),
        other => other.clone(),
    }
}

/// Replace secret values by `******`, at every depth: through nested
/// objects and through arrays (of objects, of arrays), the extra keys too.
pub fn mask(obj: &Map<String, Value>, extra_keys: &[&str]) -> Map<String, Value> {
    obj.iter()
        .map(|(k, v)| {
            let v = if is_secret(k, extra_keys) { Value::String(MASK.into()) } else { mask_value(v, extra_keys) };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secrets_print_as_stars_and_serialise_as_themselves() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
        let back: Secret = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
    }

    #[test]
    fn nested_objects_and_arrays_are_masked_at_every_depth() {
        let o = json!({
            "redfish_password": "p",
            "redfish_username": "u",
            "nested": {"agent_secret_token": "t", "x": 1},
            "snmp_auth_key": "k",
            "list": [{"ipmi_password": "p1"}, [{"SNMP_PRIV_KEY": "p2", "ok": true}], "plain"],
            "deep": {"deeper": [{"snmp_auth_key": "k2", "token_list": ["a", "b"]}]},
        });
        let m = Value::Object(mask(o.as_object().unwrap(), DRIVER_INFO_SECRET_KEYS));
        assert_eq!(m["redfish_password"], MASK);
        assert_eq!(m["redfish_username"], "u");
        assert_eq!(m["nested"]["agent_secret_token"], MASK);
        assert_eq!(m["nested"]["x"], 1);
        assert_eq!(m["snmp_auth_key"], MASK);
        assert_eq!(m["list"][0]["ipmi_password"], MASK);
        assert_eq!(m["list"][1][0]["SNMP_PRIV_KEY"], MASK);
        assert_eq!(m["list"][1][0]["ok"], true);
        assert_eq!(m["list"][2], "plain");
        assert_eq!(m["deep"]["deeper"][0]["snmp_auth_key"], MASK);
        assert_eq!(m["deep"]["deeper"][0]["token_list"], MASK);
        for secret in ["\"p\"", "\"t\"", "\"k\"", "p1", "p2", "k2", "\"a\""] {
            assert!(!m.to_string().contains(secret), "{secret} leaked: {m}");
        }
    }
}
