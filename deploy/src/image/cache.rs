//! The conductor's cache of source images (deploy kernels and ramdisks,
//! deploy ISOs, instance images) fetched from `http(s)://` or `file://`
//! URLs, shared by every node the conductor drives. One conductor per
//! cache directory: opening it deletes what looks like a download in
//! progress.
//!
//! Layout under the cache directory:
//!
//! ```text
//! sha256/<hex>          the images, named by the SHA-256 of their content
//! index/<hex(source)>   one line: the content hash a source (URL + checksum) gave
//! tmp/<random>          downloads in progress; deleted when the cache opens
//! ```
//!
//! * **Content-addressed**: two URLs with the same bytes share one file. A
//!   source (URL + requested checksum) is looked up in the index, so a
//!   second fetch needs no network; a source whose checksum is a SHA-256
//!   the cache already holds needs none either, whatever its URL. A source
//!   without a checksum is cached by its URL: publish a new URL (or give a
//!   checksum) to change it. An index entry is only written after its
//!   checksum verified, so a hit always matches the requested checksum.
//! * **Verified, never partial**: the download streams into `tmp/` while
//!   SHA-256 and the requested digest (sha256, sha512 or md5) are computed;
//!   a short body, a Content-Length mismatch or a digest mismatch deletes it
//!   and is an error; only a complete, fsynced, verified file is renamed
//!   into `sha256/`. (A body sent without Content-Length or chunking that
//!   ends early cannot be told from a complete one: give a checksum.)
//! * **Coalesced**: concurrent fetches of one source share one download,
//!   which runs on its own task, so a caller that gives up (a fenced
//!   conductor, a cancelled operation) does not fail the others. The task
//!   hands every waiter the image already pinned, so it cannot be evicted
//!   between the download and its use; a failure reaches every waiter, and
//!   the next fetch tries again.
//! * **Bounded**: after each insert, least recently used images are evicted
//!   until the total is within `max_bytes`. A download in flight counts
//!   with its announced size (Content-Length, the file's size) from its
//!   start, so twenty 10 GB downloads do not all begin on a 50 GB disk;
//!   at most [`CacheOptions::max_concurrent_downloads`] run at once, the
//!   others wait for a slot. An image in use (a live
//!   [`CachedImage`]) is pinned and never evicted; one larger than the bound
//!   is still returned (with a warning), and evicted once unpinned. Use
//!   order survives a restart through the files' modification times.
//! * **Confined**: with [`CacheOptions::file_roots`], a `file://` source is
//!   read only if its real path (symbolic links resolved) lies under one
//!   of the roots.
//! * **Retries**: connection errors, timeouts, short bodies and 5xx are
//!   tried [`ATTEMPTS`] times in all with backoff; 4xx and checksum
//!   mismatches are final. Each attempt is bounded by the download timeout.
//!
//! The state (entries, index, downloads in flight) sits behind one mutex;
//! the file operations that must agree with it (rename into `sha256/`,
//! eviction's delete) run under it, so a file and its entry come and go
//! together.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, warn};

/// Attempts per download of an HTTP source (the first and two retries):
/// enough to ride out a web server restart, few enough that a dead source
/// fails the operation within a few download timeouts.
pub const ATTEMPTS: u32 = 3;
/// Wait before the first retry, doubled before each further one.
const BACKOFF: Duration = Duration::from_millis(200);
/// Bound on establishing a connection, so an unreachable server fails
/// fast even with a long download timeout (meant for multi-GB images).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size when copying a `file://` source.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("image URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "image checksum {0:?}: expected sha256:<hex>, sha512:<hex>, md5:<hex> or a bare 32/64/128-digit hex digest"
    )]
    BadChecksum(String),
    #[error("downloading {url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("downloading {url}: {message}")]
    Transfer { url: String, message: String },
    #[error("image {url}: no such file")]
    NotFound { url: String },
    #[error("{url}: {algorithm} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch { url: String, algorithm: &'static str, expected: String, actual: String },
    #[error("image cache {path}: {message}")]
    Io { path: String, message: String },
}

impl ImageError {
    /// Whether a later attempt may succeed (the source, the network or the
    /// disk misbehaved), as opposed to a wrong URL, checksum or image.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImageError::Http { status, .. } => *status >= 500 || *status == 429,
            ImageError::Transfer { .. } | ImageError::Io { .. } => true,
            ImageError::BadUrl { .. }
            | ImageError::BadChecksum(_)
            | ImageError::NotFound { .. }
            | ImageError::ChecksumMismatch { .. } => false,
        }
    }

    fn io(path: &Path, e: impl std::fmt::Display) -> ImageError {
        ImageError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}

/// A checksum as Ironic's `image_checksum` / `image_os_hash_value` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checksum {
    Md5(String),
    Sha256(String),
    Sha512(String),
}

impl Checksum {
    /// `sha256:<hex>`, `sha512:<hex>`, `md5:<hex>`, or a bare hex digest
    /// whose length (32, 64, 128) names the algorithm.
    pub fn parse(s: &str) -> Result<Checksum, ImageError> {
        let bad = || ImageError::BadChecksum(s.to_string());
        let (algo, hex) = match s.split_once(':') {
            Some((a, h)) => (Some(a.to_ascii_lowercase()), h),
            None => (None, s),
        };
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let hex = hex.to_ascii_lowercase();
        match (algo.as_deref(), hex.len()) {
            (Some("md5") | None, 32) => Ok(Checksum::Md5(hex)),
            (Some("sha256") | None, 64) => Ok(Checksum::Sha256(hex)),
            (Some("sha512") | None, 128) => Ok(Checksum::Sha512(hex)),
            _ => Err(bad()),
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    /// The digest, lower-case hex.
    pub fn hex(&self) -> &str {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSource {
    pub url: String,
    pub checksum: Option<Checksum>,
}

impl ImageSource {
    /// A source from Ironic-style fields (`image_source`, `image_checksum`;
    /// an empty checksum is none), with both checked.
    pub fn new(url: &str, checksum: Option<&str>) -> Result<ImageSource, ImageError> {
        let checksum = checksum.filter(|c| !c.is_empty()).map(Checksum::parse).transpose()?;
        let source = ImageSource { url: url.to_string(), checksum };
        source.location()?;
        Ok(source)
    }

    /// The index key: the URL and the requested checksum, hashed (a file
    /// name of fixed length whatever the URL).
    fn key(&self) -> String {
        let ck = self.checksum.as_ref().map(Checksum::to_string).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(format!("{}\n{ck}", self.url).as_bytes()))
    }

    fn location(&self) -> Result<Location, ImageError> {
        let url = &self.url;
        let bad = |reason: &str| ImageError::BadUrl { url: url.clone(), reason: reason.to_string() };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("not a URL: expected http://, https:// or file:///absolute/path"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => {
                reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
                Ok(Location::Http)
            }
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(bad("a file URL needs an absolute path on this host: file:///path"));
                }
                let path = PathBuf::from(crate::percent::decode(path).ok_or_else(|| bad("bad percent-encoding"))?);
                if path.components().any(|c| c == Component::ParentDir) {
                    return Err(bad("a file URL may not contain `..`"));
                }
                Ok(Location::File(path))
            }
            other => Err(bad(&format!("scheme {other:?} is not supported (http, https, file)"))),
        }
    }
}

enum Location {
    Http,
    File(PathBuf),
}

/// An image in the cache, pinned (never evicted) while this value or a
/// clone of it lives.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 of the content, lower-case hex (also the file name).
    pub sha256: String,
    _pin: Arc<Pin>,
}

/// One use of an entry; the last clone of a [`CachedImage`] drops it.
#[derive(Debug)]
struct Pin {
    shared: Arc<Shared>,
    sha256: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let over = {
            let mut st = self.shared.lock();
            if let Some(e) = st.entries.get_mut(&self.sha256) {
                e.pins -= 1;
            }
            st.total + st.reserved > self.shared.max_bytes
        };
        if over {
            self.shared.evict();
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CacheStats {
    /// Fetches answered from the cache.
    pub hits: u64,
    /// Downloads started (misses; a coalesced fetch is not counted again).
    pub downloads: u64,
    pub evictions: u64,
    /// Bytes of the images held.
    pub bytes: u64,
    pub images: usize,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    /// Logical clock of the last use; the smallest unpinned one is evicted.
    last_use: u64,
    pins: usize,
}

/// What a download hands its waiters: `None` until it finishes.
type Outcome = Option<Result<CachedImage, ImageError>>;

/// How the cache behaves besides its directory.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Bytes held (images not in use beyond this are evicted).
    pub max_bytes: u64,
    /// Bound on one download attempt.
    pub download_timeout: Duration,
    /// Downloads (and file copies) running at once.
    pub max_concurrent_downloads: usize,
    /// Directories `file://` sources must lie under; `None` = anywhere.
    pub file_roots: Option<Vec<PathBuf>>,
}

#[derive(Debug, Default)]
struct State {
    /// content sha256 → entry
    entries: HashMap<String, Entry>,
    /// source key → content sha256
    index: HashMap<String, String>,
    /// source key → the download in progress
    inflight: HashMap<String, watch::Receiver<Outcome>>,
    total: u64,
    /// Announced bytes of the downloads in flight.
    reserved: u64,
    tick: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    slots: tokio::sync::Semaphore,
    file_roots: Option<Vec<PathBuf>>,
    client: reqwest::Client,
    state: Mutex<State>,
    hits: AtomicU64,
    downloads: AtomicU64,
    evictions: AtomicU64,
}

/// The cache; cheap to clone, all clones share one state.
#[derive(Debug, Clone)]
pub struct ImageCache {
    shared: Arc<Shared>,
}

impl ImageCache {
    /// Opens (or creates) the cache in `dir`, holding at most `max_bytes`
    /// of images not in use; each download attempt is bounded by
    /// `download_timeout`. Partial downloads are deleted, complete images
    /// and the index are found again.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64, download_timeout: Duration) -> Result<ImageCache, ImageError> {
        ImageCache::open_with(
            dir,
            CacheOptions { max_bytes, download_timeout, max_concurrent_downloads: 4, file_roots: None },
        )
    }

    /// Opens the cache with all its options.
    pub fn open_with(dir: impl Into<PathBuf>, options: CacheOptions) -> Result<ImageCache, ImageError> {
        let CacheOptions { max_bytes, download_timeout, max_concurrent_downloads, file_roots } = options;
        let dir = dir.into();
        for sub in ["sha256", "index", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| ImageError::io(&dir.join(sub), e))?;
        }
        let tmp = dir.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(|e| ImageError::io(&tmp, e))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut found = Vec::new();
        let content = dir.join("sha256");
        for e in std::fs::read_dir(&content).map_err(|e| ImageError::io(&content, e))?.flatten() {
            let (Ok(meta), Some(name)) = (e.metadata(), e.file_name().to_str().map(str::to_string)) else { continue };
            if meta.is_file() && name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), name, meta.len()));
            }
        }
        found.sort();
        let mut st = State::default();
        for (_, sha, size) in found {
            st.tick += 1;
            st.total += size;
            st.entries.insert(sha, Entry { size, last_use: st.tick, pins: 0 });
        }
        let index = dir.join("index");
        for e in std::fs::read_dir(&index).map_err(|e| ImageError::io(&index, e))?.flatten() {
            let key = e.file_name().to_string_lossy().to_string();
            match std::fs::read_to_string(e.path()) {
                Ok(sha) if st.entries.contains_key(sha.trim()) => {
                    st.index.insert(key, sha.trim().to_string());
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(download_timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(download_timeout))
            .build()
            .map_err(|e| ImageError::io(&dir, format!("HTTP client: {e}")))?;
        info!(dir = %dir.display(), images = st.entries.len(), bytes = st.total, "image cache opened");
        let shared = Arc::new(Shared {
            dir,
            max_bytes,
            slots: tokio::sync::Semaphore::new(max_concurrent_downloads.max(1)),
            file_roots,
            client,
            state: Mutex::new(st),
            hits: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        });
        shared.evict();
        Ok(ImageCache { shared })
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.shared.lock();
        CacheStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            downloads: self.shared.downloads.load(Ordering::Relaxed),
            evictions: self.shared.evictions.load(Ordering::Relaxed),
            bytes: st.total,
            images: st.entries.len(),
        }
    }

    /// The image `source` names, from the cache or downloaded (once, however
    /// many callers ask at the same time), pinned while the result lives.
    pub async fn fetch(&self, source: &ImageSource) -> Result<CachedImage, ImageError> {
        let location = source.location()?;
        if let Location::File(path) = &location {
            self.shared.check_root(&source.url, path).await?;
        }
        let key = source.key();
        let mut rx = {
            let mut st = self.shared.lock();
            if let Some(sha) = st.cached(source, &key) {
                self.shared.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(self.shared.pin(&mut st, &sha));
            }
            match st.inflight.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    st.inflight.insert(key.clone(), rx.clone());
                    let (shared, source, key) = (self.shared.clone(), source.clone(), key.clone());
                    tokio::spawn(async move {
                        let result = shared.download(&source, location, &key).await;
                        // removed before the answer is sent (and while it is
                        // still `None`, so no pin drops under the lock): a
                        // fetch after this finds the entry, or starts anew
                        let mine = shared.lock().inflight.remove(&key);
                        drop(mine);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone().expect("waited for Some"));
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // the download task ended without an answer (a panic): forget
                // it, so the next fetch starts a new one
                let stale = {
                    let mut st = self.shared.lock();
                    match st.inflight.get(&key) {
                        Some(r) if r.same_channel(&rx) => st.inflight.remove(&key),
                        _ => None,
                    }
                };
                drop(stale);
                Err(ImageError::Transfer {
                    url: source.url.clone(),
                    message: "download task ended without an answer".into(),
                })
            }
        }
    }
}

/// What a download produced before it is renamed into place.
struct Downloaded {
    tmp: PathBuf,
    size: u64,
    sha256: String,
}

/// Bytes announced by a download in flight, counted against the bound
/// until the download ends.
struct Reservation {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared.lock().reserved -= self.bytes;
    }
}

impl ImageCache {
    /// Whether `source` may be read at all (a `file://` source outside
    /// the allowed roots may not): for validation, before anything runs.
    pub async fn check_allowed(&self, source: &ImageSource) -> Result<(), ImageError> {
        match source.location()? {
            Location::File(path) => self.shared.check_root(&source.url, &path).await,
            Location::Http => Ok(()),
        }
    }
}

impl State {
    /// The content hash a fetch of `source` can be answered with.
    fn cached(&self, source: &ImageSource, key: &str) -> Option<String> {
        if let Some(sha) = self.index.get(key)
            && self.entries.contains_key(sha)
        {
            return Some(sha.clone());
        }
        match &source.checksum {
            Some(Checksum::Sha256(sha)) if self.entries.contains_key(sha) => Some(sha.clone()),
            _ => None,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("image cache state")
    }

    /// Refuses a file outside the allowed roots, judged by its real path
    /// (so a symbolic link out of a root does not count as inside).
    async fn check_root(&self, url: &str, path: &Path) -> Result<(), ImageError> {
        let Some(roots) = &self.file_roots else { return Ok(()) };
        let real = tokio::fs::canonicalize(path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NotFound { url: url.to_string() },
            _ => ImageError::io(path, e),
        })?;
        for root in roots {
            if let Ok(r) = tokio::fs::canonicalize(root).await
                && real.starts_with(&r)
            {
                return Ok(());
            }
        }
        let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(ImageError::BadUrl {
            url: url.to_string(),
            reason: format!(
                "{} is outside the directories file:// images may come from ({}; [image_cache] \
                 file_url_allowed_roots)",
                real.display(),
                list.join(", ")
            ),
        })
    }

    /// Counts `bytes` of a starting download against the bound, evicting
    /// what must go to make room.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.lock().reserved += bytes;
        self.evict();
        Reservation { shared: self.clone(), bytes }
    }

    fn pin(self: &Arc<Self>, st: &mut State, sha: &str) -> CachedImage {
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get_mut(sha).expect("pinned entry exists");
        e.pins += 1;
        e.last_use = tick;
        let path = self.dir.join("sha256").join(sha);
        // the use order survives restarts through mtime
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        CachedImage {
            path,
            size: e.size,
            sha256: sha.to_string(),
            _pin: Arc::new(Pin { shared: self.clone(), sha256: sha.to_string() }),
        }
    }

    async fn download(
        self: &Arc<Self>,
        source: &ImageSource,
        location: Location,
        key: &str,
    ) -> Result<CachedImage, ImageError> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let _slot = self.slots.acquire().await.expect("the download semaphore is never closed");
        let mut attempt = 0;
        let got = loop {
            attempt += 1;
            let result = match &location {
                Location::Http => self.fetch_http(source).await,
                Location::File(p) => self.copy_file(source, p).await,
            };
            match result {
                Ok(d) => break d,
                Err(e) if e.is_retryable() && attempt < ATTEMPTS && matches!(location, Location::Http) => {
                    warn!("{e}; retrying ({attempt}/{ATTEMPTS})");
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let image = self.commit(got, key)?;
        // the rename survives a power cut only once the directory is synced
        let dir = self.dir.join("sha256");
        let d = tokio::fs::File::open(&dir).await.map_err(|e| ImageError::io(&dir, e))?;
        d.sync_all().await.map_err(|e| ImageError::io(&dir, e))?;
        if image.size > self.max_bytes {
            warn!(
                url = %source.url, size = image.size, bound = self.max_bytes,
                "image larger than the whole cache: kept only while in use"
            );
        }
        self.evict();
        info!(url = %source.url, image = %image.sha256, size = image.size, "image cached");
        Ok(image)
    }

    /// Moves a verified download into `sha256/`, records it in the index
    /// and pins it for the waiters. Under the lock, so an eviction cannot
    /// delete the file between the rename and its entry.
    fn commit(self: &Arc<Self>, got: Downloaded, key: &str) -> Result<CachedImage, ImageError> {
        let dest = self.dir.join("sha256").join(&got.sha256);
        let mut st = self.lock();
        if st.entries.contains_key(&got.sha256) {
            // the same bytes came from another source meanwhile
            let _ = std::fs::remove_file(&got.tmp);
        } else {
            if let Err(e) = std::fs::rename(&got.tmp, &dest) {
                let _ = std::fs::remove_file(&got.tmp);
                return Err(ImageError::io(&dest, e));
            }
            st.total += got.size;
            st.entries.insert(got.sha256.clone(), Entry { size: got.size, last_use: 0, pins: 0 });
        }
        let index = self.dir.join("index").join(key);
        if let Err(e) = std::fs::write(&index, &got.sha256) {
            // only a restarted conductor needs the file: it downloads again
            warn!(path = %index.display(), "image cache index: {e}");
        }
        st.index.insert(key.to_string(), got.sha256.clone());
        Ok(self.pin(&mut st, &got.sha256))
    }

    fn new_tmp(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("{:032x}", rand::random::<u128>()))
    }

    async fn fetch_http(self: &Arc<Self>, source: &ImageSource) -> Result<Downloaded, ImageError> {
        use futures_util::StreamExt;
        let url = &source.url;
        let transfer = |e: reqwest::Error| ImageError::Transfer { url: url.clone(), message: crate::error_chain(&e) };
        let resp = self.client.get(url).send().await.map_err(transfer)?;
        if !resp.status().is_success() {
            return Err(ImageError::Http { url: url.clone(), status: resp.status().as_u16() });
        }
        let expected_len = resp.content_length();
        let _room = self.reserve(expected_len.unwrap_or(0));
        let tmp = self.new_tmp();
        let mut sink = Sink::create(&tmp, source.checksum.clone()).await?;
        let mut body = resp.bytes_stream();
        let result = async {
            while let Some(chunk) = body.next().await {
                sink.write(&chunk.map_err(transfer)?).await?;
            }
            if let Some(n) = expected_len
                && n != sink.size
            {
                return Err(ImageError::Transfer {
                    url: url.clone(),
                    message: format!("body ended after {} of {n} bytes", sink.size),
                });
            }
            sink.finish(url).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn copy_file(self: &Arc<Self>, source: &ImageSource, path: &Path) -> Result<Downloaded, ImageError> {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::NotFound { url: source.url.clone() },
            _ => ImageError::io(path, e),
        })?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let _room = self.reserve(len);
        let tmp = self.new_tmp();
        let mut sink = Sink::create(&tmp, source.checksum.clone()).await?;
        let result = async {
            let mut buf = vec![0u8; COPY_CHUNK];
            loop {
                let n = f.read(&mut buf).await.map_err(|e| ImageError::io(path, e))?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n]).await?;
            }
            sink.finish(&source.url).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Evicts least recently used, unpinned images until the total fits.
    fn evict(&self) {
        let mut st = self.lock();
        while st.total + st.reserved > self.max_bytes {
            let victim = st
                .entries
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(sha, _)| sha.clone());
            let Some(sha) = victim else {
                warn!(
                    bytes = st.total,
                    in_flight = st.reserved,
                    bound = self.max_bytes,
                    "image cache over its bound: every image is in use"
                );
                break;
            };
            let e = st.entries.remove(&sha).expect("victim exists");
            st.total -= e.size;
            let stale: Vec<String> = st.index.iter().filter(|(_, v)| **v == sha).map(|(k, _)| k.clone()).collect();
            for k in stale {
                st.index.remove(&k);
                let _ = std::fs::remove_file(self.dir.join("index").join(&k));
            }
            let _ = std::fs::remove_file(self.dir.join("sha256").join(&sha));
            self.evictions.fetch_add(1, Ordering::Relaxed);
            info!(image = %sha, size = e.size, "image evicted from the cache");
        }
    }
}

/// A temp file being written while the digests are computed.
struct Sink {
    path: PathBuf,
    file: tokio::fs::File,
    sha256: sha2::Sha256,
    check: Option<(Checksum, CheckHasher)>,
    size: u64,
}

enum CheckHasher {
    Md5(md5::Md5),
    Sha512(sha2::Sha512),
    /// sha256 is computed anyway
    Sha256,
}

impl Sink {
    async fn create(path: &Path, checksum: Option<Checksum>) -> Result<Sink, ImageError> {
        let file = tokio::fs::File::create(path).await.map_err(|e| ImageError::io(path, e))?;
        let check = checksum.map(|c| {
            let h = match c {
                Checksum::Md5(_) => CheckHasher::Md5(md5::Md5::new()),
                Checksum::Sha256(_) => CheckHasher::Sha256,
                Checksum::Sha512(_) => CheckHasher::Sha512(sha2::Sha512::new()),
            };
            (c, h)
        });
        Ok(Sink { path: path.to_path_buf(), file, sha256: sha2::Sha256::new(), check, size: 0 })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.sha256.update(bytes);
        match &mut self.check {
            Some((_, CheckHasher::Md5(h))) => h.update(bytes),
            Some((_, CheckHasher::Sha512(h))) => h.update(bytes),
            _ => {}
        }
        self.size += bytes.len() as u64;
        self.file.write_all(bytes).await.map_err(|e| ImageError::io(&self.path, e))
    }

    async fn finish(mut self, url: &str) -> Result<Downloaded, ImageError> {
        let path = self.path.clone();
        let io = |e: std::io::Error| ImageError::io(&path, e);
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        let sha256 = hex::encode(self.sha256.finalize());
        if let Some((want, hasher)) = self.check {
            let actual = match hasher {
                CheckHasher::Md5(h) => hex::encode(h.finalize()),
                CheckHasher::Sha512(h) => hex::encode(h.finalize()),
                CheckHasher::Sha256 => sha256.clone(),
            };
            if actual != want.hex() {
                return Err(ImageError::ChecksumMismatch {
                    url: url.to_string(),
                    algorithm: want.algorithm(),
                    expected: want.hex().to_string(),
                    actual,
                });
            }
        }
        Ok(Downloaded { tmp: self.path, size: self.size, sha256 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_like_ironic() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(Checksum::parse(md5).unwrap(), Checksum::Md5(md5.into()));
        assert_eq!(Checksum::parse(&format!("MD5:{}", md5.to_uppercase())).unwrap(), Checksum::Md5(md5.into()));
        let sha256 = "a".repeat(64);
        assert_eq!(Checksum::parse(&sha256).unwrap(), Checksum::Sha256(sha256.clone()));
        assert_eq!(Checksum::parse(&format!("sha256:{sha256}")).unwrap().to_string(), format!("sha256:{sha256}"));
        let sha512 = "b".repeat(128);
        assert_eq!(Checksum::parse(&format!("sha512:{sha512}")).unwrap(), Checksum::Sha512(sha512.clone()));
        for bad in ["", "sha256:", "xyz", "sha1:0123", "sha256:abc", &format!("sha512:{sha256}"), &"c".repeat(40)] {
            let e = Checksum::parse(bad).unwrap_err();
            assert_eq!(e, ImageError::BadChecksum(bad.to_string()));
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn urls_are_http_or_absolute_files() {
        let loc = |u: &str| ImageSource { url: u.into(), checksum: None }.location();
        assert!(matches!(loc("http://h/x"), Ok(Location::Http)));
        assert!(matches!(loc("HTTPS://h:8443/x?y=1"), Ok(Location::Http)));
        for (url, path) in [
            ("file:///var/lib/images/k", "/var/lib/images/k"),
            ("file://localhost/a/b", "/a/b"),
            ("file:///with%20space", "/with space"),
        ] {
            match loc(url) {
                Ok(Location::File(p)) => assert_eq!(p, Path::new(path), "{url}"),
                _ => panic!("{url}"),
            }
        }
        for (url, says) in [
            ("ftp://h/x", "\"ftp\""),
            ("glance://uuid", "\"glance\""),
            ("/just/a/path", "not a URL"),
            ("file://relative/path", "absolute"),
            ("file:///a/../etc/passwd", ".."),
            ("file:///a/%2e%2e/etc/passwd", ".."),
            ("file:///a/%zz", "percent"),
            ("http://", "empty host"),
        ] {
            let e = match loc(url) {
                Err(e) => e,
                Ok(_) => panic!("{url} accepted"),
            };
            assert!(matches!(e, ImageError::BadUrl { .. }) && !e.is_retryable(), "{url}: {e}");
            assert!(e.to_string().contains(url) && e.to_string().contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn sources_from_ironic_fields() {
        let s = ImageSource::new("http://h/k", Some("")).unwrap();
        assert_eq!(s.checksum, None);
        let s = ImageSource::new("http://h/k", Some(&"a".repeat(32))).unwrap();
        assert_eq!(s.checksum, Some(Checksum::Md5("a".repeat(32))));
        assert!(matches!(ImageSource::new("http://h/k", Some("nope")), Err(ImageError::BadChecksum(_))));
        assert!(matches!(ImageSource::new("nfs://h/k", None), Err(ImageError::BadUrl { .. })));
    }
}
