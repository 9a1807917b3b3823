//! Agent tokens: the secret a deploy ramdisk presents on every heartbeat.
//!
//! A token is never stored. What the node row keeps is a random *session
//! nonce* (`driver_internal_info.agent_token_nonce`, 128 bits); the token
//! is `base64url(HMAC-SHA256(cluster secret, "ferric-agent-token\0" ‖ node
//! uuid ‖ "\0" ‖ nonce))`, 43 characters like Ironic's
//! `secrets.token_urlsafe()`. So:
//!
//! * any conductor of the cluster (they share the secret) recomputes the
//!   token of a node it took over — a rebuilt parameters floppy carries the
//!   very token the running ramdisk already holds, byte for byte;
//! * nothing readable through the API, the logs or a gRPC reply (they show
//!   the node, which holds only the nonce) lets anyone compute it: that
//!   needs the secret too;
//! * a new ramdisk session (the next deploy, a reboot into the ramdisk)
//!   gets a new nonce, hence a new token; wiping the nonce ends a session.
//!
//! The secret is `[conductor] cluster_secret`, or, when that is empty, one
//! generated at the cluster's first start and kept in the database
//! (`cluster_settings`); every process checks at start that it derives the
//! same fingerprint as the cluster, so conductors with different secrets
//! refuse to start instead of rejecting each other's ramdisks.

use base64::Engine;
use ferric_common::model::Node;
use hmac::{KeyInit, Mac};
use serde_json::Value;

/// Where the session nonce lives.
pub const NONCE_KEY: &str = "agent_token_nonce";
/// Set when the token was put into boot media before the ramdisk booted
/// (virtual media), as Ironic's `agent_secret_token_pregenerated`: such a
/// session survives a power cycle, since the media still carry it.
pub const PREGENERATED_KEY: &str = "agent_secret_token_pregenerated";
/// What Ironic called the stored token. Ferric stores none; the API still
/// shows `"******"` under this name while a session is open, so clients
/// that look for it see what they expect.
pub const SHOWN_KEY: &str = "agent_secret_token";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The cluster secret, in a type that never prints it.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(******)")
    }
}

impl ClusterSecret {
    /// At least 16 bytes: a short secret makes every token guessable.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<ClusterSecret, String> {
        let bytes = bytes.into();
        if bytes.len() < 16 {
            return Err(format!("the cluster secret must be at least 16 bytes long, this one has {}", bytes.len()));
        }
        Ok(ClusterSecret(bytes))
    }

    /// A fresh random secret (32 bytes), as text for the database.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        hex::encode(bytes)
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Identifies the secret without revealing it: two processes with the
    /// same fingerprint derive the same tokens.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.mac(&[b"ferric-cluster-secret-fingerprint"])[..8])
    }
}

/// Mints and checks agent tokens (see the module doc).
#[derive(Debug, Clone)]
pub struct AgentTokens {
    secret: ClusterSecret,
}

impl AgentTokens {
    pub fn new(secret: ClusterSecret) -> AgentTokens {
        AgentTokens { secret }
    }

    pub fn fingerprint(&self) -> String {
        self.secret.fingerprint()
    }

    fn derive(&self, node: &Node, nonce: &str) -> String {
        let mac = self.secret.mac(&[b"ferric-agent-token\0", node.uuid.as_bytes(), b"\0", nonce.as_bytes()]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    }

    /// Opens a new ramdisk session on `node` (a new nonce; the caller saves
    /// the node) and returns its token.
    pub fn mint(&self, node: &mut Node, pregenerated: bool) -> String {
        let nonce = format!("{:032x}", rand::random::<u128>());
        // a new session is a new ramdisk: whatever address the last one
        // called back from is gone
        Self::forget_agent(node);
        node.driver_internal_info.insert(NONCE_KEY.into(), Value::String(nonce.clone()));
        if pregenerated {
            node.driver_internal_info.insert(PREGENERATED_KEY.into(), Value::Bool(true));
        } else {
            node.driver_internal_info.remove(PREGENERATED_KEY);
        }
        self.derive(node, &nonce)
    }

    /// The token of the node's open session, if any.
    pub fn token(&self, node: &Node) -> Option<String> {
        let nonce = node.driver_internal_info.get(NONCE_KEY)?.as_str()?;
        Some(self.derive(node, nonce))
    }

    pub fn has_session(node: &Node) -> bool {
        node.driver_internal_info.get(NONCE_KEY).is_some_and(Value::is_string)
    }

    pub fn is_pregenerated(node: &Node) -> bool {
        node.driver_internal_info.get(PREGENERATED_KEY).and_then(Value::as_bool).unwrap_or(false)
    }

    /// Whether `presented` is the token of the node's open session
    /// (constant-time comparison).
    pub fn verify(&self, node: &Node, presented: &str) -> bool {
        match self.token(node) {
            Some(t) => {
                t.len() == presented.len()
                    && t.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
            None => false,
        }
    }

    /// Drops the running agent's address and CA (the machine powered off
    /// or rebooted: Ironic's `wipe_internal_info_on_power_off`), keeping a
    /// pregenerated token the next ramdisk still holds.
    pub fn forget_agent(node: &mut Node) {
        for key in ["agent_url", "agent_verify_ca"] {
            node.driver_internal_info.remove(key);
        }
    }

    /// Ends the node's ramdisk session (Ironic's `wipe_token_and_url`).
    pub fn end_session(node: &mut Node) {
        for key in [NONCE_KEY, PREGENERATED_KEY, SHOWN_KEY, "agent_url", "agent_verify_ca"] {
            node.driver_internal_info.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_common::states::ProvisionState;
    use uuid::Uuid;

    fn tokens(secret: &str) -> AgentTokens {
        AgentTokens::new(ClusterSecret::new(secret.as_bytes()).unwrap())
    }

    #[test]
    fn any_process_with_the_secret_recomputes_the_token() {
        let a = tokens("0123456789abcdef-cluster");
        let b = tokens("0123456789abcdef-cluster");
        let mut node = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Deploying);
        let t = a.mint(&mut node, true);
        assert_eq!(t.len(), 43, "as long as Ironic's token_urlsafe()");
        assert_eq!(b.token(&node).as_deref(), Some(t.as_str()));
        assert!(b.verify(&node, &t));
        assert!(!b.verify(&node, &t[..42]));
        assert!(!b.verify(&node, "x"));
        assert!(AgentTokens::is_pregenerated(&node));
        // nothing in the node is the token
        let row = serde_json::to_string(&node).unwrap();
        assert!(!row.contains(&t), "the row holds only the nonce");
    }

    #[test]
    fn another_secret_another_token_and_new_sessions_new_tokens() {
        let a = tokens("0123456789abcdef-cluster");
        let other = tokens("0123456789abcdef-another");
        let mut node = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Deploying);
        let t1 = a.mint(&mut node, false);
        assert!(!other.verify(&node, &t1));
        assert_ne!(a.fingerprint(), other.fingerprint());
        let t2 = a.mint(&mut node, false);
        assert_ne!(t1, t2);
        assert!(!a.verify(&node, &t1), "a new session invalidates the old token");
        AgentTokens::end_session(&mut node);
        assert!(!a.verify(&node, &t2));
        assert!(a.token(&node).is_none());
        // the same nonce on another node gives another token
        let mut n2 = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Deploying);
        let t3 = a.mint(&mut n2, false);
        n2.driver_internal_info.insert(NONCE_KEY.into(), node_nonce(&n2));
        let mut n3 = n2.clone();
        n3.uuid = Uuid::new_v4();
        assert_ne!(a.token(&n3).unwrap(), t3);
    }

    fn node_nonce(n: &Node) -> Value {
        n.driver_internal_info[NONCE_KEY].clone()
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(ClusterSecret::new(b"short".to_vec()).unwrap_err().contains("at least 16 bytes"));
        let s = ClusterSecret::new(b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(format!("{s:?}"), "ClusterSecret(******)");
        assert_eq!(ClusterSecret::generate().len(), 64);
    }
}
