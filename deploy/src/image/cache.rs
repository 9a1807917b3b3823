//! The conductor's cache of source images (deploy kernels and ramdisks,
//! deploy ISOs, instance images) fetched from `http(s)://` or `file://`
//! URLs, shared by every node the conductor drives.
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
//!   second fetch needs no network. A source without a checksum is cached
//!   by its URL: publish a new URL (or give a checksum) to change it.
//! * **Verified, never partial**: the download streams into `tmp/` while
//!   SHA-256 and the requested digest (sha256, sha512 or md5) are computed;
//!   a short body, a Content-Length mismatch or a digest mismatch deletes it
//!   and is an error; only a complete, fsynced, verified file is renamed
//!   into `sha256/`.
//! * **Coalesced**: concurrent fetches of one source share one download,
//!   which runs on its own task, so a caller that gives up (a fenced
//!   conductor, a cancelled operation) does not fail the others; its
//!   failure reaches every waiter, and the next fetch tries again.
//! * **Bounded**: after each insert, least recently used images are evicted
//!   until the total is within `max_bytes`. An image in use (a live
//!   [`CachedImage`]) is pinned and never evicted; one larger than the bound
//!   is still returned, and evicted once unpinned. Use order survives a
//!   restart through the files' modification times.
//! * **Retries**: connection errors, timeouts and 5xx are retried three
//!   times with backoff; 4xx and checksum mismatches are final.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, warn};

const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("image URL {0:?}: only http://, https:// and file:///absolute/path are supported")]
    BadUrl(String),
    #[error(
        "image checksum {0:?}: expected sha256:<hex>, sha512:<hex>, md5:<hex> or a bare 32/64/128-digit hex digest"
    )]
    BadChecksum(String),
    #[error("downloading {url}: HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("downloading {url}: {message}")]
    Transfer { url: String, message: String },
    #[error("{url}: {algorithm} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch { url: String, algorithm: &'static str, expected: String, actual: String },
    #[error("image cache {path}: {message}")]
    Io { path: String, message: String },
}

impl ImageError {
    /// Whether a later attempt may succeed (the source or the network
    /// misbehaved), as opposed to a wrong URL, checksum or image.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImageError::Http { status, .. } => *status >= 500 || *status == 429,
            ImageError::Transfer { .. } | ImageError::Io { .. } => true,
            ImageError::BadUrl(_) | ImageError::BadChecksum(_) | ImageError::ChecksumMismatch { .. } => false,
        }
    }

    fn io(path: &Path, e: impl std::fmt::Display) -> ImageError {
        ImageError::Io { path: path.display().to_string(), message: e.to_string() }
    }
}

/// A checksum as Ironic's `image_checksum` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checksum {
    Md5(String),
    Sha256(String),
    Sha512(String),
}

impl Checksum {
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

    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Md5(_) => "md5",
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSource {
    pub url: String,
    pub checksum: Option<Checksum>,
}

impl ImageSource {
    fn key(&self) -> String {
        let ck = self.checksum.as_ref().map(|c| format!("{}:{}", c.algorithm(), c.hex())).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(format!("{}\n{ck}", self.url).as_bytes()))
    }

    fn check(&self) -> Result<Location, ImageError> {
        let u = &self.url;
        if u.starts_with("http://") || u.starts_with("https://") {
            return Ok(Location::Http);
        }
        if let Some(path) = u.strip_prefix("file://") {
            let p = Path::new(path);
            if p.is_absolute() && !p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Ok(Location::File(p.to_path_buf()));
            }
        }
        Err(ImageError::BadUrl(u.clone()))
    }
}

enum Location {
    Http,
    File(PathBuf),
}

/// An image in the cache, pinned (never evicted) while this value lives.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    _pin: Arc<Pin>,
}

#[derive(Debug)]
struct Pin {
    shared: Arc<Shared>,
    sha256: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let over = {
            let mut st = self.shared.state.lock().expect("image cache state");
            if let Some(e) = st.entries.get_mut(&self.sha256) {
                e.pins -= 1;
            }
            st.total > self.shared.max_bytes
        };
        if over {
            self.shared.evict();
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub downloads: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub images: usize,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
    pins: usize,
}

type Outcome = Option<Result<String, ImageError>>;

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// source key → content sha256
    index: HashMap<String, String>,
    inflight: HashMap<String, watch::Receiver<Outcome>>,
    total: u64,
    tick: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    client: reqwest::Client,
    state: Mutex<State>,
    hits: AtomicU64,
    downloads: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Clone)]
pub struct ImageCache {
    shared: Arc<Shared>,
}

impl ImageCache {
    /// Opens (or creates) the cache in `dir`: partial downloads are deleted,
    /// complete images and the index are found again.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64, download_timeout: Duration) -> Result<ImageCache, ImageError> {
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
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ImageError::io(&dir, format!("HTTP client: {e}")))?;
        info!(dir = %dir.display(), images = st.entries.len(), bytes = st.total, "image cache opened");
        let shared = Arc::new(Shared {
            dir,
            max_bytes,
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
        let st = self.shared.state.lock().expect("image cache state");
        CacheStats {
            hits: self.shared.hits.load(Ordering::Relaxed),
            downloads: self.shared.downloads.load(Ordering::Relaxed),
            evictions: self.shared.evictions.load(Ordering::Relaxed),
            bytes: st.total,
            images: st.entries.len(),
        }
    }

    /// The image `source` names, from the cache or downloaded (once, however
    /// many callers ask at the same time).
    pub async fn fetch(&self, source: &ImageSource) -> Result<CachedImage, ImageError> {
        let location = source.check()?;
        let key = source.key();
        let mut location = Some(location);
        loop {
            let mut rx = {
                let mut st = self.shared.state.lock().expect("image cache state");
                if let Some(sha) = st.index.get(&key).cloned()
                    && st.entries.contains_key(&sha)
                {
                    self.shared.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.shared.pin(&mut st, &sha));
                }
                match st.inflight.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        st.inflight.insert(key.clone(), rx.clone());
                        let (shared, source, key) = (self.shared.clone(), source.clone(), key.clone());
                        let loc = location.take().expect("one download per fetch call");
                        tokio::spawn(async move {
                            let result = shared.download(&source, loc, &key).await;
                            shared.state.lock().expect("image cache state").inflight.remove(&key);
                            let _ = tx.send(Some(result));
                        });
                        rx
                    }
                }
            };
            let waited = rx.wait_for(|o| o.is_some()).await.map(|o| o.clone().expect("waited for Some"));
            let outcome = match waited {
                Ok(o) => o,
                Err(_) => {
                    // the download task died without an answer (a panic):
                    // forget it, so the next fetch starts a new one
                    let mut st = self.shared.state.lock().expect("image cache state");
                    if st.inflight.get(&key).is_some_and(|r| r.same_channel(&rx)) {
                        st.inflight.remove(&key);
                    }
                    Err(ImageError::Transfer { url: source.url.clone(), message: "download task ended".into() })
                }
            };
            match outcome {
                Ok(sha) => {
                    let mut st = self.shared.state.lock().expect("image cache state");
                    if st.entries.contains_key(&sha) {
                        return Ok(self.shared.pin(&mut st, &sha));
                    }
                    // evicted between the download and now: fetch again
                    if location.is_none() {
                        location = Some(source.check()?);
                    }
                }
                Err(e) => return Err(e),
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

impl Shared {
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
    ) -> Result<String, ImageError> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
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
        let dest = self.dir.join("sha256").join(&got.sha256);
        if tokio::fs::metadata(&dest).await.is_ok() {
            let _ = tokio::fs::remove_file(&got.tmp).await;
        } else {
            tokio::fs::rename(&got.tmp, &dest).await.map_err(|e| ImageError::io(&dest, e))?;
            // the rename survives a power cut only once the directory is synced
            let dir = self.dir.join("sha256");
            let d = tokio::fs::File::open(&dir).await.map_err(|e| ImageError::io(&dir, e))?;
            d.sync_all().await.map_err(|e| ImageError::io(&dir, e))?;
        }
        let index = self.dir.join("index").join(key);
        tokio::fs::write(&index, &got.sha256).await.map_err(|e| ImageError::io(&index, e))?;
        {
            let mut st = self.state.lock().expect("image cache state");
            st.tick += 1;
            let tick = st.tick;
            if !st.entries.contains_key(&got.sha256) {
                st.total += got.size;
                st.entries.insert(got.sha256.clone(), Entry { size: got.size, last_use: tick, pins: 0 });
            }
            st.index.insert(key.to_string(), got.sha256.clone());
        }
        self.evict_except(Some(&got.sha256));
        Ok(got.sha256)
    }

    fn new_tmp(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("{:032x}", rand::random::<u128>()))
    }

    async fn fetch_http(&self, source: &ImageSource) -> Result<Downloaded, ImageError> {
        use futures_util::StreamExt;
        let url = &source.url;
        let transfer = |e: reqwest::Error| ImageError::Transfer { url: url.clone(), message: e.to_string() };
        let resp = self.client.get(url).send().await.map_err(transfer)?;
        if !resp.status().is_success() {
            return Err(ImageError::Http { url: url.clone(), status: resp.status().as_u16() });
        }
        let expected_len = resp.content_length();
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

    async fn copy_file(&self, source: &ImageSource, path: &Path) -> Result<Downloaded, ImageError> {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(path).await.map_err(|e| ImageError::io(path, e))?;
        let tmp = self.new_tmp();
        let mut sink = Sink::create(&tmp, source.checksum.clone()).await?;
        let result = async {
            let mut buf = vec![0u8; 1 << 20];
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

    fn evict(self: &Arc<Self>) {
        self.evict_except(None);
    }

    /// Evicts least recently used, unpinned images until the total fits;
    /// `keep` (the image just downloaded for waiting callers) is spared.
    fn evict_except(&self, keep: Option<&str>) {
        let mut st = self.state.lock().expect("image cache state");
        while st.total > self.max_bytes {
            let victim = st
                .entries
                .iter()
                .filter(|(sha, e)| e.pins == 0 && Some(sha.as_str()) != keep)
                .min_by_key(|(_, e)| e.last_use)
                .map(|(sha, _)| sha.clone());
            let Some(sha) = victim else {
                warn!(bytes = st.total, bound = self.max_bytes, "image cache over its bound: every image is in use");
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
