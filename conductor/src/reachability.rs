//! Whether this conductor reaches the database — and what it does when it
//! does not while the others do.
//!
//! A conductor that reaches etcd but not the database keeps its lease and
//! stays in the ring, so its nodes stay its own while every request for
//! them fails and every operation on them stands still: a partition of
//! one conductor from the database strands its share of the fleet. It
//! cannot tell that from an outage of the database itself, which every
//! conductor sees — and there leaving the ring would empty it and strand
//! everything. So every conductor says in etcd, on its own lease, whether
//! it reaches the database (`/ferric/dbhealth/<id>`, written when that
//! changes), and one that has not reached it for
//! `conductor.database_unreachable_fence_secs` while another live
//! conductor says it does **fences itself**: its lease runs out, the ring
//! gives its nodes to the others, who clear its locks and resume its
//! operations. It starts a new incarnation once the database answers
//! again. When nobody reaches the database, everybody stays.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::Inner;

/// How long one check of the database may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks the database every `database.health_check_interval_ms` until the
/// incarnation stops or fences.
pub async fn watch(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.database.health_check_interval_ms.max(100));
    let bound = Duration::from_secs(inner.cfg.conductor.database_unreachable_fence_secs);
    let mut reported: Option<bool> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = inner.fence.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let ok = inner.db.ping(PING_TIMEOUT.min(every)).await;
        let reaches = ok.is_ok();
        if reported != Some(reaches) {
            match inner.membership.report_database(reaches).await {
                Ok(()) => reported = Some(reaches),
                Err(e) => warn!("telling the others whether I reach the database: {e}"),
            }
        }
        let Err(why) = ok else {
            if failing_since.take().is_some() {
                info!("the database answers again");
            }
            metrics::gauge!(ferric_common::metrics::DATABASE_UNREACHABLE_SECONDS).set(0.0);
            continue;
        };
        let since = *failing_since.get_or_insert_with(|| {
            warn!("the database does not answer: {why}");
            Instant::now()
        });
        metrics::gauge!(ferric_common::metrics::DATABASE_UNREACHABLE_SECONDS).set(since.elapsed().as_secs_f64());
        if bound.is_zero() || since.elapsed() < bound {
            continue;
        }
        match inner.membership.others_reaching_database(&inner.id).await {
            Ok(others) if !others.is_empty() => {
                let names: Vec<&str> = others.iter().map(|o| o.as_str()).collect();
                inner.fence.fence(&format!(
                    "the database has not answered for {} s ({why}) while {} reach it: leaving the ring so that \
                     they take my nodes",
                    since.elapsed().as_secs(),
                    names.join(", ")
                ));
                return;
            }
            // nobody reaches it: an outage of the database, not of me;
            // leaving would empty the ring
            Ok(_) => {}
            Err(e) => warn!("asking whether the others reach the database: {e}"),
        }
    }
}
