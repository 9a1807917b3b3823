//! The `nodes` table: its columns (each declared once, in `table!`),
//! node queries, and the node lock (`reservation`), taken and kept by
//! conditional UPDATEs.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::FromRow;
use uuid::Uuid;

use super::{AppliedCall, Arg, Db, DbError, LockOutcome, Paging, PartitionLockMode, obj, state, text, unique_field};
use crate::ids::{ConductorId, LockHolder};
use crate::model::{Interfaces, Node};
use crate::partitions::{self, EXPONENT_SETTING, Recorded};

table! {
    row NodeRow of Node;
    columns NODE_COLUMN_NAMES;
    saved NODE_SAVE_COLUMNS, node_save_args;
    fixed {
        id: i64,
        uuid: String,
        reservation: Option<String>,
        created_at: DateTime<Utc>,
        // written at creation with the recorded exponent, and by a
        // recompute under the partition lock; never by a save, whose copy
        // of the node may predate a recompute (crate::partitions)
        ring_partition: i64,
    }
    saved |n, now| {
        name: Option<String> = n.name.clone(),
        driver: String = n.driver.clone(),
        bios_interface: Option<String> = n.interfaces.bios.clone(),
        boot_interface: Option<String> = n.interfaces.boot.clone(),
        console_interface: Option<String> = n.interfaces.console.clone(),
        deploy_interface: Option<String> = n.interfaces.deploy.clone(),
        firmware_interface: Option<String> = n.interfaces.firmware.clone(),
        inspect_interface: Option<String> = n.interfaces.inspect.clone(),
        management_interface: Option<String> = n.interfaces.management.clone(),
        network_interface: Option<String> = n.interfaces.network.clone(),
        power_interface: Option<String> = n.interfaces.power.clone(),
        raid_interface: Option<String> = n.interfaces.raid.clone(),
        rescue_interface: Option<String> = n.interfaces.rescue.clone(),
        storage_interface: Option<String> = n.interfaces.storage.clone(),
        vendor_interface: Option<String> = n.interfaces.vendor.clone(),
        provision_state: String = n.provision_state.as_str(),
        target_provision_state: Option<String> = n.target_provision_state.map(|s| s.as_str().to_string()),
        provision_updated_at: Option<DateTime<Utc>> = n.provision_updated_at,
        power_state: Option<String> = n.power_state.clone(),
        target_power_state: Option<String> = n.target_power_state.clone(),
        maintenance: bool = n.maintenance,
        maintenance_reason: Option<String> = n.maintenance_reason.clone(),
        fault: Option<String> = n.fault.clone(),
        conductor_affinity: Option<String> = n.conductor_affinity.clone(),
        conductor_group: String = n.conductor_group.clone(),
        driver_info: String = text(&n.driver_info),
        driver_internal_info: String = text(&n.driver_internal_info),
        instance_info: String = text(&n.instance_info),
        properties: String = text(&n.properties),
        extra: String = text(&n.extra),
        network_data: String = text(&n.network_data),
        instance_uuid: Option<String> = n.instance_uuid.clone(),
        allocation_uuid: Option<String> = n.allocation_uuid.clone(),
        instance_name: Option<String> = n.instance_name.clone(),
        last_error: Option<String> = n.last_error.clone(),
        resource_class: Option<String> = n.resource_class.clone(),
        owner: Option<String> = n.owner.clone(),
        lessee: Option<String> = n.lessee.clone(),
        description: Option<String> = n.description.clone(),
        shard: Option<String> = n.shard.clone(),
        parent_node: Option<String> = n.parent_node.clone(),
        chassis_uuid: Option<String> = n.chassis_uuid.clone(),
        automated_clean: Option<bool> = n.automated_clean,
        protected: bool = n.protected,
        protected_reason: Option<String> = n.protected_reason.clone(),
        retired: bool = n.retired,
        retired_reason: Option<String> = n.retired_reason.clone(),
        disable_power_off: bool = n.disable_power_off,
        console_enabled: bool = n.console_enabled,
        boot_mode: Option<String> = n.boot_mode.clone(),
        secure_boot: Option<bool> = n.secure_boot,
        traits: String = serde_json::to_string(&n.traits).expect("a list of strings serialises"),
        deploy_step: String = text(&n.deploy_step),
        clean_step: String = text(&n.clean_step),
        service_step: String = text(&n.service_step),
        raid_config: String = text(&n.raid_config),
        target_raid_config: String = text(&n.target_raid_config),
        updated_at: Option<DateTime<Utc>> = now,
    }
}

/// The SELECT list of a whole node.
static NODE_COLUMNS: LazyLock<String> = LazyLock::new(|| NODE_COLUMN_NAMES.join(", "));

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
    pub instance_name: Option<String>,
    pub chassis_uuid: Option<String>,
    /// Nodes with a shard (`true`) or without (`false`).
    pub sharded: Option<bool>,
    pub description_contains: Option<String>,
    /// Only nodes this project owns or leases (`owner = p OR lessee = p`):
    /// what a project-scoped Keystone caller may list.
    pub project: Option<String>,
    /// Only these nodes (an allocation's candidates); empty matches none.
    pub uuids: Option<Vec<Uuid>>,
    /// Only nodes whose power state is known (an allocation's rule).
    pub with_power_state: bool,
    /// Only nodes in these ring partitions of `conductor_group` (the "my
    /// nodes" index scan); empty means no restriction.
    pub partitions: Option<Vec<i64>>,
    /// Only nodes whose `conductor_affinity` is this (`Some(None)`: none).
    pub affinity: Option<Option<String>>,
    /// Only nodes in one of these provision states.
    pub provision_states: Option<Vec<String>>,
    /// Only nodes nobody holds the lock of.
    pub unlocked: bool,
    /// Only nodes with a power action pending (`target_power_state` set).
    pub power_pending: bool,
    pub paging: Paging,
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
            reservation: r.reservation.map(LockHolder::new),
            conductor_affinity: r.conductor_affinity.map(ConductorId::new),
            conductor_group: r.conductor_group,
            ring_partition: r.ring_partition,
            driver_info: obj("driver_info", &r.driver_info)?,
            driver_internal_info: obj("driver_internal_info", &r.driver_internal_info)?,
            instance_info: obj("instance_info", &r.instance_info)?,
            properties: obj("properties", &r.properties)?,
            extra: obj("extra", &r.extra)?,
            network_data: obj("network_data", &r.network_data)?,
            instance_uuid: r.instance_uuid,
            allocation_uuid: r.allocation_uuid,
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

impl Db {
    /// Insert a node, its ring partition computed with the exponent the
    /// database records, read under the shared partition lock in the same
    /// transaction (whatever `n.ring_partition` says): no node is created
    /// with another exponent's partition, nor in the middle of a recompute.
    pub async fn create_node(&self, n: &Node) -> Result<(), DbError> {
        let mut lock = self.lock_partitions(PartitionLockMode::Shared).await?;
        let recorded = lock.recorded_exponent().await?;
        let exponent = match Recorded::parse(recorded.as_deref()) {
            Recorded::Exponent(e) => e,
            Recorded::None => {
                return Err(DbError::PartitionExponent(format!(
                    "the database records no ring partition exponent (cluster_settings.{EXPONENT_SETTING}), so node \
                     {} cannot be given a partition: every Ferric process records it at start",
                    n.uuid
                )));
            }
            Recorded::Unreadable(v) => {
                return Err(DbError::PartitionExponent(format!(
                    "cluster_settings.{EXPONENT_SETTING} is {v:?}, not a partition exponent: restart a Ferric process \
                     to recompute the partitions"
                )));
            }
        };
        let mut cols = vec!["uuid", "reservation", "created_at", "ring_partition"];
        cols.extend_from_slice(NODE_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![
            n.uuid.to_string().into(),
            n.reservation.clone().into(),
            n.created_at.into(),
            partitions::partition(&n.uuid, exponent).into(),
        ];
        args.extend(node_save_args(n, n.created_at));
        // a fresh node has never been updated
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO nodes ({}) VALUES ({})", cols.join(", "), placeholders.join(", "));
        lock.execute(sql, args).await.map_err(|e| {
            match unique_field(&e, &["instance_uuid", "allocation_uuid", "name", "uuid"]) {
                Some(field) => DbError::Duplicate { field },
                None => DbError::Sqlx(e),
            }
        })?;
        lock.commit().await
    }

    pub async fn get_node(&self, uuid: Uuid) -> Result<Node, DbError> {
        let cols = &*NODE_COLUMNS;
        let sql = format!("SELECT {cols} FROM nodes WHERE uuid = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![uuid.to_string().into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_node_by_name(&self, name: &str) -> Result<Node, DbError> {
        let cols = &*NODE_COLUMNS;
        let sql = format!("SELECT {cols} FROM nodes WHERE name = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![name.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_node_by_instance(&self, instance_uuid: &str) -> Result<Node, DbError> {
        let cols = &*NODE_COLUMNS;
        let sql = format!("SELECT {cols} FROM nodes WHERE instance_uuid = $1");
        self.fetch_one_opt::<NodeRow>(sql, vec![instance_uuid.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_nodes(&self, q: &NodeQuery) -> Result<Vec<Node>, DbError> {
        let (wh, mut args) = node_filter(q);
        let sql = self.paged("nodes", &NODE_COLUMNS, NODE_SORT_KEYS, wh, &mut args, &q.paging).await?;
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

    /// Write every field of `n` except its lock, as the holder of its lock.
    /// Returns false (and writes nothing) if `holder` no longer holds it.
    pub async fn save_node_locked(&self, n: &Node, holder: &LockHolder) -> Result<bool, DbError> {
        self.save_node(n, holder, false, None, Vec::new()).await
    }

    /// [`Db::save_node_locked`], recording `call` in the same transaction
    /// (see [`AppliedCall`]): the save and the record land together or
    /// neither does.
    pub async fn save_node_applying(
        &self,
        n: &Node,
        holder: &LockHolder,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        self.save_node(n, holder, false, call, Vec::new()).await
    }

    /// [`Db::save_node_applying`], deleting the allocation `allocation` in
    /// the same transaction: a node that forgets its allocation (its
    /// instance removed, its tear-down done) and the allocation go
    /// together.
    pub async fn save_node_dropping_allocation(
        &self,
        n: &Node,
        holder: &LockHolder,
        allocation: &str,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        let drop = ("DELETE FROM allocations WHERE uuid = $1".to_string(), vec![allocation.into()]);
        self.save_node(n, holder, false, call, vec![drop]).await
    }

    /// Write the node and give up `holder`'s lock in one statement, so no
    /// reader ever sees the final state with the lock still held.
    pub async fn save_node_and_release(&self, n: &Node, holder: &LockHolder) -> Result<bool, DbError> {
        self.save_node(n, holder, true, None, Vec::new()).await
    }

    async fn save_node(
        &self,
        n: &Node,
        holder: &LockHolder,
        release: bool,
        call: Option<&AppliedCall<'_>>,
        mut then: Vec<(String, Vec<Arg>)>,
    ) -> Result<bool, DbError> {
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
        let dup = |e: sqlx::Error| match unique_field(&e, &["instance_uuid", "allocation_uuid", "name"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        };
        if let Some(c) = call {
            then.push(c.insert());
        }
        if then.is_empty() {
            Ok(self.execute(sql, args).await.map_err(dup)? == 1)
        } else {
            self.execute_one_then((sql, args), then).await.map_err(dup)
        }
    }

    /// Take the exclusive node lock for `holder`: one conditional UPDATE.
    pub async fn reserve_node(&self, uuid: Uuid, holder: &LockHolder) -> Result<LockOutcome, DbError> {
        self.reserve(uuid, holder, None).await
    }

    /// Like [`Db::reserve_node`], but only while the node is still in
    /// `state`: a worker acting on an older read of the node (an orphaned
    /// operation seen a moment ago) never locks it once it moved on, so
    /// clients never see a finished node locked.
    pub async fn reserve_node_in_state(
        &self,
        uuid: Uuid,
        holder: &LockHolder,
        state: &str,
    ) -> Result<LockOutcome, DbError> {
        self.reserve(uuid, holder, Some(state)).await
    }

    async fn reserve(&self, uuid: Uuid, holder: &LockHolder, state: Option<&str>) -> Result<LockOutcome, DbError> {
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
    pub async fn release_node(&self, uuid: Uuid, holder: &LockHolder) -> Result<bool, DbError> {
        let rows = self
            .execute(
                "UPDATE nodes SET reservation = NULL WHERE uuid = $1 AND reservation = $2".into(),
                vec![uuid.to_string().into(), holder.into()],
            )
            .await?;
        Ok(rows == 1)
    }

    /// The nodes whose lock `holder` holds.
    pub async fn nodes_reserved_by(&self, holder: &LockHolder) -> Result<Vec<Uuid>, DbError> {
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

    /// Delete a node and its ports, as the holder of its lock (recording
    /// `call` with it).
    pub async fn delete_node_locked(
        &self,
        uuid: Uuid,
        holder: &LockHolder,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        let delete = (
            "DELETE FROM nodes WHERE uuid = $1 AND reservation = $2".to_string(),
            vec![uuid.to_string().into(), holder.into()],
        );
        let deleted = self.execute_one_then(delete, call.iter().map(|c| c.insert()).collect()).await?;
        if deleted {
            // its history goes with it (what is left after an error here,
            // the periodic pruning takes)
            let _ = self
                .execute("DELETE FROM node_history WHERE node_uuid = $1".into(), vec![uuid.to_string().into()])
                .await;
        }
        Ok(deleted)
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
    if let Some(v) = &q.instance_name {
        eq("instance_name", v.as_str().into(), &mut wh);
    }
    if let Some(v) = &q.chassis_uuid {
        eq("chassis_uuid", v.as_str().into(), &mut wh);
    }
    if let Some(p) = &q.project {
        args.push(p.as_str().into());
        args.push(p.as_str().into());
        wh.push(format!("(owner = ${} OR lessee = ${})", args.len() - 1, args.len()));
    }
    match q.sharded {
        Some(true) => wh.push("shard IS NOT NULL".into()),
        Some(false) => wh.push("shard IS NULL".into()),
        None => {}
    }
    if q.with_power_state {
        wh.push("power_state IS NOT NULL".into());
    }
    if let Some(uuids) = &q.uuids {
        if uuids.is_empty() {
            wh.push("1 = 0".into());
        } else {
            let mut list = Vec::new();
            for u in uuids {
                args.push(u.to_string().into());
                list.push(format!("${}", args.len()));
            }
            wh.push(format!("uuid IN ({})", list.join(", ")));
        }
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
    match &q.affinity {
        Some(Some(a)) => {
            args.push(a.as_str().into());
            wh.push(format!("conductor_affinity = ${}", args.len()));
        }
        Some(None) => wh.push("conductor_affinity IS NULL".into()),
        None => {}
    }
    if let Some(states) = &q.provision_states {
        if states.is_empty() {
            wh.push("1 = 0".into());
        } else {
            let mut list = Vec::new();
            for s in states {
                args.push(s.as_str().into());
                list.push(format!("${}", args.len()));
            }
            wh.push(format!("provision_state IN ({})", list.join(", ")));
        }
    }
    if q.unlocked {
        wh.push("reservation IS NULL".into());
    }
    if q.power_pending {
        wh.push("target_power_state IS NOT NULL".into());
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
