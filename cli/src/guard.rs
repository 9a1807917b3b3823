//! Refusals at start that keep a mistaken process from breaking a cluster
//! (docs/operations.md): one process per data directory, one all-in-one
//! per database, the database's cluster identity, no SQLite in cluster
//! mode unless asked for.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferric_common::config::Config;
use ferric_common::db::{Backend, Db};
use ferric_common::identity::{self, LocalHolder};
use ferric_common::membership::Membership;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// An exclusive `flock` on `<data dir>/.ferric.lock`, held for the life of
/// the process (the kernel drops it when the process dies, however it dies).
pub struct DataDirLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

/// Locks the data dir for this process, or says who has it: a conductor's
/// image cache and HTTP root live there and assume one owner.
pub fn lock_data_dir(dir: &Path, mode: &str) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let path = dir.join(".ferric.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this function owns
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            anyhow::bail!(
                "the data dir {} is in use by {}: every conductor (and all-in-one) needs a --data-dir of its own, \
                 since its image cache and HTTP root live there",
                dir.display(),
                if holder.trim().is_empty() { "another ferric process".to_string() } else { holder.trim().to_string() }
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(
        file,
        "ferric {mode} (pid {}, started {})",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )?;
    file.flush()?;
    Ok(DataDirLock { _file: file, path })
}

/// Refuses a database that belongs to another cluster (or to an
/// all-in-one, for a cluster process), recording ours at its first start.
pub async fn check_cluster(db: &Db, membership: &Membership, database: &str) -> anyhow::Result<()> {
    identity::check_membership(db, &membership.identity(), database).await.map_err(anyhow::Error::msg)
}

/// A cluster process on SQLite works on a file only it sees.
pub fn refuse_sqlite_cluster(cfg: &Config, db: &Db, url: &str) -> anyhow::Result<()> {
    if db.backend() == Backend::Sqlite && !cfg.membership.allow_sqlite {
        anyhow::bail!(
            "this process joins a cluster (etcd) but its database is SQLite ({url}): every process of a cluster must \
             share one database — set --database-url postgres://... (a forgotten --database-url gives each process \
             its own SQLite file); membership.allow_sqlite = true allows a single-host lab on one shared SQLite file"
        );
    }
    Ok(())
}

/// How long an all-in-one's claim on its database lasts without renewal.
const LOCAL_CLAIM_TTL: Duration = Duration::from_secs(15);

/// The claim of an all-in-one on its database (see `identity::claim_local`),
/// renewed until `stop`, then released (await the handle before closing the
/// database).
pub async fn claim_database(
    db: &Db,
    data_dir: &Path,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()).display().to_string();
    let me = LocalHolder {
        holder: format!("pid {} on {}", std::process::id(), Config::default().conductor_id()),
        data_dir: dir.clone(),
    };
    if let Err(e) = identity::claim_local(db, &me, LOCAL_CLAIM_TTL).await {
        // the same data dir is the same installation restarting after a
        // crash (its lock proves the old process is gone): take it over
        let stored = identity::local_holder(db).await.ok().flatten();
        if stored.is_some_and(|h| h.data_dir == dir) {
            identity::force_claim_local(db, &me).await.map_err(anyhow::Error::msg)?;
        } else {
            anyhow::bail!(e);
        }
    }
    let db = db.clone();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LOCAL_CLAIM_TTL / 3) => {}
            }
            if let Err(e) = identity::claim_local(&db, &me, LOCAL_CLAIM_TTL).await {
                warn!("renewing this all-in-one's claim on its database: {e}");
            }
        }
        identity::release_local(&db, &me).await;
    }))
}
