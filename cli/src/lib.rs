//! The `ferric` binary's library side: process wiring for each mode.
//!
//! `all-in-one` runs the API and one conductor in one process with SQLite
//! and in-process membership: the same code paths as a cluster, with the
//! gRPC hop over loopback.

use std::sync::Arc;

use anyhow::Context;
use ferric_common::config::Config;
use ferric_common::db::Db;
use ferric_common::membership::LocalMembership;
use ferric_common::ring::RingSettings;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub fn ring_settings(cfg: &Config) -> RingSettings {
    RingSettings {
        partition_exponent: cfg.membership.partition_exponent,
        load_epsilon: cfg.membership.load_epsilon,
        replicas: cfg.membership.replicas,
    }
}

/// Run API + conductor until `shutdown` is cancelled, then stop both:
/// the API stops taking requests, running operations stop at a step
/// boundary (and resume at the next start).
pub async fn run_all_in_one(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if cfg.membership.backend != "local" {
        anyhow::bail!(
            "all-in-one uses in-process membership; membership.backend must be \"local\""
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let url = cfg.database_url();
    let db = Db::connect(&url, cfg.database.max_connections)
        .await
        .with_context(|| format!("opening database {url}"))?;
    let membership = Arc::new(LocalMembership::new(ring_settings(&cfg)));
    let conductor = ferric_conductor::start(
        cfg.clone(),
        db.clone(),
        membership.clone(),
        shutdown.clone(),
    )
    .await?;
    let api = ferric_api::serve(
        cfg.clone(),
        db.clone(),
        membership.subscribe(),
        shutdown.clone(),
    )
    .await?;
    info!(
        api = %format!("http://{}", api.addr),
        conductor = %conductor.inner.id,
        database = %redact(&url),
        "ferric all-in-one ready"
    );
    println!(
        "Ferric all-in-one: Ironic API on http://{0}\n  try: baremetal --os-auth-type none --os-endpoint http://{0} driver list",
        api.addr
    );
    shutdown.cancelled().await;
    info!("shutting down");
    let _ = api.join.await;
    conductor.wait().await;
    db.close().await;
    Ok(())
}

/// A database URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Cancel `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.sqlite"), "sqlite://x.sqlite");
    }
}
