//! Database access: one schema and one set of queries for SQLite (the
//! embedded default) and PostgreSQL (production).
//!
//! Queries are written once with `$N` placeholders, which both sqlx drivers
//! accept, and run on a typed pool (`SqlitePool` or `PgPool`, never
//! `sqlx::Any`). JSON columns are text in both databases so the two behave
//! the same byte for byte. Every write that a conductor makes while it
//! holds a node lock is conditional on still holding it
//! (`WHERE reservation = <my incarnation>`): a conductor whose lock was
//! cleared (because it was declared dead) cannot overwrite the new owner.
//!
//! Layout: this file holds the connection, the schema policy and the
//! query plumbing; one module per table holds that table's columns (each
//! declared once) and queries: [`nodes`] (with the node lock), [`ports`],
//! [`portgroups`], [`chassis`], [`allocations`] (with the claim of a node),
//! [`history`], [`settings`], [`calls`] (the API's calls already applied),
//! and [`partitions`]: the lock under which nodes' ring partitions and the
//! exponent they were computed with are read and written.

/// Declares a table's columns once: the row type read back, the list of
/// every column (for SELECT), and what a save writes — every `saved`
/// column, computed from the resource `$n` at time `$now`. `fixed` columns
/// are written at creation only (or never, like `id`).
macro_rules! table {
    (
        row $row:ident of $res:ty;
        columns $all:ident;
        saved $saved:ident, $args:ident;
        fixed { $($fcol:ident: $fty:ty),* $(,)? }
        saved |$n:ident, $now:ident| { $($col:ident: $ty:ty = $val:expr),* $(,)? }
    ) => {
        #[derive(sqlx::FromRow)]
        #[allow(dead_code)] // `id` is read for paging only
        struct $row {
            $($fcol: $fty,)*
            $($col: $ty,)*
        }

        /// Every column, in the order of the row type.
        const $all: &[&str] = &[$(stringify!($fcol),)* $(stringify!($col),)*];

        /// The columns a save writes.
        const $saved: &[&str] = &[$(stringify!($col)),*];

        /// The values of the saved columns, in order.
        #[allow(unused_variables)]
        fn $args($n: &$res, $now: chrono::DateTime<chrono::Utc>) -> Vec<Arg> {
            vec![$(Arg::from($val)),*]
        }
    };
}

/// Binds every [`Arg`] of `$args` to the query `$q`, in order.
macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
            };
        }
        q
    }};
}

mod allocations;
mod calls;
mod chassis;
mod history;
mod nodes;
mod partitions;
mod portgroups;
mod ports;
mod settings;
pub mod writes;

pub use allocations::{ALLOCATION_SORT_KEYS, AllocationQuery, ClaimOutcome};
pub use calls::AppliedCall;
pub use chassis::{CHASSIS_SORT_KEYS, ChassisDelete};
pub use history::{HistoryEntry, event_uuid};
pub use nodes::{NODE_SORT_KEYS, NodeQuery, NodeRef};
pub use partitions::{PARTITION_LOCK_KEY, PartitionLock, PartitionLockMode, Recomputed};
pub use portgroups::{PORTGROUP_SORT_KEYS, PortgroupQuery};
pub use ports::{PORT_SORT_KEYS, PortQuery};

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, FromRow, PgPool, SqlitePool};
use uuid::Uuid;

use crate::ids::{ConductorId, LockHolder};
use crate::model::{JsonObject, Node};
use crate::states::ProvisionState;
use writes::WriteClock;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    /// A unique constraint failed; `field` names the column.
    #[error("duplicate {field}")]
    Duplicate { field: &'static str },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database could not be reached or opened at start.
    #[error("cannot connect to {what} at {target}: {message}")]
    Connect { what: &'static str, target: String, message: String },
    /// The URL is not one this build understands.
    #[error("{0}")]
    Url(String),
    /// The database's schema is not the one this binary was built for.
    #[error("{0}")]
    Schema(String),
    /// The database records no usable ring partition exponent, so no node
    /// can be given a partition (`crate::partitions`).
    #[error("{0}")]
    PartitionExponent(String),
}

impl DbError {
    /// Connection trouble that a retry may cure (as opposed to bad data):
    /// the database is down, restarting or failing over. A proxy or load
    /// balancer in front of PostgreSQL whose backend is gone accepts and
    /// closes, which sqlx reports as a protocol error at the first message;
    /// a server shutting down or starting up answers SQLSTATE class 57P
    /// (operator intervention) or 08 (connection exception).
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Sqlx(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            DbError::Sqlx(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
            }
            _ => false,
        }
    }

    /// Bad data rather than a failing database: a value it cannot store or
    /// compare — text with a NUL character (refused on both backends before
    /// it is sent, see [`no_nul`]) or a PostgreSQL data exception (SQLSTATE
    /// class 22). The request that carried it is at fault.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            DbError::Sqlx(sqlx::Error::Encode(_)) => true,
            DbError::Sqlx(sqlx::Error::Database(e)) => e.code().is_some_and(|c| c.starts_with("22")),
            _ => false,
        }
    }
}

/// What a client is told about a value [`DbError::is_invalid_input`]
/// refuses (the database's own words go to the log).
pub const INVALID_INPUT_MESSAGE: &str =
    "Invalid input: a text value contains a NUL character, or a value does not fit its field.";

/// PostgreSQL cannot store or compare a NUL character in text (SQLite
/// can): such a value is refused on both backends, so they behave alike and
/// the caller gets bad input ([`DbError::is_invalid_input`]), not a
/// database error. JSON columns are not concerned: serialised JSON escapes
/// NUL as `\u0000`.
pub(super) fn no_nul(args: &[Arg]) -> Result<(), sqlx::Error> {
    if args.iter().any(|a| matches!(a, Arg::Text(Some(s)) if s.contains('\0'))) {
        return Err(sqlx::Error::Encode("text values cannot contain NUL characters".into()));
    }
    Ok(())
}

/// Result of trying to take a node lock.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    Acquired(Box<Node>),
    /// Held by someone else.
    Busy(LockHolder),
    NotFound,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A bind argument; queries are built at run time for both backends.
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(i64),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Text(Some(s.to_string()))
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Text(Some(s))
    }
}
impl From<Option<String>> for Arg {
    fn from(s: Option<String>) -> Arg {
        Arg::Text(s)
    }
}
impl From<&LockHolder> for Arg {
    fn from(h: &LockHolder) -> Arg {
        Arg::Text(Some(h.as_str().to_string()))
    }
}
impl From<Option<LockHolder>> for Arg {
    fn from(h: Option<LockHolder>) -> Arg {
        Arg::Text(h.map(LockHolder::into_string))
    }
}
impl From<Option<ConductorId>> for Arg {
    fn from(c: Option<ConductorId>) -> Arg {
        Arg::Text(c.map(ConductorId::into_string))
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Arg {
        Arg::Bool(Some(v))
    }
}
impl From<Option<bool>> for Arg {
    fn from(v: Option<bool>) -> Arg {
        Arg::Bool(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Arg {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(v: Option<DateTime<Utc>>) -> Arg {
        Arg::Time(v)
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of a database URL; anything but `sqlite:` and
    /// `postgres://` / `postgresql://` is refused (a `postgress://` typo
    /// must not become a SQLite file of that name).
    pub fn of(url: &str) -> Result<Backend, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Backend::Postgres);
        }
        if url.starts_with("sqlite:") {
            return Ok(Backend::Sqlite);
        }
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
        Err(DbError::Url(format!(
            "database URL {:?} has the unknown scheme {scheme:?}: use postgres://USER@HOST:PORT/DB or sqlite://PATH",
            redact_password(url)
        )))
    }
}

/// How long the first connection at start may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What went wrong connecting, in the words an operator needs: the OS
/// error of a refused connection, the server's message without its source
/// file and line.
/// Rows (ports, portgroups) of nodes that `project` owns or leases: the
/// list scope of a project-scoped caller.
fn node_project_filter(project: &str, wh: &mut Vec<String>, args: &mut Vec<Arg>) {
    args.push(project.into());
    args.push(project.into());
    wh.push(format!(
        "node_uuid IN (SELECT uuid FROM nodes WHERE owner = ${} OR lessee = ${})",
        args.len() - 1,
        args.len()
    ));
}

fn connect_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// A URL without its password, for messages.
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Paging {
    pub limit: Option<i64>,
    /// The uuid of the last item of the previous page.
    pub marker: Option<Uuid>,
    pub sort_key: String,
    pub descending: bool,
}

impl Default for Paging {
    fn default() -> Self {
        Paging { limit: None, marker: None, sort_key: "id".into(), descending: false }
    }
}

#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// Advanced by every write through this `Db` (see [`writes`]).
    writes: WriteClock,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({:?})", self.backend())
    }
}

fn obj(column: &str, s: &str) -> Result<JsonObject, DbError> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(DbError::Corrupt(format!("column {column} is not a JSON object"))),
    }
}

fn state(column: &str, s: &str) -> Result<ProvisionState, DbError> {
    ProvisionState::parse(s).ok_or_else(|| DbError::Corrupt(format!("{column}: unknown provision state {s:?}")))
}

fn text(o: &JsonObject) -> String {
    Value::Object(o.clone()).to_string()
}

fn unique_field(e: &sqlx::Error, candidates: &[&'static str]) -> Option<&'static str> {
    let db = e.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    // SQLite: "UNIQUE constraint failed: nodes.name"; PostgreSQL: constraint "nodes_name_key".
    let text = format!("{} {}", db.message(), db.constraint().unwrap_or_default());
    candidates
        .iter()
        .find(|c| text.contains(&format!(".{c}")) || text.contains(&format!("_{c}_key")))
        .copied()
        .or(Some("uuid"))
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// What a process does with the schema at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Apply the migrations the database lacks (all-in-one, tests).
    Migrate,
    /// Refuse to start unless the schema is exactly this binary's: in a
    /// cluster only `ferric db migrate` (the chart's Job) changes it, so
    /// servers need no DDL rights and a rollback is not blocked by a
    /// process that migrated on its own.
    Require,
    /// Neither check nor change it (`ferric db status`).
    Inspect,
}

/// The database's schema against the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaStatus {
    /// Versions applied in the database.
    pub applied: Vec<i64>,
    /// Migrations this binary has that the database lacks: `(version, description)`.
    pub pending: Vec<(i64, String)>,
    /// Versions the database has that this binary does not know (a newer Ferric migrated it).
    pub unknown: Vec<i64>,
    /// Versions whose migration stopped part-way (`success = false`).
    pub failed: Vec<i64>,
}

impl SchemaStatus {
    /// Whether a process of this binary can run against the schema as it is.
    pub fn current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.failed.is_empty()
    }

    /// Why the schema cannot be used as it is (`None` when it can):
    /// failed and unknown migrations always, pending ones under
    /// [`SchemaPolicy::Require`].
    pub fn refusal(&self, policy: SchemaPolicy) -> Option<String> {
        if policy == SchemaPolicy::Inspect {
            return None;
        }
        let list = |v: &[i64]| v.iter().map(|v| format!("{v:04}")).collect::<Vec<_>>().join(", ");
        if !self.failed.is_empty() {
            return Some(format!(
                "database migration {} stopped part-way (_sqlx_migrations.success = false); repair the schema by \
                 hand, delete that row, then run `ferric db migrate`",
                list(&self.failed)
            ));
        }
        if !self.unknown.is_empty() {
            let known = self.applied.iter().copied().filter(|v| !self.unknown.contains(v)).max().unwrap_or(0);
            return Some(format!(
                "the database schema is newer than this binary: it has migration {} that this binary does not know \
                 (it knows up to {known:04}); run a Ferric at least as new as the one that migrated it",
                list(&self.unknown)
            ));
        }
        if policy == SchemaPolicy::Require && !self.pending.is_empty() {
            let pending: Vec<String> = self.pending.iter().map(|(v, d)| format!("{v:04} ({d})")).collect();
            return Some(format!(
                "the database schema is behind this binary: migration {} not applied; run `ferric db migrate` \
                 (in Kubernetes the chart's migration Job does) or set database.auto_migrate = true",
                pending.join(", ")
            ));
        }
        None
    }
}

impl Db {
    /// Connect to `url` (`sqlite://path`, `sqlite::memory:`, or
    /// `postgres://...`) and bring the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        Db::connect_with(url, max_connections, std::time::Duration::from_secs(30)).await
    }

    /// [`Db::connect`], with how long a query waits for a pooled connection
    /// before it fails.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
    ) -> Result<Db, DbError> {
        Db::open(url, max_connections, acquire_timeout, SchemaPolicy::Migrate).await
    }

    /// Connect to `url` and check (or, under [`SchemaPolicy::Migrate`],
    /// bring up to date) its schema.
    pub async fn open(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
        schema: SchemaPolicy,
    ) -> Result<Db, DbError> {
        let db = if Backend::of(url)? == Backend::Postgres {
            let opts = PgConnectOptions::from_str(url).map_err(|e| DbError::Url(format!("database URL: {e}")))?;
            let target = format!(
                "{}:{} (database {}, user {})",
                opts.get_host(),
                opts.get_port(),
                opts.get_database().unwrap_or(opts.get_username()),
                opts.get_username()
            );
            // one connection first, with a short bound, so that a mistake
            // is one clear line at start rather than a pool timeout
            let fail = |message: String| DbError::Connect { what: "PostgreSQL", target: target.clone(), message };
            let first = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts);
            match tokio::time::timeout(CONNECT_TIMEOUT, first).await {
                Err(_) => return Err(fail(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
                Ok(Err(e)) => return Err(fail(connect_error(&e))),
                Ok(Ok(c)) => {
                    let _ = sqlx::Connection::close(c).await;
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await?;
            Db { pool: Pool::Postgres(pool), writes: WriteClock::default() }
        } else {
            let fail = |e: sqlx::Error| DbError::Connect {
                what: "SQLite",
                target: url.to_string(),
                message: connect_error(&e),
            };
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| DbError::Url(format!("database URL {url}: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(opts)
                .await
                .map_err(fail)?;
            Db { pool: Pool::Sqlite(pool), writes: WriteClock::default() }
        };
        if let Some(why) = db.schema_status().await?.refusal(schema) {
            return Err(DbError::Schema(why));
        }
        if schema == SchemaPolicy::Migrate {
            db.migrate().await?;
        }
        Ok(db)
    }

    fn migrations(&self) -> &'static sqlx::migrate::Migrator {
        match self.pool {
            Pool::Sqlite(_) => &SQLITE_MIGRATIONS,
            Pool::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Apply the migrations the database lacks (concurrent callers are
    /// serialised by sqlx's migration lock). Refuses a schema this binary
    /// does not know, or one a migration left half-done.
    pub async fn migrate(&self) -> Result<Vec<i64>, DbError> {
        let before = self.schema_status().await?;
        if let Some(why) = before.refusal(SchemaPolicy::Migrate) {
            return Err(DbError::Schema(why));
        }
        match &self.pool {
            Pool::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Pool::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await?,
        }
        Ok(before.pending.iter().map(|(v, _)| *v).collect())
    }

    /// The schema against this binary's migrations, read from sqlx's
    /// `_sqlx_migrations` table (absent in an empty database).
    pub async fn schema_status(&self) -> Result<SchemaStatus, DbError> {
        #[derive(FromRow)]
        struct Exists {
            n: i64,
        }
        #[derive(FromRow)]
        struct Applied {
            version: i64,
            success: bool,
        }
        let exists = match self.pool {
            Pool::Sqlite(_) => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Pool::Postgres(_) => {
                "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = current_schema() AND \
                 table_name = '_sqlx_migrations'"
            }
        };
        let present = self.fetch_all::<Exists>(exists.into(), Vec::new()).await?.first().is_some_and(|r| r.n > 0);
        let rows = if present {
            self.fetch_all::<Applied>(
                "SELECT version, success FROM _sqlx_migrations ORDER BY version".into(),
                Vec::new(),
            )
            .await?
        } else {
            Vec::new()
        };
        let known: Vec<(i64, String)> =
            self.migrations().iter().map(|m| (m.version, m.description.to_string())).collect();
        Ok(SchemaStatus {
            applied: rows.iter().filter(|r| r.success).map(|r| r.version).collect(),
            pending: known.iter().filter(|(v, _)| !rows.iter().any(|r| r.version == *v)).cloned().collect(),
            unknown: rows.iter().filter(|r| !known.iter().any(|(v, _)| *v == r.version)).map(|r| r.version).collect(),
            failed: rows.iter().filter(|r| !r.success).map(|r| r.version).collect(),
        })
    }

    /// One round trip to the database, bounded by `timeout` (readiness).
    pub async fn ping(&self, timeout: std::time::Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.execute("SELECT 1".into(), Vec::new())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(DbError::from(e).to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// This `Db`'s write clock (see [`writes`]): whether anything was
    /// written through it since a read.
    pub fn writes(&self) -> &WriteClock {
        &self.writes
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    async fn execute(&self, sql: String, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        no_nul(&args)?;
        let _write = self.writes.start();
        Ok(match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(p).await?.rows_affected(),
            Pool::Postgres(p) => bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(p).await?.rows_affected(),
        })
    }

    /// Runs `first`, and — only if it changed exactly one row — `then`, in
    /// one transaction; otherwise nothing is written. Returns whether it
    /// was all written.
    async fn execute_one_then(
        &self,
        first: (String, Vec<Arg>),
        then: Vec<(String, Vec<Arg>)>,
    ) -> Result<bool, sqlx::Error> {
        no_nul(&first.1)?;
        for (_, args) in &then {
            no_nul(args)?;
        }
        let _write = self.writes.start();
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let (sql, args) = first;
                let rows = bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(&mut *tx).await?.rows_affected();
                if rows != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for (sql, args) in then {
                    bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(true)
            }};
        }
        match &self.pool {
            Pool::Sqlite(p) => run!(p),
            Pool::Postgres(p) => run!(p),
        }
    }

    /// Runs `statements` in one transaction, committing only if each
    /// changed exactly one row; otherwise nothing is written and the index
    /// of the first that did not is returned.
    async fn execute_all_one(&self, statements: Vec<(String, Vec<Arg>)>) -> Result<Option<usize>, sqlx::Error> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for (i, (sql, args)) in statements.into_iter().enumerate() {
                    let rows =
                        bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(&mut *tx).await?.rows_affected();
                    if rows != 1 {
                        tx.rollback().await?;
                        return Ok(Some(i));
                    }
                }
                tx.commit().await?;
                Ok(None)
            }};
        }
        match &self.pool {
            Pool::Sqlite(p) => run!(p),
            Pool::Postgres(p) => run!(p),
        }
    }

    async fn fetch_all<T>(&self, sql: String, args: Vec<Arg>) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        no_nul(&args)?;
        match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_all(p).await,
            Pool::Postgres(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_all(p).await,
        }
    }

    async fn fetch_one_opt<T>(&self, sql: String, args: Vec<Arg>) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        no_nul(&args)?;
        match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_optional(p).await,
            Pool::Postgres(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_optional(p).await,
        }
    }
}

impl Db {
    /// Build `SELECT ... WHERE ... ORDER BY ... LIMIT` with keyset paging
    /// after `marker` on (sort_key, id).
    async fn paged(
        &self,
        table: &str,
        columns: &str,
        sort_keys: &[&str],
        mut wh: Vec<String>,
        args: &mut Vec<Arg>,
        p: &Paging,
    ) -> Result<String, DbError> {
        let key = sort_keys.iter().find(|k| **k == p.sort_key).copied().unwrap_or("id");
        let dir = if p.descending { "DESC" } else { "ASC" };
        let cmp = if p.descending { "<" } else { ">" };
        // NULLs sort as the empty string so keyset paging stays total.
        let sort_expr = match key {
            "id" | "maintenance" | "created_at" => key.to_string(),
            "updated_at" | "provision_updated_at" => format!("COALESCE({key}, created_at)"),
            _ => format!("COALESCE({key}, '')"),
        };
        if let Some(marker) = p.marker {
            let sql = format!("SELECT id FROM {table} WHERE uuid = $1");
            #[derive(FromRow)]
            struct Id {
                id: i64,
            }
            let Some(Id { id }) = self.fetch_one_opt::<Id>(sql, vec![marker.to_string().into()]).await? else {
                return Err(DbError::NotFound);
            };
            args.push(Arg::Int(id));
            let n = args.len();
            if key == "id" {
                wh.push(format!("id {cmp} ${n}"));
            } else {
                wh.push(format!(
                    "({sort_expr} {cmp} (SELECT {sort_expr} FROM {table} WHERE id = ${n}) OR \
                     ({sort_expr} = (SELECT {sort_expr} FROM {table} WHERE id = ${n}) AND id {cmp} ${n}))"
                ));
            }
        }
        let mut sql = format!("SELECT {columns} FROM {table}");
        if !wh.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wh.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY {sort_expr} {dir}, id {dir}"));
        if let Some(limit) = p.limit {
            sql.push_str(&format!(" LIMIT {}", limit.max(0)));
        }
        Ok(sql)
    }
}
