//! Identities that must never be swapped for one another, as distinct
//! types (chitchat's `ChitchatId` is the model):
//!
//! * [`ConductorId`]: a conductor's stable name (host name, pod name). It
//!   owns nodes on the ring and is recorded as a node's
//!   `conductor_affinity` (whose HTTP root holds its boot artefacts).
//! * [`Incarnation`]: one start of a conductor (`<id>/<uuid>`), new on every
//!   start and after fencing. Liveness is per incarnation: a restarted
//!   conductor is a new one and never inherits what the old one held.
//! * [`LockHolder`]: what a node's `reservation` column holds — the
//!   incarnation that took the lock. A lock is cleared only once its
//!   holder's incarnation is confirmed dead.
//!
//! All three serialise as plain strings, so the database, etcd records and
//! the REST API see exactly what they saw before.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// As the plain string (quoted), so logs and messages read as before.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id! {
    /// A conductor's stable name (`conductor.id`: the host or pod name).
    ConductorId
}

string_id! {
    /// One start of a conductor: `<conductor id>/<random uuid>`.
    Incarnation
}

string_id! {
    /// The holder of a node lock, as stored in `nodes.reservation`: the
    /// incarnation that took it.
    LockHolder
}

impl Incarnation {
    /// A fresh incarnation of `id`.
    pub fn start(id: &ConductorId) -> Incarnation {
        Incarnation(format!("{id}/{}", uuid::Uuid::new_v4()))
    }

    /// The conductor this is an incarnation of (the part before the last
    /// `/`; conductor ids never contain one).
    pub fn conductor(&self) -> ConductorId {
        ConductorId(self.0.rsplit_once('/').map(|(id, _)| id).unwrap_or(&self.0).to_string())
    }
}

impl LockHolder {
    /// The lock holder that is this incarnation.
    pub fn of(incarnation: &Incarnation) -> LockHolder {
        LockHolder(incarnation.0.clone())
    }

    /// The incarnation holding the lock.
    pub fn incarnation(&self) -> Incarnation {
        Incarnation(self.0.clone())
    }

    pub fn is(&self, incarnation: &Incarnation) -> bool {
        self.0 == incarnation.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incarnation_names_its_conductor_and_holds_locks_as_itself() {
        let id = ConductorId::new("conductor-0");
        let a = Incarnation::start(&id);
        let b = Incarnation::start(&id);
        assert_ne!(a, b, "every start is a new incarnation");
        assert_eq!(a.conductor(), id);
        let holder = LockHolder::of(&a);
        assert!(holder.is(&a) && !holder.is(&b));
        assert_eq!(holder.incarnation(), a);
        // what the database and etcd see is the plain string
        assert_eq!(serde_json::to_string(&holder).unwrap(), format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<ConductorId>("\"c1\"").unwrap(), "c1");
    }
}
