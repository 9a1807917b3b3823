//! What the published objects mean, on top of either [`Store`].
//!
//! **Boot ISOs are shared.** A boot ISO is named by its content id
//! (`boot-<sha256>.iso`, see `image::iso::BootIsoSpec::content_id`), so every
//! node deployed from the same kernel, ramdisk and parameters uses one file.
//! Who uses it is recorded as one private marker object per node,
//! `.users/boot-<id>.iso/<node uuid>`; the usage count is the number of
//! markers. In the HTTP root it is mirrored into the ISO's `usage-count`
//! metadata for operators, as the iLO spec has it; in Swift it is not: a
//! metadata POST to an object that BMCs are reading makes Swift answer one of
//! those reads 404 (see [`Store::put_file_if_absent`]), and a BMC that cannot
//! read its ISO fails the deploy. There, count the markers (`swift list
//! <container> --prefix .users/boot-<id>.iso/`). For the same reason a shared
//! ISO, once uploaded, is never written again while it is in use: it is
//! uploaded only if absent, and a scheduled deletion is cancelled only when
//! one is scheduled.
//!
//! * acquire(node): put the node's marker first, then build and upload
//!   the ISO if it is missing, then recount. Idempotent: a retried step
//!   (or a take-over re-running it) puts the same marker again and the
//!   count does not move.
//! * release(node): delete the marker, recount; the release that leaves no
//!   marker deletes the ISO.
//!
//! Markers instead of a counter because a counter is a read-modify-write
//! that a crash or a retry gets wrong (a count incremented twice is an ISO
//! never deleted). Acquire and release of one ISO are serialised inside a
//! conductor, which is all a private store (the HTTP root) needs: there the
//! last release deletes the ISO at once.
//!
//! A shared store (Swift) is used by every conductor at once, and its
//! listings may lag behind writes, so a releaser can count zero users while
//! another conductor has just written its marker and found the ISO. There
//! the last release only *schedules* the deletion (`X-Delete-After` of
//! [`SHARED_DELETION_GRACE`]) and every acquire cancels a scheduled
//! deletion (re-uploading the ISO if it already went). An acquirer loses its
//! ISO only if its marker stays invisible to listings for the whole grace.
//!
//! **Config drives are private to one instance**: `configdrive-<node>-<128
//! random bits>.img`, no time to live, removed when the instance goes (or by
//! the lost-node clean-up, like floppies).
//!
//! **Floppies are private to one deploy.** `floppy-<node>-<128 random
//! bits>.img`: the name is the capability (it carries the agent token, and
//! the HTTP root has no listing), deleted after `deploy_helper_images_ttl`
//! by the store (Swift `X-Delete-After`, the HTTP root's clean-up pass) or
//! when the deploy is done, whichever comes first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::{PublishError, Result, Store};

/// How long a boot ISO nobody uses stays in a shared store before Swift
/// deletes it (see the module doc).
pub const SHARED_DELETION_GRACE: Duration = Duration::from_secs(600);

/// Metadata key of a boot ISO's usage count.
pub const USAGE_COUNT: &str = "usage-count";

/// The artefacts a store holds (see [`Artefacts::inventory`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Inventory {
    /// Content ids of published boot ISOs.
    pub boot_isos: Vec<String>,
    /// Uses of boot ISOs: (content id, node).
    pub uses: Vec<(String, Uuid)>,
    /// Published floppies and config drives: (object name, node).
    pub floppies: Vec<(String, Uuid)>,
}

/// A published object and the URL a BMC fetches it from.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub name: String,
    pub url: String,
}

pub struct Artefacts {
    store: Arc<dyn Store>,
    floppy_ttl: Duration,
    /// How long a handed-out boot ISO URL stays valid (Swift temp URLs).
    iso_url_validity: Duration,
    /// Where ISOs are built before upload.
    scratch: PathBuf,
    /// See [`SHARED_DELETION_GRACE`]; shorter in tests.
    deletion_grace: Duration,
    /// One async mutex per boot ISO, so acquire and release of one ISO do
    /// not interleave inside this conductor.
    iso_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub fn boot_iso_name(content_id: &str) -> String {
    format!("boot-{content_id}.iso")
}

fn holders_prefix(iso: &str) -> String {
    format!(".users/{iso}/")
}

fn check_content_id(id: &str) -> Result<()> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(PublishError::BadName(format!("boot ISO content id {id:?} (64 lowercase hex digits expected)")))
    }
}

impl Artefacts {
    /// `scratch` is where ISOs are built before upload; it belongs to this
    /// conductor alone, and whatever a killed build left there is deleted now.
    pub fn new(store: Arc<dyn Store>, floppy_ttl: Duration, iso_url_validity: Duration, scratch: PathBuf) -> Self {
        if let Ok(entries) = std::fs::read_dir(&scratch) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    tracing::info!(file = %e.path().display(), "removing an ISO build left by an earlier process");
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Artefacts {
            store,
            floppy_ttl,
            iso_url_validity,
            scratch,
            deletion_grace: SHARED_DELETION_GRACE,
            iso_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Another grace for unused ISOs in a shared store (tests).
    pub fn with_deletion_grace(mut self, grace: Duration) -> Self {
        self.deletion_grace = grace;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn iso_lock(&self, iso: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.iso_locks.lock().expect("iso lock map");
        // forget locks nobody holds, so the map stays as small as the set of ISOs in use
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(iso.to_string()).or_default().clone()
    }

    /// Publishes a node's parameters floppy under a fresh unguessable name,
    /// gone after the helper-image TTL.
    pub async fn publish_floppy(&self, node: Uuid, image: Vec<u8>) -> Result<Published> {
        let name = format!("floppy-{node}-{:032x}.img", rand::random::<u128>());
        self.store.put_bytes(&name, image, Some(self.floppy_ttl)).await?;
        let url = self.store.url(&name, self.floppy_ttl)?;
        Ok(Published { name, url })
    }

    /// Publishes an instance's config drive under a fresh unguessable name
    /// (it may hold secrets, e.g. in user_data), with no time to live: an
    /// active node's BMC may read it again at every boot. Listed and
    /// removed like a floppy.
    pub async fn publish_configdrive(&self, node: Uuid, image: Vec<u8>) -> Result<Published> {
        let name = format!("configdrive-{node}-{:032x}.img", rand::random::<u128>());
        self.store.put_bytes(&name, image, None).await?;
        let url = self.store.url(&name, self.iso_url_validity)?;
        Ok(Published { name, url })
    }

    /// Deletes a floppy or a config drive (idempotent).
    pub async fn remove_floppy(&self, name: &str) -> Result<()> {
        if !name.starts_with("floppy-") && !name.starts_with("configdrive-") {
            return Err(PublishError::BadName(format!("{name} is not a floppy")));
        }
        self.store.delete(name).await
    }

    /// Records that `node` uses the boot ISO `content_id`, building it with
    /// `build(path)` (a blocking function that writes the ISO at `path`)
    /// and uploading it when it is not published yet. Returns its URL.
    pub async fn acquire_boot_iso<F>(&self, node: Uuid, content_id: &str, build: F) -> Result<Published>
    where
        F: FnOnce(&Path) -> std::result::Result<(), String> + Send + 'static,
    {
        check_content_id(content_id)?;
        let iso = boot_iso_name(content_id);
        let lock = self.iso_lock(&iso);
        let _held = lock.lock().await;
        let marker = format!("{}{node}", holders_prefix(&iso));
        self.store.put_bytes(&marker, node.to_string().into_bytes(), None).await?;
        let mut present = self.store.exists(&iso).await?;
        if present && self.store.shared() {
            // cancel a deletion the last releaser may have scheduled
            match self.store.set_delete_after(&iso, None).await {
                Ok(()) => {}
                Err(PublishError::NotFound(_)) => present = false,
                Err(e) => return Err(e),
            }
        }
        if !present {
            metrics::counter!(ferric_common::metrics::BOOT_ISO_BUILDS_TOTAL, "publisher" => self.store.kind())
                .increment(1);
            tokio::fs::create_dir_all(&self.scratch).await.map_err(|e| PublishError::io(&self.scratch, e))?;
            let path = self.scratch.join(format!(".build-{:032x}-{iso}", rand::random::<u128>()));
            let target = path.clone();
            let built = tokio::task::spawn_blocking(move || build(&target))
                .await
                .map_err(|e| PublishError::Build(format!("ISO build task failed: {e}")))?;
            // another conductor may have uploaded it since we looked
            let uploaded = match built {
                Ok(()) => self.store.put_file_if_absent(&iso, &path).await.map(|_| ()),
                Err(e) => Err(PublishError::Build(e)),
            };
            let _ = tokio::fs::remove_file(&path).await;
            if let Err(e) = uploaded {
                // leave no marker behind for an ISO that does not exist
                let _ = self.store.delete(&marker).await;
                return Err(e);
            }
        }
        if !self.store.shared() {
            let users = self.store.list(&holders_prefix(&iso)).await?.len();
            self.store.set_metadata(&iso, USAGE_COUNT, &users.to_string()).await?;
        }
        let url = self.store.url(&iso, self.iso_url_validity)?;
        Ok(Published { name: iso, url })
    }

    /// Drops `node`'s use of the boot ISO; the last release deletes it (in
    /// a shared store: schedules its deletion). Returns the uses left.
    /// Idempotent.
    pub async fn release_boot_iso(&self, node: Uuid, content_id: &str) -> Result<usize> {
        check_content_id(content_id)?;
        let iso = boot_iso_name(content_id);
        let lock = self.iso_lock(&iso);
        let _held = lock.lock().await;
        self.store.delete(&format!("{}{node}", holders_prefix(&iso))).await?;
        let users = self.store.list(&holders_prefix(&iso)).await?.len();
        if users == 0 && self.store.shared() {
            match self.store.set_delete_after(&iso, Some(self.deletion_grace)).await {
                Ok(()) | Err(PublishError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        } else if users == 0 {
            self.store.delete(&iso).await?;
        } else if !self.store.shared() && self.store.exists(&iso).await? {
            self.store.set_metadata(&iso, USAGE_COUNT, &users.to_string()).await?;
        }
        Ok(users)
    }

    /// How many nodes use the boot ISO (its markers).
    pub async fn boot_iso_users(&self, content_id: &str) -> Result<Vec<Uuid>> {
        check_content_id(content_id)?;
        let prefix = holders_prefix(&boot_iso_name(content_id));
        let names = self.store.list(&prefix).await?;
        Ok(names.iter().filter_map(|n| n.strip_prefix(&prefix)).filter_map(|u| u.parse().ok()).collect())
    }

    /// What the store holds, from one listing.
    pub async fn inventory(&self) -> Result<Inventory> {
        let mut inv = Inventory::default();
        for name in self.store.list("").await? {
            if let Some(rest) = name.strip_prefix(".users/boot-") {
                if let Some((iso, node)) = rest.split_once(".iso/")
                    && let Ok(node) = node.parse()
                {
                    inv.uses.push((iso.to_string(), node));
                }
            } else if let Some(id) = name.strip_prefix("boot-").and_then(|n| n.strip_suffix(".iso")) {
                inv.boot_isos.push(id.to_string());
            } else if let Some(node) = name
                .strip_prefix("floppy-")
                .or_else(|| name.strip_prefix("configdrive-"))
                .and_then(|n| n.get(..36)?.parse().ok())
            {
                inv.floppies.push((name, node));
            }
        }
        Ok(inv)
    }

    /// A fresh URL for a published boot ISO (Swift temp URLs expire; a
    /// take-over or a reboot re-signs).
    pub fn boot_iso_url(&self, content_id: &str) -> Result<String> {
        check_content_id(content_id)?;
        self.store.url(&boot_iso_name(content_id), self.iso_url_validity)
    }

    /// A fresh URL for any published, non-private object: floppies are
    /// valid for the helper-image TTL, everything else for the ISO
    /// validity. `None` when the object does not exist.
    pub async fn fresh_url(&self, name: &str) -> Result<Option<String>> {
        super::check_name(name)?;
        if super::is_private(name) {
            return Err(PublishError::Private(name.to_string()));
        }
        if !self.store.exists(name).await? {
            return Ok(None);
        }
        let validity = if name.starts_with("floppy-") { self.floppy_ttl } else { self.iso_url_validity };
        Ok(Some(self.store.url(name, validity)?))
    }

    /// Runs the store's expiry pass (floppies past their TTL).
    pub async fn expire(&self) -> Result<usize> {
        self.store.expire().await
    }
}
