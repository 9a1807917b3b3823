//! The ring partition stored with every node, and the exponent it was
//! computed with.
//!
//! A node's `ring_partition` (top `partition_exponent` bits of SHA-256 of
//! its UUID, [`crate::ring::partition_of`]) is stored and indexed, and a
//! conductor finds its nodes by it. It is only right for the exponent it was
//! computed with, so the database records that exponent
//! (`cluster_settings.ring_partition_exponent`), and partitions are only
//! ever written with the recorded one.
//!
//! # Protocol
//!
//! Everything below runs under the *partition lock* ([`Db::lock_partitions`]:
//! a transaction-scoped PostgreSQL advisory lock, or SQLite's write lock),
//! exclusive to check and recompute, shared to create a node.
//!
//! 1. **Node creation** reads the recorded exponent under the shared lock and
//!    inserts the node with the partition of that exponent, in the same
//!    transaction ([`Db::create_node`]). Nothing else writes `ring_partition`
//!    (a save of a node leaves it alone). So no node is created with a
//!    partition of another exponent, nor in the middle of a recompute.
//! 2. **Settling at start** ([`settle`]): an API process before it serves,
//!    a conductor (and all-in-one) right *after it joined the ring* and
//!    before its take-over and periodic work start. Under the exclusive
//!    lock it reads the recorded exponent and a sample of stored partitions
//!    (the first and last [`SAMPLE`] nodes by id). If the record is its own
//!    exponent and the sample agrees, that is all. Otherwise — no record
//!    (a new database, or one of an older Ferric), another exponent, or a
//!    sample that disagrees (said in an error naming a node) — it reads the
//!    members from the source of truth (a linearizable read in etcd); if
//!    any member uses other ring settings it refuses, naming both and
//!    changing nothing. Else it recomputes every node's partition in batches of
//!    [`RECOMPUTE_BATCH`] by id, records its exponent, and commits: all of
//!    it, in one transaction, or nothing.
//!
//! Why a conductor that settled never runs against partitions of another
//! exponent: it registered in etcd *before* it read the record under the
//! lock. A process that recomputes to another exponent reads the members
//! under the same lock, so either it comes after the conductor's read — and
//! sees the conductor's record (alive as long as its lease) with other
//! settings, and refuses — or it committed before, and the conductor reads
//! the new record and recomputes back or is refused itself. Two processes
//! with the same new settings take turns: the second finds the work done.
//! An API process is no ring member, so a recompute cannot see one: an API
//! still running with the old settings is stale (it logs an error at every
//! ring change, and its routing is wrong), but it cannot write a stale
//! partition, since creation uses the recorded exponent.
//!
//! The decisions ([`verdict`], [`corrections`], [`blocker`]) are pure; I/O
//! wraps them in [`settle`].

use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use uuid::Uuid;

use crate::db::{Db, DbError, PartitionLockMode};
use crate::membership::Membership;
use crate::ring::{Member, RingSettings, partition_of};

/// The cluster setting that records the exponent of the stored partitions.
pub const EXPONENT_SETTING: &str = "ring_partition_exponent";

/// How many nodes at each end of the id order start-up checks: the oldest
/// and the newest, where partitions written by another version or another
/// configuration show first. Cheap (two index scans) at any fleet size.
pub const SAMPLE: i64 = 100;

/// Nodes read and rewritten per statement of a recompute: one round trip
/// per thousand nodes, statements far below both databases' limits.
pub const RECOMPUTE_BATCH: i64 = 1000;

/// A node's stored partition, as read for a check or a recompute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPartition {
    pub id: i64,
    pub uuid: Uuid,
    pub partition: i64,
}

/// A stored partition that is not the one its exponent gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub uuid: Uuid,
    pub stored: i64,
    pub expected: i64,
}

/// The partition of `uuid` at `exponent`, as stored.
pub fn partition(uuid: &Uuid, exponent: u8) -> i64 {
    i64::from(partition_of(uuid.as_bytes(), exponent))
}

/// The stored partitions that `exponent` does not give.
pub fn mismatches(rows: &[StoredPartition], exponent: u8) -> Vec<Mismatch> {
    rows.iter()
        .filter_map(|r| {
            let expected = partition(&r.uuid, exponent);
            (r.partition != expected).then_some(Mismatch { uuid: r.uuid, stored: r.partition, expected })
        })
        .collect()
}

/// What a recompute writes for `rows`: (node id, partition) of every node
/// whose stored partition `exponent` does not give.
pub fn corrections(rows: &[StoredPartition], exponent: u8) -> Vec<(i64, i64)> {
    rows.iter()
        .filter_map(|r| {
            let p = partition(&r.uuid, exponent);
            (r.partition != p).then_some((r.id, p))
        })
        .collect()
}

/// What the recorded exponent says, from the setting's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No record: the database of a Ferric older than the record.
    None,
    Exponent(u8),
    /// Something that is not an exponent (edited by hand).
    Unreadable(String),
}

impl Recorded {
    pub fn parse(value: Option<&str>) -> Recorded {
        match value {
            None => Recorded::None,
            Some(v) => match v.trim().parse::<u8>() {
                // the range the configuration accepts
                Ok(e) if (1..=24).contains(&e) => Recorded::Exponent(e),
                _ => Recorded::Unreadable(v.to_string()),
            },
        }
    }
}

/// Why the stored partitions must be recomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// No record and no node: a new database.
    New,
    /// No record but nodes: the database of a Ferric older than the record.
    Unrecorded,
    Unreadable(String),
    /// The cluster's settings changed since the partitions were computed.
    Changed {
        from: u8,
    },
    /// The record is this process's exponent, but sampled partitions are
    /// not its: edited, or written by a process with other settings.
    Wrong {
        sampled: usize,
        wrong: Vec<Mismatch>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The record is `mine` and the sample agrees.
    Current,
    Recompute(Why),
}

/// What start-up does, given the record, this process's exponent and the
/// sample of stored partitions.
pub fn verdict(recorded: &Recorded, mine: u8, sample: &[StoredPartition]) -> Verdict {
    match recorded {
        Recorded::None if sample.is_empty() => Verdict::Recompute(Why::New),
        Recorded::None => Verdict::Recompute(Why::Unrecorded),
        Recorded::Unreadable(v) => Verdict::Recompute(Why::Unreadable(v.clone())),
        Recorded::Exponent(e) if *e != mine => Verdict::Recompute(Why::Changed { from: *e }),
        Recorded::Exponent(_) => {
            let wrong = mismatches(sample, mine);
            if wrong.is_empty() {
                Verdict::Current
            } else {
                Verdict::Recompute(Why::Wrong { sampled: sample.len(), wrong })
            }
        }
    }
}

impl Why {
    /// What is wrong and what start-up does about it, for the log.
    pub fn describe(&self, mine: u8) -> String {
        match self {
            Why::New => format!("a new database: recording partition_exponent={mine} for its nodes' ring partitions"),
            Why::Unrecorded => format!(
                "the database does not record the partition_exponent its nodes' ring partitions were computed with \
                 (cluster_settings.{EXPONENT_SETTING}; a database of an older Ferric): checking every node's partition \
                 against partition_exponent={mine} and recording it"
            ),
            Why::Unreadable(v) => format!(
                "cluster_settings.{EXPONENT_SETTING} is {v:?}, not a partition exponent: recomputing every node's \
                 partition with partition_exponent={mine}"
            ),
            Why::Changed { from } => format!(
                "the nodes' ring partitions were computed with partition_exponent={from}, this process uses \
                 partition_exponent={mine} and no live member uses other ring settings: recomputing every node's \
                 partition"
            ),
            Why::Wrong { sampled, wrong } => {
                let first = &wrong[0];
                format!(
                    "{} of {sampled} sampled nodes (the first and last by id) have a ring_partition that \
                     partition_exponent={mine} does not give — node {} has {}, not {}: the partitions were edited \
                     or written by a process with other settings; recomputing every node's partition",
                    wrong.len(),
                    first.uuid,
                    first.stored,
                    first.expected
                )
            }
        }
    }
}

/// Why a process with `mine` may not recompute while `members` are live:
/// a member whose ring settings are not `mine` (or that does not publish
/// them: an older Ferric) places nodes by the partitions as they are.
pub fn blocker(members: &[Member], mine: &RingSettings, recorded: &Recorded) -> Option<String> {
    let ours = mine.fingerprint();
    let other = members.iter().find(|m| m.ring_settings != ours)?;
    let theirs = if other.ring_settings.is_empty() {
        "no ring settings it publishes (an older Ferric)".to_string()
    } else {
        format!("[{}]", other.ring_settings)
    };
    let stored = match recorded {
        Recorded::Exponent(e) => format!("partition_exponent={e}"),
        Recorded::None => "an exponent the database does not record".to_string(),
        Recorded::Unreadable(v) => format!("an exponent recorded as {v:?}"),
    };
    Some(format!(
        "ring settings differ: member {} uses {theirs}, this process [{ours}]; the nodes' ring partitions were \
         computed with {stored} (cluster_settings.{EXPONENT_SETTING}) and are recomputed only when no live member \
         uses other settings: start this process with the cluster's membership.partition_exponent, load_epsilon and \
         replicas, or stop every member first to change them",
        other.id
    ))
}

/// What [`settle`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Current,
    Recomputed { checked: u64, changed: u64, took: Duration },
}

/// Brings the stored partitions to this process's exponent, or refuses
/// (see the module doc). A conductor calls it after joining the ring.
pub async fn settle(db: &Db, membership: &Membership, mine: &RingSettings) -> Result<Settled, String> {
    let exponent = mine.partition_exponent;
    let fail = |what: &str, e: DbError| format!("{what}: {e}");
    let mut lock =
        db.lock_partitions(PartitionLockMode::Exclusive).await.map_err(|e| fail("taking the partition lock", e))?;
    let recorded = Recorded::parse(
        lock.recorded_exponent().await.map_err(|e| fail("reading the recorded exponent", e))?.as_deref(),
    );
    let sample = lock.sample(SAMPLE).await.map_err(|e| fail("reading a sample of the stored partitions", e))?;
    let why = match verdict(&recorded, exponent, &sample) {
        Verdict::Current => {
            lock.commit().await.map_err(|e| fail("releasing the partition lock", e))?;
            return Ok(Settled::Current);
        }
        Verdict::Recompute(why) => why,
    };
    let members = membership
        .members_now()
        .await
        .map_err(|e| format!("reading the ring's members, to know that none uses other ring settings: {e}"))?;
    if let Some(refusal) = blocker(&members, mine, &recorded) {
        return Err(refusal);
    }
    match &why {
        Why::New | Why::Unrecorded => info!("{}", why.describe(exponent)),
        Why::Changed { .. } => warn!("{}", why.describe(exponent)),
        Why::Unreadable(_) | Why::Wrong { .. } => error!("{}", why.describe(exponent)),
    }
    let started = Instant::now();
    let done = lock.recompute(exponent, RECOMPUTE_BATCH).await.map_err(|e| fail("recomputing the partitions", e))?;
    lock.record_exponent(exponent).await.map_err(|e| fail("recording the exponent", e))?;
    lock.commit().await.map_err(|e| fail("committing the recomputed partitions", e))?;
    let took = started.elapsed();
    if why != Why::New {
        let from = match recorded {
            Recorded::Exponent(e) => e.to_string(),
            Recorded::None | Recorded::Unreadable(_) => "unrecorded".into(),
        };
        info!(
            checked = done.checked,
            changed = done.changed,
            ms = took.as_millis() as u64,
            "recomputed the ring partitions: partition_exponent {from} -> {exponent}"
        );
    }
    Ok(Settled::Recomputed { checked: done.checked, changed: done.changed, took })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::MemberState;

    fn row(id: i64, exponent: u8) -> StoredPartition {
        let uuid = Uuid::from_u128(0x9e37_79b9_7f4a_7c15_u128.wrapping_mul(id as u128 + 1));
        StoredPartition { id, uuid, partition: partition(&uuid, exponent) }
    }

    fn member(id: &str, settings: &str) -> Member {
        Member {
            id: id.into(),
            incarnation: format!("{id}/1").into(),
            grpc_url: String::new(),
            http_url: String::new(),
            conductor_group: String::new(),
            hardware_types: vec!["fake-hardware".into()],
            state: MemberState::Active,
            ring_settings: settings.into(),
            database_id: String::new(),
        }
    }

    #[test]
    fn the_record_is_read_strictly() {
        assert_eq!(Recorded::parse(None), Recorded::None);
        assert_eq!(Recorded::parse(Some("12")), Recorded::Exponent(12));
        assert_eq!(Recorded::parse(Some("0")), Recorded::Unreadable("0".into()));
        assert_eq!(Recorded::parse(Some("sixteen")), Recorded::Unreadable("sixteen".into()));
        assert_eq!(Recorded::parse(Some("30")), Recorded::Unreadable("30".into()));
    }

    #[test]
    fn verdict_row_by_row() {
        let at16: Vec<StoredPartition> = (0..50).map(|i| row(i, 16)).collect();
        assert_eq!(verdict(&Recorded::Exponent(16), 16, &at16), Verdict::Current);
        assert_eq!(verdict(&Recorded::Exponent(16), 16, &[]), Verdict::Current, "no nodes: nothing to check");
        assert_eq!(verdict(&Recorded::Exponent(16), 12, &at16), Verdict::Recompute(Why::Changed { from: 16 }));
        assert_eq!(verdict(&Recorded::None, 16, &at16), Verdict::Recompute(Why::Unrecorded));
        assert_eq!(verdict(&Recorded::None, 16, &[]), Verdict::Recompute(Why::New), "recorded at first start");
        assert_eq!(
            verdict(&Recorded::Unreadable("x".into()), 16, &at16),
            Verdict::Recompute(Why::Unreadable("x".into()))
        );
        let mut edited = at16.clone();
        edited[3].partition = (edited[3].partition + 1) % 65536;
        match verdict(&Recorded::Exponent(16), 16, &edited) {
            Verdict::Recompute(Why::Wrong { sampled, wrong }) => {
                assert_eq!(sampled, 50);
                assert_eq!(
                    wrong,
                    vec![Mismatch { uuid: at16[3].uuid, stored: edited[3].partition, expected: at16[3].partition }]
                );
                let text = Why::Wrong { sampled, wrong }.describe(16);
                assert!(text.contains(&at16[3].uuid.to_string()) && text.contains("1 of 50"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrections_are_the_rows_another_exponent_places_elsewhere() {
        let rows: Vec<StoredPartition> = (0..200).map(|i| row(i, 16)).collect();
        assert!(corrections(&rows, 16).is_empty());
        let to12 = corrections(&rows, 12);
        // 2^12 keeps a partition only where the 16-bit one was below 4096
        // and equal to its own top 12 bits: almost never
        assert!(to12.len() >= 190, "{}", to12.len());
        for (id, p) in &to12 {
            let r = &rows[*id as usize];
            assert_eq!(*p, r.partition >> 4, "the top 12 of the top 16 bits");
        }
        let mut fixed = rows.clone();
        for (id, p) in to12 {
            fixed[id as usize].partition = p;
        }
        assert!(mismatches(&fixed, 12).is_empty());
    }

    #[test]
    fn a_recompute_is_blocked_by_any_member_with_other_settings() {
        let s16 = RingSettings::default();
        let s12 = RingSettings { partition_exponent: 12, ..RingSettings::default() };
        assert_eq!(blocker(&[], &s12, &Recorded::Exponent(16)), None);
        let same = [member("c1", &s12.fingerprint()), member("c2", &s12.fingerprint())];
        assert_eq!(blocker(&same, &s12, &Recorded::Exponent(16)), None, "members with the new settings");
        let old = [member("c1", &s12.fingerprint()), member("c9", &s16.fingerprint())];
        let e = blocker(&old, &s12, &Recorded::Exponent(16)).unwrap();
        assert!(
            e.contains("member c9 uses [partition_exponent=16") && e.contains("this process [partition_exponent=12")
        );
        assert!(e.contains("computed with partition_exponent=16"), "{e}");
        let older = [member("c3", "")];
        let e = blocker(&older, &s16, &Recorded::None).unwrap();
        assert!(e.contains("member c3 uses no ring settings it publishes"), "{e}");
        let eps = RingSettings { load_epsilon: 0.1, ..RingSettings::default() };
        assert!(blocker(&[member("c1", &eps.fingerprint())], &s16, &Recorded::Exponent(16)).is_some());
    }
}
