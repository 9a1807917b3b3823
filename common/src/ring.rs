//! Placement of nodes on conductors: a pure function of (members, settings).
//!
//! # Protocol
//!
//! * A node's key is its UUID. `partition = first 8 bytes of
//!   SHA-256(uuid bytes)` (big-endian) reduced to the top
//!   `partition_exponent` bits, so 2^16 partitions by default. The partition
//!   is stored with the node and indexed, so "my nodes" is an index scan.
//! * Partitions are placed per *(conductor group, hardware type)* on the
//!   active members of that group that enable that hardware type. Draining
//!   members own nothing.
//! * Phase 1 — rendezvous (highest-random-weight) hashing: partition `p` goes
//!   to the member with the highest weight `w(m, p) = mix(seed(m) ^ p·K)`,
//!   where `seed(m)` is the first 8 bytes of SHA-256 of the member id and
//!   `mix` the SplitMix64 finaliser. Everything is explicit integer
//!   arithmetic on explicit bytes: the same members give the same table in
//!   every process, on every machine, with every compiler (never Rust's
//!   `Hash`, whose output is not promised stable). Removing a member moves
//!   exactly its partitions, each to its second choice, spread evenly over
//!   the rest; adding one moves to it only partitions it now ranks first on.
//! * Phase 2 — bounded loads: a member may hold at most
//!   `cap = ⌈(1+ε)·P/N⌉` partitions. An overloaded member sheds the
//!   partitions it ranks lowest (its smallest weights — a fixed order, so a
//!   member whose load changes by k sheds or takes back about k); each shed
//!   partition, in partition order, goes to the best-ranked member that still
//!   has room. Balance is therefore a guarantee (max ≤ cap), not luck.
//! * Replicas: the next `replicas` members by weight after the owner.
//! * The ring epoch is the membership snapshot's revision (etcd's revision,
//!   or a counter for in-process membership). Two processes with the same
//!   members build the same table, whatever the epoch.
//!
//! Why not the `hashring` crate: it hashes keys through `std::hash::Hash`
//! (native endianness and `usize` width, not stable across compilers), has
//! no virtual nodes or bounded loads, and re-sorts on every insert. The
//! measured numbers are in `docs/ring.md`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use crate::ids::{ConductorId, Incarnation};
use sha2::{Digest, Sha256};

pub type RingEpoch = u64;

/// A conductor as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: ConductorId,
    pub incarnation: Incarnation,
    pub grpc_url: String,
    pub http_url: String,
    pub conductor_group: String,
    pub hardware_types: Vec<String>,
    pub state: MemberState,
    /// The ring settings this member places nodes with
    /// ([`RingSettings::fingerprint`]); every process must use the same, or
    /// they disagree on owners. Empty in records of older versions.
    #[serde(default)]
    pub ring_settings: String,
    /// The id of the database this member works on
    /// (`identity::database_id`): a member on another database would own
    /// nodes it cannot see. Empty in records of older versions.
    #[serde(default)]
    pub database_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Active,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingSettings {
    /// 2^partition_exponent partitions.
    pub partition_exponent: u8,
    /// Bounded-load slack: a member holds at most ⌈(1+ε)·P/N⌉ partitions.
    pub load_epsilon: f64,
    /// Extra members per partition that keep a node's artefacts warm.
    pub replicas: usize,
}

impl RingSettings {
    /// What must be equal in every process of a cluster, as one string.
    pub fn fingerprint(&self) -> String {
        format!(
            "partition_exponent={} load_epsilon={} replicas={}",
            self.partition_exponent, self.load_epsilon, self.replicas
        )
    }
}

impl RingSettings {
    /// The settings a member record carries ([`RingSettings::fingerprint`]).
    pub fn from_fingerprint(s: &str) -> Option<RingSettings> {
        let mut out = RingSettings::default();
        let mut seen = 0;
        for kv in s.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "partition_exponent" => out.partition_exponent = v.parse().ok()?,
                "load_epsilon" => out.load_epsilon = v.parse().ok()?,
                "replicas" => out.replicas = v.parse().ok()?,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 3).then_some(out)
    }
}

impl Default for RingSettings {
    fn default() -> Self {
        // ε = 0.02 keeps the node-level max/mean under 1.10 at 100
        // conductors and 100k nodes while removal/addition stay within
        // 1.2/N of the nodes (measured; docs/ring.md).
        RingSettings { partition_exponent: 16, load_epsilon: 0.02, replicas: 0 }
    }
}

/// The partition of a node: top bits of SHA-256 of its UUID bytes.
pub fn partition_of(node_uuid: &[u8; 16], partition_exponent: u8) -> u32 {
    let d = Sha256::digest(node_uuid);
    let top = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (top >> (64 - u32::from(partition_exponent))) as u32
}

/// First 8 bytes of SHA-256 of the member id.
fn seed(id: &str) -> u64 {
    let d = Sha256::digest(id.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// SplitMix64's finaliser: a fixed, explicit 64-bit mixer.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn weight(seed: u64, partition: u32) -> u64 {
    mix(seed ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The placement for one (group, hardware type): owner index per partition.
#[derive(Debug)]
struct Table {
    /// Indices into `Ring::members` of the eligible members, sorted by id.
    eligible: Vec<usize>,
    seeds: Vec<u64>,
    /// Position in `eligible` of each partition's owner.
    owner: Vec<u16>,
}

impl Table {
    fn build(eligible: Vec<usize>, ids: &[&str], settings: &RingSettings) -> Table {
        let parts = 1u32 << settings.partition_exponent;
        let n = eligible.len();
        let seeds: Vec<u64> = ids.iter().map(|id| seed(id)).collect();
        if n == 0 {
            return Table { eligible, seeds, owner: Vec::new() };
        }
        // phase 1: rendezvous, member-major so the inner loop streams
        // through two arrays (ties go to the lower index, i.e. smaller id)
        let mut owner = vec![0u16; parts as usize];
        let mut best_w: Vec<u64> = (0..parts).map(|p| weight(seeds[0], p)).collect();
        for (i, s) in seeds.iter().enumerate().skip(1) {
            for (p, (bw, o)) in best_w.iter_mut().zip(owner.iter_mut()).enumerate() {
                let w = weight(*s, p as u32);
                if w > *bw {
                    *bw = w;
                    *o = i as u16;
                }
            }
        }
        let mut load = vec![0usize; n];
        for o in &owner {
            load[*o as usize] += 1;
        }
        // phase 2: bounded loads
        let cap = ((1.0 + settings.load_epsilon.max(0.0)) * f64::from(parts) / n as f64).ceil() as usize;
        let cap = cap.max((parts as usize).div_ceil(n));
        let mut homeless: Vec<u32> = Vec::new();
        for (m, l) in load.iter_mut().enumerate() {
            if *l <= cap {
                continue;
            }
            let mut mine: Vec<u32> = (0..parts).filter(|p| owner[*p as usize] as usize == m).collect();
            // lowest weight first; ties by partition
            mine.sort_by_key(|p| (best_w[*p as usize], *p));
            homeless.extend_from_slice(&mine[..*l - cap]);
            *l = cap;
        }
        homeless.sort_unstable();
        for p in homeless {
            let mut ranked: Vec<(u64, usize)> = seeds.iter().enumerate().map(|(i, s)| (weight(*s, p), i)).collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let (_, to) = *ranked.iter().find(|(_, i)| load[*i] < cap).expect("n·cap ≥ P leaves room");
            owner[p as usize] = to as u16;
            load[to] += 1;
        }
        Table { eligible, seeds, owner }
    }
}

#[derive(Debug)]
struct Inner {
    epoch: RingEpoch,
    members: Vec<Member>,
    settings: RingSettings,
    /// Tables built so far, by (group, hardware type); a handful at most,
    /// so a linear search that allocates nothing.
    tables: Mutex<Vec<(String, String, Arc<Table>)>>,
}

/// The immutable placement for one membership snapshot. Cheap to clone;
/// the table of each (group, hardware type) is built on first use and
/// shared by all clones.
#[derive(Clone, Debug)]
pub struct Ring {
    inner: Arc<Inner>,
}

impl Ring {
    pub fn new(epoch: RingEpoch, mut members: Vec<Member>, settings: RingSettings) -> Ring {
        members.sort_by(|a, b| a.id.cmp(&b.id));
        members.dedup_by(|a, b| a.id == b.id);
        Ring { inner: Arc::new(Inner { epoch, members, settings, tables: Mutex::new(Vec::new()) }) }
    }

    pub fn empty(settings: RingSettings) -> Ring {
        Ring::new(0, Vec::new(), settings)
    }

    pub fn epoch(&self) -> RingEpoch {
        self.inner.epoch
    }

    /// All members, draining ones included, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.inner.members
    }

    pub fn member(&self, id: &ConductorId) -> Option<&Member> {
        self.inner.members.binary_search_by(|m| m.id.cmp(id)).ok().map(|i| &self.inner.members[i])
    }

    pub fn settings(&self) -> &RingSettings {
        &self.inner.settings
    }

    pub fn partitions(&self) -> u32 {
        1 << self.inner.settings.partition_exponent
    }

    fn table(&self, group: &str, hw: &str) -> Arc<Table> {
        let mut tables = self.inner.tables.lock().expect("ring table cache poisoned");
        if let Some((_, _, t)) = tables.iter().find(|(g, h, _)| g == group && h == hw) {
            return t.clone();
        }
        let eligible: Vec<usize> = self
            .inner
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.state == MemberState::Active && m.conductor_group == group && m.hardware_types.iter().any(|h| h == hw)
            })
            .map(|(i, _)| i)
            .collect();
        let ids: Vec<&str> = eligible.iter().map(|i| self.inner.members[*i].id.as_str()).collect();
        let t = Arc::new(Table::build(eligible, &ids, &self.inner.settings));
        tables.push((group.to_string(), hw.to_string(), t.clone()));
        t
    }

    pub fn owner_of_partition(&self, partition: u32, group: &str, hw: &str) -> Option<&Member> {
        let t = self.table(group, hw);
        let pos = *t.owner.get(partition as usize)? as usize;
        Some(&self.inner.members[t.eligible[pos]])
    }

    /// The conductor that owns a node.
    pub fn owner(&self, node_uuid: &[u8; 16], group: &str, hw: &str) -> Option<&Member> {
        self.owner_of_partition(partition_of(node_uuid, self.inner.settings.partition_exponent), group, hw)
    }

    /// The warm replicas of a node: the next members by weight after the owner.
    pub fn replicas(&self, node_uuid: &[u8; 16], group: &str, hw: &str) -> Vec<&Member> {
        let p = partition_of(node_uuid, self.inner.settings.partition_exponent);
        let t = self.table(group, hw);
        let Some(owner) = t.owner.get(p as usize).map(|o| *o as usize) else {
            return Vec::new();
        };
        let mut ranked: Vec<(u64, usize)> = t.seeds.iter().enumerate().map(|(i, s)| (weight(*s, p), i)).collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked
            .into_iter()
            .filter(|(_, i)| *i != owner)
            .take(self.inner.settings.replicas)
            .map(|(_, i)| &self.inner.members[t.eligible[i]])
            .collect()
    }

    /// Whether an active member serves this (group, hardware type).
    pub fn serves(&self, group: &str, hw: &str) -> bool {
        self.inner.members.iter().any(|m| {
            m.state == MemberState::Active && m.conductor_group == group && m.hardware_types.iter().any(|h| h == hw)
        })
    }

    /// The partitions a member owns for (group, hardware type).
    pub fn partitions_of(&self, member_id: &ConductorId, group: &str, hw: &str) -> Vec<u32> {
        let t = self.table(group, hw);
        let Some(pos) = t.eligible.iter().position(|i| self.inner.members[*i].id == *member_id) else {
            return Vec::new();
        };
        t.owner.iter().enumerate().filter(|(_, o)| **o as usize == pos).map(|(p, _)| p as u32).collect()
    }

    /// The conductor that processes work keyed by `key` that belongs to no
    /// node (an allocation that names none): rendezvous hashing over every
    /// active member, of any group — so any live conductor may get it, and
    /// when its conductor leaves only its keys move, each to the member
    /// that ranks next (its take-over is the new owner's pass finding it).
    pub fn any_owner(&self, key: &[u8; 16]) -> Option<&Member> {
        let point = partition_of(key, 32);
        self.inner
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .max_by_key(|m| (weight(seed(m.id.as_str()), point), std::cmp::Reverse(m.id.clone())))
    }

    /// (group, hardware type) pairs some member serves.
    pub fn served(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .inner
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .flat_map(|m| m.hardware_types.iter().map(|h| (m.conductor_group.clone(), h.clone())))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Partitions whose owner differs between two rings for (group, hardware
/// type): (partition, old owner id, new owner id).
pub fn diff(old: &Ring, new: &Ring, group: &str, hw: &str) -> Vec<(u32, Option<ConductorId>, Option<ConductorId>)> {
    assert_eq!(old.partitions(), new.partitions(), "rings with different partition counts cannot be compared");
    (0..old.partitions())
        .filter_map(|p| {
            let a = old.owner_of_partition(p, group, hw).map(|m| m.id.clone());
            let b = new.owner_of_partition(p, group, hw).map(|m| m.id.clone());
            (a != b).then_some((p, a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn settings_round_trip_through_member_records() {
        let s = RingSettings { partition_exponent: 12, load_epsilon: 0.05, replicas: 1 };
        assert_eq!(RingSettings::from_fingerprint(&s.fingerprint()), Some(s));
        assert_eq!(RingSettings::from_fingerprint(""), None);
        assert_eq!(RingSettings::from_fingerprint("partition_exponent=12"), None);
    }

    #[test]
    fn work_of_no_node_goes_to_any_active_member_and_moves_only_with_it() {
        let mut all = members(4);
        all[3].conductor_group = "rack2".into();
        all[3].hardware_types = vec!["redfish".into()];
        let ring = Ring::new(1, all.clone(), RingSettings::default());
        let keys = uuids(2000, 7);
        let owner = |r: &Ring, k: &[u8; 16]| r.any_owner(k).map(|m| m.id.to_string());
        let before: Vec<Option<String>> = keys.iter().map(|k| owner(&ring, k)).collect();
        // every member gets a share, whatever its group or hardware types
        for m in &all {
            let n = before.iter().filter(|o| o.as_deref() == Some(m.id.as_str())).count();
            assert!(n > 300, "{} got {n} of 2000", m.id);
        }
        // the same members give the same answer in every process
        let again = Ring::new(9, all.iter().rev().cloned().collect(), RingSettings::default());
        assert!(keys.iter().zip(&before).all(|(k, o)| owner(&again, k) == *o));
        // a member that drains or leaves takes only its own keys with it
        let mut draining = all.clone();
        draining[1].state = MemberState::Draining;
        let ring2 = Ring::new(2, draining, RingSettings::default());
        for (k, o) in keys.iter().zip(&before) {
            let now = owner(&ring2, k);
            if o.as_deref() == Some(all[1].id.as_str()) {
                assert!(now.is_some() && now != *o);
            } else {
                assert_eq!(now, *o, "a key moved though its member stayed");
            }
        }
        assert_eq!(Ring::new(3, Vec::new(), RingSettings::default()).any_owner(&keys[0]), None);
    }

    pub fn member(id: &str, group: &str, hw: &[&str]) -> Member {
        Member {
            id: id.into(),
            incarnation: format!("{id}/1").into(),
            grpc_url: String::new(),
            http_url: String::new(),
            conductor_group: group.into(),
            hardware_types: hw.iter().map(|s| s.to_string()).collect(),
            state: MemberState::Active,
            ring_settings: String::new(),
            database_id: String::new(),
        }
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n).map(|i| member(&format!("conductor-{i:03}"), "", &["fake-hardware"])).collect()
    }

    /// Deterministic pseudo-random node UUIDs (SplitMix64 stream).
    fn uuids(n: usize, seed: u64) -> Vec<[u8; 16]> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let mut b = [0u8; 16];
                for half in b.chunks_mut(8) {
                    s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    half.copy_from_slice(&mix(s).to_le_bytes());
                }
                b
            })
            .collect()
    }

    fn owners(ring: &Ring, nodes: &[[u8; 16]]) -> Vec<Option<String>> {
        nodes.iter().map(|u| ring.owner(u, "", "fake-hardware").map(|m| m.id.to_string())).collect()
    }

    fn checksum(ring: &Ring) -> u64 {
        let mut h = Sha256::new();
        for p in 0..ring.partitions() {
            h.update(ring.owner_of_partition(p, "", "fake-hardware").unwrap().id.as_str().as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    #[test]
    fn golden_placement() {
        // A change of algorithm or hash changes this value; every process
        // of a cluster must agree on it, so such a change is a protocol
        // change (rolling upgrades would split ownership).
        let ring = Ring::new(1, members(5), RingSettings::default());
        assert_eq!(checksum(&ring), GOLDEN, "placement changed: {:#x}", checksum(&ring));
        assert_eq!(partition_of(&[0u8; 16], 16), PARTITION_OF_NIL);
    }
    const GOLDEN: u64 = 0x4dd4_b37f_e4c3_9343;
    const PARTITION_OF_NIL: u32 = 14151;

    fn moved(a: &[Option<String>], b: &[Option<String>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn removal_and_addition_move_little() {
        let nodes = uuids(100_000, 7);
        for n in [3usize, 10, 100] {
            let all = members(n + 1);
            let base = Ring::new(1, all[..n].to_vec(), RingSettings::default());
            let before = owners(&base, &nodes);
            // remove one
            let removed = &all[n / 2].id;
            let fewer: Vec<Member> = all[..n].iter().filter(|m| &m.id != removed).cloned().collect();
            let after = owners(&Ring::new(2, fewer, RingSettings::default()), &nodes);
            let frac = moved(&before, &after) as f64 / nodes.len() as f64;
            println!("n={n}: removing one moved {frac:.4} of the nodes (x{:.3} of 1/N)", frac * n as f64);
            assert!(frac <= 1.2 / n as f64, "n={n}: removing one moved {frac:.4} > {:.4}", 1.2 / n as f64);
            // only the removed member's nodes plus spill move
            let foreign =
                before.iter().zip(&after).filter(|(b, a)| b != a && b.as_deref() != Some(removed.as_str())).count();
            assert!(
                foreign as f64 <= 0.2 / n as f64 * nodes.len() as f64,
                "n={n}: {foreign} nodes of other members moved"
            );
            // add one
            let after = owners(&Ring::new(3, all.clone(), RingSettings::default()), &nodes);
            let frac = moved(&before, &after) as f64 / nodes.len() as f64;
            println!("n={n}: adding one moved {frac:.4} of the nodes (x{:.3} of 1/(N+1))", frac * (n + 1) as f64);
            assert!(frac <= 1.2 / (n + 1) as f64, "n={n}: adding one moved {frac:.4} > {:.4}", 1.2 / (n + 1) as f64);
        }
    }

    #[test]
    fn balance_at_100_conductors_and_100k_nodes() {
        let ring = Ring::new(1, members(100), RingSettings::default());
        let mut count: HashMap<String, usize> = HashMap::new();
        for u in uuids(100_000, 11) {
            *count.entry(ring.owner(&u, "", "fake-hardware").unwrap().id.to_string()).or_default() += 1;
        }
        assert_eq!(count.len(), 100, "every conductor owns nodes");
        let max = *count.values().max().unwrap() as f64;
        let ratio = max / (100_000.0 / 100.0);
        println!("N=100, 100k nodes: max/mean = {ratio:.4}");
        assert!(ratio <= 1.10, "max/mean = {ratio:.3}");
        let cap = ((1.02f64 * 65536.0 / 100.0).ceil()) as usize;
        for m in ring.members() {
            assert!(ring.partitions_of(&m.id, "", "fake-hardware").len() <= cap);
        }
    }

    #[test]
    fn groups_hardware_types_and_states() {
        let mut ms = vec![
            member("a", "", &["fake-hardware"]),
            member("b", "", &["fake-hardware", "redfish"]),
            member("c", "rack2", &["fake-hardware"]),
            member("d", "rack2", &["redfish"]),
        ];
        ms.push(Member { state: MemberState::Draining, ..member("e", "", &["fake-hardware", "redfish"]) });
        let ring = Ring::new(1, ms, RingSettings::default());
        for u in uuids(2000, 3) {
            let o = ring.owner(&u, "", "fake-hardware").unwrap();
            assert!(o.id == "a" || o.id == "b");
            assert_eq!(ring.owner(&u, "", "redfish").unwrap().id, "b");
            assert_eq!(ring.owner(&u, "rack2", "fake-hardware").unwrap().id, "c");
            assert_eq!(ring.owner(&u, "rack2", "redfish").unwrap().id, "d");
            assert!(ring.owner(&u, "rack3", "fake-hardware").is_none());
            assert!(ring.owner(&u, "", "ilo").is_none());
        }
        assert!(ring.serves("rack2", "redfish"));
        assert!(!ring.serves("", "ilo"));
        assert!(ring.partitions_of(&"e".into(), "", "fake-hardware").is_empty(), "draining members own nothing");
        assert!(Ring::empty(RingSettings::default()).owner(&[1; 16], "", "fake-hardware").is_none());
        let total: usize = ["a", "b"].iter().map(|m| ring.partitions_of(&(*m).into(), "", "fake-hardware").len()).sum();
        assert_eq!(total, 65536);
    }

    #[test]
    fn replicas_are_distinct_and_exclude_the_owner() {
        let s = RingSettings { replicas: 2, ..RingSettings::default() };
        let ring = Ring::new(1, members(5), s);
        for u in uuids(500, 5) {
            let owner = ring.owner(&u, "", "fake-hardware").unwrap().id.clone();
            let reps: Vec<String> = ring.replicas(&u, "", "fake-hardware").iter().map(|m| m.id.to_string()).collect();
            assert_eq!(reps.len(), 2);
            assert!(!reps.contains(&owner.to_string()));
            assert_ne!(reps[0], reps[1]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn placement_ignores_member_order(n in 1usize..12, shuffle in any::<u64>()) {
            let settings = RingSettings { partition_exponent: 10, ..RingSettings::default() };
            let ms = members(n);
            let mut shuffled = ms.clone();
            let mut s = shuffle;
            for i in (1..shuffled.len()).rev() {
                s = mix(s.wrapping_add(i as u64));
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let a = Ring::new(1, ms, settings.clone());
            let b = Ring::new(9, shuffled, settings);
            prop_assert!(diff(&a, &b, "", "fake-hardware").is_empty());
        }

        #[test]
        fn every_partition_has_an_eligible_owner_within_cap(n in 1usize..20, eps in 0.0f64..0.3) {
            let settings = RingSettings { partition_exponent: 10, load_epsilon: eps, replicas: 0 };
            let ring = Ring::new(1, members(n), settings);
            let cap = ((1.0 + eps) * 1024.0 / n as f64).ceil() as usize;
            let mut total = 0;
            for m in ring.members() {
                let k = ring.partitions_of(&m.id, "", "fake-hardware").len();
                prop_assert!(k <= cap.max(1024usize.div_ceil(n)));
                total += k;
            }
            prop_assert_eq!(total, 1024);
        }
    }
}
