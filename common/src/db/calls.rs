//! The `applied_calls` table: the API's calls to conductors that changed
//! something, by the id the API gives each call (the `x-ferric-call-id`
//! gRPC header). A change and the record of the call that made it are
//! written in one transaction, so a call the API sends again — its reply
//! was lost, or its conductor died right after applying it — is answered
//! "applied" by whichever conductor gets it, instead of being applied twice
//! or refused as a conflict with its own effect.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{Arg, Db, DbError};

/// A call to record together with the change it makes.
#[derive(Debug, Clone, Copy)]
pub struct AppliedCall<'a> {
    pub id: &'a str,
    pub node: Uuid,
    /// What the call was (`provision`, `power`, `update_node`, ...).
    pub kind: &'a str,
    pub conductor: &'a str,
}

impl AppliedCall<'_> {
    /// The INSERT that records it.
    pub(super) fn insert(&self) -> (String, Vec<Arg>) {
        (
            "INSERT INTO applied_calls (id, node_uuid, kind, conductor, created_at) VALUES ($1, $2, $3, $4, $5)".into(),
            vec![
                self.id.into(),
                self.node.to_string().into(),
                self.kind.into(),
                self.conductor.into(),
                Utc::now().into(),
            ],
        )
    }
}

impl Db {
    /// Whether the call `id` was applied (and recorded).
    pub async fn call_applied(&self, id: &str) -> Result<bool, DbError> {
        #[derive(FromRow)]
        struct Row {
            #[allow(dead_code)]
            id: String,
        }
        Ok(self
            .fetch_one_opt::<Row>("SELECT id FROM applied_calls WHERE id = $1".into(), vec![id.into()])
            .await?
            .is_some())
    }

    /// Deletes up to `batch` records written before `before`; returns how
    /// many went.
    pub async fn prune_applied_calls(&self, before: DateTime<Utc>, batch: u32) -> Result<u64, DbError> {
        Ok(self
            .execute(
                "DELETE FROM applied_calls WHERE id IN (SELECT id FROM applied_calls WHERE created_at < $1 LIMIT $2)"
                    .into(),
                vec![before.into(), i64::from(batch).into()],
            )
            .await?)
    }
}
