//! The `chassis` table: racks or enclosures nodes name. Written by the API
//! itself (a chassis is no node's: no lock guards it); a chassis nodes
//! name is not deleted, in one conditional statement.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Arg, Db, DbError, Paging, obj, text, unique_field};
use crate::model::Chassis;

pub const CHASSIS_SORT_KEYS: &[&str] = &["id", "uuid", "description", "created_at", "updated_at"];

table! {
    row ChassisRow of Chassis;
    columns CHASSIS_COLUMN_NAMES;
    saved CHASSIS_SAVE_COLUMNS, chassis_save_args;
    fixed {
        id: i64,
        uuid: String,
        created_at: DateTime<Utc>,
    }
    saved |c, now| {
        description: Option<String> = c.description.clone(),
        extra: String = text(&c.extra),
        updated_at: Option<DateTime<Utc>> = now,
    }
}

static CHASSIS_COLUMNS: LazyLock<String> = LazyLock::new(|| CHASSIS_COLUMN_NAMES.join(", "));

impl TryFrom<ChassisRow> for Chassis {
    type Error = DbError;
    fn try_from(r: ChassisRow) -> Result<Chassis, DbError> {
        Ok(Chassis {
            uuid: Uuid::parse_str(&r.uuid).map_err(|e| DbError::Corrupt(format!("chassis uuid: {e}")))?,
            description: r.description,
            extra: obj("extra", &r.extra)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Why a chassis was not deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChassisDelete {
    Deleted,
    /// Nodes name it.
    NotEmpty,
    NotFound,
}

impl Db {
    pub async fn create_chassis(&self, c: &Chassis) -> Result<(), DbError> {
        let mut cols = vec!["uuid", "created_at"];
        cols.extend_from_slice(CHASSIS_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![c.uuid.to_string().into(), c.created_at.into()];
        args.extend(chassis_save_args(c, c.created_at));
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let sql = format!("INSERT INTO chassis ({}) VALUES ({})", cols.join(", "), ph.join(", "));
        self.execute(sql, args).await.map_err(|e| match unique_field(&e, &["uuid"]) {
            Some(field) => DbError::Duplicate { field },
            None => DbError::Sqlx(e),
        })?;
        Ok(())
    }

    pub async fn update_chassis(&self, c: &Chassis) -> Result<(), DbError> {
        let mut args = chassis_save_args(c, Utc::now());
        let sets: Vec<String> =
            CHASSIS_SAVE_COLUMNS.iter().enumerate().map(|(i, col)| format!("{col} = ${}", i + 1)).collect();
        args.push(c.uuid.to_string().into());
        let sql = format!("UPDATE chassis SET {} WHERE uuid = ${}", sets.join(", "), args.len());
        if self.execute(sql, args).await? == 1 { Ok(()) } else { Err(DbError::NotFound) }
    }

    pub async fn delete_chassis(&self, uuid: Uuid) -> Result<ChassisDelete, DbError> {
        let n = self
            .execute(
                "DELETE FROM chassis WHERE uuid = $1 AND NOT EXISTS (SELECT 1 FROM nodes WHERE chassis_uuid = $1)"
                    .into(),
                vec![uuid.to_string().into()],
            )
            .await?;
        if n == 1 {
            return Ok(ChassisDelete::Deleted);
        }
        match self.get_chassis(uuid).await {
            Ok(_) => Ok(ChassisDelete::NotEmpty),
            Err(DbError::NotFound) => Ok(ChassisDelete::NotFound),
            Err(e) => Err(e),
        }
    }

    pub async fn get_chassis(&self, uuid: Uuid) -> Result<Chassis, DbError> {
        let sql = format!("SELECT {} FROM chassis WHERE uuid = $1", *CHASSIS_COLUMNS);
        self.fetch_one_opt::<ChassisRow>(sql, vec![uuid.to_string().into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_chassis(&self, paging: &Paging) -> Result<Vec<Chassis>, DbError> {
        let mut args = Vec::new();
        let sql = self.paged("chassis", &CHASSIS_COLUMNS, CHASSIS_SORT_KEYS, Vec::new(), &mut args, paging).await?;
        self.fetch_all::<ChassisRow>(sql, args).await?.into_iter().map(Chassis::try_from).collect()
    }
}
