//! Network boot: `pxe` / `ilo-pxe` (firmware PXE → pxelinux or GRUB over
//! TFTP) and `ipxe` / `ilo-ipxe` (iPXE fetching a script the API generates
//! per request, see [`super::ipxe_script`]).
//!
//! # What the node row records
//!
//! `driver_internal_info.netboot` ([`NetbootRecord`]): what the node boots
//! from the network now (the deploy/rescue ramdisk, its netbooted instance,
//! or nothing: local boot), from which images, with which kernel
//! parameters, and which conductor placed the files. No agent token: a
//! network-booted ramdisk gets its token at its first lookup, because
//! anything on the kernel command line is readable by whoever can fetch the
//! config (the iSCSI deploy's deploy key is refused here for that reason).
//!
//! # Files
//!
//! One directory per node, `<root>/<node uuid>/`, holding `deploy_kernel` +
//! `deploy_ramdisk` (or `kernel` + `ramdisk` for an instance): hard links to
//! the image cache's verified copies (a copy where the cache is on another
//! file system), written to a temporary name and renamed, so a node never
//! reads half a kernel. For `pxe` the root is `[pxe] tftp_root` and the
//! per-MAC configs sit beside it: `pxelinux.cfg/01-<mac>` (BIOS) or
//! `grub/grub.cfg-01-<mac>` (UEFI). For `ipxe` the root is the HTTP root's
//! `ipxe/` directory and there is no config file at all: the script is made
//! by the API from this record at each request. With `[ipxe] use_swift`
//! nothing is written anywhere: the API signs Swift temporary URLs of the
//! `swift://container/object` images.
//!
//! # Take-over
//!
//! The new owner places the same files (same images, same bytes) in its
//! own roots and records itself as `by`; a running iPXE script keeps the
//! old owner's URLs only until its next request. The old owner's copies
//! are removed by its lost-node clean-up once the record names a live
//! other conductor — never merely because the ring moved the node.
//! PXE needs the DHCP server's `next-server` for the node to follow its
//! conductor (Ferric does not manage DHCP): iPXE does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ferric_common::model::Node;
use ferric_common::states::ProvisionState;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;
use uuid::Uuid;

use super::virtual_media::{Source, info_text, source};
use crate::bmc::redfish::Vendor;
use crate::driver::*;
use crate::management::redfish::set_boot;
use crate::token::AgentTokens;

pub const PXE: &str = "pxe";
pub const IPXE: &str = "ipxe";
pub const ILO_PXE: &str = "ilo-pxe";
pub const ILO_IPXE: &str = "ilo-ipxe";
pub const RECORD_KEY: &str = "netboot";
/// The HTTP root's directory of iPXE files.
pub const IPXE_DIR: &str = "ipxe";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    Pxe,
    Ipxe,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Pxe => "pxe",
            Flavor::Ipxe => "ipxe",
        }
    }
}

/// What the node boots from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetPhase {
    /// The deploy (or rescue) ramdisk.
    Ramdisk,
    /// Its instance's kernel and ramdisk (`boot_option` ramdisk/netboot).
    Instance,
    /// Nothing: an active node that boots from its disk.
    Local,
}

/// The kernel and ramdisk a phase boots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetImages {
    pub kernel: Source,
    pub ramdisk: Source,
    /// The kernel command line (without `BOOTIF`, which the firmware or
    /// iPXE fills in).
    pub params: String,
    /// Where the node downloads them (the owner's HTTP root, iPXE only);
    /// empty with `[ipxe] use_swift` (the API signs a URL per request) and
    /// for PXE (relative TFTP paths).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ramdisk_url: String,
}

/// `driver_internal_info.netboot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetbootRecord {
    pub flavor: Flavor,
    pub phase: NetPhase,
    pub uefi: bool,
    /// The conductor whose roots hold the files.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<NetImages>,
    /// MACs (lower case, colons) with a per-MAC PXE config in `by`'s root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<String>,
}

impl NetbootRecord {
    pub fn load(node: &Node) -> Option<NetbootRecord> {
        node.driver_internal_info.get(RECORD_KEY).and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    fn store(&self, node: &mut Node) {
        node.driver_internal_info
            .insert(RECORD_KEY.into(), serde_json::to_value(self).expect("a netboot record serialises"));
    }

    fn clear(node: &mut Node) {
        node.driver_internal_info.remove(RECORD_KEY);
    }

    /// The file names of the images in the node's directory.
    pub fn file_names(&self) -> (&'static str, &'static str) {
        match self.phase {
            NetPhase::Ramdisk => ("deploy_kernel", "deploy_ramdisk"),
            _ => ("kernel", "ramdisk"),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` → `01-aa-bb-cc-dd-ee-ff` (pxelinux's and GRUB's
/// per-MAC config names); `None` for anything but a MAC.
pub fn mac_config_name(mac: &str) -> Option<String> {
    let m = mac.trim().to_ascii_lowercase();
    let parts: Vec<&str> = m.split([':', '-']).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| format!("01-{}", parts.join("-")))
}

/// The pxelinux config (BIOS) booting `dir/<kernel>` and `dir/<ramdisk>`.
pub fn pxelinux_config(node: Uuid, kernel: &str, ramdisk: &str, params: &str) -> String {
    format!(
        "# written by Ferric for node {node}\nDEFAULT boot\nPROMPT 0\nTIMEOUT 0\nLABEL boot\n  KERNEL {node}/{kernel}\n  \
         INITRD {node}/{ramdisk}\n  APPEND {params}\n  IPAPPEND 2\n"
    )
}

/// The GRUB config (UEFI) booting the same files, paths from the TFTP
/// root (GRUB's `$root` is the TFTP server it was loaded from).
pub fn grub_config(node: Uuid, kernel: &str, ramdisk: &str, params: &str, mac: &str) -> String {
    format!(
        "# written by Ferric for node {node}\nset default=boot\nset timeout=0\nmenuentry \"boot\" {{\n    \
         linux /{node}/{kernel} {params} BOOTIF=01-{}\n    initrd /{node}/{ramdisk}\n}}\n",
        mac.replace(':', "-")
    )
}

/// The config the TFTP root's `pxelinux.cfg/default` holds: a node whose
/// MAC has no config of its own boots from its disk.
pub const PXELINUX_DEFAULT: &str = "# written by Ferric: no per-MAC config for this node, so boot from the local disk\nDEFAULT local\nPROMPT 0\n\
     TIMEOUT 0\nLABEL local\n  LOCALBOOT 0\n";

/// Places `src` at `dest` (hard link, else copy; temp name + rename).
pub fn place_file(src: &Path, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    if let (Ok(s), Ok(d)) = (std::fs::metadata(src), std::fs::metadata(dest))
        && same(&s, &d)
    {
        // already this very file (a retried step, a repeated take-over)
        return Ok(());
    }
    let dir = dest.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp)?;
    }
    let renamed = std::fs::rename(&tmp, dest);
    // rename(2) of two links to one file does nothing and succeeds: the
    // temporary link would stay
    let _ = std::fs::remove_file(&tmp);
    renamed
}

/// Writes `text` to `dest` atomically.
pub fn write_text(dest: &Path, text: &str) -> std::io::Result<()> {
    let dir = dest.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn remove_if_present(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DriverError {
    DriverError::Retryable(format!("{what} {}: {e}", path.display()))
}

/// The per-MAC config paths of `mac` under a TFTP root.
pub fn pxe_config_paths(tftp_root: &Path, mac: &str) -> Option<(PathBuf, PathBuf)> {
    let name = mac_config_name(mac)?;
    Some((tftp_root.join("pxelinux.cfg").join(&name), tftp_root.join("grub").join(format!("grub.cfg-{name}"))))
}

/// Removes everything a conductor placed for `node` in its roots: the
/// node's directories and the per-MAC configs of `macs` that still name
/// the node. Used by clean-up and by the lost-node clean-up of a conductor
/// whose node moved away.
pub fn remove_node_files(tftp_root: &Path, http_root: &Path, node: Uuid, macs: &[String]) -> std::io::Result<()> {
    for dir in [tftp_root.join(node.to_string()), http_root.join(IPXE_DIR).join(node.to_string())] {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let marker = format!("for node {node}");
    for mac in macs {
        let Some((a, b)) = pxe_config_paths(tftp_root, mac) else { continue };
        for p in [a, b] {
            // another node may have been given this MAC since
            if std::fs::read_to_string(&p).is_ok_and(|t| t.lines().next().is_some_and(|l| l.contains(&marker))) {
                remove_if_present(&p)?;
            }
        }
    }
    Ok(())
}

/// The nodes with a directory in a conductor's roots, with the MACs whose
/// PXE config names them (for the lost-node clean-up).
pub fn inventory(tftp_root: &Path, http_root: &Path) -> BTreeMap<Uuid, Vec<String>> {
    let mut out: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for dir in [tftp_root.to_path_buf(), http_root.join(IPXE_DIR)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(u) = e.file_name().to_string_lossy().parse::<Uuid>()
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                out.entry(u).or_default();
            }
        }
    }
    for (sub, prefix) in [("pxelinux.cfg", "01-"), ("grub", "grub.cfg-01-")] {
        for e in std::fs::read_dir(tftp_root.join(sub)).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(mac) = name.strip_prefix(prefix) else { continue };
            let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
            let node = text.lines().next().and_then(|l| l.rsplit(' ').next()).and_then(|u| u.parse::<Uuid>().ok());
            if let Some(node) = node {
                let mac = mac.replace('-', ":");
                let macs = out.entry(node).or_default();
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
        }
    }
    out
}

/// Which BMC the interface sets the boot device on: the node's hardware
/// type's (one implementation serves every type that offers the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootBmc {
    /// fake-hardware: none.
    None,
    Redfish(Vendor),
}

fn bmc_of(node: &Node) -> BootBmc {
    match node.driver.as_str() {
        crate::hardware::fake::HARDWARE_TYPE => BootBmc::None,
        crate::hardware::ilo::HARDWARE_TYPE => BootBmc::Redfish(Vendor::Hpe),
        _ => BootBmc::Redfish(Vendor::Generic),
    }
}

pub struct NetBoot {
    flavor: Flavor,
    /// The `ilo-` names.
    ilo: bool,
}

impl NetBoot {
    pub fn new(flavor: Flavor, ilo: bool) -> NetBoot {
        NetBoot { flavor, ilo }
    }

    fn root(&self, task: &Task) -> PathBuf {
        let s = &task.services.settings.netboot;
        match self.flavor {
            Flavor::Pxe => s.tftp_root.clone(),
            Flavor::Ipxe => s.http_root.join(IPXE_DIR),
        }
    }

    fn swift_mode(&self, task: &Task) -> bool {
        self.flavor == Flavor::Ipxe && task.services.settings.netboot.use_swift
    }

    fn uefi(task: &Task) -> bool {
        crate::management::redfish::boot_mode(task) == crate::bmc::redfish::BootMode::Uefi
    }

    /// The MACs the node network-boots from: its PXE-enabled ports (all of
    /// them when none is flagged).
    fn macs(task: &Task) -> Vec<String> {
        let flagged: Vec<String> =
            task.ports.iter().filter(|p| p.pxe_enabled).map(|p| p.address.to_ascii_lowercase()).collect();
        if flagged.is_empty() { task.ports.iter().map(|p| p.address.to_ascii_lowercase()).collect() } else { flagged }
    }

    async fn set_boot(&self, task: &mut Task, device: BootDevice, persistent: bool) -> DriverResult<()> {
        match bmc_of(&task.node) {
            BootBmc::None => Ok(()),
            BootBmc::Redfish(vendor) => set_boot(task, vendor, device, persistent).await,
        }
    }

    /// Checks an image for this flavor: with `use_swift` it must name a
    /// Swift object (nobody downloads it before the node does).
    fn check_source(&self, task: &Task, field: &str, s: &Source) -> DriverResult<()> {
        let swift = s.url.starts_with("swift://");
        if self.swift_mode(task) {
            crate::boot::ipxe_script::swift_object(&s.url).map_err(|e| {
                DriverError::Invalid(format!(
                    "{field}: with [ipxe] use_swift the images are Swift objects named swift://<container>/<object>: \
                     {e}"
                ))
            })?;
        } else if swift {
            return Err(DriverError::Invalid(format!(
                "{field} is a Swift object ({}), which only [ipxe] use_swift = true boots",
                s.url
            )));
        }
        Ok(())
    }

    /// The images of the deploy/rescue ramdisk.
    fn ramdisk_images(&self, task: &Task) -> DriverResult<(Source, Source)> {
        let rescue = matches!(task.node.provision_state, ProvisionState::Rescuing | ProvisionState::RescueWait);
        let prefix = if rescue { "rescue" } else { "deploy" };
        let info = &task.node.driver_info;
        let kernel = self.any_source(task, info, "driver_info", &format!("{prefix}_kernel"))?;
        let ramdisk = self.any_source(task, info, "driver_info", &format!("{prefix}_ramdisk"))?;
        match (kernel, ramdisk) {
            (Some(k), Some(r)) => Ok((k, r)),
            (k, r) => {
                let missing: Vec<String> = [("kernel", k.is_none()), ("ramdisk", r.is_none())]
                    .into_iter()
                    .filter(|(_, m)| *m)
                    .map(|(w, _)| format!("driver_info.{prefix}_{w}"))
                    .collect();
                Err(DriverError::Invalid(format!(
                    "{} boot needs driver_info.{prefix}_kernel and driver_info.{prefix}_ramdisk; missing: {}",
                    self.flavor.as_str(),
                    missing.join(", ")
                )))
            }
        }
    }

    /// A source of either kind (`swift://` is not a URL the image cache
    /// parses, so it is checked here).
    fn any_source(
        &self,
        task: &Task,
        obj: &serde_json::Map<String, Value>,
        field: &str,
        key: &str,
    ) -> DriverResult<Option<Source>> {
        let s = match info_text(obj, key) {
            Some(url) if url.starts_with("swift://") => {
                Some(Source { url, checksum: info_text(obj, &format!("{key}_checksum")) })
            }
            _ => source(obj, field, key)?,
        };
        if let Some(s) = &s {
            self.check_source(task, &format!("{field}.{key}"), s)?;
        }
        Ok(s)
    }

    fn instance_images(&self, task: &Task) -> DriverResult<(Source, Source, String)> {
        let ii = &task.node.instance_info;
        if info_text(ii, "boot_iso").is_some() {
            return Err(DriverError::Invalid(format!(
                "instance_info.boot_iso is booted by virtual media; the {} boot interface boots instance_info.kernel \
                 and instance_info.ramdisk",
                self.flavor.as_str()
            )));
        }
        let kernel = self.any_source(task, ii, "instance_info", "kernel")?;
        let ramdisk = self.any_source(task, ii, "instance_info", "ramdisk")?;
        let (Some(kernel), Some(ramdisk)) = (kernel, ramdisk) else {
            return Err(DriverError::Invalid(format!(
                "booting the instance by {} needs instance_info.kernel and instance_info.ramdisk",
                self.flavor.as_str()
            )));
        };
        let base = info_text(ii, "kernel_append_params")
            .unwrap_or_else(|| task.services.settings.kernel_append_params.clone());
        let extra = info_text(ii, "ramdisk_kernel_arguments").unwrap_or_default();
        let params = [base, extra].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
        Ok((kernel, ramdisk, params))
    }

    /// Places the record's images (and, for PXE, its per-MAC configs) in
    /// this conductor's roots and records this conductor as `by`.
    async fn place(&self, task: &mut Task, rec: &mut NetbootRecord) -> DriverResult<()> {
        let node = task.uuid();
        rec.by = task.conductor_id.clone();
        let (kname, rname) = rec.file_names();
        let Some(images) = rec.images.as_mut() else {
            rec.macs.clear();
            return Ok(());
        };
        crate::image::iso::check_kernel_params(&images.params).map_err(|e| DriverError::Invalid(e.to_string()))?;
        if self.swift_mode(task) {
            images.kernel_url.clear();
            images.ramdisk_url.clear();
            return Ok(());
        }
        let dir = self.root(task).join(node.to_string());
        let media = task.media();
        let kernel = media.images.fetch(&images.kernel.image()?).await.map_err(crate::media::MediaError::from)?;
        let ramdisk = media.images.fetch(&images.ramdisk.image()?).await.map_err(crate::media::MediaError::from)?;
        let (kdest, rdest) = (dir.join(kname), dir.join(rname));
        let (kp, rp) = (kernel.path.clone(), ramdisk.path.clone());
        let (kd, rd) = (kdest.clone(), rdest.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            place_file(&kp, &kd)?;
            place_file(&rp, &rd)
        })
        .await
        .map_err(|e| DriverError::Failed(format!("placing boot files: {e}")))?
        .map_err(|e| io_err("placing boot files in", &dir, e))?;
        drop((kernel, ramdisk));
        match self.flavor {
            Flavor::Ipxe => {
                let base = &task.services.settings.netboot.http_url;
                if base.is_empty() {
                    return Err(DriverError::Invalid(
                        "ipxe boot serves kernels from the conductor's HTTP root, but this conductor has none \
                         (conductor.http_listen / deploy.http_server_url), and [ipxe] use_swift is off"
                            .into(),
                    ));
                }
                images.kernel_url = format!("{base}/{IPXE_DIR}/{node}/{kname}");
                images.ramdisk_url = format!("{base}/{IPXE_DIR}/{node}/{rname}");
            }
            Flavor::Pxe => {
                let tftp = task.services.settings.netboot.tftp_root.clone();
                let macs = Self::macs(task);
                if macs.is_empty() {
                    return Err(DriverError::Invalid(format!(
                        "node {node} has no port, so no per-MAC PXE config can be written: create its ports first"
                    )));
                }
                let (uefi, params) = (rec.uefi, images.params.clone());
                let written = macs.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    for mac in &written {
                        let Some((bios_cfg, grub_cfg)) = pxe_config_paths(&tftp, mac) else { continue };
                        if uefi {
                            write_text(&grub_cfg, &grub_config(node, kname, rname, &params, mac))?;
                            remove_if_present(&bios_cfg)?;
                        } else {
                            write_text(&bios_cfg, &pxelinux_config(node, kname, rname, &params))?;
                            remove_if_present(&grub_cfg)?;
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|e| DriverError::Failed(format!("writing PXE configs: {e}")))?
                .map_err(|e| io_err("writing PXE configs in", &task.services.settings.netboot.tftp_root, e))?;
                rec.macs = macs;
            }
        }
        Ok(())
    }

    /// Removes what this conductor placed for the node (files another
    /// conductor placed in its own roots are its own to remove).
    async fn remove(&self, task: &Task, rec: &NetbootRecord) -> DriverResult<()> {
        if rec.by != task.conductor_id {
            return Ok(());
        }
        let s = task.services.settings.netboot.clone();
        let (node, macs) = (task.uuid(), rec.macs.clone());
        tokio::task::spawn_blocking(move || remove_node_files(&s.tftp_root, &s.http_root, node, &macs))
            .await
            .map_err(|e| DriverError::Failed(format!("removing boot files: {e}")))?
            .map_err(|e| DriverError::Retryable(format!("removing the boot files of node {node}: {e}")))
    }

    /// Whether this conductor's roots hold the record's files.
    fn present_here(&self, task: &Task, rec: &NetbootRecord) -> bool {
        if rec.by != task.conductor_id {
            return false;
        }
        let Some(images) = &rec.images else { return true };
        if self.swift_mode(task) {
            return true;
        }
        let dir = self.root(task).join(task.uuid().to_string());
        let (k, r) = rec.file_names();
        let files = dir.join(k).is_file() && dir.join(r).is_file();
        match self.flavor {
            Flavor::Ipxe => {
                let base = format!("{}/{IPXE_DIR}/", task.services.settings.netboot.http_url);
                files && images.kernel_url.starts_with(&base)
            }
            Flavor::Pxe => {
                let tftp = &task.services.settings.netboot.tftp_root;
                files
                    && rec.macs.iter().all(|m| {
                        pxe_config_paths(tftp, m).is_some_and(|(b, g)| if rec.uefi { g.is_file() } else { b.is_file() })
                    })
            }
        }
    }

    async fn start_phase(&self, task: &mut Task, phase: NetPhase, images: Option<NetImages>) -> DriverResult<()> {
        if let Some(old) = NetbootRecord::load(&task.node) {
            self.remove(task, &old).await?;
        }
        let mut rec = NetbootRecord {
            flavor: self.flavor,
            phase,
            uefi: Self::uefi(task),
            by: task.conductor_id.clone(),
            images,
            macs: Vec::new(),
        };
        self.place(task, &mut rec).await?;
        rec.store(&mut task.node);
        Ok(())
    }

    async fn end(&self, task: &mut Task) -> DriverResult<()> {
        if let Some(rec) = NetbootRecord::load(&task.node) {
            self.remove(task, &rec).await?;
            NetbootRecord::clear(&mut task.node);
        }
        Ok(())
    }
}

#[async_trait]
impl BootInterface for NetBoot {
    fn name(&self) -> &'static str {
        match (self.flavor, self.ilo) {
            (Flavor::Pxe, true) => ILO_PXE,
            (Flavor::Ipxe, true) => ILO_IPXE,
            (Flavor::Pxe, false) => PXE,
            (Flavor::Ipxe, false) => IPXE,
        }
    }

    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            (
                "deploy_kernel",
                "URL (http, https, file; swift://container/object with [ipxe] use_swift) of the deploy kernel. Required.",
            ),
            ("deploy_ramdisk", "URL of the deploy ramdisk. Required."),
            ("deploy_kernel_checksum", "Checksum of deploy_kernel. Optional."),
            ("deploy_ramdisk_checksum", "Checksum of deploy_ramdisk. Optional."),
            ("rescue_kernel", "URL of the rescue kernel (rescue_ramdisk alike). Optional."),
        ])
    }

    async fn validate(&self, task: &Task) -> DriverResult<()> {
        if let BootBmc::Redfish(vendor) = bmc_of(&task.node) {
            crate::bmc::redfish::BmcInfo::parse(&task.node.driver_info, vendor).map_err(DriverError::Invalid)?;
        }
        if crate::deploy::boot_option(&task.node) != "local" {
            self.instance_images(task)?;
        }
        Ok(())
    }

    async fn validate_ramdisk(&self, task: &Task) -> DriverResult<()> {
        let (k, r) = self.ramdisk_images(task)?;
        if !self.swift_mode(task) {
            for s in [k, r] {
                task.media()
                    .images
                    .check_allowed(&s.image()?)
                    .await
                    .map_err(|e| DriverError::Invalid(e.to_string()))?;
            }
        }
        if self.flavor == Flavor::Pxe && Self::macs(task).is_empty() {
            return Err(DriverError::Invalid(format!(
                "node {} has no port: pxe boot writes one config per MAC, so create its ports first",
                task.uuid()
            )));
        }
        Ok(())
    }

    async fn prepare_ramdisk(&self, task: &mut Task, extra: &BTreeMap<String, String>) -> DriverResult<()> {
        let (kernel, ramdisk) = self.ramdisk_images(task)?;
        let callback = task.services.settings.callback_url.clone();
        if callback.is_empty() {
            return Err(DriverError::Invalid(
                "deploy.external_callback_url is not set, so the ramdisk would not know where to call back: set it \
                 to the Ironic API URL the nodes reach"
                    .into(),
            ));
        }
        if let Some(k) = extra.iter().find(|(_, v)| *v == SESSION_TOKEN).map(|(k, _)| k) {
            return Err(DriverError::Invalid(format!(
                "the ramdisk parameter {k} carries a secret, and a network-booted ramdisk's command line is readable \
                 by anyone who can fetch its config: boot it by virtual media (or use the direct deploy)"
            )));
        }
        let mut params = vec![
            task.services.settings.kernel_append_params.clone(),
            format!("ipa-api-url={callback}"),
            format!("boot_method={}", self.flavor.as_str()),
        ];
        params.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
        let params = params.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
        // the ramdisk gets its token at its first lookup
        AgentTokens::end_session(&mut task.node);
        let images = NetImages { kernel, ramdisk, params, kernel_url: String::new(), ramdisk_url: String::new() };
        self.start_phase(task, NetPhase::Ramdisk, Some(images)).await?;
        self.set_boot(task, BootDevice::Pxe, false).await?;
        info!(node = %task.uuid(), flavor = self.flavor.as_str(), "network boot ready for the ramdisk");
        Ok(())
    }

    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()> {
        if NetbootRecord::load(&task.node).is_some_and(|r| r.phase == NetPhase::Ramdisk) {
            self.end(task).await?;
        }
        Ok(())
    }

    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()> {
        match crate::deploy::boot_option(&task.node).as_str() {
            "local" => {
                self.start_phase(task, NetPhase::Local, None).await?;
                self.set_boot(task, BootDevice::Disk, true).await
            }
            "ramdisk" | "netboot" => {
                let (kernel, ramdisk, params) = self.instance_images(task)?;
                let images =
                    NetImages { kernel, ramdisk, params, kernel_url: String::new(), ramdisk_url: String::new() };
                self.start_phase(task, NetPhase::Instance, Some(images)).await?;
                self.set_boot(task, BootDevice::Pxe, true).await
            }
            other => Err(DriverError::Invalid(format!("boot_option {other:?} is not one of local, ramdisk, netboot"))),
        }
    }

    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()> {
        self.end(task).await
    }

    async fn prepare_reboot(&self, task: &mut Task) -> DriverResult<()> {
        if let Some(mut rec) = NetbootRecord::load(&task.node)
            && !self.present_here(task, &rec)
        {
            self.place(task, &mut rec).await?;
            rec.store(&mut task.node);
        }
        Ok(())
    }

    async fn artefacts_present(&self, task: &Task) -> DriverResult<bool> {
        Ok(match NetbootRecord::load(&task.node) {
            Some(rec) if rec.by == task.conductor_id => self.present_here(task, &rec),
            _ => true,
        })
    }

    async fn take_over(&self, task: &mut Task) -> DriverResult<()> {
        let Some(mut rec) = NetbootRecord::load(&task.node) else { return Ok(()) };
        if self.present_here(task, &rec) {
            return Ok(());
        }
        let from = rec.by.clone();
        self.place(task, &mut rec).await?;
        rec.store(&mut task.node);
        info!(node = %task.uuid(), %from, phase = ?rec.phase, "network boot files placed in this conductor's roots");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_config_names_as_pxelinux_and_grub_look_them_up() {
        assert_eq!(mac_config_name("52:54:00:AB:cd:01").as_deref(), Some("01-52-54-00-ab-cd-01"));
        assert_eq!(mac_config_name("52-54-00-ab-cd-01").as_deref(), Some("01-52-54-00-ab-cd-01"));
        assert_eq!(mac_config_name("52:54:00:ab:cd"), None);
        assert_eq!(mac_config_name("../../etc/passwd"), None);
        assert_eq!(mac_config_name("52:54:00:ab:cd:0g"), None);
    }

    #[test]
    fn configs_name_their_node_and_files_and_the_inventory_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let (tftp, http) = (dir.path().join("tftp"), dir.path().join("http"));
        let node = Uuid::new_v4();
        let bios = pxelinux_config(node, "deploy_kernel", "deploy_ramdisk", "ipa-api-url=http://x");
        assert!(bios.contains(&format!("KERNEL {node}/deploy_kernel")) && bios.contains("IPAPPEND 2"), "{bios}");
        let grub = grub_config(node, "kernel", "ramdisk", "a=b", "52:54:00:00:00:01");
        assert!(grub.contains(&format!("linux /{node}/kernel a=b BOOTIF=01-52-54-00-00-00-01")), "{grub}");
        let (b, g) = pxe_config_paths(&tftp, "52:54:00:00:00:01").unwrap();
        write_text(&b, &bios).unwrap();
        write_text(&g, &grub).unwrap();
        std::fs::create_dir_all(tftp.join(node.to_string())).unwrap();
        let other = Uuid::new_v4();
        let (ob, _) = pxe_config_paths(&tftp, "52:54:00:00:00:02").unwrap();
        write_text(&ob, &pxelinux_config(other, "k", "r", "")).unwrap();
        let inv = inventory(&tftp, &http);
        assert_eq!(inv.get(&node).unwrap(), &vec!["52:54:00:00:00:01".to_string()]);
        assert_eq!(inv.get(&other).unwrap(), &vec!["52:54:00:00:00:02".to_string()]);
        // a config that names another node is not removed with this one
        remove_node_files(&tftp, &http, node, &["52:54:00:00:00:01".into(), "52:54:00:00:00:02".into()]).unwrap();
        assert!(!b.exists() && !g.exists() && !tftp.join(node.to_string()).exists());
        assert!(ob.exists());
    }

    #[test]
    fn placed_files_are_whole_and_linked_not_copied_where_possible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"kernel bytes").unwrap();
        let dest = dir.path().join("root/n/deploy_kernel");
        place_file(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"kernel bytes");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&src).unwrap().ino(), std::fs::metadata(&dest).unwrap().ino());
        // placing again replaces it, leaving no temp file
        place_file(&src, &dest).unwrap();
        let names: Vec<_> =
            std::fs::read_dir(dest.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
