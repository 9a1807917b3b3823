//! A Redfish BMC as the drivers use it: one node's ComputerSystem, its
//! power, its boot override and its virtual media.
//!
//! [`client`] is the transport (sessions, retries, errors); this module is
//! what the requests mean. What differs between vendors is in [`Vendor`]:
//! the driver_info field names, where virtual media live, the body of
//! InsertMedia and how a BMC is told to boot from virtual media once.
//!
//! Every read here is one GET; every write is one request followed, where
//! a BMC could silently ignore it, by a read-back (the boot override:
//! sushy-tools and libvirt-backed BMCs store `Once` as `Continuous`).

pub mod client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use client::{AuthType, BmcError, ClientSettings, Connection, Endpoint, RedfishClients, Result, Verify};
use serde_json::{Map, Value, json};

/// Whose Redfish this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// DMTF Redfish as written (Dell, Lenovo, Supermicro, OpenBMC,
    /// sushy-tools, ...): `redfish_*` driver_info.
    Generic,
    /// HPE iLO 4/5/6: `ilo_*` driver_info, one system (`/redfish/v1/Systems/1`),
    /// virtual media under the Manager only, and "boot from this virtual
    /// medium on the next reset" set on the medium itself
    /// (`Oem.Hpe.BootOnNextServerReset`; `Oem.Hp` on iLO 4).
    Hpe,
}

impl Vendor {
    /// The driver_info key of each setting, as Ironic names them.
    pub fn keys(self) -> DriverInfoKeys {
        match self {
            Vendor::Generic => DriverInfoKeys {
                address: "redfish_address",
                system_id: Some("redfish_system_id"),
                username: "redfish_username",
                password: "redfish_password",
                verify_ca: "redfish_verify_ca",
                auth_type: "redfish_auth_type",
            },
            Vendor::Hpe => DriverInfoKeys {
                address: "ilo_address",
                system_id: None,
                username: "ilo_username",
                password: "ilo_password",
                verify_ca: "ilo_verify_ca",
                auth_type: "ilo_auth_type",
            },
        }
    }

    /// The properties a hardware type documents (`GET /v1/drivers/<d>/properties`).
    pub fn properties(self) -> BTreeMap<&'static str, &'static str> {
        match self {
            Vendor::Generic => BTreeMap::from([
                (
                    "redfish_address",
                    "The URL of the Redfish controller: scheme://host[:port]; https is assumed when the scheme is missing. Required.",
                ),
                (
                    "redfish_system_id",
                    "The canonical path to the ComputerSystem resource, e.g. /redfish/v1/Systems/1. Optional when the BMC manages exactly one system.",
                ),
                ("redfish_username", "User account with admin/server-profile access privilege. Optional."),
                ("redfish_password", "User account password. Optional."),
                (
                    "redfish_verify_ca",
                    "true (the system's trust store, the default), false (no TLS certificate check) or the path of a CA bundle. Optional.",
                ),
                ("redfish_auth_type", "auto (a session, else basic auth; the default), session or basic. Optional."),
            ]),
            Vendor::Hpe => BTreeMap::from([
                ("ilo_address", "IP address or host name of the iLO (https://<it>). Required."),
                ("ilo_username", "Username for the iLO with administrator privileges. Required."),
                ("ilo_password", "Password for the iLO user. Required."),
                (
                    "ilo_verify_ca",
                    "true (the system's trust store, the default), false (no TLS certificate check) or the path of a CA bundle. Optional.",
                ),
                ("ilo_auth_type", "auto (a session, else basic auth; the default), session or basic. Optional."),
            ]),
        }
    }

    /// The system of a BMC that manages exactly one (iLO: always `1`).
    fn default_system(self) -> Option<&'static str> {
        match self {
            Vendor::Generic => None,
            Vendor::Hpe => Some("/redfish/v1/Systems/1"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DriverInfoKeys {
    pub address: &'static str,
    pub system_id: Option<&'static str>,
    pub username: &'static str,
    pub password: &'static str,
    pub verify_ca: &'static str,
    pub auth_type: &'static str,
}

/// A node's BMC settings, read from its driver_info.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcInfo {
    pub endpoint: Endpoint,
    /// The ComputerSystem path; `None` = the only one there is.
    pub system: Option<String>,
}

fn text(info: &Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(format!("driver_info.{key} must be a string, not {other}")),
    }
}

impl BmcInfo {
    /// Reads and checks the settings; every error names the field.
    pub fn parse(info: &Map<String, Value>, vendor: Vendor) -> std::result::Result<BmcInfo, String> {
        let k = vendor.keys();
        let raw = text(info, k.address)?.ok_or_else(|| format!("driver_info.{} is required", k.address))?;
        let address = Endpoint::normalise_address(&raw).map_err(|e| format!("driver_info.{} {e}", k.address))?;
        let system = match k.system_id {
            Some(key) => match text(info, key)? {
                Some(s) if s.starts_with('/') => Some(s.trim_end_matches('/').to_string()),
                // Ironic accepts a bare id as well
                Some(s) if !s.contains('/') => Some(format!("/redfish/v1/Systems/{s}")),
                Some(s) => return Err(format!("driver_info.{key} {s:?} must be a path like /redfish/v1/Systems/<id>")),
                None => None,
            },
            None => vendor.default_system().map(String::from),
        };
        let username = text(info, k.username)?.unwrap_or_default();
        let password = text(info, k.password)?.unwrap_or_default();
        if vendor == Vendor::Hpe {
            for (key, v) in [(k.username, &username), (k.password, &password)] {
                if v.is_empty() {
                    return Err(format!("driver_info.{key} is required"));
                }
            }
        }
        if !password.is_empty() && username.is_empty() {
            return Err(format!("driver_info.{} is set but driver_info.{} is not", k.password, k.username));
        }
        let verify = match info.get(k.verify_ca) {
            None | Some(Value::Null) | Some(Value::Bool(true)) => Verify::System,
            Some(Value::Bool(false)) => Verify::Insecure,
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "" | "true" | "yes" | "1" | "on" => Verify::System,
                "false" | "no" | "0" | "off" => Verify::Insecure,
                _ => {
                    let p = std::path::PathBuf::from(s.trim());
                    if !p.is_absolute() {
                        return Err(format!(
                            "driver_info.{} must be true, false or the absolute path of a CA bundle, not {s:?}",
                            k.verify_ca
                        ));
                    }
                    Verify::CaFile(p)
                }
            },
            Some(other) => {
                return Err(format!("driver_info.{} must be a boolean or a path, not {other}", k.verify_ca));
            }
        };
        let auth = match text(info, k.auth_type)? {
            None => AuthType::Auto,
            Some(s) => AuthType::parse(&s)
                .ok_or_else(|| format!("driver_info.{} must be auto, session or basic, not {s:?}", k.auth_type))?,
        };
        Ok(BmcInfo { endpoint: Endpoint { address, username, password, verify, auth }, system })
    }
}

/// `PowerState` of a ComputerSystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Paused,
    Unknown(String),
}

impl PowerState {
    fn parse(s: &str) -> PowerState {
        match s {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            "Paused" => PowerState::Paused,
            other => PowerState::Unknown(other.to_string()),
        }
    }
}

/// `ResetType` of `ComputerSystem.Reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetType {
    On,
    ForceOff,
    GracefulShutdown,
    ForceRestart,
    GracefulRestart,
}

impl ResetType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetType::On => "On",
            ResetType::ForceOff => "ForceOff",
            ResetType::GracefulShutdown => "GracefulShutdown",
            ResetType::ForceRestart => "ForceRestart",
            ResetType::GracefulRestart => "GracefulRestart",
        }
    }

    /// What to send when the BMC does not allow this one (from
    /// `ResetType@Redfish.AllowableValues`): `ForceOn` for `On`,
    /// `PushPowerButton` as the last resort for the graceful ones.
    fn alternatives(self) -> &'static [&'static str] {
        match self {
            ResetType::On => &["On", "ForceOn", "PushPowerButton"],
            ResetType::ForceOff => &["ForceOff"],
            ResetType::GracefulShutdown => &["GracefulShutdown", "PushPowerButton"],
            ResetType::ForceRestart => &["ForceRestart", "PowerCycle"],
            ResetType::GracefulRestart => &["GracefulRestart"],
        }
    }
}

/// A boot source override target we use (`Boot.BootSourceOverrideTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootTarget {
    Pxe,
    Hdd,
    Cd,
    /// `UsbCd` on BMCs (Supermicro) that list it instead of `Cd`.
    UsbCd,
    BiosSetup,
    None,
}

impl BootTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            BootTarget::Pxe => "Pxe",
            BootTarget::Hdd => "Hdd",
            BootTarget::Cd => "Cd",
            BootTarget::UsbCd => "UsbCd",
            BootTarget::BiosSetup => "BiosSetup",
            BootTarget::None => "None",
        }
    }
}

/// `Boot.BootSourceOverrideMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    Uefi,
    Legacy,
}

impl BootMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "Legacy",
        }
    }
}

/// The boot override as the BMC reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BootOverride {
    pub target: Option<String>,
    pub enabled: Option<String>,
    pub mode: Option<String>,
    pub allowed_targets: Vec<String>,
}

impl BootOverride {
    /// From a ComputerSystem document.
    pub fn parse(system: &Value) -> BootOverride {
        let boot = &system["Boot"];
        let s = |k: &str| boot.get(k).and_then(Value::as_str).map(String::from);
        BootOverride {
            target: s("BootSourceOverrideTarget"),
            enabled: s("BootSourceOverrideEnabled"),
            mode: s("BootSourceOverrideMode"),
            allowed_targets: boot
                .get("BootSourceOverrideTarget@Redfish.AllowableValues")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// The CD target this BMC accepts: `Cd`, or `UsbCd` where only that is
    /// listed.
    pub fn cd_target(&self) -> BootTarget {
        let allows = |t: &str| self.allowed_targets.iter().any(|a| a == t);
        if !allows("Cd") && allows("UsbCd") { BootTarget::UsbCd } else { BootTarget::Cd }
    }
}

/// What the read-back of a boot override found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSet {
    /// `Once` was asked and the BMC stored `Continuous` (sushy-tools,
    /// libvirt): the caller must reset the override after the boot.
    pub once_ignored: bool,
}

/// Which slot a virtual medium goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaSlot {
    /// `MediaTypes` has `CD` or `DVD`.
    Cd,
    /// `MediaTypes` has `Floppy` or `USBStick`: the parameters image.
    Removable,
}

impl MediaSlot {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaSlot::Cd => "cd",
            MediaSlot::Removable => "removable",
        }
    }

    fn accepts(self, media_types: &[String]) -> bool {
        let wanted: &[&str] = match self {
            MediaSlot::Cd => &["CD", "DVD"],
            MediaSlot::Removable => &["Floppy", "USBStick"],
        };
        media_types.iter().any(|t| wanted.contains(&t.as_str()))
    }
}

/// One VirtualMedia resource and what is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaDevice {
    /// Its `@odata.id`.
    pub path: String,
    pub media_types: Vec<String>,
    pub insert_target: String,
    pub eject_target: String,
    /// The inserted image's URL, if any.
    pub image: Option<String>,
    pub inserted: bool,
    /// `Hpe` or `Hp` when the resource carries HPE's Oem block.
    pub hpe_oem: Option<String>,
    pub boot_on_next_reset: Option<bool>,
}

impl MediaDevice {
    /// From a VirtualMedia document (`fallback_path`: where it was read,
    /// for documents without `@odata.id`).
    pub fn parse(doc: &Value, fallback_path: &str) -> MediaDevice {
        let path =
            doc.get("@odata.id").and_then(Value::as_str).unwrap_or(fallback_path).trim_end_matches('/').to_string();
        let hpe_oem = ["Hpe", "Hp"].into_iter().find(|k| doc.pointer(&format!("/Oem/{k}")).is_some()).map(String::from);
        // the DMTF action, else HPE's own (early iLO 5 firmware has only
        // `Oem.Hpe.Actions.#HpeiLOVirtualMedia.InsertVirtualMedia`; iLO 4
        // `Oem.Hp.Actions.#HpiLOVirtualMedia...`), else the conventional path
        let target = |action: &str, oem_action: &str| {
            doc.pointer(&format!("/Actions/#VirtualMedia.{action}/target"))
                .or_else(|| {
                    let k = hpe_oem.as_deref()?;
                    doc.pointer(&format!("/Oem/{k}/Actions/#{k}iLOVirtualMedia.{oem_action}/target"))
                })
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| format!("{path}/Actions/VirtualMedia.{action}"))
        };
        let boot_on_next_reset = hpe_oem
            .as_ref()
            .and_then(|k| doc.pointer(&format!("/Oem/{k}/BootOnNextServerReset")))
            .and_then(Value::as_bool);
        let image = doc.get("Image").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
        MediaDevice {
            insert_target: target("InsertMedia", "InsertVirtualMedia"),
            eject_target: target("EjectMedia", "EjectVirtualMedia"),
            media_types: doc
                .get("MediaTypes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default(),
            // some BMCs omit Inserted and show only the Image
            inserted: doc.get("Inserted").and_then(Value::as_bool).unwrap_or(image.is_some()),
            image,
            hpe_oem,
            boot_on_next_reset,
            path,
        }
    }

    /// Whether `url` is what the device holds now.
    pub fn holds(&self, url: &str) -> bool {
        self.inserted && self.image.as_deref() == Some(url)
    }
}

/// One node's BMC: a connection and the node's ComputerSystem.
#[derive(Clone)]
pub struct Bmc {
    conn: Arc<Connection>,
    system: String,
    pub vendor: Vendor,
    poll: Duration,
}

impl std::fmt::Debug for Bmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmc").field("address", &self.conn.address()).field("system", &self.system).finish()
    }
}

impl Bmc {
    /// Connects to the node's BMC; when driver_info names no system, asks
    /// the BMC for its only one.
    pub async fn connect(clients: &Arc<RedfishClients>, info: &BmcInfo, vendor: Vendor, poll: Duration) -> Result<Bmc> {
        let conn = clients.connect(&info.endpoint)?;
        let system = match &info.system {
            Some(s) => s.clone(),
            None => {
                let list = conn.get("/redfish/v1/Systems").await?;
                let members = members(&list);
                match members.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(BmcError::Unexpected {
                            address: conn.address().into(),
                            message: "the BMC lists no ComputerSystem".into(),
                        });
                    }
                    many => {
                        return Err(BmcError::Config(format!(
                            "the BMC at {} manages {} systems; set driver_info.redfish_system_id to one of {}",
                            conn.address(),
                            many.len(),
                            many.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            }
        };
        Ok(Bmc { conn, system, vendor, poll })
    }

    pub fn address(&self) -> &str {
        self.conn.address()
    }

    pub fn system_path(&self) -> &str {
        &self.system
    }

    fn unexpected(&self, message: impl Into<String>) -> BmcError {
        BmcError::Unexpected { address: self.address().to_string(), message: message.into() }
    }

    pub async fn system(&self) -> Result<Value> {
        self.conn.get(&self.system).await
    }

    pub async fn power_state(&self) -> Result<PowerState> {
        let sys = self.system().await?;
        let s = sys
            .get("PowerState")
            .and_then(Value::as_str)
            .ok_or_else(|| self.unexpected(format!("{} has no PowerState", self.system)))?;
        Ok(PowerState::parse(s))
    }

    /// `ComputerSystem.Reset` with `reset` (or the closest type the BMC
    /// allows).
    pub async fn reset(&self, reset: ResetType) -> Result<()> {
        let sys = self.system().await?;
        let action = sys.pointer("/Actions/#ComputerSystem.Reset");
        let target = action
            .and_then(|a| a.get("target"))
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", self.system));
        let allowed: Option<Vec<&str>> = action
            .and_then(|a| a.get("ResetType@Redfish.AllowableValues"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let kind = match &allowed {
            None => reset.as_str(),
            Some(list) => {
                reset.alternatives().iter().copied().find(|k| list.contains(k)).ok_or_else(|| BmcError::Refused {
                    address: self.address().into(),
                    method: "POST".into(),
                    path: target.clone(),
                    status: 400,
                    message: format!(
                        "the BMC does not offer ResetType {} (it allows {})",
                        reset.as_str(),
                        list.join(", ")
                    ),
                })?
            }
        };
        self.conn.post(&target, &json!({"ResetType": kind})).await.map(drop)
    }

    /// Polls the power state until it is `want` or `timeout` passed.
    pub async fn wait_power(&self, want: &PowerState, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let now = self.power_state().await?;
            if &now == want {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(BmcError::Timeout {
                    address: self.address().into(),
                    message: format!(
                        "the system did not reach power state {want:?} within {}s (it is {now:?})",
                        timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    pub async fn boot_override(&self) -> Result<BootOverride> {
        Ok(BootOverride::parse(&self.system().await?))
    }

    /// Sets the boot override and reads it back. `mode` is sent only when
    /// it differs from the BMC's current one (many BMCs refuse a mode
    /// change they do not need, or only apply it at the next POST).
    pub async fn set_boot_override(
        &self,
        target: BootTarget,
        once: bool,
        mode: Option<BootMode>,
        current: &BootOverride,
    ) -> Result<BootSet> {
        let enabled = if once { "Once" } else { "Continuous" };
        let mut boot = json!({"BootSourceOverrideTarget": target.as_str(), "BootSourceOverrideEnabled": enabled});
        // iLO 5 refuses any PATCH that names BootSourceOverrideMode (it is
        // read-only there: the boot mode is a BIOS setting)
        if let Some(m) = mode
            && self.vendor != Vendor::Hpe
            && current.mode.as_deref() != Some(m.as_str())
            && current.mode.is_some()
        {
            boot["BootSourceOverrideMode"] = json!(m.as_str());
        }
        self.conn.patch(&self.system, &json!({"Boot": boot})).await?;
        let now = self.boot_override().await?;
        if now.target.as_deref() != Some(target.as_str()) {
            return Err(self.unexpected(format!(
                "asked to boot from {} but the BMC reports BootSourceOverrideTarget {:?}",
                target.as_str(),
                now.target
            )));
        }
        if let (Some(asked), Some(got)) = (boot.get("BootSourceOverrideMode").and_then(Value::as_str), &now.mode)
            && asked != got
        {
            return Err(self.unexpected(format!("asked for boot mode {asked} but the BMC kept {got}")));
        }
        let once_ignored = once && now.enabled.as_deref() != Some("Once");
        if once_ignored {
            tracing::debug!(bmc = %self.address(), system = %self.system, "the BMC stored a one-time boot override as {:?}", now.enabled);
        }
        Ok(BootSet { once_ignored })
    }

    /// The VirtualMedia collection: the system's own, else its manager's
    /// (iLO keeps them only there).
    async fn media_collection(&self) -> Result<String> {
        let sys = self.system().await?;
        if let Some(p) = sys.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str) {
            return Ok(p.to_string());
        }
        let managers: Vec<String> = sys
            .pointer("/Links/ManagedBy")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|m| m.get("@odata.id").and_then(Value::as_str)).map(String::from).collect())
            .unwrap_or_default();
        for m in managers {
            let doc = self.conn.get(&m).await?;
            if let Some(p) = doc.pointer("/VirtualMedia/@odata.id").and_then(Value::as_str) {
                return Ok(p.to_string());
            }
        }
        Err(self.unexpected(format!(
            "no VirtualMedia under {} or its managers: the BMC does not offer virtual media",
            self.system
        )))
    }

    /// Every virtual media device, with its state.
    pub async fn discover_media(&self) -> Result<Vec<MediaDevice>> {
        let collection = self.media_collection().await?;
        let list = self.conn.get(&collection).await?;
        let mut out = Vec::new();
        for path in members(&list) {
            out.push(self.media(&path).await?);
        }
        Ok(out)
    }

    /// One device's current state (one GET).
    pub async fn media(&self, path: &str) -> Result<MediaDevice> {
        Ok(MediaDevice::parse(&self.conn.get(path).await?, path))
    }

    /// The first device of `slot` among `devices`.
    pub fn pick(devices: &[MediaDevice], slot: MediaSlot) -> Option<&MediaDevice> {
        devices.iter().find(|d| slot.accepts(&d.media_types))
    }

    /// Inserts `url` into `device` and reads it back.
    pub async fn insert(&self, device: &MediaDevice, url: &str) -> Result<MediaDevice> {
        let body = insert_body(self.vendor, url);
        if eject_before_insert(self.vendor, device) {
            // HPE's own clients eject first: iLO's Redfish does not replace
            // an inserted image
            self.eject(device).await?;
            self.conn.post(&device.insert_target, &body).await?;
        } else {
            self.insert_replacing(device, &body).await?;
        }
        let now = self.media(&device.path).await?;
        if !now.holds(url) {
            return Err(self.unexpected(format!(
                "inserted {url} into {} but the BMC shows {:?} (inserted: {})",
                device.path, now.image, now.inserted
            )));
        }
        Ok(now)
    }

    async fn insert_replacing(&self, device: &MediaDevice, body: &Value) -> Result<()> {
        match self.conn.post(&device.insert_target, body).await {
            Ok(_) => {}
            // a BMC that wants the slot empty first (iLO answers
            // "already connected"): eject, then insert once more
            Err(BmcError::Refused { status: 400 | 409, .. }) if device.inserted => {
                self.eject(device).await?;
                self.conn.post(&device.insert_target, body).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Ejects whatever `device` holds (nothing to do when it is empty).
    pub async fn eject(&self, device: &MediaDevice) -> Result<()> {
        if !device.inserted && device.image.is_none() {
            return Ok(());
        }
        self.conn.post(&device.eject_target, &json!({})).await.map(drop)
    }

    /// HPE: boot from this medium at the next server reset.
    pub async fn set_boot_on_next_reset(&self, device: &MediaDevice, on: bool) -> Result<()> {
        let key = device.hpe_oem.as_deref().unwrap_or("Hpe");
        self.conn.patch(&device.path, &json!({"Oem": {key: {"BootOnNextServerReset": on}}})).await.map(drop)
    }
}

/// The body of InsertMedia. iLO takes the image only (`Inserted` and
/// `WriteProtected` are read-only there; iLO 4 refuses them as
/// `PropertyUnknown`).
pub fn insert_body(vendor: Vendor, url: &str) -> Value {
    match vendor {
        Vendor::Hpe => json!({"Image": url}),
        Vendor::Generic => json!({"Image": url, "Inserted": true, "WriteProtected": true}),
    }
}

/// Whether a new image needs the slot emptied first: on iLO, whose Redfish
/// does not replace an inserted image (HPE's own clients eject first).
/// Elsewhere the insert is tried as is, and an eject happens only if the
/// BMC refuses it.
pub fn eject_before_insert(vendor: Vendor, device: &MediaDevice) -> bool {
    vendor == Vendor::Hpe && device.inserted
}

fn members(collection: &Value) -> Vec<String> {
    collection
        .get("Members")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|m| m.get("@odata.id").and_then(Value::as_str)).map(String::from).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn driver_info_errors_name_the_field() {
        let e = BmcInfo::parse(&info(json!({})), Vendor::Generic).unwrap_err();
        assert_eq!(e, "driver_info.redfish_address is required");
        let e = BmcInfo::parse(&info(json!({"redfish_address": 5})), Vendor::Generic).unwrap_err();
        assert!(e.contains("driver_info.redfish_address must be a string"), "{e}");
        let e = BmcInfo::parse(&info(json!({"redfish_address": "h", "redfish_system_id": "a/b"})), Vendor::Generic)
            .unwrap_err();
        assert!(e.contains("driver_info.redfish_system_id"), "{e}");
        let e = BmcInfo::parse(&info(json!({"redfish_address": "h", "redfish_verify_ca": "maybe"})), Vendor::Generic)
            .unwrap_err();
        assert!(e.contains("driver_info.redfish_verify_ca"), "{e}");
        let e = BmcInfo::parse(&info(json!({"redfish_address": "h", "redfish_password": "p"})), Vendor::Generic)
            .unwrap_err();
        assert!(e.contains("redfish_username"), "{e}");
        let e = BmcInfo::parse(&info(json!({"ilo_address": "10.0.0.9", "ilo_username": "admin"})), Vendor::Hpe)
            .unwrap_err();
        assert_eq!(e, "driver_info.ilo_password is required");
        let e =
            BmcInfo::parse(&info(json!({"redfish_address": "h", "redfish_auth_type": "kerberos"})), Vendor::Generic)
                .unwrap_err();
        assert!(e.contains("redfish_auth_type"), "{e}");
    }

    #[test]
    fn driver_info_as_ironic_reads_it() {
        let i = BmcInfo::parse(
            &info(json!({"redfish_address": "http://127.0.0.1:8000", "redfish_system_id": "/redfish/v1/Systems/abc/",
                         "redfish_username": "admin", "redfish_password": "pw", "redfish_verify_ca": "False"})),
            Vendor::Generic,
        )
        .unwrap();
        assert_eq!(i.endpoint.address, "http://127.0.0.1:8000");
        assert_eq!(i.system.as_deref(), Some("/redfish/v1/Systems/abc"));
        assert_eq!(i.endpoint.verify, Verify::Insecure);
        let i = BmcInfo::parse(
            &info(json!({"redfish_address": "bmc", "redfish_system_id": "abc", "redfish_verify_ca": "/etc/ca.pem"})),
            Vendor::Generic,
        )
        .unwrap();
        assert_eq!(i.endpoint.address, "https://bmc");
        assert_eq!(i.system.as_deref(), Some("/redfish/v1/Systems/abc"));
        assert_eq!(i.endpoint.verify, Verify::CaFile("/etc/ca.pem".into()));
        let i = BmcInfo::parse(
            &info(json!({"ilo_address": "10.0.0.9", "ilo_username": "admin", "ilo_password": "pw", "ilo_verify_ca": false})),
            Vendor::Hpe,
        )
        .unwrap();
        assert_eq!(i.endpoint.address, "https://10.0.0.9");
        assert_eq!(i.system.as_deref(), Some("/redfish/v1/Systems/1"));
        assert_eq!(i.endpoint.verify, Verify::Insecure);
    }

    #[test]
    fn cd_target_follows_the_allowable_values() {
        let mut b =
            BootOverride { allowed_targets: vec!["Pxe".into(), "Cd".into(), "Hdd".into()], ..Default::default() };
        assert_eq!(b.cd_target(), BootTarget::Cd);
        b.allowed_targets = vec!["Pxe".into(), "UsbCd".into(), "Hdd".into()];
        assert_eq!(b.cd_target(), BootTarget::UsbCd);
        b.allowed_targets.clear();
        assert_eq!(b.cd_target(), BootTarget::Cd);
    }

    #[test]
    fn media_slots_by_media_types() {
        let cd = MediaDevice::parse(
            &json!({"@odata.id": "/x/Cd", "MediaTypes": ["CD", "DVD"], "Image": "", "Inserted": false}),
            "/x/Cd",
        );
        let fl = MediaDevice::parse(
            &json!({"@odata.id": "/x/Floppy", "MediaTypes": ["Floppy", "USBStick"], "Image": "http://a/f.img"}),
            "/x/Floppy",
        );
        let devices = vec![fl.clone(), cd.clone()];
        assert_eq!(Bmc::pick(&devices, MediaSlot::Cd).unwrap().path, "/x/Cd");
        assert_eq!(Bmc::pick(&devices, MediaSlot::Removable).unwrap().path, "/x/Floppy");
        assert!(fl.inserted, "no Inserted field but an image: inserted");
        assert!(fl.holds("http://a/f.img"));
        assert!(!cd.inserted && cd.image.is_none());
        assert_eq!(cd.insert_target, "/x/Cd/Actions/VirtualMedia.InsertMedia");
    }
}
