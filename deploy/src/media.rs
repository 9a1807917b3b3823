//! What a conductor's boot interfaces build and publish boot media with:
//! the source image cache, the publisher ([`Artefacts`] over the HTTP root
//! or Swift, chosen by `[deploy] use_http_web_server_for_images`) and the
//! boot loaders generated ISOs carry. One per conductor process, shared by
//! every task (`Task::media`).
//!
//! The two operations a virtual-media boot interface needs, both safe to
//! repeat (a retried step, a take-over rebuilding into the new owner's
//! HTTP root):
//!
//! * [`Media::publish_parameters_floppy`]: build the floppy (parameters +
//!   agent token) and publish it under a fresh unguessable name;
//! * [`Media::acquire_boot_iso`]: fetch kernel and ramdisk through the
//!   cache, and publish (or reuse) the shared boot ISO for them and the
//!   parameters, counting this node as a user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferric_common::config::Config;
use uuid::Uuid;

use crate::image::cache::{CachedImage, ImageCache, ImageError, ImageSource};
use crate::image::floppy::parameters_floppy;
use crate::image::iso::{BootIsoSpec, BootLoaders, create_boot_iso};
use crate::publish::artefacts::{Artefacts, Published};
use crate::publish::http::HttpRootStore;
use crate::publish::{PublishError, Store};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("{0}")]
    Invalid(String),
}

impl MediaError {
    /// Whether retrying later may help (network, Swift, disk), as opposed
    /// to bad input (URL, checksum, parameters).
    pub fn is_retryable(&self) -> bool {
        match self {
            MediaError::Image(e) => e.is_retryable(),
            MediaError::Publish(PublishError::Backend { .. } | PublishError::Io { .. }) => true,
            MediaError::Publish(_) | MediaError::Invalid(_) => false,
        }
    }
}

pub struct Media {
    pub artefacts: Artefacts,
    pub images: ImageCache,
    pub loaders: BootLoaders,
    /// `http` or `swift`.
    pub publisher: &'static str,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media").field("publisher", &self.publisher).field("loaders", &self.loaders).finish()
    }
}

impl Media {
    /// Builds the media services from the configuration. `http_url` is
    /// where this conductor serves its HTTP root (`[deploy]
    /// http_server_url`, or derived from the bound listener).
    pub async fn from_config(cfg: &Config, http_url: &str) -> Result<Arc<Media>, MediaError> {
        let root = cfg.http_server_root();
        let store: Arc<dyn Store> = if cfg.deploy.use_http_web_server_for_images {
            Arc::new(HttpRootStore::new(&root, http_url)?)
        } else {
            Arc::new(crate::publish::swift::SwiftStore::connect(&cfg.swift).await?)
        };
        let images = ImageCache::open_with(
            cfg.image_cache_dir(),
            crate::image::cache::CacheOptions {
                max_bytes: cfg.image_cache.max_size_mb * 1024 * 1024,
                download_timeout: Duration::from_secs(cfg.image_cache.download_timeout_secs),
                max_concurrent_downloads: cfg.image_cache.max_concurrent_downloads as usize,
                file_roots: Some(cfg.file_url_roots()),
            },
        )?;
        let ttl = Duration::from_secs(cfg.deploy.deploy_helper_images_ttl * 60);
        let iso_validity = Duration::from_secs(cfg.swift.swift_temp_url_duration);
        // ISOs are built next to the image cache, so the upload to the HTTP
        // root is a same-disk copy and nothing is built inside the root
        let scratch = cfg.image_cache_dir().join("build");
        Ok(Arc::new(Media::new(Artefacts::new(store, ttl, iso_validity, scratch), images, cfg)))
    }

    pub fn new(artefacts: Artefacts, images: ImageCache, cfg: &Config) -> Media {
        let publisher = artefacts.store().kind();
        let loaders = BootLoaders::from_config(&cfg.deploy);
        // not fatal: a conductor that never builds a boot ISO needs none,
        // but the operator should hear of it before the first deploy fails
        let configured =
            [("deploy.isolinux_bin", Some(&loaders.isolinux_bin)), ("deploy.ldlinux_c32", Some(&loaders.ldlinux_c32))]
                .into_iter()
                .chain([("deploy.uefi_loader", loaders.uefi_loader.as_ref())]);
        for (key, path) in configured {
            if let Some(p) = path
                && !p.is_file()
            {
                tracing::warn!(%key, path = %p.display(), "boot loader missing: boot ISOs cannot be built until it exists");
            }
        }
        if loaders.uefi_loader.is_none() {
            tracing::info!("deploy.uefi_loader is empty: generated boot ISOs boot by BIOS only");
        }
        Media { artefacts, images, loaders, publisher }
    }

    /// Builds and publishes a node's parameters floppy; returns its name
    /// (to delete it when the deploy is done) and URL.
    pub async fn publish_parameters_floppy(
        &self,
        node: Uuid,
        params: &BTreeMap<String, String>,
    ) -> Result<Published, MediaError> {
        let image = parameters_floppy(params).map_err(|e| MediaError::Invalid(e.to_string()))?;
        Ok(self.artefacts.publish_floppy(node, image).await?)
    }

    /// The shared boot ISO for `kernel` + `ramdisk` + `kernel_params`,
    /// built and published if no node uses it yet; `node` is counted as a
    /// user until [`Media::release_boot_iso`]. Returns the content id (to
    /// record in the node, e.g. `instance_info.boot_iso`) and the URL.
    pub async fn acquire_boot_iso(
        &self,
        node: Uuid,
        kernel: &ImageSource,
        ramdisk: &ImageSource,
        kernel_params: &str,
    ) -> Result<(String, Published), MediaError> {
        // the cached kernel and ramdisk stay pinned while `inputs` lives,
        // that is until the ISO is built
        let inputs = Arc::new(IsoInputs {
            kernel: self.images.fetch(kernel).await?,
            ramdisk: self.images.fetch(ramdisk).await?,
            params: kernel_params.to_string(),
            loaders: self.loaders.clone(),
        });
        let for_id = inputs.clone();
        let content_id = tokio::task::spawn_blocking(move || for_id.spec().content_id())
            .await
            .map_err(|e| MediaError::Invalid(format!("content id task: {e}")))?
            .map_err(|e| MediaError::Invalid(e.to_string()))?;
        let published = self
            .artefacts
            .acquire_boot_iso(node, &content_id, move |out| {
                create_boot_iso(&inputs.spec(), out).map(drop).map_err(|e| e.to_string())
            })
            .await?;
        Ok((content_id, published))
    }

    /// A user-given ISO (`driver_info.deploy_iso`, `instance_info.boot_iso`)
    /// fetched through the cache and republished in this conductor's store
    /// as a shared, usage-counted boot ISO (Ironic's
    /// `ramdisk_image_download_source = local`). Its content id is derived
    /// from the file's SHA-256 (domain-separated from built ISOs' ids).
    pub async fn acquire_iso_copy(&self, node: Uuid, iso: &ImageSource) -> Result<(String, Published), MediaError> {
        let cached = self.images.fetch(iso).await?;
        let content_id = iso_copy_id(&cached.sha256);
        let path = cached.path.clone();
        let published = self
            .artefacts
            .acquire_boot_iso(node, &content_id, move |out| {
                // `cached` is moved in: pinned until the copy is done
                let _pin = &cached;
                std::fs::copy(&path, out).map(drop).map_err(|e| format!("copying {}: {e}", path.display()))
            })
            .await?;
        Ok((content_id, published))
    }

    /// A fresh URL of a published floppy (valid for the helper-image TTL).
    pub async fn floppy_url(&self, name: &str) -> Result<Option<String>, MediaError> {
        Ok(self.artefacts.fresh_url(name).await?)
    }

    /// A URL without `?` or `&` for a published object:
    /// `<base>/vmedia/<name>`, served by [`redirect_router`] as a redirect
    /// to a freshly signed URL (some BMCs refuse URLs with a query).
    pub fn plain_url(base: &str, name: &str) -> String {
        format!("{}/vmedia/{}", base.trim_end_matches('/'), crate::percent::encode_path(name))
    }

    /// Drops `node`'s use of a boot ISO; the last user deletes it.
    pub async fn release_boot_iso(&self, node: Uuid, content_id: &str) -> Result<usize, MediaError> {
        Ok(self.artefacts.release_boot_iso(node, content_id).await?)
    }
}

/// The content id of a republished ISO whose file has SHA-256 `sha256`.
pub fn iso_copy_id(sha256: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("ferric-iso-copy\n{sha256}").as_bytes()))
}

/// What a boot ISO is built from, owned so it can move to a blocking task.
struct IsoInputs {
    kernel: CachedImage,
    ramdisk: CachedImage,
    params: String,
    loaders: BootLoaders,
}

impl IsoInputs {
    fn spec(&self) -> BootIsoSpec<'_> {
        BootIsoSpec {
            kernel: &self.kernel.path,
            kernel_sha256: &self.kernel.sha256,
            ramdisk: &self.ramdisk.path,
            ramdisk_sha256: &self.ramdisk.sha256,
            kernel_params: &self.params,
            loaders: &self.loaders,
        }
    }
}

/// The media of the running conductor incarnation, for the HTTP routes the
/// process serves before (and across) incarnations; empty = 503.
pub type MediaSlot = Arc<std::sync::RwLock<Option<Arc<Media>>>>;

/// `/vmedia/<name>` → `302 Found` to a fresh URL of the object (a Swift
/// temp URL signed now, or the HTTP root URL); 404 for unknown or private
/// names, 503 while no conductor incarnation runs.
pub fn redirect_router(slot: MediaSlot) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/vmedia/{*name}",
        axum::routing::get(move |axum::extract::Path(name): axum::extract::Path<String>| {
            let media = slot.read().expect("media slot").clone();
            async move {
                let Some(media) = media else {
                    return (StatusCode::SERVICE_UNAVAILABLE, "no conductor running\n").into_response();
                };
                match media.artefacts.fresh_url(&name).await {
                    Ok(Some(url)) => (StatusCode::FOUND, [(header::LOCATION, url)]).into_response(),
                    Ok(None) | Err(PublishError::BadName(_) | PublishError::Private(_)) => {
                        (StatusCode::NOT_FOUND, "not found\n").into_response()
                    }
                    Err(e) => {
                        tracing::warn!(object = %name, "vmedia redirect: {e}");
                        (StatusCode::SERVICE_UNAVAILABLE, "publisher unavailable\n").into_response()
                    }
                }
            }
        }),
    )
}
