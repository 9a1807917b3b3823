//! The cluster secret agent tokens are derived from (see `ferric_deploy::token`).
//!
//! Either every conductor is configured with the same `[conductor]
//! cluster_secret`, or none is and they share one generated at the
//! cluster's first start, kept in the database. The database also keeps
//! the secret's fingerprint, written by the first process, and a process
//! whose secret has another fingerprint refuses to start — conductors
//! with different secrets would reject each other's ramdisks after every
//! take-over.

use ferric_common::db::Db;
use ferric_deploy::token::ClusterSecret;

const GENERATED: &str = "agent_token_secret";
const FINGERPRINT: &str = "agent_token_secret_fingerprint";

/// What the database says the cluster uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub generated: Option<String>,
    pub fingerprint: Option<String>,
}

/// Decides the secret from the configured one and what is stored; `Ok`
/// carries the secret and whether it must be generated (and stored) first.
pub fn decide(configured: &str, stored: &Stored) -> Result<Decision, String> {
    if !configured.is_empty() {
        let secret = ClusterSecret::new(configured.as_bytes())?;
        return match &stored.fingerprint {
            Some(fp) if *fp != secret.fingerprint() => Err(if stored.generated.is_some() {
                format!(
                    "conductor.cluster_secret is set, but this cluster's conductors use the secret generated at its \
                     first start (fingerprint {fp}); remove conductor.cluster_secret here, or set the same secret on \
                     every conductor and delete the agent_token_secret* rows of cluster_settings while no deploy is \
                     waiting for its ramdisk"
                )
            } else {
                format!(
                    "conductor.cluster_secret has fingerprint {} but the cluster's is {fp}: every conductor needs the \
                     same secret",
                    secret.fingerprint()
                )
            }),
            _ => Ok(Decision { secret, generate: None }),
        };
    }
    match (&stored.generated, &stored.fingerprint) {
        (Some(g), _) => Ok(Decision { secret: ClusterSecret::new(g.as_bytes())?, generate: None }),
        (None, Some(fp)) => Err(format!(
            "this cluster's conductors are configured with a conductor.cluster_secret (fingerprint {fp}), this \
             process has none: set the same one"
        )),
        (None, None) => {
            let g = ClusterSecret::generate();
            Ok(Decision { secret: ClusterSecret::new(g.as_bytes())?, generate: Some(g) })
        }
    }
}

pub struct Decision {
    pub secret: ClusterSecret,
    /// A new secret to store (first start of a cluster without a
    /// configured one).
    pub generate: Option<String>,
}

/// Resolves the secret against the database, storing what a first start
/// must.
pub async fn resolve(db: &Db, configured: &str) -> anyhow::Result<ClusterSecret> {
    let stored =
        Stored { generated: db.cluster_setting(GENERATED).await?, fingerprint: db.cluster_setting(FINGERPRINT).await? };
    let decision = decide(configured, &stored).map_err(anyhow::Error::msg)?;
    let secret = match decision.generate {
        // another process may have generated one at the same moment: the
        // stored one wins
        Some(g) => ClusterSecret::new(db.cluster_setting_or_insert(GENERATED, &g).await?.into_bytes())
            .map_err(anyhow::Error::msg)?,
        None => decision.secret,
    };
    let fp = db.cluster_setting_or_insert(FINGERPRINT, &secret.fingerprint()).await?;
    if fp != secret.fingerprint() {
        anyhow::bail!(
            "the cluster secret's fingerprint is {fp} in the database but {} here: every conductor needs the same \
             conductor.cluster_secret (or none)",
            secret.fingerprint()
        );
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123";

    #[test]
    fn configured_secrets_must_agree_with_the_cluster() {
        let none = Stored { generated: None, fingerprint: None };
        let d = decide(S, &none).unwrap();
        assert!(d.generate.is_none());
        let fp = d.secret.fingerprint();
        let same = Stored { generated: None, fingerprint: Some(fp.clone()) };
        assert_eq!(decide(S, &same).unwrap().secret.fingerprint(), fp);
        let e = decide("another-secret-of-length", &same).err().unwrap();
        assert!(e.contains("every conductor needs the same secret"), "{e}");
        let e = decide("", &same).err().unwrap();
        assert!(e.contains("set the same one"), "{e}");
        assert!(decide("short", &none).err().unwrap().contains("at least 16 bytes"));
    }

    #[test]
    fn without_configuration_the_generated_one_is_shared() {
        let none = Stored { generated: None, fingerprint: None };
        let first = decide("", &none).unwrap();
        let g = first.generate.clone().expect("first start generates");
        let stored = Stored { generated: Some(g.clone()), fingerprint: Some(first.secret.fingerprint()) };
        let second = decide("", &stored).unwrap();
        assert!(second.generate.is_none());
        assert_eq!(second.secret.fingerprint(), first.secret.fingerprint());
        let e = decide(S, &stored).err().unwrap();
        assert!(e.contains("generated at its first start"), "{e}");
    }
}
