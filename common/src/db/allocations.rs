//! The `allocations` table, and the two writes that tie an allocation to a
//! node: the claim (an allocation takes a free node) and the release (an
//! allocation goes, its node forgets it). Each is one transaction of
//! conditional statements, so two allocations never get one node — from
//! two conductors at once, or from a conductor that died and the one that
//! took its allocations over.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AppliedCall, Arg, Db, DbError, Paging, obj, text, unique_field};
use crate::ids::LockHolder;
use crate::model::{Allocation, AllocationState, JsonObject, Node};

pub const ALLOCATION_SORT_KEYS: &[&str] =
    &["id", "uuid", "name", "node_uuid", "state", "resource_class", "owner", "created_at", "updated_at"];

/// Filters and paging for an allocation list.
#[derive(Debug, Clone, Default)]
pub struct AllocationQuery {
    pub node_uuid: Option<Uuid>,
    pub resource_class: Option<String>,
    pub state: Option<AllocationState>,
    pub owner: Option<String>,
    pub paging: Paging,
}

table! {
    row AllocationRow of Allocation;
    columns ALLOCATION_COLUMN_NAMES;
    saved ALLOCATION_SAVE_COLUMNS, allocation_save_args;
    fixed {
        id: i64,
        uuid: String,
        created_at: DateTime<Utc>,
    }
    saved |a, now| {
        name: Option<String> = a.name.clone(),
        node_uuid: Option<String> = a.node_uuid.map(|u| u.to_string()),
        state: String = a.state.as_str(),
        last_error: Option<String> = a.last_error.clone(),
        resource_class: Option<String> = a.resource_class.clone(),
        traits: String = serde_json::to_string(&a.traits).expect("a list of strings serialises"),
        candidate_nodes: String = serde_json::to_string(&a.candidate_nodes).expect("a list of UUIDs serialises"),
        extra: String = text(&a.extra),
        owner: Option<String> = a.owner.clone(),
        updated_at: Option<DateTime<Utc>> = now,
    }
}

static ALLOCATION_COLUMNS: LazyLock<String> = LazyLock::new(|| ALLOCATION_COLUMN_NAMES.join(", "));

impl TryFrom<AllocationRow> for Allocation {
    type Error = DbError;
    fn try_from(r: AllocationRow) -> Result<Allocation, DbError> {
        let id = |s: &str| Uuid::parse_str(s).map_err(|e| DbError::Corrupt(format!("allocation uuid {s:?}: {e}")));
        Ok(Allocation {
            uuid: id(&r.uuid)?,
            name: r.name,
            node_uuid: r.node_uuid.as_deref().map(id).transpose()?,
            state: AllocationState::parse(&r.state)
                .ok_or_else(|| DbError::Corrupt(format!("allocation state {:?}", r.state)))?,
            last_error: r.last_error,
            resource_class: r.resource_class,
            traits: serde_json::from_str(&r.traits).map_err(|e| DbError::Corrupt(format!("traits: {e}")))?,
            candidate_nodes: serde_json::from_str(&r.candidate_nodes)
                .map_err(|e| DbError::Corrupt(format!("candidate_nodes: {e}")))?,
            extra: obj("extra", &r.extra)?,
            owner: r.owner,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Why a claim was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The node is the allocation's now.
    Claimed,
    /// The node changed since it was read (another allocation took it, its
    /// owner holds its lock, it left `available`, ...): read it again.
    NodeChanged,
    /// The allocation is no longer being processed (deleted, failed, or
    /// claimed a node through another conductor).
    AllocationGone,
}

fn dup(e: sqlx::Error) -> DbError {
    match unique_field(&e, &["name", "node_uuid", "instance_uuid", "allocation_uuid", "uuid"]) {
        Some(field) => DbError::Duplicate { field },
        None => DbError::Sqlx(e),
    }
}

impl Db {
    fn insert_allocation_sql(a: &Allocation) -> (String, Vec<Arg>) {
        let mut cols = vec!["uuid", "created_at"];
        cols.extend_from_slice(ALLOCATION_SAVE_COLUMNS);
        let mut args: Vec<Arg> = vec![a.uuid.to_string().into(), a.created_at.into()];
        args.extend(allocation_save_args(a, a.created_at));
        // a fresh allocation has never been updated
        *args.last_mut().expect("updated_at is last") = Arg::Time(None);
        let ph: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        (format!("INSERT INTO allocations ({}) VALUES ({})", cols.join(", "), ph.join(", ")), args)
    }

    /// Inserts a new allocation, recording the API's `call` with it.
    pub async fn create_allocation(&self, a: &Allocation, call: Option<&AppliedCall<'_>>) -> Result<(), DbError> {
        let mut then = Vec::new();
        if let Some(c) = call {
            then.push(c.insert());
        }
        self.execute_one_then(Self::insert_allocation_sql(a), then).await.map_err(dup)?;
        Ok(())
    }

    pub async fn get_allocation(&self, uuid: Uuid) -> Result<Allocation, DbError> {
        let sql = format!("SELECT {} FROM allocations WHERE uuid = $1", *ALLOCATION_COLUMNS);
        self.fetch_one_opt::<AllocationRow>(sql, vec![uuid.to_string().into()])
            .await?
            .ok_or(DbError::NotFound)?
            .try_into()
    }

    pub async fn get_allocation_by_name(&self, name: &str) -> Result<Allocation, DbError> {
        let sql = format!("SELECT {} FROM allocations WHERE name = $1", *ALLOCATION_COLUMNS);
        self.fetch_one_opt::<AllocationRow>(sql, vec![name.into()]).await?.ok_or(DbError::NotFound)?.try_into()
    }

    pub async fn list_allocations(&self, q: &AllocationQuery) -> Result<Vec<Allocation>, DbError> {
        let mut wh = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut eq = |col: &str, v: Arg| {
            args.push(v);
            wh.push(format!("{col} = ${}", args.len()));
        };
        if let Some(n) = q.node_uuid {
            eq("node_uuid", n.to_string().into());
        }
        if let Some(v) = &q.resource_class {
            eq("resource_class", v.as_str().into());
        }
        if let Some(v) = q.state {
            eq("state", v.as_str().into());
        }
        if let Some(v) = &q.owner {
            eq("owner", v.as_str().into());
        }
        let sql =
            self.paged("allocations", &ALLOCATION_COLUMNS, ALLOCATION_SORT_KEYS, wh, &mut args, &q.paging).await?;
        self.fetch_all::<AllocationRow>(sql, args).await?.into_iter().map(Allocation::try_from).collect()
    }

    /// Writes a client's change of an allocation's `name` and `extra`.
    pub async fn update_allocation_fields(
        &self,
        uuid: Uuid,
        name: Option<&str>,
        extra: &JsonObject,
    ) -> Result<(), DbError> {
        let n = self
            .execute(
                "UPDATE allocations SET name = $1, extra = $2, updated_at = $3 WHERE uuid = $4".into(),
                vec![name.map(String::from).into(), text(extra).into(), Utc::now().into(), uuid.to_string().into()],
            )
            .await
            .map_err(dup)?;
        if n == 1 { Ok(()) } else { Err(DbError::NotFound) }
    }

    /// Gives `node` (as it was read) to the allocation `a`, if both are
    /// still as they were: the allocation still `allocating`, the node
    /// still free (nobody holds its lock, no instance, no allocation,
    /// `available`, not in maintenance) and unchanged in what the match
    /// looked at. One transaction: the allocation turns `active` with the
    /// node, the node gets the allocation's UUID as `instance_uuid` and
    /// `allocation_uuid` and its traits in `instance_info.traits`.
    pub async fn claim_node(&self, a: &Allocation, node: &Node) -> Result<ClaimOutcome, DbError> {
        let now = Utc::now();
        let alloc = (
            "UPDATE allocations SET state = $1, node_uuid = $2, last_error = NULL, updated_at = $3 \
             WHERE uuid = $4 AND state = $5"
                .to_string(),
            vec![
                AllocationState::Active.as_str().into(),
                node.uuid.to_string().into(),
                now.into(),
                a.uuid.to_string().into(),
                AllocationState::Allocating.as_str().into(),
            ],
        );
        let mut info = node.instance_info.clone();
        info.insert("traits".into(), serde_json::to_value(&a.traits).expect("traits serialise"));
        let traits = serde_json::to_string(&node.traits).expect("a list of strings serialises");
        let claim = (
            "UPDATE nodes SET instance_uuid = $1, allocation_uuid = $1, instance_info = $2, updated_at = $3 \
             WHERE uuid = $4 AND reservation IS NULL AND instance_uuid IS NULL AND allocation_uuid IS NULL \
             AND provision_state = 'available' AND maintenance = $5 AND power_state IS NOT NULL \
             AND instance_info = $6 AND traits = $7 AND COALESCE(resource_class, '') = $8 \
             AND COALESCE(owner, '') = $9 AND COALESCE(lessee, '') = $10"
                .to_string(),
            vec![
                a.uuid.to_string().into(),
                text(&info).into(),
                now.into(),
                node.uuid.to_string().into(),
                false.into(),
                text(&node.instance_info).into(),
                traits.into(),
                node.resource_class.clone().unwrap_or_default().into(),
                node.owner.clone().unwrap_or_default().into(),
                node.lessee.clone().unwrap_or_default().into(),
            ],
        );
        // the node first: the allocation's row is the one every processing
        // conductor writes, so it is locked last and held briefly
        match self.execute_all_one(vec![claim, alloc]).await {
            Ok(None) => Ok(ClaimOutcome::Claimed),
            Ok(Some(0)) => Ok(ClaimOutcome::NodeChanged),
            Ok(Some(_)) => Ok(ClaimOutcome::AllocationGone),
            // the allocation's UUID is some other node's instance already
            Err(e) if unique_field(&e, &["instance_uuid"]).is_some() => Ok(ClaimOutcome::NodeChanged),
            Err(e) => Err(DbError::Sqlx(e)),
        }
    }

    /// Marks an allocation that is still `allocating` as failed. False
    /// when it no longer was (deleted, or another conductor finished it).
    pub async fn fail_allocation(&self, uuid: Uuid, error: &str) -> Result<bool, DbError> {
        let n = self
            .execute(
                "UPDATE allocations SET state = $1, last_error = $2, node_uuid = NULL, updated_at = $3 \
                 WHERE uuid = $4 AND state = $5"
                    .into(),
                vec![
                    AllocationState::Error.as_str().into(),
                    error.into(),
                    Utc::now().into(),
                    uuid.to_string().into(),
                    AllocationState::Allocating.as_str().into(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Creates an `active` allocation for a node already deployed
    /// (backfill), as the holder of the node's lock: the node is saved with
    /// the allocation's UUID in the same transaction.
    pub async fn backfill_allocation(
        &self,
        a: &Allocation,
        node: &Node,
        holder: &LockHolder,
        call: Option<&AppliedCall<'_>>,
    ) -> Result<bool, DbError> {
        let save = (
            "UPDATE nodes SET instance_uuid = $1, allocation_uuid = $2, updated_at = $3 \
             WHERE uuid = $4 AND reservation = $5"
                .to_string(),
            vec![
                node.instance_uuid.clone().into(),
                node.allocation_uuid.clone().into(),
                Utc::now().into(),
                node.uuid.to_string().into(),
                holder.into(),
            ],
        );
        let mut then = vec![Self::insert_allocation_sql(a)];
        if let Some(c) = call {
            then.push(c.insert());
        }
        self.execute_one_then(save, then).await.map_err(dup)
    }

    /// Deletes an allocation that holds no node (recording `call`).
    pub async fn delete_free_allocation(&self, uuid: Uuid, call: Option<&AppliedCall<'_>>) -> Result<bool, DbError> {
        let del = (
            "DELETE FROM allocations WHERE uuid = $1 AND node_uuid IS NULL".to_string(),
            vec![uuid.to_string().into()],
        );
        Ok(self.execute_one_then(del, call.iter().map(|c| c.insert()).collect()).await?)
    }
}
