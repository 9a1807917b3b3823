//! Rendered answers of the node reads (`GET /v1/nodes/{node}`,
//! `/v1/nodes`, `/v1/nodes/detail`), kept while they are exactly what a
//! direct read would return.
//!
//! Only a process that is its database's only writer keeps them: ferric
//! all-in-one, which holds the database's claim (no other all-in-one and no
//! cluster process may use the database while it runs). There every write
//! goes through the one [`Db`] the API reads with, and its write clock
//! ([`ferric_common::db::writes`]) tells whether anything was written since
//! an answer was rendered: an answer is kept only when no write was in
//! flight during its read and render, and served only while the clock
//! still reads the stamp taken before that read and the ring (which names
//! the node's conductor) is the same. Any write anywhere — a node, a port,
//! a setting — invalidates every answer: coarse, but exact without knowing
//! which rows an answer depends on, and free to check (two atomic loads).
//!
//! Separate API processes (a cluster) have writers elsewhere (the
//! conductors), so they keep nothing and every GET reads the database.
//!
//! An answer is shared only among callers who see everything the same way
//! (`noauth` and htpasswd users, [`Caller::Admin`]): a Keystone caller's
//! answer depends on its project and roles (lists filtered to what it owns
//! or leases, fields redacted for a lessee, 404 for a node it may not
//! read), so it is always rendered from the database and never kept.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ferric_common::db::Db;
use ferric_common::db::writes::WriteStamp;
use ferric_common::ring::RingEpoch;
use serde_json::Value;

use crate::auth::policy::Caller;
use crate::context::{AppState, Ctx};
use crate::error::ApiResult;

/// What one answer depends on besides the database and the ring: the
/// request's path and query as sent (the node as named, `fields=`, list
/// filters and paging), the negotiated version, and the base URL of its
/// links.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    pub uri: String,
    pub version: u32,
    pub base: String,
}

/// The database and ring as an answer saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    writes: WriteStamp,
    ring: RingEpoch,
}

pub struct NodeCache {
    answers: RwLock<Answers>,
    /// Bound on the bytes of the answers kept (`api.node_cache_bytes`);
    /// when full, the cache starts over.
    capacity: usize,
}

#[derive(Default)]
struct Answers {
    by_key: HashMap<AnswerKey, (Seen, Bytes)>,
    bytes: usize,
}

impl NodeCache {
    /// A cache for a process that is `db`'s only writer, or `None` (no
    /// cache) when it is not or `capacity` (bytes) is 0.
    pub fn for_sole_writer(db: &Db, capacity: usize) -> Option<NodeCache> {
        (db.writes().is_sole_writer() && capacity > 0)
            .then(|| NodeCache { answers: RwLock::new(Answers::default()), capacity })
    }

    /// The database and ring now, if an answer read now may be kept (no
    /// write in flight).
    pub fn seen_now(db: &Db, ring: RingEpoch) -> Option<Seen> {
        db.writes().stamp().map(|writes| Seen { writes, ring })
    }

    /// The kept answer for `key`, if nothing changed since it was read.
    pub fn get(&self, db: &Db, ring: RingEpoch, key: &AnswerKey) -> Option<Bytes> {
        let now = Self::seen_now(db, ring)?;
        let answers = self.answers.read().expect("node cache poisoned");
        match answers.by_key.get(key) {
            Some((seen, body)) if *seen == now => Some(body.clone()),
            _ => None,
        }
    }

    /// Keeps `body`, read after `seen` was taken, if nothing changed since.
    pub fn put(&self, db: &Db, ring: RingEpoch, seen: Seen, key: AnswerKey, body: Bytes) {
        if Self::seen_now(db, ring) != Some(seen) || body.len() > self.capacity {
            return;
        }
        let mut answers = self.answers.write().expect("node cache poisoned");
        if answers.bytes + body.len() > self.capacity {
            // answers read before a write are useless anyway
            answers.by_key.retain(|_, (s, _)| *s == seen);
            answers.bytes = answers.by_key.values().map(|(_, b)| b.len()).sum();
            if answers.bytes + body.len() > self.capacity {
                answers.by_key.clear();
                answers.bytes = 0;
            }
        }
        answers.bytes += body.len();
        if let Some((_, old)) = answers.by_key.insert(key, (seen, body)) {
            answers.bytes -= old.len();
        }
    }

    pub fn len(&self) -> usize {
        self.answers.read().expect("node cache poisoned").by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Answers `key` from `cache` if it holds a current answer, else renders it
/// with `render` (which reads the database and the ring) and keeps it if
/// nothing changed meanwhile.
pub async fn answer<F>(st: &AppState, ctx: &Ctx, key: AnswerKey, render: F) -> ApiResult<Response>
where
    F: Future<Output = ApiResult<Value>>,
{
    let (Some(cache), Caller::Admin) = (&st.node_cache, &ctx.caller) else {
        return render.await.map(|v| Json(v).into_response());
    };
    let epoch = st.fwd.ring().epoch();
    let body = match cache.get(&st.db, epoch, &key) {
        Some(body) => {
            metrics::counter!(ferric_common::metrics::API_NODE_CACHE_HITS_TOTAL).increment(1);
            body
        }
        None => {
            metrics::counter!(ferric_common::metrics::API_NODE_CACHE_MISSES_TOTAL).increment(1);
            // taken before the read: what the answer is valid for
            let seen = NodeCache::seen_now(&st.db, epoch);
            let body = Bytes::from(serde_json::to_vec(&render.await?).expect("a JSON value serialises"));
            if let Some(seen) = seen {
                cache.put(&st.db, epoch, seen, key, body.clone());
            }
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> AnswerKey {
        AnswerKey { uri: uri.into(), version: 115, base: "http://h".into() }
    }

    #[tokio::test]
    async fn only_a_sole_writer_keeps_answers_and_any_write_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("db").display()), 2).await.unwrap();
        assert!(NodeCache::for_sole_writer(&db, 1 << 20).is_none(), "a process with writers elsewhere keeps nothing");
        db.writes().declare_sole_writer();
        assert!(NodeCache::for_sole_writer(&db, 0).is_none(), "0 bytes = no cache");
        let cache = NodeCache::for_sole_writer(&db, 1 << 20).expect("a sole writer keeps answers");

        let seen = NodeCache::seen_now(&db, 1).expect("no write in flight");
        cache.put(&db, 1, seen, key("/v1/nodes/a"), Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/a")).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/b")), None);
        assert_eq!(cache.get(&db, 2, &key("/v1/nodes/a")), None, "another ring names other conductors");

        // a write of anything, through this Db, and the answer is gone
        db.cluster_setting_or_insert("node-cache-test", "x").await.unwrap();
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/a")), None);
        // an answer read before that write is not kept
        cache.put(&db, 1, seen, key("/v1/nodes/a"), Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/a")), None);
        // while a write is in flight nothing is served nor kept
        let seen = NodeCache::seen_now(&db, 1).unwrap();
        cache.put(&db, 1, seen, key("/v1/nodes/a"), Bytes::from_static(b"{\"a\":2}"));
        let ticket = db.writes().start();
        assert!(NodeCache::seen_now(&db, 1).is_none());
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/a")), None);
        drop(ticket);
        assert_eq!(cache.get(&db, 1, &key("/v1/nodes/a")), None, "the write moved the clock");
        db.close().await;
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("db").display()), 2).await.unwrap();
        db.writes().declare_sole_writer();
        let cache = NodeCache::for_sole_writer(&db, 100).unwrap();
        let seen = NodeCache::seen_now(&db, 1).unwrap();
        for i in 0..10 {
            cache.put(&db, 1, seen, key(&format!("/n/{i}")), Bytes::from(vec![b'x'; 30]));
            let bytes: usize = cache.answers.read().unwrap().by_key.values().map(|(_, b)| b.len()).sum();
            assert!(bytes <= 100, "{bytes} bytes kept");
            assert_eq!(bytes, cache.answers.read().unwrap().bytes);
        }
        cache.put(&db, 1, seen, key("/big"), Bytes::from(vec![b'x'; 101]));
        assert_eq!(cache.get(&db, 1, &key("/big")), None, "an answer larger than the cache is not kept");
        db.close().await;
    }
}
