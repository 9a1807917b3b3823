//! The conductor's HTTP root: a directory the conductor writes artefacts
//! into and serves itself at `<http_server_url>/<name>` (the conductor's
//! HTTP listener, path `/httpboot/`).
//!
//! Writing: into a temporary file in the root, fsync, rename — a BMC
//! downloading an ISO never sees a partial one. Expiry and metadata live
//! in private side files (`.meta/<name>.json`); [`Store::expire`] deletes
//! what has expired and is run by the conductor's periodic task.
//!
//! Serving ([`router`]): single files only, with `Range` (BMCs fetch
//! virtual media in ranges), `HEAD` and `Last-Modified`. Refused with 404,
//! before touching the file system: any segment that is empty, `.`, `..`,
//! starts with `.` (private objects, temp files), or contains `/`, `\` or
//! NUL once percent-decoded (`%2e%2e`, `%2f`); then any path component
//! that is a symlink or not a directory/regular file; directories (no
//! listing). Only this conductor writes the root, so the check-then-open
//! gap cannot be raced by a client.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{PublishError, Result, Store, check_name, is_private};
use crate::percent;

const META_DIR: &str = ".meta";

#[derive(Debug, Default, Serialize, Deserialize)]
struct SideFile {
    /// Unix seconds after which the object is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delete_at: Option<u64>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

pub struct HttpRootStore {
    root: PathBuf,
    base_url: String,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl HttpRootStore {
    /// `root` is created if missing; `base_url` is how BMCs reach it
    /// (`http://10.0.0.5:8089/httpboot`).
    pub fn new(root: impl Into<PathBuf>, base_url: impl Into<String>) -> Result<HttpRootStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join(META_DIR)).map_err(|e| PublishError::io(&root, e))?;
        // a process killed mid-write leaves its temp files behind; nobody
        // else writes here, so at start-up they are garbage
        remove_temp_files(&root).map_err(|e| PublishError::io(&root, e))?;
        Ok(HttpRootStore { root, base_url: base_url.into().trim_end_matches('/').to_string() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    fn side_path(&self, name: &str) -> PathBuf {
        self.root.join(META_DIR).join(format!("{name}.json"))
    }

    async fn read_side(&self, name: &str) -> Result<SideFile> {
        let p = self.side_path(name);
        match tokio::fs::read(&p).await {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| PublishError::io(&p, std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SideFile::default()),
            Err(e) => Err(PublishError::io(&p, e)),
        }
    }

    async fn write_side(&self, name: &str, side: &SideFile) -> Result<()> {
        let p = self.side_path(name);
        if side.delete_at.is_none() && side.metadata.is_empty() {
            return remove_if_present(&p).await;
        }
        let bytes = serde_json::to_vec(side).expect("side file serializes");
        write_atomically(&p, Source::Bytes(bytes)).await
    }

    fn expired(side: &SideFile) -> bool {
        side.delete_at.is_some_and(|t| t <= now_secs())
    }

    async fn put(&self, name: &str, source: Source<'_>, delete_after: Option<Duration>) -> Result<()> {
        let path = self.path(name)?;
        write_atomically(&path, source).await?;
        let side = SideFile { delete_at: delete_after.map(|d| now_secs() + d.as_secs().max(1)), ..Default::default() };
        self.write_side(name, &side).await
    }
}

fn remove_temp_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            remove_temp_files(&entry.path())?;
        } else if ty.is_file() && entry.file_name().to_string_lossy().starts_with(".tmp-") {
            tracing::info!(file = %entry.path().display(), "removing a partial write left by an earlier process");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

enum Source<'a> {
    File(&'a Path),
    Bytes(Vec<u8>),
}

async fn remove_if_present(p: &Path) -> Result<()> {
    match tokio::fs::remove_file(p).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PublishError::io(p, e)),
    }
}

/// Writes `dest` through a temp file in the same directory and a rename.
async fn write_atomically(dest: &Path, source: Source<'_>) -> Result<()> {
    let dir = dest.parent().expect("object paths have a parent").to_path_buf();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| PublishError::io(&dir, e))?;
    let tmp = dir.join(format!(".tmp-{:032x}", rand::random::<u128>()));
    let result = async {
        match source {
            Source::File(src) => {
                tokio::fs::copy(src, &tmp).await.map_err(|e| PublishError::io(src, e))?;
            }
            Source::Bytes(b) => tokio::fs::write(&tmp, b).await.map_err(|e| PublishError::io(&tmp, e))?,
        }
        let f = tokio::fs::File::open(&tmp).await.map_err(|e| PublishError::io(&tmp, e))?;
        f.sync_all().await.map_err(|e| PublishError::io(&tmp, e))?;
        tokio::fs::rename(&tmp, dest).await.map_err(|e| PublishError::io(dest, e))?;
        // the rename itself survives a power cut only once the directory is synced
        let d = tokio::fs::File::open(&dir).await.map_err(|e| PublishError::io(&dir, e))?;
        d.sync_all().await.map_err(|e| PublishError::io(&dir, e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

#[async_trait]
impl Store for HttpRootStore {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn put_file(&self, name: &str, source: &Path, delete_after: Option<Duration>) -> Result<()> {
        self.put(name, Source::File(source), delete_after).await
    }

    async fn put_bytes(&self, name: &str, bytes: Vec<u8>, delete_after: Option<Duration>) -> Result<()> {
        self.put(name, Source::Bytes(bytes), delete_after).await
    }

    async fn exists(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        let present = tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file());
        Ok(present && !Self::expired(&self.read_side(name).await?))
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        remove_if_present(&path).await?;
        remove_if_present(&self.side_path(name)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for name in walk(&self.root, |rel| rel != META_DIR).await? {
            if name.starts_with(prefix)
                && !name.rsplit('/').next().is_some_and(|f| f.starts_with(".tmp-"))
                && !Self::expired(&self.read_side(&name).await?)
            {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn set_metadata(&self, name: &str, key: &str, value: &str) -> Result<()> {
        if !self.exists(name).await? {
            return Err(PublishError::NotFound(name.to_string()));
        }
        let mut side = self.read_side(name).await?;
        if side.metadata.insert(key.to_ascii_lowercase(), value.to_string()).as_deref() == Some(value) {
            return Ok(());
        }
        self.write_side(name, &side).await
    }

    async fn set_delete_after(&self, name: &str, delete_after: Option<Duration>) -> Result<()> {
        if !self.exists(name).await? {
            return Err(PublishError::NotFound(name.to_string()));
        }
        let mut side = self.read_side(name).await?;
        if delete_after.is_none() && side.delete_at.is_none() {
            return Ok(());
        }
        side.delete_at = delete_after.map(|d| now_secs() + d.as_secs().max(1));
        self.write_side(name, &side).await
    }

    async fn metadata(&self, name: &str, key: &str) -> Result<Option<String>> {
        if !self.exists(name).await? {
            return Err(PublishError::NotFound(name.to_string()));
        }
        Ok(self.read_side(name).await?.metadata.get(&key.to_ascii_lowercase()).cloned())
    }

    fn url(&self, name: &str, _valid_for: Duration) -> Result<String> {
        check_name(name)?;
        if is_private(name) {
            return Err(PublishError::Private(name.to_string()));
        }
        Ok(format!("{}/{}", self.base_url, percent::encode_path(name)))
    }

    async fn expire(&self) -> Result<usize> {
        let mut removed = 0;
        for side in walk(&self.root.join(META_DIR), |_| true).await? {
            let Some(name) = side.strip_suffix(".json") else { continue };
            if Self::expired(&self.read_side(name).await?) {
                self.delete(name).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Every regular file under `dir`, as `/`-joined names relative to it;
/// `descend(rel)` says whether to enter a subdirectory.
async fn walk(dir: &Path, descend: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PublishError::io(&dir, e)),
        };
        while let Some(entry) = rd.next_entry().await.map_err(|e| PublishError::io(&dir, e))? {
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let name = if rel.is_empty() { file_name } else { format!("{rel}/{file_name}") };
            let ty = entry.file_type().await.map_err(|e| PublishError::io(entry.path(), e))?;
            if ty.is_dir() && descend(&name) {
                stack.push((entry.path(), name));
            } else if ty.is_file() {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Serves `root` (see the module doc for what is refused). Mount it with
/// `Router::nest_service("/httpboot", …)`.
pub fn router(root: PathBuf) -> axum::Router {
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let root = root.clone();
        async move { serve(root, req).await }
    })
}

async fn serve(root: PathBuf, req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    let not_found = || (axum::http::StatusCode::NOT_FOUND, "not found\n").into_response();
    if !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) {
        return (axum::http::StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n").into_response();
    }
    let Some(path) = resolve(&root, req.uri().path()).await else { return not_found() };
    // the store writes side files next to objects only under .meta, and
    // refuses expired objects the same way the store does
    match tower_http::services::ServeFile::new(path).oneshot(req).await {
        Ok(resp) => resp.into_response(),
        Err(never) => match never {},
    }
}

/// Maps a request path to a regular file under `root`, or `None` (404).
async fn resolve(root: &Path, raw: &str) -> Option<PathBuf> {
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let mut path = root.to_path_buf();
    let segments: Vec<&str> = raw.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let seg = percent::decode(seg)?;
        if seg.is_empty() || seg.starts_with('.') || seg.contains(['/', '\\', '\0']) {
            return None;
        }
        path.push(&seg);
        let meta = tokio::fs::symlink_metadata(&path).await.ok()?;
        let last = i + 1 == segments.len();
        let ok = if last { meta.file_type().is_file() } else { meta.file_type().is_dir() };
        if !ok {
            return None;
        }
    }
    // objects past their delete-after are gone even before the clean-up pass
    let name = raw.split('/').map(percent::decode).collect::<Option<Vec<_>>>()?.join("/");
    let side = root.join(META_DIR).join(format!("{name}.json"));
    if let Ok(bytes) = tokio::fs::read(&side).await {
        let side: SideFile = serde_json::from_slice(&bytes).ok()?;
        if HttpRootStore::expired(&side) {
            return None;
        }
    }
    Some(path)
}
