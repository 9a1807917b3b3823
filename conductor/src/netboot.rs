//! The conductor's side of network boot that is not a node's: the TFTP
//! root's shared files, the embedded TFTP server, and the clean-up of
//! per-node network-boot files of nodes that moved to another conductor
//! (see `ferric_deploy::boot::netboot`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::Context;
use ferric_common::config::Config;
use ferric_common::ids::ConductorId;
use ferric_deploy::boot::netboot::{self, NetbootRecord};
use ferric_deploy::tftp::{TftpOptions, TftpServer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Inner;

/// Puts the files every PXE boot starts with into the TFTP root:
/// `pxelinux.0` + `ldlinux.c32` (BIOS), `grubx64.efi` (UEFI) where they are
/// configured and exist, `pxelinux.cfg/default` (a MAC without a config of
/// its own boots from disk) and `boot.ipxe` (an iPXE ROM that TFTPs its
/// boot file chains to the API's dynamic script).
pub fn prepare_tftp_root(cfg: &Config) -> anyhow::Result<()> {
    let root = cfg.tftp_root();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let loaders = [
        (&cfg.pxe.pxe_bootfile, "pxelinux.0", "pxe.pxe_bootfile"),
        (&cfg.deploy.ldlinux_c32, "ldlinux.c32", "deploy.ldlinux_c32"),
        (&cfg.pxe.uefi_pxe_bootfile, "grubx64.efi", "pxe.uefi_pxe_bootfile"),
    ];
    for (src, name, key) in loaders {
        if src.as_os_str().is_empty() {
            continue;
        }
        if !src.is_file() {
            if name != "ldlinux.c32" || cfg.pxe.pxe_bootfile.is_file() {
                warn!(%key, path = %src.display(), "network boot loader missing: PXE boots that need it fail until it exists");
            }
            continue;
        }
        netboot::place_file(src, &root.join(name))
            .with_context(|| format!("copying {} into the TFTP root", src.display()))?;
    }
    netboot::write_text(&root.join("pxelinux.cfg").join("default"), netboot::PXELINUX_DEFAULT)
        .context("writing pxelinux.cfg/default")?;
    let api = cfg.deploy.external_callback_url.trim_end_matches('/');
    if !api.is_empty() {
        netboot::write_text(&root.join("boot.ipxe"), &ferric_deploy::boot::ipxe_script::entry_script(api))
            .context("writing boot.ipxe")?;
    }
    Ok(())
}

/// Starts the embedded TFTP server on `[pxe] tftp_listen`.
pub async fn serve_tftp(cfg: &Config, cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = cfg
        .pxe
        .tftp_listen
        .parse()
        .with_context(|| format!("pxe.tftp_listen {:?} is not an address:port", cfg.pxe.tftp_listen))?;
    let opts = TftpOptions {
        max_transfers: cfg.pxe.tftp_max_transfers,
        max_blksize: cfg.pxe.tftp_max_blksize,
        ..TftpOptions::default()
    };
    let server = TftpServer::bind(addr, cfg.tftp_root(), opts)
        .await
        .with_context(|| format!("binding the TFTP server to {addr}"))?;
    let bound = server.local_addr();
    info!(addr = %bound, root = %cfg.tftp_root().display(), "TFTP server listening");
    tokio::spawn(server.serve(cancel));
    Ok(bound)
}

/// Removes this conductor's network-boot files of nodes that are gone or
/// that another live conductor took over (its record names that one, and
/// the node's affinity too) — never of nodes the ring gives back to this
/// one, locked ones, or while fenced, draining or out of the ring. Returns
/// how many nodes' files were removed.
pub async fn reap_lost_nodes_files(inner: &Inner) -> usize {
    if inner.fence.is_fenced() || inner.draining.load(Ordering::SeqCst) {
        return 0;
    }
    let ring = inner.ring.borrow().clone();
    if !ring.members().iter().any(|m| m.id == inner.id && m.incarnation == inner.incarnation) {
        return 0;
    }
    let live: HashSet<ConductorId> = ring.members().iter().map(|m| m.id.clone()).collect();
    let settings = inner.services.settings.netboot.clone();
    let (t, h) = (settings.tftp_root.clone(), settings.http_root.clone());
    let inv = match tokio::task::spawn_blocking(move || netboot::inventory(&t, &h)).await {
        Ok(inv) => inv,
        Err(e) => {
            warn!("listing network-boot files: {e}");
            return 0;
        }
    };
    let mut removed = 0;
    for (node, macs) in inv {
        let gone = match inner.db.get_node(node).await {
            Ok(n) => {
                !inner.owns(&n)
                    && n.reservation.is_none()
                    && n.conductor_affinity.as_ref().is_some_and(|a| *a != inner.id && live.contains(a))
                    && NetbootRecord::load(&n).is_none_or(|r| r.by != *inner.id)
            }
            Err(ferric_common::db::DbError::NotFound) => true,
            Err(e) => {
                warn!(%node, "network-boot clean-up: reading the node failed: {e}");
                false
            }
        };
        if !gone {
            continue;
        }
        let s = settings.clone();
        match tokio::task::spawn_blocking(move || netboot::remove_node_files(&s.tftp_root, &s.http_root, node, &macs))
            .await
        {
            Ok(Ok(())) => {
                removed += 1;
                info!(%node, "network-boot files of a node now served by another conductor (or gone) removed");
            }
            Ok(Err(e)) => warn!(%node, "network-boot clean-up: {e}"),
            Err(e) => warn!(%node, "network-boot clean-up: {e}"),
        }
    }
    removed
}
