//! Conductor membership: who is in the ring, published to every interested
//! task as a `watch::Receiver<Ring>`. Code that needs a node's owner reads
//! the current ring from the receiver; it never keeps a copy of its own.
//!
//! Backends: [`LocalMembership`] (in-process, for all-in-one: one process,
//! no etcd) and the etcd backend (leases + a prefix watch), with the same
//! interface.

pub mod etcd;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::ids::{ConductorId, Incarnation};
use crate::ring::{Member, MemberState, Ring, RingSettings};

/// The membership backend a process uses.
#[derive(Clone)]
pub enum Membership {
    Local(Arc<LocalMembership>),
    Etcd(Arc<etcd::EtcdMembership>),
}

impl Membership {
    pub fn subscribe(&self) -> watch::Receiver<Ring> {
        match self {
            Membership::Local(m) => m.subscribe(),
            Membership::Etcd(m) => m.subscribe(),
        }
    }

    pub fn current(&self) -> Ring {
        match self {
            Membership::Local(m) => m.current(),
            Membership::Etcd(m) => m.current(),
        }
    }

    /// Which cluster this membership is (`identity::check_membership`).
    pub fn identity(&self) -> crate::identity::ClusterIdentity {
        match self {
            Membership::Local(_) => crate::identity::ClusterIdentity::Local,
            Membership::Etcd(m) => crate::identity::ClusterIdentity::Etcd {
                cluster_id: m.cluster_id().to_string(),
                prefix: etcd::PREFIX.to_string(),
            },
        }
    }

    /// Register a conductor (under a lease of `ttl_secs` in etcd). For etcd,
    /// returns until when the lease is surely valid (updated on every
    /// renewal); in-process membership never expires.
    pub async fn join(
        &self,
        member: Member,
        ttl_secs: u64,
    ) -> Result<Option<watch::Receiver<tokio::time::Instant>>, etcd::EtcdError> {
        match self {
            Membership::Local(m) => {
                m.join(member);
                Ok(None)
            }
            Membership::Etcd(m) => m.register(member, ttl_secs as i64).await.map(Some),
        }
    }

    /// Whether `incarnation` is alive, asked of the source of truth rather
    /// than of the local ring (which a stalled watch or a reconnect can
    /// leave behind): in etcd a linearizable read of its member key (the
    /// key lives exactly as long as its lease); in-process, the membership
    /// itself. A lock is cleared only when its holder is confirmed dead.
    pub async fn is_alive(&self, incarnation: &Incarnation) -> Result<bool, etcd::EtcdError> {
        match self {
            Membership::Local(m) => {
                Ok(m.current().member(&incarnation.conductor()).is_some_and(|x| x.incarnation == *incarnation))
            }
            Membership::Etcd(m) => m.is_alive(incarnation).await,
        }
    }

    /// Whether the ring this process holds is known to be current: etcd
    /// confirmed it (an event, a progress notification, a snapshot) within
    /// the watch's stall timeout. In-process membership is always current.
    pub fn ring_is_fresh(&self) -> bool {
        match self {
            Membership::Local(_) => true,
            Membership::Etcd(m) => m.confirmed_at().elapsed() < m.watch_settings().stall_after,
        }
    }

    /// Asks the source of truth whether `ring`'s members are the current
    /// ones: the revision they are current at, or `None` (`ring` is behind).
    pub async fn confirm(&self, ring: &Ring) -> Result<Option<u64>, etcd::EtcdError> {
        match self {
            Membership::Local(m) => Ok((m.current().members() == ring.members()).then_some(m.current().epoch())),
            Membership::Etcd(m) => m.confirm(ring).await,
        }
    }

    /// Publishes whether this conductor reaches the database, for the
    /// others (in-process membership has no others).
    pub async fn report_database(&self, reaches: bool) -> Result<(), etcd::EtcdError> {
        match self {
            Membership::Local(_) => Ok(()),
            Membership::Etcd(m) => m.report_database(reaches).await,
        }
    }

    /// The live conductors other than `me` that say they reach the
    /// database.
    pub async fn others_reaching_database(&self, me: &ConductorId) -> Result<Vec<ConductorId>, etcd::EtcdError> {
        match self {
            Membership::Local(_) => Ok(Vec::new()),
            Membership::Etcd(m) => m.others_reaching_database(me).await,
        }
    }

    /// The members as the source of truth has them now, whatever this
    /// process's ring says: in etcd a linearizable read of the prefix
    /// (every registration etcd acknowledged before it is in it).
    pub async fn members_now(&self) -> Result<Vec<Member>, etcd::EtcdError> {
        match self {
            Membership::Local(m) => Ok(m.current().members().to_vec()),
            Membership::Etcd(m) => m.members_now().await,
        }
    }

    /// Stop renewing our registration without revoking it (fencing).
    pub async fn abandon(&self) {
        if let Membership::Etcd(m) = self {
            m.abandon().await;
        }
    }

    pub async fn set_state(&self, id: &ConductorId, state: MemberState) -> Result<(), etcd::EtcdError> {
        match self {
            Membership::Local(m) => {
                m.set_state(id, state);
                Ok(())
            }
            Membership::Etcd(m) => m.set_state(state).await,
        }
    }

    /// Leave the ring now (the conductor has stopped acting on nodes).
    pub async fn leave(&self, id: &ConductorId, incarnation: &Incarnation) -> Result<(), etcd::EtcdError> {
        match self {
            Membership::Local(m) => {
                if m.current().member(id).is_some_and(|x| x.incarnation == *incarnation) {
                    m.leave(id);
                }
                Ok(())
            }
            Membership::Etcd(m) => m.leave().await,
        }
    }
}

/// In-process membership. Every change bumps the epoch by one, exactly as
/// an etcd revision would.
pub struct LocalMembership {
    settings: RingSettings,
    state: Mutex<(u64, BTreeMap<ConductorId, Member>)>,
    tx: watch::Sender<Ring>,
}

impl LocalMembership {
    pub fn new(settings: RingSettings) -> LocalMembership {
        let (tx, _) = watch::channel(Ring::empty(settings.clone()));
        LocalMembership { settings, state: Mutex::new((0, BTreeMap::new())), tx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Ring> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Ring {
        self.tx.borrow().clone()
    }

    fn publish(&self, f: impl FnOnce(&mut BTreeMap<ConductorId, Member>)) {
        let mut st = self.state.lock().expect("membership lock poisoned");
        f(&mut st.1);
        st.0 += 1;
        let ring = Ring::new(st.0, st.1.values().cloned().collect(), self.settings.clone());
        self.tx.send_replace(ring);
    }

    /// Add or replace a member (a restart replaces the old incarnation).
    pub fn join(&self, member: Member) {
        self.publish(|m| {
            m.insert(member.id.clone(), member);
        });
    }

    pub fn set_state(&self, id: &ConductorId, state: MemberState) {
        self.publish(|m| {
            if let Some(member) = m.get_mut(id) {
                member.state = state;
            }
        });
    }

    pub fn leave(&self, id: &ConductorId) {
        self.publish(|m| {
            m.remove(id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            incarnation: format!("{id}-1").into(),
            grpc_url: "http://127.0.0.1:1".into(),
            http_url: String::new(),
            conductor_group: String::new(),
            hardware_types: vec!["fake-hardware".into()],
            state: MemberState::Active,
            ring_settings: String::new(),
            database_id: String::new(),
        }
    }

    #[tokio::test]
    async fn every_change_is_a_new_epoch_seen_by_watchers() {
        let m = LocalMembership::new(RingSettings::default());
        let mut rx = m.subscribe();
        assert_eq!(rx.borrow().epoch(), 0);
        m.join(member("a"));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().epoch(), 1);
        assert!(rx.borrow().serves("", "fake-hardware"));
        m.set_state(&"a".into(), MemberState::Draining);
        rx.changed().await.unwrap();
        assert!(!rx.borrow().serves("", "fake-hardware"));
        m.leave(&"a".into());
        assert_eq!(m.current().epoch(), 3);
        assert!(m.current().members().is_empty());
    }
}
