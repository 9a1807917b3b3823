//! The `node_history` table: what happened to each node, kept to a bound.

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{Db, DbError};

/// One entry of a node's operation log.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct HistoryEntry {
    pub id: i64,
    pub node_uuid: String,
    pub conductor: String,
    pub incarnation: String,
    pub event: String,
    pub detail: String,
    pub created_at: DateTime<Utc>,
}

impl Db {
    pub async fn record_history(
        &self,
        node: Uuid,
        conductor: &str,
        incarnation: &str,
        event: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO node_history (node_uuid, conductor, incarnation, event, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
                .into(),
            vec![
                node.to_string().into(),
                conductor.into(),
                incarnation.into(),
                event.into(),
                detail.into(),
                Utc::now().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Delete up to `batch` history entries beyond the newest `keep` of
    /// each node (`keep` = 0: none of those) and of nodes that no longer
    /// exist. Returns how many went.
    pub async fn prune_history(&self, keep: u32, batch: u32) -> Result<u64, DbError> {
        let orphans = self
            .execute(
                "DELETE FROM node_history WHERE id IN (SELECT h.id FROM node_history h LEFT JOIN nodes n ON \
                 n.uuid = h.node_uuid WHERE n.uuid IS NULL LIMIT $1)"
                    .into(),
                vec![i64::from(batch).into()],
            )
            .await?;
        if keep == 0 {
            return Ok(orphans);
        }
        let excess = self
            .execute(
                "DELETE FROM node_history WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY \
                 node_uuid ORDER BY id DESC) AS rn FROM node_history) ranked WHERE rn > $1 LIMIT $2)"
                    .into(),
                vec![i64::from(keep).into(), i64::from(batch).into()],
            )
            .await?;
        Ok(orphans + excess)
    }

    pub async fn history(&self, node: Uuid) -> Result<Vec<HistoryEntry>, DbError> {
        Ok(self
            .fetch_all::<HistoryEntry>(
                "SELECT id, node_uuid, conductor, incarnation, event, detail, created_at FROM node_history \
                 WHERE node_uuid = $1 ORDER BY id"
                    .into(),
                vec![node.to_string().into()],
            )
            .await?)
    }
}
