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

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, FromRow, PgPool, SqlitePool};
use uuid::Uuid;

use crate::model::{Interfaces, JsonObject, Node, Port};
use crate::states::ProvisionState;

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
}

/// Result of trying to take a node lock.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    Acquired(Box<Node>),
    /// Held by someone else (their incarnation).
    Busy(String),
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

/// Sort keys a node list accepts (Ironic refuses JSON fields).
pub const NODE_SORT_KEYS: &[&str] = &[
    "id",
    "uuid",
    "name",
    "driver",
    "provision_state",
    "power_state",
    "maintenance",
    "resource_class",
    "conductor_group",
    "owner",
    "lessee",
    "created_at",
    "updated_at",
    "provision_updated_at",
    "instance_uuid",
];

pub const PORT_SORT_KEYS: &[&str] = &["id", "uuid", "address", "node_uuid", "name", "created_at", "updated_at"];

/// Columns that name a conductor on a node row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRef {
    Affinity,
    Reservation,
}

/// Filters and paging for a node list.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    pub provision_state: Option<String>,
    pub driver: Option<String>,
    pub resource_class: Option<String>,
    pub conductor_group: Option<String>,
    pub maintenance: Option<bool>,
    pub associated: Option<bool>,
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub fault: Option<String>,
    pub retired: Option<bool>,
    pub shard: Option<String>,
    pub instance_uuid: Option<String>,
    pub description_contains: Option<String>,
    /// Only nodes in these ring partitions of `conductor_group` (the "my
    /// nodes" index scan); empty means no restriction.
    pub partitions: Option<Vec<i64>>,
    pub paging: Paging,
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

#[derive(Debug, Clone, Default)]
pub struct PortQuery {
    pub node_uuid: Option<Uuid>,
    pub address: Option<String>,
    pub paging: Paging,
}

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

#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({:?})", self.backend())
    }
}

const NODE_COLUMNS: &str = "id, uuid, name, driver, bios_interface, boot_interface, console_interface, \
    deploy_interface, firmware_interface, inspect_interface, management_interface, network_interface, \
    power_interface, raid_interface, rescue_interface, storage_interface, vendor_interface, \
    provision_state, target_provision_state, provision_updated_at, power_state, target_power_state, \
    maintenance, maintenance_reason, fault, reservation, conductor_affinity, conductor_group, \
    ring_partition, driver_info, driver_internal_info, instance_info, properties, extra, network_data, \
    instance_uuid, instance_name, last_error, resource_class, owner, lessee, description, shard, \
    parent_node, chassis_uuid, automated_clean, protected, protected_reason, retired, retired_reason, \
    disable_power_off, console_enabled, boot_mode, secure_boot, traits, deploy_step, clean_step, \
    service_step, raid_config, target_raid_config, created_at, updated_at";

/// Columns a save writes (everything but id, uuid, reservation, created_at).
const NODE_SAVE_COLUMNS: &[&str] = &[
    "name",
    "driver",
    "bios_interface",
    "boot_interface",
    "console_interface",
    "deploy_interface",
    "firmware_interface",
    "inspect_interface",
    "management_interface",
    "network_interface",
    "power_interface",
    "raid_interface",
    "rescue_interface",
    "storage_interface",
    "vendor_interface",
    "provision_state",
    "target_provision_state",
    "provision_updated_at",
    "power_state",
    "target_power_state",
    "maintenance",
    "maintenance_reason",
    "fault",
    "conductor_affinity",
    "conductor_group",
    "ring_partition",
    "driver_info",
    "driver_internal_info",
    "instance_info",
    "properties",
    "extra",
    "network_data",
    "instance_uuid",
    "instance_name",
    "last_error",
    "resource_class",
    "owner",
    "lessee",
    "description",
    "shard",
    "parent_node",
    "chassis_uuid",
    "automated_clean",
    "protected",
    "protected_reason",
    "retired",
    "retired_reason",
    "disable_power_off",
    "console_enabled",
    "boot_mode",
    "secure_boot",
    "traits",
    "deploy_step",
    "clean_step",
    "service_step",
    "raid_config",
    "target_raid_config",
    "updated_at",
];

#[derive(FromRow)]
struct NodeRow {
    #[allow(dead_code)]
    id: i64,
    uuid: String,
    name: Option<String>,
    driver: String,
    bios_interface: Option<String>,
    boot_interface: Option<String>,
    console_interface: Option<String>,
    deploy_interface: Option<String>,
    firmware_interface: Option<String>,
    inspect_interface: Option<String>,
    management_interface: Option<String>,
    network_interface: Option<String>,
    power_interface: Option<String>,
    raid_interface: Option<String>,
    rescue_interface: Option<String>,
    storage_interface: Option<String>,
    vendor_interface: Option<String>,
    provision_state: String,
    target_provision_state: Option<String>,
    provision_updated_at: Option<DateTime<Utc>>,
    power_state: Option<String>,
    target_power_state: Option<String>,
    maintenance: bool,
    maintenance_reason: Option<String>,
    fault: Option<String>,
    reservation: Option<String>,
    conductor_affinity: Option<String>,
    conductor_group: String,
    ring_partition: i64,
    driver_info: String,
    driver_internal_info: String,
    instance_info: String,
    properties: String,
    extra: String,
    network_data: String,
    instance_uuid: Option<String>,
    instance_name: Option<String>,
    last_error: Option<String>,
    resource_class: Option<String>,
    owner: Option<String>,
    lessee: Option<String>,
    description: Option<String>,
    shard: Option<String>,
    parent_node: Option<String>,
    chassis_uuid: Option<String>,
    automated_clean: Option<bool>,
    protected: bool,
    protected_reason: Option<String>,
    retired: bool,
    retired_reason: Option<String>,
    disable_power_off: bool,
    console_enabled: bool,
    boot_mode: Option<String>,
    secure_boot: Option<bool>,
    traits: String,
    deploy_step: String,
    clean_step: String,
    service_step: String,
    raid_config: String,
    target_raid_config: String,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
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

impl TryFrom<NodeRow> for Node {
    type Error = DbError;
    fn try_from(r: NodeRow) -> Result<Node, DbError> {
        Ok(Node {
            uuid: Uuid::parse_str(&r.uuid).map_err(|e| DbError::Corrupt(format!("uuid: {e}")))?,
            name: r.name,
            driver: r.driver,
            interfaces: Interfaces {
                bios: r.bios_interface,
                boot: r.boot_interface,
                console: r.console_interface,
                deploy: r.deploy_interface,
                firmware: r.firmware_interface,
                inspect: r.inspect_interface,
                management: r.management_interface,
                network: r.network_interface,
                power: r.power_interface,
                raid: r.raid_interface,
                rescue: r.rescue_interface,
                storage: r.storage_interface,
                vendor: r.vendor_interface,
            },
            provision_state: state("provision_state", &r.provision_state)?,
            target_provision_state: r
                .target_provision_state
                .as_deref()
                .map(|s| state("target_provision_state", s))
                .transpose()?,
            provision_updated_at: r.provision_updated_at,
            power_state: r.power_state,
            target_power_state: r.target_power_state,
            maintenance: r.maintenance,
            maintenance_reason: r.maintenance_reason,
            fault: r.fault,
            reservation: r.reservation,
            conductor_affinity: r.conductor_affinity,
            conductor_group: r.conductor_group,
            ring_partition: r.ring_partition,
            driver_info: obj("driver_info", &r.driver_info)?,
            driver_internal_info: obj("driver_internal_info", &r.driver_internal_info)?,
            instance_info: obj("instance_info", &r.instance_info)?,
            properties: obj("properties", &r.properties)?,
            extra: obj("extra", &r.extra)?,
            network_data: obj("network_data", &r.network_data)?,
            instance_uuid: r.instance_uuid,
            instance_name: r.instance_name,
            last_error: r.last_error,
            resource_class: r.resource_class,
            owner: r.owner,
            lessee: r.lessee,
            description: r.description,
            shard: r.shard,
            parent_node: r.parent_node,
            chassis_uuid: r.chassis_uuid,
            automated_clean: r.automated_clean,
            protected: r.protected,
            protected_reason: r.protected_reason,
            retired: r.retired,
            retired_reason: r.retired_reason,
            disable_power_off: r.disable_power_off,
            console_enabled: r.console_enabled,
            boot_mode: r.boot_mode,
            secure_boot: r.secure_boot,
            traits: serde_json::from_str(&r.traits).map_err(|e| DbError::Corrupt(format!("traits: {e}")))?,
            deploy_step: obj("deploy_step", &r.deploy_step)?,
            clean_step: obj("clean_step", &r.clean_step)?,
            service_step: obj("service_step", &r.service_step)?,
            raid_config: obj("raid_config", &r.raid_config)?,
            target_raid_config: obj("target_raid_config", &r.target_raid_config)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// The values of [`NODE_SAVE_COLUMNS`], in order.
fn node_save_args(n: &Node, now: DateTime<Utc>) -> Vec<Arg> {
    let i = &n.interfaces;
    vec![
        n.name.clone().into(),
        n.driver.clone().into(),
        i.bios.clone().into(),
        i.boot.clone().into(),
        i.console.clone().into(),
        i.deploy.clone().into(),
        i.firmware.clone().into(),
        i.inspect.clone().into(),
        i.management.clone().into(),
        i.network.clone().into(),
        i.power.clone().into(),
        i.raid.clone().into(),
        i.rescue.clone().into(),
        i.storage.clone().into(),
        i.vendor.clone().into(),
        n.provision_state.as_str().into(),
        n.target_provision_state.map(|s| s.as_str().to_string()).into(),
        n.provision_updated_at.into(),
        n.power_state.clone().into(),
        n.target_power_state.clone().into(),
        n.maintenance.into(),
        n.maintenance_reason.clone().into(),
        n.fault.clone().into(),
        n.conductor_affinity.clone().into(),
        n.conductor_group.clone().into(),
        n.ring_partition.into(),
        text(&n.driver_info).into(),
        text(&n.driver_internal_info).into(),
        text(&n.instance_info).into(),
        text(&n.properties).into(),
        text(&n.extra).into(),
        text(&n.network_data).into(),
        n.instance_uuid.clone().into(),
        n.instance_name.clone().into(),
        n.last_error.clone().into(),
        n.resource_class.clone().into(),
        n.owner.clone().into(),
        n.lessee.clone().into(),
        n.description.clone().into(),
        n.shard.clone().into(),
        n.parent_node.clone().into(),
        n.chassis_uuid.clone().into(),
        n.automated_clean.into(),
        n.protected.into(),
        n.protected_reason.clone().into(),
        n.retired.into(),
        n.retired_reason.clone().into(),
        n.disable_power_off.into(),
        n.console_enabled.into(),
        n.boot_mode.clone().into(),
        n.secure_boot.into(),
        serde_json::to_string(&n.traits).expect("a list of strings serialises").into(),
        text(&n.deploy_step).into(),
        text(&n.clean_step).into(),
        text(&n.service_step).into(),
        text(&n.raid_config).into(),
        text(&n.target_raid_config).into(),
        now.into(),
    ]
}

#[derive(FromRow)]
struct PortRow {
    #[allow(dead_code)]
    id: i64,
    uuid: String,
    address: String,
    node_uuid: String,
    name: Option<String>,
    pxe_enabled: bool,
    local_link_connection: String,
    physical_network: Option<String>,
    extra: String,
    internal_info: String,
    is_smartnic: bool,
    portgroup_uuid: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: Option<DateTime<Utc>>,
}

const PORT_COLUMNS: &str = "id, uuid, address, node_uuid, name, pxe_enabled, local_link_connection, \
    physical_network, extra, internal_info, is_smartnic, portgroup_uuid, created_at, updated_at";

impl TryFrom<PortRow> for Port {
    type Error = DbError;
    fn try_from(r: PortRow) -> Result<Port, DbError> {
        let id = |s: &str| Uuid::parse_str(s).map_err(|e| DbError::Corrupt(format!("port uuid: {e}")));
        Ok(Port {
            uuid: id(&r.uuid)?,
            address: r.address,
            node_uuid: id(&r.node_uuid)?,
            name: r.name,
            pxe_enabled: r.pxe_enabled,
            local_link_connection: obj("local_link_connection", &r.local_link_connection)?,
            physical_network: r.physical_network,
            extra: obj("extra", &r.extra)?,
            internal_info: obj("internal_info", &r.internal_info)?,
            is_smartnic: r.is_smartnic,
            portgroup_uuid: r.portgroup_uuid,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
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
            Db { pool: Pool::Postgres(pool) }
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
            Db { pool: Pool::Sqlite(pool) }
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

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    async fn execute(&self, sql: String, args: Vec<Arg>) -> Result<u64, sqlx::Error> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(p).await?.rows_affected(),
            Pool::Postgres(p) => bind_all!(sqlx::query(AssertSqlSafe(sql)), args).execute(p).await?.rows_affected(),
        })
    }

    async fn fetch_all<T>(&self, sql: String, args: Vec<Arg>) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_all(p).await,
            Pool::Postgres(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_all(p).await,
        }
    }

    async fn fetch_one_opt<T>(&self, sql: String, args: Vec<Arg>) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match &self.pool {
            Pool::Sqlite(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_optional(p).await,
            Pool::Postgres(p) => bind_all!(sqlx::query_as::<_, T>(AssertSqlSafe(sql)), args).fetch_optional(p).await,
        }
    }

    // ---- nodes -----------------------------------------------------------

    pub async fn create_node(&self, n: &Node) -> Result<(), DbError> {
        let mut cols = vec!["uuid", "reservation", "created_at"];
        cols.extend_from_slice(NODE_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![n.uuid.to_string().into(), n.reservation.clone().into(), n.created_at.into()];
        args.extend(node_save_args(n, n.created_at));
        // a fresh node has never been updated
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO nodes ({}) VALUES ({})", cols.join(", "), placeholders.join(", "));
        self.execute(sql, args).await.map_err(|e| match unique_field(&e, &["instance_uuid", "name", "uuid"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        })?;
        Ok(())
    }

    pub async fn get_node(&self, uuid: Uuid) -> Result<Node, DbError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE uuid = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![uuid.to_string().into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_node_by_name(&self, name: &str) -> Result<Node, DbError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![name.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_node_by_instance(&self, instance_uuid: &str) -> Result<Node, DbError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE instance_uuid = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![instance_uuid.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_nodes(&self, q: &NodeQuery) -> Result<Vec<Node>, DbError> {
        let (wh, mut args) = node_filter(q);
        let sql = self.paged("nodes", NODE_COLUMNS, NODE_SORT_KEYS, wh, &mut args, &q.paging).await?;
        let rows = self.fetch_all::<NodeRow>(sql, args).await?;
        rows.into_iter().map(Node::try_from).collect()
    }

    /// Node counts of one conductor group by (driver, ring partition): one
    /// small row per partition that has nodes, counted in the database
    /// (a conductor's owned-node count without reading the nodes).
    pub async fn count_nodes_by_partition(&self, conductor_group: &str) -> Result<Vec<(String, i64, i64)>, DbError> {
        #[derive(FromRow)]
        struct Row {
            driver: String,
            ring_partition: i64,
            n: i64,
        }
        let rows = self
            .fetch_all::<Row>(
                "SELECT driver, ring_partition, COUNT(*) AS n FROM nodes WHERE conductor_group = $1 \
                 GROUP BY driver, ring_partition"
                    .into(),
                vec![conductor_group.to_ascii_lowercase().into()],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.driver, r.ring_partition, r.n)).collect())
    }
}

/// The WHERE terms and arguments of a node query's filters.
fn node_filter(q: &NodeQuery) -> (Vec<String>, Vec<Arg>) {
    let mut wh: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut eq = |col: &str, v: Arg, wh: &mut Vec<String>| {
        args.push(v);
        wh.push(format!("{col} = ${}", args.len()));
    };
    if let Some(v) = &q.provision_state {
        eq("provision_state", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.driver {
        eq("driver", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.resource_class {
        eq("resource_class", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.conductor_group {
        eq("conductor_group", v.to_ascii_lowercase().into(), &mut wh);
    }
    if let Some(v) = q.maintenance {
        eq("maintenance", v.into(), &mut wh);
    }
    if let Some(v) = q.retired {
        eq("retired", v.into(), &mut wh);
    }
    if let Some(v) = &q.owner {
        eq("owner", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.lessee {
        eq("lessee", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.fault {
        eq("fault", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.shard {
        eq("shard", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.instance_uuid {
        eq("instance_uuid", v.as_str().into(), &mut wh);
    }
    match q.associated {
        Some(true) => wh.push("instance_uuid IS NOT NULL".into()),
        Some(false) => wh.push("instance_uuid IS NULL".into()),
        None => {}
    }
    if let Some(v) = &q.description_contains {
        args.push(format!("%{}%", v.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")).into());
        wh.push(format!("description LIKE ${} ESCAPE '\\'", args.len()));
    }
    if let Some(parts) = &q.partitions {
        if parts.is_empty() {
            wh.push("1 = 0".into());
        } else {
            // partitions are integers we computed: safe to inline
            let list: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            wh.push(format!("ring_partition IN ({})", list.join(",")));
        }
    }
    (wh, args)
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

    /// Write every field of `n` except its lock, as the holder of its lock.
    /// Returns false (and writes nothing) if `holder` no longer holds it.
    pub async fn save_node_locked(&self, n: &Node, holder: &str) -> Result<bool, DbError> {
        self.save_node(n, holder, false).await
    }

    /// Write the node and give up `holder`'s lock in one statement, so no
    /// reader ever sees the final state with the lock still held.
    pub async fn save_node_and_release(&self, n: &Node, holder: &str) -> Result<bool, DbError> {
        self.save_node(n, holder, true).await
    }

    async fn save_node(&self, n: &Node, holder: &str, release: bool) -> Result<bool, DbError> {
        let mut args = node_save_args(n, Utc::now());
        let mut sets: Vec<String> =
            NODE_SAVE_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
        if release {
            sets.push("reservation = NULL".into());
        }
        args.push(n.uuid.to_string().into());
        args.push(holder.into());
        let sql = format!(
            "UPDATE nodes SET {} WHERE uuid = ${} AND reservation = ${}",
            sets.join(", "),
            args.len() - 1,
            args.len()
        );
        let rows = self.execute(sql, args).await.map_err(|e| match unique_field(&e, &["instance_uuid", "name"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        })?;
        Ok(rows == 1)
    }

    /// Take the exclusive node lock for `holder`: one conditional UPDATE.
    pub async fn reserve_node(&self, uuid: Uuid, holder: &str) -> Result<LockOutcome, DbError> {
        self.reserve(uuid, holder, None).await
    }

    /// Like [`Db::reserve_node`], but only while the node is still in
    /// `state`: a worker acting on an older read of the node (an orphaned
    /// operation seen a moment ago) never locks it once it moved on, so
    /// clients never see a finished node locked.
    pub async fn reserve_node_in_state(&self, uuid: Uuid, holder: &str, state: &str) -> Result<LockOutcome, DbError> {
        self.reserve(uuid, holder, Some(state)).await
    }

    async fn reserve(&self, uuid: Uuid, holder: &str, state: Option<&str>) -> Result<LockOutcome, DbError> {
        let mut sql = "UPDATE nodes SET reservation = $1 WHERE uuid = $2 AND reservation IS NULL".to_string();
        let mut args: Vec<Arg> = vec![holder.into(), uuid.to_string().into()];
        if let Some(state) = state {
            sql.push_str(" AND provision_state = $3");
            args.push(state.into());
        }
        let rows = self.execute(sql, args).await?;
        match self.get_node(uuid).await {
            Ok(n) if rows == 1 => Ok(LockOutcome::Acquired(Box::new(n))),
            Ok(n) => Ok(LockOutcome::Busy(n.reservation.unwrap_or_default())),
            Err(DbError::NotFound) => Ok(LockOutcome::NotFound),
            Err(e) => Err(e),
        }
    }

    /// Release `holder`'s lock on a node. False if it did not hold it.
    pub async fn release_node(&self, uuid: Uuid, holder: &str) -> Result<bool, DbError> {
        let rows = self
            .execute(
                "UPDATE nodes SET reservation = NULL WHERE uuid = $1 AND reservation = $2".into(),
                vec![uuid.to_string().into(), holder.into()],
            )
            .await?;
        Ok(rows == 1)
    }

    /// One round trip to the database, bounded by `timeout` (readiness).
    pub async fn ping(&self, timeout: std::time::Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.execute("SELECT 1".into(), Vec::new())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(DbError::from(e).to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// The nodes whose lock `holder` holds.
    pub async fn nodes_reserved_by(&self, holder: &str) -> Result<Vec<Uuid>, DbError> {
        #[derive(FromRow)]
        struct Row {
            uuid: String,
        }
        let rows =
            self.fetch_all::<Row>("SELECT uuid FROM nodes WHERE reservation = $1".into(), vec![holder.into()]).await?;
        rows.iter()
            .map(|r| r.uuid.parse().map_err(|e| DbError::Corrupt(format!("node uuid {:?}: {e}", r.uuid))))
            .collect()
    }

    /// Clear every lock held by a (dead) incarnation. Returns how many.
    pub async fn clear_reservations_of(&self, holder: &str) -> Result<u64, DbError> {
        Ok(self
            .execute("UPDATE nodes SET reservation = NULL WHERE reservation = $1".into(), vec![holder.into()])
            .await?)
    }

    /// Delete a node and its ports, as the holder of its lock.
    pub async fn delete_node_locked(&self, uuid: Uuid, holder: &str) -> Result<bool, DbError> {
        let rows = self
            .execute(
                "DELETE FROM nodes WHERE uuid = $1 AND reservation = $2".into(),
                vec![uuid.to_string().into(), holder.into()],
            )
            .await?;
        if rows == 1 {
            // its history goes with it (what is left after an error here,
            // the periodic pruning takes)
            let _ = self
                .execute("DELETE FROM node_history WHERE node_uuid = $1".into(), vec![uuid.to_string().into()])
                .await;
        }
        Ok(rows == 1)
    }

    /// How many nodes have `column = value` (column is one of
    /// `conductor_affinity` or `reservation`).
    pub async fn count_nodes_with(&self, column: NodeRef, value: &str) -> Result<i64, DbError> {
        #[derive(FromRow)]
        struct Count {
            n: i64,
        }
        let col = match column {
            NodeRef::Affinity => "conductor_affinity",
            NodeRef::Reservation => "reservation",
        };
        let sql = format!("SELECT COUNT(*) AS n FROM nodes WHERE {col} = $1");
        Ok(self.fetch_one_opt::<Count>(sql, vec![value.into()]).await?.map(|c| c.n).unwrap_or(0))
    }

    // ---- ports -----------------------------------------------------------

    fn port_args(p: &Port) -> Vec<Arg> {
        vec![
            p.address.clone().into(),
            p.node_uuid.to_string().into(),
            p.name.clone().into(),
            p.pxe_enabled.into(),
            text(&p.local_link_connection).into(),
            p.physical_network.clone().into(),
            text(&p.extra).into(),
            text(&p.internal_info).into(),
            p.is_smartnic.into(),
            p.portgroup_uuid.clone().into(),
        ]
    }

    const PORT_SAVE: &'static [&'static str] = &[
        "address",
        "node_uuid",
        "name",
        "pxe_enabled",
        "local_link_connection",
        "physical_network",
        "extra",
        "internal_info",
        "is_smartnic",
        "portgroup_uuid",
    ];

    fn port_error(e: sqlx::Error) -> DbError {
        match unique_field(&e, &["address", "name", "uuid"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        }
    }

    pub async fn create_port(&self, p: &Port) -> Result<(), DbError> {
        let mut cols = vec!["uuid", "created_at"];
        cols.extend_from_slice(Self::PORT_SAVE);
        let mut args: Vec<Arg> = vec![p.uuid.to_string().into(), p.created_at.into()];
        args.extend(Self::port_args(p));
        let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO ports ({}) VALUES ({})", cols.join(", "), ph.join(", "));
        self.execute(sql, args).await.map_err(Self::port_error)?;
        Ok(())
    }

    pub async fn update_port(&self, p: &Port) -> Result<(), DbError> {
        let mut args = Self::port_args(p);
        let mut sets: Vec<String> =
            Self::PORT_SAVE.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
        args.push(Utc::now().into());
        sets.push(format!("updated_at = ${}", args.len()));
        args.push(p.uuid.to_string().into());
        let sql = format!("UPDATE ports SET {} WHERE uuid = ${}", sets.join(", "), args.len());
        match self.execute(sql, args).await.map_err(Self::port_error)? {
            0 => Err(DbError::NotFound),
            _ => Ok(()),
        }
    }

    pub async fn delete_port(&self, uuid: Uuid) -> Result<(), DbError> {
        match self.execute("DELETE FROM ports WHERE uuid = $1".into(), vec![uuid.to_string().into()]).await? {
            0 => Err(DbError::NotFound),
            _ => Ok(()),
        }
    }

    pub async fn get_port(&self, uuid: Uuid) -> Result<Port, DbError> {
        let sql = format!("SELECT {PORT_COLUMNS} FROM ports WHERE uuid = $1");
        self.fetch_one_opt::<PortRow>(sql, vec![uuid.to_string().into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_port_by_name(&self, name: &str) -> Result<Port, DbError> {
        let sql = format!("SELECT {PORT_COLUMNS} FROM ports WHERE name = $1");
        self.fetch_one_opt::<PortRow>(sql, vec![name.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_ports(&self, q: &PortQuery) -> Result<Vec<Port>, DbError> {
        let mut wh = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        if let Some(n) = q.node_uuid {
            args.push(n.to_string().into());
            wh.push(format!("node_uuid = ${}", args.len()));
        }
        if let Some(a) = &q.address {
            args.push(a.as_str().into());
            wh.push(format!("address = ${}", args.len()));
        }
        let sql = self.paged("ports", PORT_COLUMNS, PORT_SORT_KEYS, wh, &mut args, &q.paging).await?;
        self.fetch_all::<PortRow>(sql, args).await?.into_iter().map(Port::try_from).collect()
    }

    // ---- cluster settings ------------------------------------------------------

    /// A cluster-wide setting, if it was ever written.
    pub async fn cluster_setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> =
            self.fetch_one_opt("SELECT value FROM cluster_settings WHERE name = $1".into(), vec![name.into()]).await?;
        Ok(row.map(|(v,)| v))
    }

    /// Writes `value` unless the setting exists; returns what is stored
    /// (ours, or what another process wrote first).
    pub async fn cluster_setting_or_insert(&self, name: &str, value: &str) -> Result<String, DbError> {
        self.execute(
            "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING"
                .into(),
            vec![name.into(), value.into(), Utc::now().into()],
        )
        .await?;
        self.cluster_setting(name).await?.ok_or_else(|| DbError::Corrupt(format!("cluster setting {name} vanished")))
    }

    /// Writes `value` if the setting is absent, holds `value` already, or
    /// was last written before `expired_before` (a lease: renew by calling
    /// again). False when someone else's fresh value is there.
    pub async fn claim_cluster_setting(
        &self,
        name: &str,
        value: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let n = self
            .execute(
                "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at \
                 WHERE cluster_settings.value = excluded.value OR cluster_settings.created_at < $4"
                    .into(),
                vec![name.into(), value.into(), Utc::now().into(), expired_before.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Deletes the setting if it still holds `value`.
    pub async fn delete_cluster_setting_if(&self, name: &str, value: &str) -> Result<bool, DbError> {
        let n = self
            .execute(
                "DELETE FROM cluster_settings WHERE name = $1 AND value = $2".into(),
                vec![name.into(), value.into()],
            )
            .await?;
        Ok(n == 1)
    }

    // ---- history -----------------------------------------------------------

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
