//! The partition lock, and what is done under it: the recorded exponent
//! (`cluster_settings.ring_partition_exponent`), a sample of the stored
//! `nodes.ring_partition`, their recompute (the protocol:
//! [`crate::partitions`]).
//!
//! The lock lives as long as its transaction. On PostgreSQL it is a
//! transaction-scoped advisory lock ([`PARTITION_LOCK_KEY`]), exclusive or
//! shared; each statement of a READ COMMITTED transaction takes a new
//! snapshot, so one that waited for the lock reads what its holder
//! committed. On SQLite it is the database's one write lock (`BEGIN
//! IMMEDIATE`), for both modes: a deferred transaction in WAL mode would
//! read the last commit *while* a recompute runs.

use sqlx::{AssertSqlSafe, FromRow, Postgres, Sqlite, Transaction};
use uuid::Uuid;

use super::{Arg, Db, DbError, Pool};
use crate::partitions::{EXPONENT_SETTING, StoredPartition, corrections};

/// The PostgreSQL advisory lock key of the partition lock ("ferricRP");
/// advisory keys are per database, so only another application on the same
/// database could collide with it.
pub const PARTITION_LOCK_KEY: i64 = 0x6665_7272_6963_5250;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionLockMode {
    /// Node creation: many at once, none during a recompute.
    Shared,
    /// Start-up's check and recompute: one at a time.
    Exclusive,
}

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// The partition lock, held until [`PartitionLock::commit`] (dropped
/// without it: rolled back, nothing written).
pub struct PartitionLock {
    tx: Tx,
    /// Declared after `tx`, so it is dropped after the transaction ends.
    _write: super::writes::WriteTicket,
}

/// What a recompute did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recomputed {
    pub checked: u64,
    pub changed: u64,
}

#[derive(FromRow)]
struct Row {
    id: i64,
    uuid: String,
    ring_partition: i64,
}

impl TryFrom<Row> for StoredPartition {
    type Error = DbError;
    fn try_from(r: Row) -> Result<StoredPartition, DbError> {
        let uuid = Uuid::parse_str(&r.uuid)
            .map_err(|e| DbError::Corrupt(format!("node id {}: uuid {:?}: {e}", r.id, r.uuid)))?;
        Ok(StoredPartition { id: r.id, uuid, partition: r.ring_partition })
    }
}

/// Runs `$body` with `$c` bound to the transaction's connection, whichever
/// the backend.
macro_rules! on_tx {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            Tx::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            Tx::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}

impl Db {
    /// Takes the partition lock (waiting for it as long as it takes: a
    /// recompute holds it for seconds).
    pub async fn lock_partitions(&self, mode: PartitionLockMode) -> Result<PartitionLock, DbError> {
        let write = self.writes.start();
        let tx = match &self.pool {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => {
                let mut t = p.begin().await?;
                let sql = match mode {
                    PartitionLockMode::Shared => "SELECT pg_advisory_xact_lock_shared($1)",
                    PartitionLockMode::Exclusive => "SELECT pg_advisory_xact_lock($1)",
                };
                sqlx::query(sql).bind(PARTITION_LOCK_KEY).execute(&mut *t).await?;
                Tx::Postgres(t)
            }
        };
        Ok(PartitionLock { tx, _write: write })
    }
}

impl PartitionLock {
    pub(super) async fn execute(&mut self, sql: String, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        super::no_nul(&args)?;
        Ok(on_tx!(&mut self.tx, c => {
            bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(c).await?.rows_affected()
        }))
    }

    async fn rows(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<StoredPartition>, DbError> {
        let sql = sql.to_string();
        let rows: Vec<Row> = on_tx!(&mut self.tx, c => {
            bind_all!(sqlx::query_as::<_, Row>(AssertSqlSafe(sql)), args).fetch_all(c).await?
        });
        rows.into_iter().map(StoredPartition::try_from).collect()
    }

    /// The recorded exponent's text, if any.
    pub async fn recorded_exponent(&mut self) -> Result<Option<String>, DbError> {
        let sql = "SELECT value FROM cluster_settings WHERE name = $1";
        let row: Option<(String,)> = on_tx!(&mut self.tx, c => {
            sqlx::query_as(sql).bind(EXPONENT_SETTING).fetch_optional(c).await?
        });
        Ok(row.map(|(v,)| v))
    }

    /// The first and the last `n` nodes by id (each once).
    pub async fn sample(&mut self, n: i64) -> Result<Vec<StoredPartition>, DbError> {
        let mut out =
            self.rows("SELECT id, uuid, ring_partition FROM nodes ORDER BY id LIMIT $1", vec![n.into()]).await?;
        let last =
            self.rows("SELECT id, uuid, ring_partition FROM nodes ORDER BY id DESC LIMIT $1", vec![n.into()]).await?;
        let seen = out.last().map(|r| r.id).unwrap_or(i64::MIN);
        out.extend(last.into_iter().filter(|r| r.id > seen));
        Ok(out)
    }

    /// Rewrites every node's partition that `exponent` does not give,
    /// `batch` nodes at a time in id order.
    pub async fn recompute(&mut self, exponent: u8, batch: i64) -> Result<Recomputed, DbError> {
        let mut done = Recomputed::default();
        let mut after = i64::MIN;
        loop {
            let rows = self
                .rows(
                    "SELECT id, uuid, ring_partition FROM nodes WHERE id > $1 ORDER BY id LIMIT $2",
                    vec![after.into(), batch.into()],
                )
                .await?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else { break };
            let (from, to) = (first.id, last.id);
            after = to;
            done.checked += rows.len() as u64;
            let fixes = corrections(&rows, exponent);
            if fixes.is_empty() {
                continue;
            }
            // ids read from the table and partitions we computed: integers,
            // safe to inline (and no bind-parameter limit to mind). The id
            // range keeps PostgreSQL from joining the values with a scan of
            // the whole table per batch (100k nodes: 6 s instead of 15).
            let values: Vec<String> = fixes.iter().map(|(id, p)| format!("({id}, {p})")).collect();
            let sql = format!(
                "UPDATE nodes SET ring_partition = v.column2 FROM (VALUES {}) AS v \
                 WHERE nodes.id = v.column1 AND nodes.id BETWEEN {from} AND {to}",
                values.join(", ")
            );
            done.changed += self.execute(sql, Vec::new()).await?;
        }
        Ok(done)
    }

    /// Records `exponent` as the one the stored partitions are computed with.
    pub async fn record_exponent(&mut self, exponent: u8) -> Result<(), DbError> {
        self.execute(
            "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at"
                .into(),
            vec![EXPONENT_SETTING.into(), exponent.to_string().into(), chrono::Utc::now().into()],
        )
        .await?;
        Ok(())
    }

    /// Writes what was done under the lock, and releases it.
    pub async fn commit(self) -> Result<(), DbError> {
        match self.tx {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}
