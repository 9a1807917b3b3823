//! What a conductor's boot interfaces build and publish boot media with:
//! the publisher ([`Artefacts`] over the HTTP root or Swift, chosen by
//! `[deploy] use_http_web_server_for_images`) and the boot loaders generated
//! ISOs carry. One per conductor process, shared by every task.

use std::sync::Arc;
use std::time::Duration;

use ferric_common::config::Config;

use crate::image::iso::BootLoaders;
use crate::publish::artefacts::Artefacts;
use crate::publish::http::HttpRootStore;
use crate::publish::{PublishError, Store};

pub struct Media {
    pub artefacts: Artefacts,
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
    pub async fn from_config(cfg: &Config, http_url: &str) -> Result<Arc<Media>, PublishError> {
        let root = cfg.http_server_root();
        let store: Arc<dyn Store> = if cfg.deploy.use_http_web_server_for_images {
            Arc::new(HttpRootStore::new(&root, http_url)?)
        } else {
            Arc::new(crate::publish::swift::SwiftStore::connect(&cfg.swift).await?)
        };
        let publisher = store.kind();
        let ttl = Duration::from_secs(cfg.deploy.deploy_helper_images_ttl * 60);
        let iso_validity = Duration::from_secs(cfg.swift.swift_temp_url_duration);
        // ISOs are built next to the HTTP root so the upload is a same-disk copy
        let scratch = root.join(".build");
        Ok(Arc::new(Media {
            artefacts: Artefacts::new(store, ttl, iso_validity, scratch),
            loaders: BootLoaders::from_config(&cfg.deploy),
            publisher,
        }))
    }
}
