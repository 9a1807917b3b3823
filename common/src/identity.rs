//! Which cluster a database belongs to, so that a process pointed at the
//! wrong one is refused at start instead of quietly driving nodes it must
//! not touch.
//!
//! Written into `cluster_settings` by the first process that starts on the
//! database, and compared by every later one:
//!
//! * `membership`: how the cluster's conductors find each other — the
//!   in-process membership of one all-in-one process, or an etcd cluster
//!   (its cluster id and our key prefix). An all-in-one pointed at a
//!   cluster's database would treat every live cluster conductor as dead
//!   and take its nodes; a cluster conductor pointed at an all-in-one's
//!   database would do the same to it.
//! * `database_id`: a random id, published in every member record, so that
//!   a conductor joining the ring with another database (a forgotten
//!   `--database-url`: its own SQLite file) is refused — it would own nodes
//!   it cannot see.
//! * `local_conductor`: the all-in-one process currently running on the
//!   database (a lease renewed every few seconds): a second all-in-one on
//!   the same database is refused while the first is alive.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::db::{Db, DbError};

/// How a cluster's conductors find each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum ClusterIdentity {
    /// One all-in-one process, in-process membership.
    Local,
    /// An etcd cluster, by its cluster id, and the key prefix we use in it.
    Etcd { cluster_id: String, prefix: String },
}

impl std::fmt::Display for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterIdentity::Local => f.write_str("in-process membership (ferric all-in-one)"),
            ClusterIdentity::Etcd { cluster_id, prefix } => {
                write!(f, "etcd membership (etcd cluster id {cluster_id}, key prefix {prefix})")
            }
        }
    }
}

const MEMBERSHIP: &str = "membership";
const DATABASE_ID: &str = "database_id";
const LOCAL: &str = "local_conductor";

/// Records `mine` as the database's cluster at the first start, and refuses
/// a process whose membership is another cluster's.
pub async fn check_membership(db: &Db, mine: &ClusterIdentity, database: &str) -> Result<(), String> {
    let text = serde_json::to_string(mine).expect("an identity serialises");
    let stored = db.cluster_setting_or_insert(MEMBERSHIP, &text).await.map_err(|e| e.to_string())?;
    let theirs: ClusterIdentity =
        serde_json::from_str(&stored).map_err(|e| format!("cluster_settings.membership is unreadable: {e}"))?;
    if theirs == *mine {
        return Ok(());
    }
    let advice = match (mine, &theirs) {
        (ClusterIdentity::Local, _) => {
            "give all-in-one a database of its own (or none: it defaults to SQLite in its data dir)"
        }
        (ClusterIdentity::Etcd { .. }, ClusterIdentity::Local) => {
            "this database is an all-in-one's: give the cluster a database of its own"
        }
        _ => "point this process at the etcd cluster (and key prefix) the database's conductors use",
    };
    Err(format!("the database {database} belongs to a cluster with {theirs}, but this process uses {mine}: {advice}"))
}

/// The database's id (generated at its first start).
pub async fn database_id(db: &Db) -> Result<String, DbError> {
    db.cluster_setting_or_insert(DATABASE_ID, &uuid::Uuid::new_v4().to_string()).await
}

/// The all-in-one process that runs on a database; see [`claim_local`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalHolder {
    pub holder: String,
    pub data_dir: String,
}

/// Claims the database for this all-in-one process (`holder` unique per
/// process) for `ttl`; renew by calling again before it runs out. Refused,
/// naming the other process, while another holder's claim is fresh.
pub async fn claim_local(db: &Db, me: &LocalHolder, ttl: Duration) -> Result<(), String> {
    let text = serde_json::to_string(me).expect("a holder serialises");
    let expired_before = Utc::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(10));
    if db.claim_cluster_setting(LOCAL, &text, expired_before).await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let other = db.cluster_setting(LOCAL).await.map_err(|e| e.to_string())?.unwrap_or_default();
    let other: Option<LocalHolder> = serde_json::from_str(&other).ok();
    Err(match other {
        Some(o) => format!(
            "another ferric all-in-one ({}, data dir {}) runs on this database: two would drive the same nodes; \
             stop it, or give this one its own database",
            o.holder, o.data_dir
        ),
        None => "another ferric all-in-one runs on this database".into(),
    })
}

/// Who holds the all-in-one claim on the database, if anyone.
pub async fn local_holder(db: &Db) -> Result<Option<LocalHolder>, DbError> {
    Ok(db.cluster_setting(LOCAL).await?.and_then(|v| serde_json::from_str(&v).ok()))
}

/// Takes the claim whoever holds it (the caller proved the holder is
/// gone: same data dir, whose lock it holds).
pub async fn force_claim_local(db: &Db, me: &LocalHolder) -> Result<(), String> {
    let text = serde_json::to_string(me).expect("a holder serialises");
    let far_future = Utc::now() + chrono::Duration::days(36500);
    db.claim_cluster_setting(LOCAL, &text, far_future).await.map(drop).map_err(|e| e.to_string())
}

/// Gives the claim up (a clean stop), if it is still ours.
pub async fn release_local(db: &Db, me: &LocalHolder) {
    let text = serde_json::to_string(me).expect("a holder serialises");
    let _ = db.delete_cluster_setting_if(LOCAL, &text).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_as_what_an_operator_configured() {
        let e = ClusterIdentity::Etcd { cluster_id: "cdf818194e3a8c32".into(), prefix: "/ferric/conductors/".into() };
        assert_eq!(e.to_string(), "etcd membership (etcd cluster id cdf818194e3a8c32, key prefix /ferric/conductors/)");
        assert_eq!(ClusterIdentity::Local.to_string(), "in-process membership (ferric all-in-one)");
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<ClusterIdentity>(&text).unwrap(), e);
        assert_eq!(serde_json::to_string(&ClusterIdentity::Local).unwrap(), r#"{"backend":"local"}"#);
    }
}
