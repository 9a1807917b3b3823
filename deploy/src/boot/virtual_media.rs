//! Virtual-media boot (`redfish-virtual-media`, `ilo-virtual-media`, the
//! specs' `IloVirtualMediaBoot`): the node boots ISOs and reads a
//! parameters floppy that its conductor built, published (HTTP root or
//! Swift) and inserted through the BMC.
//!
//! # What the node row records
//!
//! `driver_internal_info.vmedia` ([`VmediaRecord`]) says what is in the
//! node's BMC and how to build it again: for the CD slot a shared boot ISO
//! (built from kernel + ramdisk + kernel parameters, or a user's ISO
//! republished), for the removable slot (Floppy or USBStick) the
//! parameters floppy (its parameters without the agent token, which is
//! derived from the session nonce: see `token`). Nothing secret is
//! stored, and every artefact is rebuilt byte for byte from the record.
//!
//! # Phases
//!
//! * `prepare_ramdisk`: a new agent session (token minted before boot), the
//!   deploy ISO (shared by every node with the same deploy kernel and
//!   ramdisk: node-specific parameters go on the floppy) and the floppy
//!   published and inserted, boot once from CD. Without a removable slot
//!   the parameters go on the ISO's kernel command line (a per-node ISO,
//!   whose content id is as unguessable as the token in it).
//! * callback (`ramdisk_called_back`): a one-time override the BMC stored
//!   as persistent is reset; with `[redfish] eject_media_after = callback`
//!   the ramdisk media are ejected and released.
//! * `prepare_instance`: local boot ejects the ramdisk media (unless
//!   `eject_media_after = never`) and boots from disk, persistently; a
//!   ramdisk/netboot instance gets its boot ISO (`instance_info.boot_iso`,
//!   or the content-addressed ISO of `instance_info.kernel` + `ramdisk`)
//!   inserted in place of the deploy ISO and boots from CD persistently.
//! * `clean_up_*`: eject and release.
//!
//! # Re-pointing the BMC: [`VirtualMediaBoot::reconcile`]
//!
//! Take-over (and a reboot of an active ISO-booted node) publishes every
//! recorded medium in *this* conductor's store — the same content id, so
//! the same bytes; nodes sharing an ISO share one build — and then reads
//! the slot: a slot that already holds a current URL of that object (the
//! HTTP root URL of this conductor, or a Swift temp URL of the same object
//! that stays valid long enough) gets no write. Only a slot pointing
//! elsewhere gets one InsertMedia. The boot override and the power state
//! are not touched.
//!
//! A medium's use of a shared ISO is released exactly when the medium
//! leaves the BMC (ejected or replaced): an ISO is never deleted while a
//! BMC may still read it.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use ferric_common::states::ProvisionState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, info};

use crate::bmc::redfish::{Bmc, BmcError, BmcInfo, BootTarget, MediaDevice, MediaSlot, Vendor};
use crate::driver::*;
use crate::image::cache::ImageSource;
use crate::management::redfish::{ONCE_IGNORED_KEY, set_boot};
use crate::power::redfish::bmc;
use crate::token::AgentTokens;

pub const REDFISH: &str = "redfish-virtual-media";
pub const ILO: &str = "ilo-virtual-media";
pub const RECORD_KEY: &str = "vmedia";

/// A URL a BMC holds is good enough (no new one is inserted) while it stays
/// valid at least this long.
pub const MIN_URL_VALIDITY: Duration = Duration::from_secs(300);

/// What the media boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Ramdisk,
    Instance,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl Source {
    pub(crate) fn image(&self) -> DriverResult<ImageSource> {
        ImageSource::new(&self.url, self.checksum.as_deref()).map_err(|e| DriverError::Invalid(e.to_string()))
    }
}

/// What a medium holds, enough to build it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// A boot ISO built from a kernel, a ramdisk and kernel parameters;
    /// with `with_token`, ` ipa-agent-token=<the session's token>` is
    /// appended to the parameters at build time (never stored).
    BuiltIso { content_id: String, kernel: Source, ramdisk: Source, params: String, with_token: bool },
    /// A user's ISO, republished.
    IsoCopy { content_id: String, iso: Source },
    /// The parameters floppy: `params` plus, with `with_token`,
    /// `ipa-agent-token`.
    Floppy { params: BTreeMap<String, String>, with_token: bool },
    /// A diskless instance's config drive, rebuilt from
    /// `instance_info.configdrive` (never copied into the record: it may
    /// hold secrets).
    ConfigDrive,
}

impl Content {
    /// The shared ISO this medium uses, if it is one.
    pub fn content_id(&self) -> Option<&str> {
        match self {
            Content::BuiltIso { content_id, .. } | Content::IsoCopy { content_id, .. } => Some(content_id),
            Content::Floppy { .. } | Content::ConfigDrive => None,
        }
    }

    fn same_object(&self, other: &Content) -> bool {
        match (self.content_id(), other.content_id()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// One inserted medium.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Medium {
    pub content: Content,
    /// The published object's name.
    pub name: String,
    /// The URL the BMC was given.
    pub url: String,
    /// The conductor whose store published it.
    pub by: String,
}

/// The device paths, discovered once (again when one answers 404).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicePaths {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removable: Option<String>,
    /// Discovery found no removable slot.
    #[serde(default)]
    pub no_removable: bool,
}

/// `driver_internal_info.vmedia`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmediaRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub devices: DevicePaths,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cd: Option<Medium>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removable: Option<Medium>,
}

impl VmediaRecord {
    pub fn load(node: &ferric_common::model::Node) -> VmediaRecord {
        node.driver_internal_info
            .get(RECORD_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    fn store(&self, task: &mut Task) {
        task.node
            .driver_internal_info
            .insert(RECORD_KEY.into(), serde_json::to_value(self).expect("a vmedia record serialises"));
    }

    fn slot(&mut self, slot: MediaSlot) -> &mut Option<Medium> {
        match slot {
            MediaSlot::Cd => &mut self.cd,
            MediaSlot::Removable => &mut self.removable,
        }
    }
}

/// The deploy/rescue ramdisk a node boots.
enum RamdiskImages {
    KernelRamdisk { kernel: Source, ramdisk: Source },
    Iso(Source),
}

pub(crate) fn info_text(obj: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

pub(crate) fn source(obj: &serde_json::Map<String, Value>, field: &str, key: &str) -> DriverResult<Option<Source>> {
    let Some(url) = info_text(obj, key) else { return Ok(None) };
    let s = Source { url, checksum: info_text(obj, &format!("{key}_checksum")) };
    s.image().map_err(|e| DriverError::Invalid(format!("{field}.{key}: {e}")))?;
    Ok(Some(s))
}

fn ramdisk_images(task: &Task, vendor: Vendor) -> DriverResult<RamdiskImages> {
    let rescue = matches!(task.node.provision_state, ProvisionState::Rescuing | ProvisionState::RescueWait);
    let prefix = if rescue { "rescue" } else { "deploy" };
    let info = &task.node.driver_info;
    let iso_key = format!("{prefix}_iso");
    let mut iso = source(info, "driver_info", &iso_key)?;
    if iso.is_none() && vendor == Vendor::Hpe {
        iso = source(info, "driver_info", &format!("ilo_{iso_key}"))?;
    }
    if let Some(iso) = iso {
        return Ok(RamdiskImages::Iso(iso));
    }
    let kernel = source(info, "driver_info", &format!("{prefix}_kernel"))?;
    let ramdisk = source(info, "driver_info", &format!("{prefix}_ramdisk"))?;
    match (kernel, ramdisk) {
        (Some(kernel), Some(ramdisk)) => Ok(RamdiskImages::KernelRamdisk { kernel, ramdisk }),
        (k, r) => {
            let missing: Vec<String> = [("kernel", k.is_none()), ("ramdisk", r.is_none())]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(what, _)| format!("driver_info.{prefix}_{what}"))
                .collect();
            Err(DriverError::Invalid(format!(
                "virtual-media boot needs driver_info.{prefix}_iso, or driver_info.{prefix}_kernel and \
                 driver_info.{prefix}_ramdisk; missing: {}",
                missing.join(", ")
            )))
        }
    }
}

/// What the instance boots from, for ramdisk/netboot instances.
fn instance_content(task: &Task) -> DriverResult<Content> {
    let ii = &task.node.instance_info;
    if let Some(iso) = source(ii, "instance_info", "boot_iso")? {
        return Ok(Content::IsoCopy { content_id: String::new(), iso });
    }
    let kernel = source(ii, "instance_info", "kernel")?;
    let ramdisk = source(ii, "instance_info", "ramdisk")?;
    let (Some(kernel), Some(ramdisk)) = (kernel, ramdisk) else {
        return Err(DriverError::Invalid(
            "booting the instance from virtual media needs instance_info.boot_iso, or instance_info.kernel and \
             instance_info.ramdisk"
                .into(),
        ));
    };
    let base =
        info_text(ii, "kernel_append_params").unwrap_or_else(|| task.services.settings.kernel_append_params.clone());
    let extra = info_text(ii, "ramdisk_kernel_arguments").unwrap_or_default();
    let params = [base, extra].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    Ok(Content::BuiltIso { content_id: String::new(), kernel, ramdisk, params, with_token: false })
}

/// The instance's config drive image, if it has one.
pub(crate) fn config_drive(task: &Task) -> DriverResult<Option<Vec<u8>>> {
    crate::image::configdrive::image(
        task.node.instance_info.get("configdrive"),
        &task.uuid().to_string(),
        task.node.name.as_deref(),
    )
    .map_err(|e| DriverError::Invalid(e.to_string()))
}

fn kernel_params_line(params: &BTreeMap<String, String>) -> String {
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

pub struct VirtualMediaBoot {
    vendor: Vendor,
}

impl VirtualMediaBoot {
    pub fn new(vendor: Vendor) -> VirtualMediaBoot {
        VirtualMediaBoot { vendor }
    }

    /// The CD and (when `removable`) the removable device, with their
    /// current state: from the recorded paths (one GET each), discovered
    /// when there are none or a recorded one is gone. Without `removable`
    /// the removable slot is not read and comes back `None`.
    async fn devices_for(
        &self,
        bmc: &Bmc,
        rec: &mut VmediaRecord,
        removable: bool,
    ) -> DriverResult<(MediaDevice, Option<MediaDevice>)> {
        if let Some(cd_path) = rec.devices.cd.clone() {
            let cd = bmc.media(&cd_path).await;
            let removable = match rec.devices.removable.clone() {
                _ if !removable => Some(Ok(None)),
                Some(p) => Some(bmc.media(&p).await.map(Some)),
                None if rec.devices.no_removable => Some(Ok(None)),
                None => None,
            };
            match (cd, removable) {
                (Ok(cd), Some(Ok(r))) => return Ok((cd, r)),
                (Err(e), _) | (_, Some(Err(e))) if e.status() != Some(404) => return Err(e.into()),
                _ => debug!(bmc = %bmc.address(), "recorded virtual media devices are gone; discovering them again"),
            }
        }
        let all = bmc.discover_media().await?;
        let cd = Bmc::pick(&all, MediaSlot::Cd).cloned().ok_or_else(|| {
            DriverError::Failed(format!(
                "the BMC at {} offers no virtual CD/DVD (its virtual media: {})",
                bmc.address(),
                all.iter().map(|d| format!("{} {:?}", d.path, d.media_types)).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let found = Bmc::pick(&all, MediaSlot::Removable).cloned();
        rec.devices = DevicePaths {
            cd: Some(cd.path.clone()),
            removable: found.as_ref().map(|d| d.path.clone()),
            no_removable: found.is_none(),
        };
        Ok((cd, if removable { found } else { None }))
    }

    /// Both devices (see [`Self::devices_for`]).
    async fn devices(&self, bmc: &Bmc, rec: &mut VmediaRecord) -> DriverResult<(MediaDevice, Option<MediaDevice>)> {
        self.devices_for(bmc, rec, true).await
    }

    /// Publishes `content` in this conductor's store (a shared ISO is
    /// built only if it is not there yet) and returns the medium.
    async fn publish(&self, task: &Task, content: Content) -> DriverResult<Medium> {
        let media = task.media();
        let node = task.uuid();
        let (content, published) = match content {
            Content::BuiltIso { kernel, ramdisk, params, with_token, .. } => {
                let mut line = params.clone();
                if with_token {
                    let token = task.services.tokens.token(&task.node).ok_or_else(|| {
                        DriverError::Failed("the node has no agent session to put on its boot ISO".into())
                    })?;
                    line = format!("{line} ipa-agent-token={token}").trim().to_string();
                    line = line.replace(crate::driver::SESSION_TOKEN, &token);
                }
                crate::image::iso::check_kernel_params(&line).map_err(|e| DriverError::Invalid(e.to_string()))?;
                let (id, published) = media.acquire_boot_iso(node, &kernel.image()?, &ramdisk.image()?, &line).await?;
                (Content::BuiltIso { content_id: id, kernel, ramdisk, params, with_token }, published)
            }
            Content::IsoCopy { iso, .. } => {
                let (id, published) = media.acquire_iso_copy(node, &iso.image()?).await?;
                (Content::IsoCopy { content_id: id, iso }, published)
            }
            Content::Floppy { params, with_token } => {
                let mut all = params.clone();
                if with_token {
                    let token = task.services.tokens.token(&task.node).ok_or_else(|| {
                        DriverError::Failed("the node has no agent session to put on its parameters floppy".into())
                    })?;
                    for v in all.values_mut().filter(|v| *v == crate::driver::SESSION_TOKEN) {
                        v.clone_from(&token);
                    }
                    all.insert("ipa-agent-token".into(), token);
                }
                let published = media.publish_parameters_floppy(node, &all).await?;
                (Content::Floppy { params, with_token }, published)
            }
            Content::ConfigDrive => {
                let image = config_drive(task)?.ok_or_else(|| {
                    DriverError::Invalid("the node's record has a config drive but instance_info has none".into())
                })?;
                let published =
                    media.artefacts.publish_configdrive(node, image).await.map_err(crate::media::MediaError::from)?;
                (Content::ConfigDrive, published)
            }
        };
        Ok(Medium { content, name: published.name, url: published.url, by: task.conductor_id.clone() })
    }

    /// Gives up this conductor's use of a medium's object (the last use of
    /// a shared ISO deletes it; a floppy is deleted). Objects another
    /// conductor published in its own HTTP root are left to it.
    async fn release(&self, task: &Task, medium: &Medium) -> DriverResult<()> {
        let media = task.media();
        if medium.by != task.conductor_id && !media.artefacts.store().shared() {
            return Ok(());
        }
        match &medium.content {
            Content::BuiltIso { content_id, .. } | Content::IsoCopy { content_id, .. } => {
                media.release_boot_iso(task.uuid(), content_id).await?;
            }
            Content::Floppy { .. } | Content::ConfigDrive => {
                media.artefacts.remove_floppy(&medium.name).await.map_err(crate::media::MediaError::from)?;
            }
        }
        Ok(())
    }

    /// Whether `device` holds `medium` (its URL, or a still-valid URL of the
    /// same object in this conductor's store).
    fn holds(&self, task: &Task, device: &MediaDevice, medium: &Medium) -> bool {
        if device.holds(&medium.url) {
            return true;
        }
        let Some(image) = device.image.as_deref().filter(|_| device.inserted) else { return false };
        task.media().artefacts.store().url_is_current(image, &medium.name, MIN_URL_VALIDITY)
    }

    /// Puts `medium` into `device` unless it is there; true if the BMC was
    /// written. A still-valid URL the BMC holds is kept in the record;
    /// otherwise the BMC gets a freshly made URL of the object.
    async fn insert(&self, bmc: &Bmc, task: &Task, device: &MediaDevice, medium: &mut Medium) -> DriverResult<bool> {
        if self.holds(task, device, medium) {
            if let Some(image) = &device.image {
                medium.url = image.clone();
            }
            return Ok(false);
        }
        medium.url = self.fresh_url(task, medium).await?;
        bmc.insert(device, &medium.url).await?;
        Ok(true)
    }

    /// A URL of the medium's object in this conductor's store, valid for as
    /// long as the store gives them (Swift temp URLs are signed anew).
    async fn fresh_url(&self, task: &Task, medium: &Medium) -> DriverResult<String> {
        let artefacts = &task.media().artefacts;
        match &medium.content {
            Content::BuiltIso { content_id, .. } | Content::IsoCopy { content_id, .. } => {
                Ok(artefacts.boot_iso_url(content_id).map_err(crate::media::MediaError::from)?)
            }
            Content::Floppy { .. } | Content::ConfigDrive => {
                task.media().floppy_url(&medium.name).await?.ok_or_else(|| {
                    DriverError::Retryable(format!("the per-node image {} vanished from the store", medium.name))
                })
            }
        }
    }

    /// Whether the medium's object is in this conductor's store.
    async fn published_here(&self, task: &Task, medium: &Medium) -> DriverResult<bool> {
        let store = task.media().artefacts.store();
        if medium.by != task.conductor_id && !store.shared() {
            return Ok(false);
        }
        Ok(store.exists(&medium.name).await.map_err(crate::media::MediaError::from)?)
    }

    /// Ejects `device` if it holds `medium` (not someone else's image).
    async fn eject_ours(&self, bmc: &Bmc, task: &Task, device: &MediaDevice, medium: &Medium) -> DriverResult<bool> {
        if device.inserted && self.holds(task, device, medium) {
            bmc.eject(device).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Ejects and releases what the record holds in `slot`.
    async fn take_out(
        &self,
        bmc: &Bmc,
        task: &Task,
        rec: &mut VmediaRecord,
        slot: MediaSlot,
        device: Option<&MediaDevice>,
    ) -> DriverResult<()> {
        let Some(medium) = rec.slot(slot).clone() else { return Ok(()) };
        if let Some(d) = device {
            self.eject_ours(bmc, task, d, &medium).await?;
        }
        self.release(task, &medium).await?;
        *rec.slot(slot) = None;
        Ok(())
    }

    /// Places `content` into `slot`: published, inserted (unless there),
    /// recorded; the medium it replaces is released afterwards.
    async fn place(
        &self,
        bmc: &Bmc,
        task: &Task,
        rec: &mut VmediaRecord,
        slot: MediaSlot,
        device: &MediaDevice,
        content: Content,
    ) -> DriverResult<()> {
        let mut medium = self.publish(task, content).await?;
        self.insert(bmc, task, device, &mut medium).await?;
        let old = rec.slot(slot).replace(medium.clone());
        if let Some(old) = old
            && old.name != medium.name
            && !old.content.same_object(&medium.content)
        {
            self.release(task, &old).await?;
        }
        Ok(())
    }

    /// Makes the BMC hold every medium of the record as published by this
    /// conductor (see the module doc); returns how many slots were written.
    pub async fn reconcile(&self, task: &mut Task, slots: &[MediaSlot]) -> DriverResult<usize> {
        let mut rec = VmediaRecord::load(&task.node);
        if slots.iter().all(|s| rec.slot(*s).is_none()) {
            return Ok(0);
        }
        let bmc = bmc(task, self.vendor).await?;
        // read only the slots that hold something of ours
        let removable_needed = slots.contains(&MediaSlot::Removable) && rec.removable.is_some();
        let (cd, removable) = self.devices_for(&bmc, &mut rec, removable_needed).await?;
        let mut writes = 0;
        for slot in slots {
            let Some(old) = rec.slot(*slot).clone() else { continue };
            let device = match slot {
                MediaSlot::Cd => Some(&cd),
                MediaSlot::Removable => removable.as_ref(),
            };
            let Some(device) = device else {
                return Err(DriverError::Failed(format!(
                    "the node's record has a {} medium but the BMC at {} no longer offers that slot",
                    slot.as_str(),
                    bmc.address()
                )));
            };
            // reuse what this conductor's store already has; publish (build
            // or share) the rest here — the same content, the same bytes
            let present = self.published_here(task, &old).await?;
            let mut medium = if present { old.clone() } else { self.publish(task, old.content.clone()).await? };
            if self.insert(&bmc, task, device, &mut medium).await? {
                writes += 1;
            }
            if !present && old.by == task.conductor_id && old.name != medium.name && old.content.content_id().is_none()
            {
                // a floppy of ours that went missing was published anew
                let _ = task.media().artefacts.remove_floppy(&old.name).await;
            }
            *rec.slot(*slot) = Some(medium);
        }
        rec.store(task);
        Ok(writes)
    }

    /// Ejects and releases every medium of the record; the phase ends.
    async fn eject_all(&self, task: &mut Task) -> DriverResult<()> {
        let mut rec = VmediaRecord::load(&task.node);
        if rec.cd.is_some() || rec.removable.is_some() {
            let bmc = bmc(task, self.vendor).await?;
            let has_removable = rec.removable.is_some();
            let (cd, removable) = self.devices_for(&bmc, &mut rec, has_removable).await?;
            self.take_out(&bmc, task, &mut rec, MediaSlot::Removable, removable.as_ref()).await?;
            self.take_out(&bmc, task, &mut rec, MediaSlot::Cd, Some(&cd)).await?;
        }
        rec.phase = None;
        rec.store(task);
        Ok(())
    }

    /// Tells the BMC to boot the CD once (ramdisk) or for good (instance).
    async fn boot_from_cd(&self, bmc: &Bmc, task: &mut Task, cd: &MediaDevice, persistent: bool) -> DriverResult<()> {
        set_boot(task, self.vendor, BootDevice::Cdrom, persistent).await?;
        if self.vendor == Vendor::Hpe {
            // iLO boots a virtual medium once when it is flagged on the
            // medium itself; a persistent CD boot must not keep the flag.
            // Only where the BMC shows HPE's Oem block (the shared behaviour
            // runs against DMTF-only emulators too).
            let now = bmc.media(&cd.path).await?;
            if now.hpe_oem.is_some() && now.boot_on_next_reset != Some(!persistent) {
                bmc.set_boot_on_next_reset(&now, !persistent).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BootInterface for VirtualMediaBoot {
    fn name(&self) -> &'static str {
        match self.vendor {
            Vendor::Generic => REDFISH,
            Vendor::Hpe => ILO,
        }
    }

    fn properties(&self) -> BTreeMap<&'static str, &'static str> {
        let mut p = self.vendor.properties();
        p.extend([
            ("deploy_kernel", "URL (http, https, file) of the deploy kernel. Required unless deploy_iso is set."),
            ("deploy_ramdisk", "URL of the deploy ramdisk. Required unless deploy_iso is set."),
            ("deploy_iso", "URL of a bootable deploy ISO, used instead of deploy_kernel + deploy_ramdisk. Optional."),
            ("deploy_kernel_checksum", "Checksum (sha256/sha512/md5 hex, or algo:hex) of deploy_kernel. Optional."),
            ("deploy_ramdisk_checksum", "Checksum of deploy_ramdisk. Optional."),
            ("deploy_iso_checksum", "Checksum of deploy_iso. Optional."),
            ("rescue_kernel", "URL of the rescue kernel (rescue_ramdisk, rescue_iso alike). Optional."),
        ]);
        p
    }

    async fn validate_ramdisk(&self, task: &Task) -> DriverResult<()> {
        let sources = match ramdisk_images(task, self.vendor)? {
            RamdiskImages::KernelRamdisk { kernel, ramdisk } => vec![kernel, ramdisk],
            RamdiskImages::Iso(iso) => vec![iso],
        };
        for s in sources {
            task.media().images.check_allowed(&s.image()?).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    async fn validate(&self, task: &Task) -> DriverResult<()> {
        let info = BmcInfo::parse(&task.node.driver_info, self.vendor).map_err(DriverError::Invalid)?;
        // the instance's boot media, when it boots from them
        if crate::deploy::boot_option(&task.node) != "local" {
            instance_content(task)?;
        }
        // the BMC must answer and offer a virtual CD
        let bmc = Bmc::connect(&task.services.redfish, &info, self.vendor, task.services.settings.power_poll)
            .await
            .map_err(|e| match e {
                BmcError::Config(m) => DriverError::Invalid(m),
                e => DriverError::Invalid(format!("the BMC cannot be used: {e}")),
            })?;
        let mut rec = VmediaRecord::load(&task.node);
        self.devices(&bmc, &mut rec).await.map_err(|e| DriverError::Invalid(e.to_string()))?;
        Ok(())
    }

    async fn prepare_ramdisk(&self, task: &mut Task, extra: &BTreeMap<String, String>) -> DriverResult<()> {
        let images = ramdisk_images(task, self.vendor)?;
        let callback = task.services.settings.callback_url.clone();
        if callback.is_empty() {
            return Err(DriverError::Invalid(
                "deploy.external_callback_url is not set, so the ramdisk would not know where to call back: set it \
                 to the Ironic API URL the nodes reach (all-in-one sets it to its own listener)"
                    .into(),
            ));
        }
        let bmc = bmc(task, self.vendor).await?;
        let mut rec = VmediaRecord::load(&task.node);
        let (cd, removable) = self.devices(&bmc, &mut rec).await?;

        let mut params =
            BTreeMap::from([("ipa-api-url".to_string(), callback), ("boot_method".to_string(), "vmedia".to_string())]);
        if let Some(port) = task.ports.iter().find(|p| p.pxe_enabled).or(task.ports.first()) {
            params.insert("BOOTIF".into(), port.address.clone());
        }
        params.extend(extra.clone());
        let static_params =
            format!("{} boot_method=vmedia", task.services.settings.kernel_append_params).trim().to_string();
        // a new ramdisk session, whose token goes into the media
        let (cd_content, floppy) = match (images, removable.is_some()) {
            (RamdiskImages::KernelRamdisk { kernel, ramdisk }, true) => (
                Content::BuiltIso {
                    content_id: String::new(),
                    kernel,
                    ramdisk,
                    params: static_params,
                    with_token: false,
                },
                Some(Content::Floppy { params, with_token: true }),
            ),
            (RamdiskImages::KernelRamdisk { kernel, ramdisk }, false) => {
                let line = format!("{static_params} {}", kernel_params_line(&params));
                (Content::BuiltIso { content_id: String::new(), kernel, ramdisk, params: line, with_token: true }, None)
            }
            (RamdiskImages::Iso(iso), true) => (
                Content::IsoCopy { content_id: String::new(), iso },
                Some(Content::Floppy { params, with_token: true }),
            ),
            // a prebuilt ISO and nowhere to put parameters: the ISO must
            // know the API; the agent gets its token at lookup
            (RamdiskImages::Iso(iso), false) => (Content::IsoCopy { content_id: String::new(), iso }, None),
        };
        let carries_token = floppy.is_some() || matches!(cd_content, Content::BuiltIso { with_token: true, .. });
        if carries_token {
            task.services.tokens.mint(&mut task.node, true);
        } else {
            AgentTokens::end_session(&mut task.node);
        }
        match (floppy, removable.as_ref()) {
            (Some(f), Some(dev)) => self.place(&bmc, task, &mut rec, MediaSlot::Removable, dev, f).await?,
            _ => self.take_out(&bmc, task, &mut rec, MediaSlot::Removable, removable.as_ref()).await?,
        }
        self.place(&bmc, task, &mut rec, MediaSlot::Cd, &cd, cd_content).await?;
        rec.phase = Some(Phase::Ramdisk);
        rec.store(task);
        self.boot_from_cd(&bmc, task, &cd, false).await?;
        info!(node = %task.uuid(), bmc = %bmc.address(), "virtual media ready for the ramdisk");
        Ok(())
    }

    async fn clean_up_ramdisk(&self, task: &mut Task) -> DriverResult<()> {
        if VmediaRecord::load(&task.node).phase != Some(Phase::Ramdisk) {
            return Ok(());
        }
        self.eject_all(task).await
    }

    async fn ramdisk_called_back(&self, task: &mut Task) -> DriverResult<()> {
        let once_ignored = task.node.driver_internal_info.contains_key(ONCE_IGNORED_KEY);
        let rec = VmediaRecord::load(&task.node);
        let eject =
            task.services.settings.eject_media_after == EjectPolicy::Callback && rec.phase == Some(Phase::Ramdisk);
        if !once_ignored && !eject {
            return Ok(());
        }
        if once_ignored {
            // the BMC kept "boot from CD" for good: the ramdisk is up, so
            // the next boot must not be the CD again
            let bmc = bmc(task, self.vendor).await?;
            let current = bmc.boot_override().await?;
            let target = if current.allowed_targets.is_empty() || current.allowed_targets.iter().any(|t| t == "None") {
                BootTarget::None
            } else {
                BootTarget::Hdd
            };
            bmc.set_boot_override(target, false, None, &current).await?;
            task.node.driver_internal_info.remove(ONCE_IGNORED_KEY);
        }
        if eject {
            self.clean_up_ramdisk(task).await?;
        }
        Ok(())
    }

    async fn prepare_instance(&self, task: &mut Task) -> DriverResult<()> {
        let option = crate::deploy::boot_option(&task.node);
        let bmc = bmc(task, self.vendor).await?;
        let mut rec = VmediaRecord::load(&task.node);
        let has_removable = rec.removable.is_some();
        let (cd, removable) = self.devices_for(&bmc, &mut rec, has_removable).await?;
        let keep_ramdisk_media = task.services.settings.eject_media_after == EjectPolicy::Never;
        match option.as_str() {
            "local" => {
                if !keep_ramdisk_media {
                    self.take_out(&bmc, task, &mut rec, MediaSlot::Removable, removable.as_ref()).await?;
                    self.take_out(&bmc, task, &mut rec, MediaSlot::Cd, Some(&cd)).await?;
                }
                rec.phase = Some(Phase::Instance);
                rec.store(task);
                set_boot(task, self.vendor, BootDevice::Disk, true).await?;
            }
            "ramdisk" | "netboot" => {
                let content = instance_content(task)?;
                let wants_config_drive = config_drive(task)?.is_some();
                let removable = if wants_config_drive && removable.is_none() && !has_removable {
                    // not read yet: the ramdisk phase put nothing there
                    self.devices(&bmc, &mut rec).await?.1
                } else {
                    removable
                };
                if wants_config_drive {
                    let Some(slot) = removable.as_ref() else {
                        return Err(DriverError::Failed(format!(
                            "instance_info.configdrive needs a removable virtual medium (USB stick or floppy), and \
                             the BMC at {} offers none",
                            bmc.address()
                        )));
                    };
                    self.place(&bmc, task, &mut rec, MediaSlot::Removable, slot, Content::ConfigDrive).await?;
                } else if !keep_ramdisk_media {
                    self.take_out(&bmc, task, &mut rec, MediaSlot::Removable, removable.as_ref()).await?;
                }
                self.place(&bmc, task, &mut rec, MediaSlot::Cd, &cd, content).await?;
                rec.phase = Some(Phase::Instance);
                rec.store(task);
                self.boot_from_cd(&bmc, task, &cd, true).await?;
            }
            other => {
                return Err(DriverError::Invalid(format!(
                    "boot_option {other:?} is not one of local, ramdisk, netboot"
                )));
            }
        }
        Ok(())
    }

    async fn clean_up_instance(&self, task: &mut Task) -> DriverResult<()> {
        self.eject_all(task).await
    }

    async fn prepare_reboot(&self, task: &mut Task) -> DriverResult<()> {
        let rec = VmediaRecord::load(&task.node);
        if rec.phase == Some(Phase::Instance) && rec.cd.is_some() {
            let with_config_drive = rec.removable.as_ref().is_some_and(|m| m.content == Content::ConfigDrive);
            let slots: &[MediaSlot] =
                if with_config_drive { &[MediaSlot::Removable, MediaSlot::Cd] } else { &[MediaSlot::Cd] };
            self.reconcile(task, slots).await?;
        }
        Ok(())
    }

    async fn artefacts_present(&self, task: &Task) -> DriverResult<bool> {
        let store = task.media().artefacts.store();
        if store.shared() {
            // Swift: nothing of it lives on this conductor's disk
            return Ok(true);
        }
        let rec = VmediaRecord::load(&task.node);
        for medium in [&rec.cd, &rec.removable].into_iter().flatten() {
            if medium.by != task.conductor_id {
                continue;
            }
            // gone from the root, or the root moved (an HTTP listener on
            // port 0 gets a new port at every start): the BMC's URL is dead
            if !self.published_here(task, medium).await?
                || !store.url_is_current(&medium.url, &medium.name, MIN_URL_VALIDITY)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn take_over(&self, task: &mut Task) -> DriverResult<()> {
        let writes = self.reconcile(task, &[MediaSlot::Removable, MediaSlot::Cd]).await?;
        if writes > 0 {
            info!(node = %task.uuid(), writes, "virtual media re-pointed at this conductor");
        }
        task.node.driver_internal_info.insert("vmedia_takeover_writes".into(), json!(writes));
        Ok(())
    }
}
