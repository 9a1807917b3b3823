//! The `ports` table: a node's network interfaces.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AppliedCall, Arg, Db, DbError, Paging, node_project_filter, obj, text, unique_field};
use crate::model::Port;

pub const PORT_SORT_KEYS: &[&str] = &["id", "uuid", "address", "node_uuid", "name", "created_at", "updated_at"];

#[derive(Debug, Clone, Default)]
pub struct PortQuery {
    pub node_uuid: Option<Uuid>,
    /// Only ports of nodes this project owns or leases: what a
    /// project-scoped Keystone caller may list.
    pub node_project: Option<String>,
    pub address: Option<String>,
    /// Members of this portgroup.
    pub portgroup_uuid: Option<String>,
    pub paging: Paging,
}

table! {
    row PortRow of Port;
    columns PORT_COLUMN_NAMES;
    saved PORT_SAVE_COLUMNS, port_save_args;
    fixed {
        id: i64,
        uuid: String,
        created_at: DateTime<Utc>,
    }
    saved |p, now| {
        address: String = p.address.clone(),
        node_uuid: String = p.node_uuid.to_string(),
        name: Option<String> = p.name.clone(),
        pxe_enabled: bool = p.pxe_enabled,
        local_link_connection: String = text(&p.local_link_connection),
        physical_network: Option<String> = p.physical_network.clone(),
        extra: String = text(&p.extra),
        internal_info: String = text(&p.internal_info),
        is_smartnic: bool = p.is_smartnic,
        portgroup_uuid: Option<String> = p.portgroup_uuid.clone(),
        updated_at: Option<DateTime<Utc>> = now,
    }
}

/// The SELECT list of a whole port.
static PORT_COLUMNS: LazyLock<String> = LazyLock::new(|| PORT_COLUMN_NAMES.join(", "));

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

impl Db {
    fn port_error(e: sqlx::Error) -> DbError {
        match unique_field(&e, &["address", "name", "uuid"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        }
    }

    /// Writes a port change, recording `call` in the same transaction.
    async fn write_port(&self, sql: String, args: Vec<Arg>, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let written = match call {
            None => self.execute(sql, args).await.map_err(Self::port_error)? == 1,
            Some(c) => self.execute_one_then((sql, args), vec![c.insert()]).await.map_err(Self::port_error)?,
        };
        if written { Ok(()) } else { Err(DbError::NotFound) }
    }

    pub async fn create_port(&self, p: &Port) -> Result<(), DbError> {
        self.create_port_applying(p, None).await
    }

    pub async fn create_port_applying(&self, p: &Port, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let mut cols = vec!["uuid", "created_at"];
        cols.extend_from_slice(PORT_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![p.uuid.to_string().into(), p.created_at.into()];
        args.extend(port_save_args(p, p.created_at));
        // a fresh port has never been updated
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO ports ({}) VALUES ({})", cols.join(", "), ph.join(", "));
        self.write_port(sql, args, call).await
    }

    pub async fn update_port(&self, p: &Port) -> Result<(), DbError> {
        self.update_port_applying(p, None).await
    }

    pub async fn update_port_applying(&self, p: &Port, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let mut args = port_save_args(p, Utc::now());
        let sets: Vec<String> =
            PORT_SAVE_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
        args.push(p.uuid.to_string().into());
        let sql = format!("UPDATE ports SET {} WHERE uuid = ${}", sets.join(", "), args.len());
        self.write_port(sql, args, call).await
    }

    pub async fn delete_port(&self, uuid: Uuid) -> Result<(), DbError> {
        self.delete_port_applying(uuid, None).await
    }

    pub async fn delete_port_applying(&self, uuid: Uuid, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        self.write_port("DELETE FROM ports WHERE uuid = $1".into(), vec![uuid.to_string().into()], call).await
    }

    pub async fn get_port(&self, uuid: Uuid) -> Result<Port, DbError> {
        let sql = format!("SELECT {} FROM ports WHERE uuid = $1", *PORT_COLUMNS);
        self.fetch_one_opt::<PortRow>(sql, vec![uuid.to_string().into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn get_port_by_name(&self, name: &str) -> Result<Port, DbError> {
        let sql = format!("SELECT {} FROM ports WHERE name = $1", *PORT_COLUMNS);
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
        if let Some(p) = &q.node_project {
            node_project_filter(p, &mut wh, &mut args);
        }
        if let Some(g) = &q.portgroup_uuid {
            args.push(g.as_str().into());
            wh.push(format!("portgroup_uuid = ${}", args.len()));
        }
        let sql = self.paged("ports", &PORT_COLUMNS, PORT_SORT_KEYS, wh, &mut args, &q.paging).await?;
        self.fetch_all::<PortRow>(sql, args).await?.into_iter().map(Port::try_from).collect()
    }
}
