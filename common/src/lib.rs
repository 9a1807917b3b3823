//! Ferric's shared core.
//!
//! Layout: [`ids`] (conductor ids, incarnations and lock holders as
//! distinct types), [`model`] (nodes, ports), [`states`] (the provision state
//! machine, pure), [`db`] (SQLite + PostgreSQL, one set of queries),
//! [`ring`] (pure placement of nodes on conductors), [`partitions`] (the
//! stored partition of every node, kept to the recorded exponent), [`membership`] (who is
//! in the ring, as a `watch::Receiver<Ring>`), [`identity`] (which cluster a
//! database belongs to), [`config`], [`metrics`] (every metric name), [`telemetry`] (logs,
//! traces, W3C trace context), [`rpc`] (typed errors across gRPC, and the
//! one gRPC channel builder), [`tls`] (TLS for listeners and the gRPC hop,
//! certificates reloaded on change), [`secrets`] (config secrets that do
//! not print, masking of node secrets) and [`proto`] (the generated
//! API↔conductor contract).
//!
//! The invariant a newcomer must not break: a node is acted on only by the
//! conductor that owns it at the current ring epoch, and only while it
//! holds the node's lock (`reservation` = its incarnation). Every write a
//! conductor makes under a lock is conditional on still holding it.

pub mod config;
pub mod db;
pub mod identity;
pub mod ids;
pub mod logonce;
pub mod membership;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod partitions;
pub mod ring;
pub mod rpc;
pub mod secrets;
pub mod states;
pub mod telemetry;
pub mod tls;

/// The gRPC contract (`proto/ferric/v1/conductor.proto`).
pub mod proto {
    tonic::include_proto!("ferric.v1");
}
