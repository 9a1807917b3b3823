//! The write clock: lets a reader in this process know, without asking the
//! database, that nothing was written through this [`super::Db`] since an
//! earlier read — so an answer built from that read is still exactly what
//! a direct read would return *if this process is the database's only
//! writer* (all-in-one, which holds the database's claim; see
//! `api-server/src/node_cache.rs`).
//!
//! Every statement that can write goes through [`WriteClock::start`]: the
//! returned ticket counts the write as in flight until it is dropped (after
//! its commit or rollback), and its drop advances the generation before it
//! stops counting. A reader takes a [`WriteClock::stamp`] before it reads
//! and keeps its result only if the stamp is unchanged afterwards
//! ([`WriteClock::still`]); a stamp exists only while no write is in
//! flight.
//!
//! Why that is exact: say an answer was built by a read that took stamp
//! `g` (at time r) and is served at time t because the clock still reads
//! `g` with no write in flight. Any write committed before t was counted in
//! flight before its commit and is no longer in flight at t, so its
//! generation bump happened before t; the generation is monotonic and reads
//! `g` at r and at t, so that bump happened before r — and the write's
//! commit before it, so before the read. Writes are ordered by sequentially
//! consistent atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

#[derive(Debug, Default)]
struct Clock {
    in_flight: AtomicU64,
    generation: AtomicU64,
    /// Set by the process that claimed the database for itself alone.
    sole_writer: AtomicBool,
}

/// Shared by every clone of one `Db`.
#[derive(Debug, Clone, Default)]
pub struct WriteClock(Arc<Clock>);

/// A write in flight; dropping it (after commit or rollback, or on an
/// error) advances the generation.
#[must_use = "a write is counted in flight until its ticket is dropped"]
pub struct WriteTicket(Arc<Clock>);

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.0.generation.fetch_add(1, SeqCst);
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

/// The clock's reading when no write was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteStamp(u64);

impl WriteClock {
    pub fn start(&self) -> WriteTicket {
        self.0.in_flight.fetch_add(1, SeqCst);
        WriteTicket(self.0.clone())
    }

    /// `None` while a write is in flight (nothing read now may be kept).
    pub fn stamp(&self) -> Option<WriteStamp> {
        if self.0.in_flight.load(SeqCst) != 0 {
            return None;
        }
        Some(WriteStamp(self.0.generation.load(SeqCst)))
    }

    /// Declares that every write to the database goes through this `Db`
    /// (ferric all-in-one, once it holds the database's claim).
    pub fn declare_sole_writer(&self) {
        self.0.sole_writer.store(true, SeqCst);
    }

    pub fn is_sole_writer(&self) -> bool {
        self.0.sole_writer.load(SeqCst)
    }

    /// Whether nothing was written since `stamp` was taken.
    pub fn still(&self, stamp: WriteStamp) -> bool {
        self.stamp() == Some(stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_in_flight_or_done_invalidates_a_stamp() {
        let clock = WriteClock::default();
        let s = clock.stamp().expect("no write in flight");
        assert!(clock.still(s));
        let w = clock.start();
        assert_eq!(clock.stamp(), None, "no stamp while a write is in flight");
        assert!(!clock.still(s));
        drop(w);
        assert!(!clock.still(s), "a finished write moved the generation");
        let s2 = clock.stamp().expect("no write in flight");
        assert_ne!(s, s2);
        assert!(clock.still(s2));
    }

    #[test]
    fn concurrent_writers_leave_no_stamp_until_all_are_done() {
        let clock = WriteClock::default();
        let a = clock.start();
        let b = clock.start();
        drop(a);
        assert_eq!(clock.stamp(), None);
        drop(b);
        assert!(clock.stamp().is_some());
    }
}
