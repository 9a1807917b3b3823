//! Publishing boot artefacts where a BMC can fetch them.
//!
//! Two backends behind one trait, [`Store`]: [`http`] (the conductor's own
//! HTTP root, served by the conductor) and [`swift`] (an object store with
//! temporary URLs). A store knows nothing about boot ISOs or floppies; it
//! puts, lists, deletes and hands out URLs for named objects. What the
//! objects mean — content-addressed boot ISOs shared by many nodes, with a
//! usage count, and per-deploy floppies with a time to live — lives in
//! [`artefacts`], once, on top of either store.
//!
//! Object names are `/`-separated, never empty segments, never `.` or
//! `..`, and a segment starting with `.` is private: it is stored like any
//! other object but no URL is ever handed out for it and the HTTP root never
//! serves it. The usage records of shared ISOs live there.

pub mod artefacts;
pub mod http;
pub mod swift;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("object name {0:?} is not allowed: '/'-separated segments, none empty, '.' or '..'")]
    BadName(String),
    #[error("object {0:?} not found")]
    NotFound(String),
    #[error("no URL is handed out for private object {0:?}")]
    Private(String),
    #[error("{backend} request failed: {message}")]
    Backend { backend: &'static str, message: String },
    #[error("building the artefact failed: {0}")]
    Build(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl PublishError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        PublishError::Io { path: path.as_ref().display().to_string(), source }
    }
}

pub type Result<T> = std::result::Result<T, PublishError>;

/// Checks an object name: `/`-separated segments, none empty, none `.` or
/// `..`, no NUL or backslash, at most 512 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && !name.contains(['\0', '\\'])
        && name.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok { Ok(()) } else { Err(PublishError::BadName(name.to_string())) }
}

/// True when some segment of the name starts with `.`: such objects are
/// never handed out or served.
pub fn is_private(name: &str) -> bool {
    name.split('/').any(|seg| seg.starts_with('.'))
}

/// One place BMCs fetch artefacts from.
#[async_trait]
pub trait Store: Send + Sync {
    /// `http` or `swift`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Stores the file at `source` as `name`, replacing any object of that
    /// name atomically: a reader sees the old bytes or the new ones, never a
    /// part. With `delete_after`, the object disappears by itself after that
    /// long (Swift `X-Delete-After`; the HTTP root's clean-up pass).
    async fn put_file(&self, name: &str, source: &Path, delete_after: Option<Duration>) -> Result<()>;

    /// Stores the file at `source` as `name` unless an object of that name
    /// exists, which is then left untouched; returns whether it stored it.
    /// For objects BMCs may be reading right now: Swift's object server
    /// answers a GET that races an overwrite (or a metadata POST) of the same
    /// object with 404 — it lists the object's files, and the writer's
    /// clean-up, run in another thread, unlinks the older one before the
    /// reader opens it. The HTTP root replaces files by rename, which no
    /// reader notices, so there it is a plain put.
    async fn put_file_if_absent(&self, name: &str, source: &Path) -> Result<bool> {
        self.put_file(name, source, None).await.map(|()| true)
    }

    /// Stores `bytes` as `name` (small objects: floppies, usage records).
    async fn put_bytes(&self, name: &str, bytes: Vec<u8>, delete_after: Option<Duration>) -> Result<()>;

    /// Whether `name` exists (and has not expired).
    async fn exists(&self, name: &str) -> Result<bool>;

    /// Deletes `name`; deleting an absent object is not an error.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Names starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Sets one piece of metadata on an existing object (the usage count of a
    /// boot ISO in the HTTP root). Swift keeps it as `X-Object-Meta-<key>`;
    /// the HTTP root in a private side file. Setting the value it already
    /// has writes nothing.
    async fn set_metadata(&self, name: &str, key: &str, value: &str) -> Result<()>;

    /// Schedules (`Some`) or cancels (`None`) the deletion of an existing
    /// object, keeping its content and metadata. `NotFound` if it is gone.
    /// Cancelling when nothing is scheduled writes nothing.
    async fn set_delete_after(&self, name: &str, delete_after: Option<Duration>) -> Result<()>;

    /// Whether other conductors read and write the same objects (Swift's
    /// shared container), as opposed to a store private to this conductor
    /// (its HTTP root).
    fn shared(&self) -> bool {
        false
    }

    /// Reads one piece of metadata; `None` when it was never set.
    async fn metadata(&self, name: &str, key: &str) -> Result<Option<String>>;

    /// A URL a BMC can GET the object from without credentials, valid for at
    /// least `valid_for` (Swift signs a temporary URL; the HTTP root's URLs
    /// do not expire). Refused for private names.
    fn url(&self, name: &str, valid_for: Duration) -> Result<String>;

    /// Whether `url` — what a BMC holds — is a URL of the object `name`
    /// that stays valid for at least `min_validity`, so there is no need to
    /// hand the BMC a new one. The HTTP root's URLs never change or expire;
    /// a Swift temp URL of the same object counts until its expiry.
    fn url_is_current(&self, url: &str, name: &str, min_validity: Duration) -> bool {
        self.url(name, min_validity).is_ok_and(|u| u == url)
    }

    /// Removes objects whose `delete_after` has passed. Swift does this by
    /// itself (the object expirer); the HTTP root does it here. Returns how
    /// many objects were removed.
    async fn expire(&self) -> Result<usize>;
}
