//! The `portgroups` table: ports of a node bonded together. Written, like
//! ports, under the node's lock on its owner.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AppliedCall, Arg, Db, DbError, Paging, node_project_filter, obj, text, unique_field};
use crate::model::Portgroup;

pub const PORTGROUP_SORT_KEYS: &[&str] = &["id", "uuid", "name", "address", "node_uuid", "created_at", "updated_at"];

#[derive(Debug, Clone, Default)]
pub struct PortgroupQuery {
    pub node_uuid: Option<Uuid>,
    /// Only portgroups of nodes this project owns or leases: what a
    /// project-scoped Keystone caller may list.
    pub node_project: Option<String>,
    pub address: Option<String>,
    pub paging: Paging,
}

table! {
    row PortgroupRow of Portgroup;
    columns PORTGROUP_COLUMN_NAMES;
    saved PORTGROUP_SAVE_COLUMNS, portgroup_save_args;
    fixed {
        id: i64,
        uuid: String,
        created_at: DateTime<Utc>,
    }
    saved |p, now| {
        name: Option<String> = p.name.clone(),
        node_uuid: String = p.node_uuid.to_string(),
        address: Option<String> = p.address.clone(),
        mode: Option<String> = p.mode.clone(),
        properties: String = text(&p.properties),
        standalone_ports_supported: bool = p.standalone_ports_supported,
        physical_network: Option<String> = p.physical_network.clone(),
        category: Option<String> = p.category.clone(),
        extra: String = text(&p.extra),
        internal_info: String = text(&p.internal_info),
        updated_at: Option<DateTime<Utc>> = now,
    }
}

static PORTGROUP_COLUMNS: LazyLock<String> = LazyLock::new(|| PORTGROUP_COLUMN_NAMES.join(", "));

impl TryFrom<PortgroupRow> for Portgroup {
    type Error = DbError;
    fn try_from(r: PortgroupRow) -> Result<Portgroup, DbError> {
        let id = |s: &str| Uuid::parse_str(s).map_err(|e| DbError::Corrupt(format!("portgroup uuid: {e}")));
        Ok(Portgroup {
            uuid: id(&r.uuid)?,
            name: r.name,
            node_uuid: id(&r.node_uuid)?,
            address: r.address,
            mode: r.mode,
            properties: obj("properties", &r.properties)?,
            standalone_ports_supported: r.standalone_ports_supported,
            physical_network: r.physical_network,
            category: r.category,
            extra: obj("extra", &r.extra)?,
            internal_info: obj("internal_info", &r.internal_info)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

impl Db {
    fn portgroup_error(e: sqlx::Error) -> DbError {
        match unique_field(&e, &["address", "name", "uuid"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        }
    }

    /// Writes a portgroup change, recording `call` in the same transaction;
    /// false when it changed no row.
    async fn write_portgroup(
        &self,
        sql: String,
        args: Vec<Arg>,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        match call {
            None => Ok(self.execute(sql, args).await.map_err(Self::portgroup_error)? == 1),
            Some(c) => self.execute_one_then((sql, args), vec![c.insert()]).await.map_err(Self::portgroup_error),
        }
    }

    pub async fn create_portgroup(&self, p: &Portgroup, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let mut cols = vec!["uuid", "created_at"];
        cols.extend_from_slice(PORTGROUP_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![p.uuid.to_string().into(), p.created_at.into()];
        args.extend(portgroup_save_args(p, p.created_at));
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO portgroups ({}) VALUES ({})", cols.join(", "), ph.join(", "));
        self.write_portgroup(sql, args, call).await?;
        Ok(())
    }

    pub async fn update_portgroup(&self, p: &Portgroup, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let mut args = portgroup_save_args(p, Utc::now());
        let sets: Vec<String> =
            PORTGROUP_SAVE_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
        args.push(p.uuid.to_string().into());
        let sql = format!("UPDATE portgroups SET {} WHERE uuid = ${}", sets.join(", "), args.len());
        if self.write_portgroup(sql, args, call).await? { Ok(()) } else { Err(DbError::NotFound) }
    }

    /// Deletes a portgroup that no port is a member of; false when one is
    /// (or it does not exist).
    pub async fn delete_portgroup(&self, uuid: Uuid, call: Option<&AppliedCall<'_>>) -> Result<bool, DbError> {
        self.write_portgroup(
            "DELETE FROM portgroups WHERE uuid = $1 AND NOT EXISTS (SELECT 1 FROM ports WHERE portgroup_uuid = $1)"
                .into(),
            vec![uuid.to_string().into()],
            call,
        )
        .await
    }

    pub async fn get_portgroup(&self, uuid: Uuid) -> Result<Portgroup, DbError> {
        let sql = format!("SELECT {} FROM portgroups WHERE uuid = $1", *PORTGROUP_COLUMNS);
        self.fetch_one_opt::<PortgroupRow>(sql, vec![uuid.to_string().into()])
            .await?
            .ok_or(DbError::NotFound)?
            .try_into()
    }

    pub async fn get_portgroup_by_name(&self, name: &str) -> Result<Portgroup, DbError> {
        let sql = format!("SELECT {} FROM portgroups WHERE name = $1", *PORTGROUP_COLUMNS);
        self.fetch_one_opt::<PortgroupRow>(sql, vec![name.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_portgroups(&self, q: &PortgroupQuery) -> Result<Vec<Portgroup>, DbError> {
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
        if let Some(p) = &q.node_project {
            node_project_filter(p, &mut wh, &mut args);
        }
        let sql = self.paged("portgroups", &PORTGROUP_COLUMNS, PORTGROUP_SORT_KEYS, wh, &mut args, &q.paging).await?;
        self.fetch_all::<PortgroupRow>(sql, args).await?.into_iter().map(Portgroup::try_from).collect()
    }
}
