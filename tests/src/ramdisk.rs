//! A deploy-ramdisk simulator: many simulated machines in one process, each
//! behaving towards Ferric as a real ironic-python-agent (IPA) ramdisk
//! behaves towards Ironic 39 (notes/ironic-compat.md §8; the protocol facts
//! were read from IPA's own source, nothing of it is copied).
//!
//! A machine is one system of a Redfish BMC (sushy-tools' emulator,
//! [`crate::redfish::SushyLab`]):
//!
//! * **Boot**: the emulator's notification `PUT /notify` (its
//!   `external_notifier`, notes/test-peers.md §3.9) or a poll of the system
//!   says when a machine is powered on. On with boot device `Cd`/`UsbCd`
//!   and a CD inserted boots the ramdisk: after `boot_delay_ms` an agent
//!   starts. `Hdd` boots the instance (no agent; the log says what the disk
//!   holds). A power-off or a power cycle ends the agent; every boot starts
//!   with an empty command list.
//! * **Parameters**, as IPA reads them: the kernel command line of the CD
//!   (`/EFI/BOOT/grub.cfg`'s `linux` line when the machine boots UEFI,
//!   `/isolinux/isolinux.cfg`'s `APPEND` for BIOS, the other when that is
//!   missing; extracted with `xorriso`, once per ISO URL), then, when it
//!   says `boot_method=vmedia`, the `parameters.txt` (`key=value`,
//!   whitespace separated) of the FAT floppy in the removable slot, read
//!   from its `Image` URL (the BMC streams it, as iLO and iDRAC do), on
//!   top. Keys: `ipa-api-url` (comma-separated URLs), `ipa-agent-token`,
//!   `BOOTIF`. (`cd_params: "without_floppy"` reads the floppy alone, and
//!   the CD only when there is none.) A read that fails makes the agent
//!   start again after `agent_restart_ms`, as systemd restarts IPA.
//! * **Agent protocol** (as IPA does it): `GET <api>/` for
//!   `default_version.version` (1.31 if it is missing); `GET
//!   /v1/lookup?addresses=<macs>` with `X-OpenStack-Ironic-API-Version:
//!   min(server, 1.62)`, retried (404/5xx: exponential back-off from
//!   `lookup_interval_ms`; 409: 5, 10, then 30 s pauses); the token of the
//!   lookup when it is a real one (≥ 32 characters), the media's when the
//!   lookup says `"******"`, none at all = the agent locks itself down; then
//!   `POST /v1/heartbeat/<node uuid>` with `callback_url`, `agent_token`
//!   (≥ 1.62), `agent_version` (≥ 1.36), `agent_verify_ca` (≥ 1.68 and TLS)
//!   at `X-OpenStack-Ironic-API-Version: min(server, 1.68)`. The first
//!   heartbeat goes at once, then every `heartbeat_interval_ms`; after an
//!   error (409 too) `heartbeat_retry_ms`; an asynchronous command that
//!   ends forces one (no sooner than `forced_heartbeat_min_ms` after the
//!   last).
//! * **Agent API**: one HTTP(S) server for all machines; machine `m`'s
//!   agent is at `http(s)://<advertise_host>:<port>/m` (its `callback_url`):
//!   `GET /`, `/v1/`, `/v1/status` (no token, as in IPA), `GET
//!   /v1/commands/`, `GET /v1/commands/<id>[?wait=true]`, `POST
//!   /v1/commands/?wait=true|false` — these with `?agent_token=` (401
//!   `{"faultcode", "faultstring"}` otherwise). A second command while one
//!   runs gets 409 (synchronous commands queue, as IPA's command lock does).
//!   A machine without a live agent (off, booting, crashed) does not answer:
//!   the connection is closed without a response (`unreachable: "close"`,
//!   like a refused connection) or held open until the client gives up
//!   (`"hang"`).
//! * **Commands** with IPA's names and result shapes: `deploy.` and
//!   `clean.` `get_*_steps` / `execute_*_step` (`write_image`,
//!   `erase_devices_metadata`, `erase_devices`; the other steps of IPA's
//!   generic hardware manager succeed doing nothing), `standby.`
//!   `prepare_image`, `get_partition_uuids`, `power_off`, `run_image`,
//!   `sync`, `image.install_bootloader`, `log.collect_system_logs`. Images
//!   are downloaded (retried as IPA does: `download_retries`), verified
//!   (md5, sha256, sha512 by length, or `os_hash_algo` + `os_hash_value`, or
//!   a checksum URL) and written into `<disks_dir>/<machine>.img`;
//!   `qcow2` is converted with `qemu-img`. The root "uuid" of a whole disk
//!   is its MBR signature (`0x%08x` of the 4 bytes at 440).
//! * **Faults** per machine ([`Faults`]: in the config, through
//!   [`RamdiskSim::set_faults`], or `POST /control/<machine>` with a JSON
//!   object of the fields to change, `{"crash": true}` to crash at once).
//! * **Log**: JSON lines ([`LogEvent`]), one per boot, lookup, heartbeat,
//!   command, agent request…, in `log_path` and through
//!   [`RamdiskSim::log`]; [`command_overlaps`] finds commands of two
//!   conductors (`User-Agent`) running at the same time on one machine.
//!
//! Cheap: a machine is a few hundred bytes and no task until it boots; an
//! agent is one task (plus one per running command).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

/// What the simulated agent says it is (`agent_version`, `/v1/status`).
pub const AGENT_VERSION: &str = "10.0.0";
/// IPA's generic hardware manager, the only one a plain machine has.
const HWM_NAME: &str = "generic_hardware_manager";
const HWM_VERSION: &str = "1.2";
const HWM_CLASS: &str = "GenericHardwareManager";
/// The one disk of a simulated machine, as the agent names it.
const DISK_DEVICE: &str = "/dev/sda";
const MIB: u64 = 1024 * 1024;
const IPA_DOCS: &str = "https://docs.openstack.org/ironic-python-agent";

// ---- configuration ---------------------------------------------------------

/// The simulator's configuration (`ramdisk-sim --config sim.json` reads it
/// as JSON; every field has a default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Where the agent API (and `/notify`, `/control`) listens.
    pub listen: String,
    /// The host in callback URLs (default: the listen address; `0.0.0.0`
    /// becomes `127.0.0.1`).
    pub advertise_host: Option<String>,
    pub emulators: Vec<EmulatorConfig>,
    /// Where the disk files live (default: a temporary directory of the
    /// simulator's own).
    pub disks_dir: Option<PathBuf>,
    /// The size of every disk (a sparse file).
    pub disk_size_bytes: u64,
    /// From power-on to the agent's start.
    pub boot_delay_ms: u64,
    /// Between two heartbeats. None: IPA's own, the lookup's
    /// `heartbeat_timeout` × a random 0.3–0.6.
    pub heartbeat_interval_ms: Option<u64>,
    /// After a heartbeat that failed (409 too). None: IPA's 5 s × 1–2.
    pub heartbeat_retry_ms: Option<u64>,
    /// A command that ends forces a heartbeat, but not sooner than this
    /// after the last one (IPA: 5 s).
    pub forced_heartbeat_min_ms: u64,
    pub lookup_interval_ms: u64,
    pub lookup_max_interval_ms: u64,
    /// After this long without a lookup the agent exits and starts over (as
    /// systemd restarts IPA).
    pub lookup_timeout_ms: u64,
    /// Pauses after a 409 on lookup (IPA: 5, 10, then 30 s).
    pub lookup_conflict_pause_ms: Vec<u64>,
    /// After the agent failed to read its parameters it starts again this
    /// much later (IPA's systemd unit: Restart=always, RestartSec 30 s).
    pub agent_restart_ms: u64,
    /// An image download (or checksum mismatch) is tried this many more
    /// times (IPA: 9) ...
    pub download_retries: u32,
    /// ... this far apart (IPA: 10 s).
    pub download_retry_interval_ms: u64,
    /// Timeout of a request to the API (IPA: 30 s).
    pub http_timeout_ms: u64,
    /// Do not verify TLS certificates of the API and image servers
    /// (IPA's `ipa-insecure`).
    pub insecure: bool,
    /// Extra CA (PEM file) for the API and image servers.
    pub ca_file: Option<PathBuf>,
    /// Serve the agent API over HTTPS (a CA of the simulator's own; the
    /// heartbeat carries it as `agent_verify_ca`). The port serves plain
    /// HTTP too: an API older than 1.68 gets an `http://` callback URL, as
    /// IPA does without auto-TLS.
    pub tls: bool,
    /// Where the kernel command line comes from: the CD's boot loader
    /// config (`/EFI/BOOT/grub.cfg` when the machine boots UEFI, else
    /// `/isolinux/isolinux.cfg`; the other one if that is missing), and the
    /// floppy's `parameters.txt` on top when it says `boot_method=vmedia`
    /// (`always`, what IPA does), or the floppy alone and the CD only
    /// without one (`without_floppy`: no ISO download when there is a
    /// floppy).
    pub cd_params: CdParams,
    /// Requests in flight to one emulator at most (sushy-tools is one
    /// Python process for all its systems).
    pub bmc_concurrency: usize,
    /// Poll every system's power state this often (a fallback for, or
    /// instead of, the emulator's notifications).
    pub poll_interval_ms: Option<u64>,
    /// The JSON-lines log (default: a file in a temporary directory).
    pub log_path: Option<PathBuf>,
    /// Log every request to an agent API (method, path, status, User-Agent).
    pub log_requests: bool,
    /// How a machine without a live agent "answers".
    pub unreachable: Unreachable,
    pub agent_version: String,
    /// Faults per machine id.
    pub faults: BTreeMap<String, Faults>,
    /// Export the disk over iSCSI when the media ask for it
    /// (`iscsi_target_iqn` and `deploy_key`, the `iscsi` deploy): the
    /// simulator runs a `tgtd` of its own on a free loopback port, and a
    /// booted ramdisk adds its machine's disk file as LUN 1 of a target
    /// with that IQN, then posts `pass_deploy_info` (`address`, `iqn`,
    /// `key`, `port`) to the API. The target goes away when the machine
    /// powers off. Needs root (tgtd's control socket is in /var/run).
    pub iscsi: bool,
    /// The tgt binaries (Debian: tgt).
    pub tgtd: String,
    pub tgtadm: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: "127.0.0.1:0".into(),
            advertise_host: None,
            emulators: Vec::new(),
            disks_dir: None,
            disk_size_bytes: 64 * MIB,
            boot_delay_ms: 1000,
            heartbeat_interval_ms: None,
            heartbeat_retry_ms: None,
            forced_heartbeat_min_ms: 5000,
            lookup_interval_ms: 1000,
            lookup_max_interval_ms: 60_000,
            lookup_timeout_ms: 600_000,
            lookup_conflict_pause_ms: vec![5000, 10_000, 30_000],
            agent_restart_ms: 30_000,
            download_retries: 9,
            download_retry_interval_ms: 10_000,
            http_timeout_ms: 30_000,
            insecure: false,
            ca_file: None,
            tls: false,
            cd_params: CdParams::Always,
            bmc_concurrency: 8,
            poll_interval_ms: None,
            log_path: None,
            log_requests: true,
            unreachable: Unreachable::Close,
            agent_version: AGENT_VERSION.into(),
            faults: BTreeMap::new(),
            iscsi: false,
            tgtd: "tgtd".into(),
            tgtadm: "tgtadm".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CdParams {
    Always,
    WithoutFloppy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// Close the connection without a response (the client sees the
    /// connection reset, as with a refused one).
    Close,
    /// Hold the connection until the client gives up (a machine that
    /// stopped answering altogether).
    Hang,
}

/// One Redfish BMC and the systems of it that are simulated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// `http(s)://host:port`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// CA of the BMC's certificate; None = not verified (labs).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub systems: Vec<SystemConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// The Redfish system id (`/redfish/v1/Systems/<id>`); also the
    /// machine's id in callback URLs, the log and the control API.
    pub id: String,
    /// Its NICs' MACs (lookup `addresses`); empty = read from the BMC's
    /// `EthernetInterfaces` at the first boot.
    #[serde(default)]
    pub macs: Vec<String>,
}

impl EmulatorConfig {
    /// Every system of a [`crate::redfish::SushyLab`], with the MACs its
    /// generated config gives them.
    pub fn from_lab(lab: &crate::redfish::SushyLab) -> EmulatorConfig {
        let (username, password) = match &lab.options.auth {
            Some((u, p)) => (Some(u.clone()), Some(p.clone())),
            None => (None, None),
        };
        EmulatorConfig {
            url: lab.url.clone(),
            username,
            password,
            ca_file: lab.options.tls.then(|| lab.ca()),
            systems: lab
                .systems
                .iter()
                .enumerate()
                .map(|(i, id)| SystemConfig { id: id.clone(), macs: vec![lab_mac(i)] })
                .collect(),
        }
    }
}

/// The MAC of system `i` of a [`crate::redfish::SushyLab`].
pub fn lab_mac(i: usize) -> String {
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Deterministic faults of one machine. Command keys are full command
/// names (`deploy.execute_deploy_step`), a step of one (`deploy.write_image`,
/// `clean.erase_devices`), or `*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Crash (no more answers, no more heartbeats) as soon as an image
    /// download has received its first bytes.
    pub die_during_download: bool,
    /// Crash once an image download has received this many bytes.
    pub die_after_bytes: Option<u64>,
    /// These commands fail with this error.
    pub fail_commands: BTreeMap<String, String>,
    /// These commands take this much longer.
    pub command_delay_ms: BTreeMap<String, u64>,
    /// The next N heartbeats are lost (not sent).
    pub lose_heartbeats: u32,
    /// `pass_deploy_info` reports this error instead of a target (a
    /// ramdisk that could not start its iSCSI target).
    pub iscsi_error: Option<String>,
    /// From power-on to the agent's start, instead of `boot_delay_ms` (a
    /// slow firmware: the node waits on its ramdisk that long).
    pub boot_delay_ms: Option<u64>,
}

// ---- the log ---------------------------------------------------------------

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    pub ts: DateTime<Utc>,
    pub machine: String,
    /// The machine's power-on count (0 before its first boot).
    pub boot: u64,
    /// `power_on`, `power_off`, `boot`, `agent_start`, `params`, `lookup`,
    /// `heartbeat`, `heartbeat_lost`, `command` (when it ended; an
    /// asynchronous one also `command_start`), `request`, `download`,
    /// `image_written`, `agent_crash`, `agent_stop`, `agent_error`, `bmc`,
    /// `faults`.
    pub event: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl LogEvent {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }
}

struct EventLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl EventLog {
    fn write(&self, machine: &str, boot: u64, event: &str, fields: Value) {
        let mut line = Map::new();
        line.insert("ts".into(), Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true).into());
        line.insert("machine".into(), machine.into());
        line.insert("boot".into(), boot.into());
        line.insert("event".into(), event.into());
        if let Value::Object(f) = fields {
            line.extend(f);
        }
        let mut s = serde_json::to_string(&Value::Object(line)).unwrap_or_default();
        s.push('\n');
        let mut f = self.file.lock().unwrap();
        let _ = f.write_all(s.as_bytes());
    }

    fn read(&self) -> Vec<LogEvent> {
        let _guard = self.file.lock().unwrap();
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

/// Commands of different conductors (`User-Agent`) that ran at the same
/// time on one machine: one line per pair. Empty is good.
pub fn command_overlaps(events: &[LogEvent]) -> Vec<String> {
    // per machine: (start, end, user agent, command)
    type Span<'a> = (DateTime<Utc>, DateTime<Utc>, &'a str, &'a str);
    let mut by_machine: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "command") {
        let (Some(s), Some(t)) = (e.str("started_at"), e.str("ended_at")) else { continue };
        let (Ok(s), Ok(t)) = (DateTime::parse_from_rfc3339(s), DateTime::parse_from_rfc3339(t)) else { continue };
        by_machine.entry(&e.machine).or_default().push((
            s.with_timezone(&Utc),
            t.with_timezone(&Utc),
            e.str("user_agent").unwrap_or(""),
            e.str("name").unwrap_or(""),
        ));
    }
    let mut out = Vec::new();
    for (m, mut cmds) in by_machine {
        cmds.sort();
        for i in 0..cmds.len() {
            for j in i + 1..cmds.len() {
                let (a, b) = (&cmds[i], &cmds[j]);
                if b.0 < a.1 && a.2 != b.2 {
                    out.push(format!(
                        "{m}: {} by {:?} ({} .. {}) overlaps {} by {:?} ({} .. {})",
                        a.3, a.2, a.0, a.1, b.3, b.2, b.0, b.1
                    ));
                }
            }
        }
    }
    out
}

// ---- the running simulator -------------------------------------------------

/// The simulator. Stopped (every agent, the server) when dropped.
pub struct RamdiskSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _tmp: tempfile::TempDir,
}

/// A machine as the simulator sees it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineStatus {
    pub id: String,
    pub powered_on: bool,
    pub boot: u64,
    /// `none`, `starting`, `looking up`, `serving`, `crashed`, `locked down`.
    pub agent: String,
    pub node_uuid: Option<String>,
    pub commands: usize,
    pub heartbeats: u64,
    pub faults: Faults,
}

struct Shared {
    cfg: SimConfig,
    machines: RwLock<HashMap<String, Arc<Machine>>>,
    /// Emulator system names → machine ids (notifications carry both).
    names: RwLock<HashMap<String, String>>,
    /// To the API and image servers.
    http: reqwest::Client,
    /// Image downloads (no overall timeout).
    download: reqwest::Client,
    log: EventLog,
    cancel: CancellationToken,
    tls: Option<Tls>,
    advertise: String,
    disks_dir: PathBuf,
    tmp_dir: PathBuf,
    /// Kernel command lines by CD URL (without its query) and boot mode:
    /// a fleet shares its deploy ISOs.
    cd_cache: Mutex<HashMap<String, Arc<CdCell>>>,
    iscsi: Option<Arc<IscsiPortal>>,
}

/// A CD's boot loader config file and kernel command line, read once.
type CdCell = tokio::sync::OnceCell<(String, String)>;

struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_pem: String,
}

struct Bmc {
    url: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
    /// One emulator plays many BMCs: its requests are bounded.
    limit: tokio::sync::Semaphore,
}

struct Machine {
    id: String,
    bmc: Arc<Bmc>,
    system_path: String,
    macs: Mutex<Vec<String>>,
    faults: Mutex<Faults>,
    disk: PathBuf,
    st: Mutex<MState>,
}

#[derive(Default)]
struct MState {
    on: bool,
    epoch: u64,
    boot_cancel: Option<CancellationToken>,
    agent: Option<Arc<Agent>>,
    last_pending: Option<Pending>,
}

#[derive(Debug, Clone, PartialEq)]
struct Pending {
    state: String,
    apply_time: f64,
}

/// One observation of a system's power.
#[derive(Debug, Clone)]
struct Observation {
    power_on: bool,
    /// Only notifications carry it.
    pending: Option<Pending>,
    source: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    LookingUp,
    Serving,
    Crashed,
    Locked,
    /// After `standby.power_off`: the OS halts, nothing answers any more.
    ShuttingDown,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::LookingUp => "looking up",
            Phase::Serving => "serving",
            Phase::Crashed => "crashed",
            Phase::Locked => "locked down",
            Phase::ShuttingDown => "shutting down",
        }
    }
}

struct Agent {
    machine: Arc<Machine>,
    epoch: u64,
    cancel: CancellationToken,
    started_at: f64,
    force_heartbeat: tokio::sync::Notify,
    /// IPA's command lock: held while a command is accepted (and while a
    /// synchronous one runs).
    command_lock: tokio::sync::Mutex<()>,
    inner: Mutex<AgentInner>,
}

struct AgentInner {
    phase: Phase,
    token: Option<String>,
    node_uuid: Option<String>,
    api_urls: Vec<String>,
    api_version: (u32, u32),
    https: bool,
    commands: Vec<Arc<Mutex<Cmd>>>,
    cached_image_id: Option<String>,
    partition_uuids: Option<Value>,
    md5_enabled: bool,
    heartbeats: u64,
    journal: Vec<String>,
}

struct Cmd {
    id: String,
    /// The short name, as IPA reports it (`execute_deploy_step`).
    command_name: String,
    /// The full name (`deploy.execute_deploy_step`).
    full_name: String,
    step: Option<String>,
    status: String,
    result: Value,
    error: Value,
    user_agent: String,
    started: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    done: tokio::sync::watch::Sender<bool>,
}

impl Cmd {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "command_name": self.command_name,
            "command_status": self.status,
            "command_error": self.error,
            "command_result": self.result,
        })
    }
}

fn now_f64() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl RamdiskSim {
    /// Binds the server, starts serving; machines boot when their BMC says so.
    pub async fn start(config: SimConfig) -> anyhow::Result<RamdiskSim> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tmp = tempfile::Builder::new().prefix("ferric-ramdisk-sim").tempdir()?;
        let disks_dir = config.disks_dir.clone().unwrap_or_else(|| tmp.path().join("disks"));
        std::fs::create_dir_all(&disks_dir).with_context(|| format!("disks dir {}", disks_dir.display()))?;
        let log_path = config.log_path.clone().unwrap_or_else(|| tmp.path().join("ramdisk-sim.jsonl"));
        if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("log {}", log_path.display()))?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let host = match &config.advertise_host {
            Some(h) => h.clone(),
            None if addr.ip().is_unspecified() => "127.0.0.1".into(),
            None => addr.ip().to_string(),
        };
        let advertise =
            if host.contains(':') { format!("[{host}]:{}", addr.port()) } else { format!("{host}:{}", addr.port()) };
        let tls = if config.tls { Some(make_tls(&host)?) } else { None };

        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.http_timeout_ms.max(1)))
            .connect_timeout(Duration::from_secs(30))
            .user_agent(format!("ironic-python-agent/{} (ferric ramdisk-sim)", config.agent_version));
        let mut download = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(60))
            .read_timeout(Duration::from_secs(60))
            .user_agent(format!("ironic-python-agent/{} (ferric ramdisk-sim)", config.agent_version));
        if config.insecure {
            http = http.tls_danger_accept_invalid_certs(true);
            download = download.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("ca_file {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)?;
            http = http.add_root_certificate(cert.clone());
            download = download.add_root_certificate(cert);
        }
        let shared = Arc::new(Shared {
            machines: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            http: http.build()?,
            download: download.build()?,
            log: EventLog { path: log_path, file: Mutex::new(file) },
            cancel: CancellationToken::new(),
            tls,
            advertise,
            disks_dir,
            tmp_dir: tmp.path().to_path_buf(),
            cd_cache: Mutex::new(HashMap::new()),
            iscsi: if config.iscsi { Some(Arc::new(IscsiPortal::start(&config, tmp.path()).await?)) } else { None },
            cfg: config.clone(),
        });
        for e in &config.emulators {
            shared.add_emulator(e)?;
        }
        for m in config.faults.keys() {
            if !shared.machines.read().unwrap().contains_key(m) {
                bail!("faults for {m:?}, which is not a configured system");
            }
        }
        tokio::spawn(serve(shared.clone(), listener));
        if let Some(ms) = config.poll_interval_ms {
            tokio::spawn(poll_loop(shared.clone(), Duration::from_millis(ms.max(10))));
        }
        Ok(RamdiskSim { shared, addr, _tmp: tmp })
    }

    /// `http://<advertise_host>:<port>` (the port serves HTTPS too when TLS
    /// is on).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.advertise)
    }

    /// What `SushyOptions::notify_url` wants.
    pub fn notify_url(&self) -> String {
        format!("{}/notify", self.url())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent API of a machine, as its heartbeat announces it.
    pub fn callback_url(&self, machine: &str, https: bool) -> String {
        format!("{}://{}/{machine}", if https { "https" } else { "http" }, self.shared.advertise)
    }

    /// The simulator's CA (PEM) when it serves TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.shared.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    pub fn log_path(&self) -> &Path {
        &self.shared.log.path
    }

    /// Every event so far.
    pub fn log(&self) -> Vec<LogEvent> {
        self.shared.log.read()
    }

    /// The events of one machine.
    pub fn events(&self, machine: &str) -> Vec<LogEvent> {
        self.log().into_iter().filter(|e| e.machine == machine).collect()
    }

    /// The disk file of a machine.
    pub fn disk_path(&self, machine: &str) -> PathBuf {
        self.shared.disks_dir.join(format!("{}.img", sanitize(machine)))
    }

    pub fn machines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.machines.read().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// Adds the systems of another BMC.
    pub fn add_emulator(&self, emulator: &EmulatorConfig) -> anyhow::Result<()> {
        self.shared.add_emulator(emulator)
    }

    /// Replaces a machine's faults (they apply from the next action on).
    pub fn set_faults(&self, machine: &str, faults: Faults) -> anyhow::Result<()> {
        let m = self.shared.machine(machine).with_context(|| format!("no machine {machine:?}"))?;
        *m.faults.lock().unwrap() = faults.clone();
        let boot = m.st.lock().unwrap().epoch;
        self.shared.log.write(&m.id, boot, "faults", json!({ "faults": faults }));
        Ok(())
    }

    /// Crashes a machine's agent now (it stops answering and heartbeating
    /// until the machine is powered off or cycled).
    pub fn crash(&self, machine: &str) -> bool {
        let Some(m) = self.shared.machine(machine) else { return false };
        let agent = m.st.lock().unwrap().agent.clone();
        match agent {
            Some(a) => {
                a.crash(&self.shared, "crashed on request");
                true
            }
            None => false,
        }
    }

    pub fn status(&self, machine: &str) -> Option<MachineStatus> {
        self.shared.machine(machine).map(|m| m.status())
    }

    /// Stops every agent and the server.
    pub async fn stop(self) {
        self.shared.cancel.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for RamdiskSim {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(p) = &self.shared.iscsi {
            p.kill();
        }
    }
}

// ---- iSCSI -----------------------------------------------------------------

/// The simulator's own `tgtd`: one portal for all machines, one target per
/// booted machine that was asked to export its disk.
struct IscsiPortal {
    child: Mutex<Option<std::process::Child>>,
    port: u16,
    control: u16,
    tgtadm: String,
    next_tid: std::sync::atomic::AtomicU32,
    /// Machine id → (boot number, target id).
    targets: tokio::sync::Mutex<HashMap<String, (u64, u32)>>,
}

impl IscsiPortal {
    async fn start(cfg: &SimConfig, tmp: &Path) -> anyhow::Result<IscsiPortal> {
        // the control "port" (1..32767) names tgtd's socket,
        // /var/run/tgtd/socket.N, which another tgtd may hold: a few tries
        let mut last = String::new();
        for _ in 0..8 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let control = 1 + (uuid::Uuid::new_v4().as_u128() % 32766) as u16;
            match Self::try_start(cfg, tmp, port, control).await {
                Ok(p) => return Ok(p),
                Err(e) => last = e.to_string(),
            }
        }
        bail!("tgtd did not start: {last}")
    }

    async fn try_start(cfg: &SimConfig, tmp: &Path, port: u16, control: u16) -> anyhow::Result<IscsiPortal> {
        let log = std::fs::File::create(tmp.join("tgtd.log"))?;
        let mut cmd = std::process::Command::new(&cfg.tgtd);
        cmd.args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &control.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; tgtd must not outlive us
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {} (Debian: apt-get install tgt)", cfg.tgtd))?;
        let portal = IscsiPortal {
            child: Mutex::new(Some(child)),
            port,
            control,
            tgtadm: cfg.tgtadm.clone(),
            next_tid: std::sync::atomic::AtomicU32::new(1),
            targets: tokio::sync::Mutex::new(HashMap::new()),
        };
        let started = std::time::Instant::now();
        loop {
            let up = portal.tgtadm(&["--op", "show", "--mode", "sys"]).await.is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            if up {
                return Ok(portal);
            }
            let exited = portal.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(tmp.join("tgtd.log")).unwrap_or_default();
                bail!("tgtd exited ({status}): {}", log.trim());
            }
            if started.elapsed() > Duration::from_secs(20) {
                portal.kill();
                bail!("tgtd did not come up on 127.0.0.1:{port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tgtadm(&self, args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new(&self.tgtadm)
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.tgtadm))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("tgtadm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Exports `disk` as LUN 1 of target `iqn` for this boot of `machine`
    /// (the target of an earlier boot goes first).
    async fn export(&self, machine: &str, boot: u64, iqn: &str, disk: &Path) -> Result<u32, String> {
        let mut targets = self.targets.lock().await;
        if let Some((_, tid)) = targets.remove(machine) {
            self.delete(tid).await?;
        }
        let tid = self.next_tid.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = tid.to_string();
        self.tgtadm(&["--op", "new", "--mode", "target", "--tid", &t, "-T", iqn]).await?;
        let disk = disk.display().to_string();
        let lun = self.tgtadm(&["--op", "new", "--mode", "logicalunit", "--tid", &t, "--lun", "1", "-b", &disk]).await;
        let bound = match lun {
            Ok(_) => self.tgtadm(&["--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL"]).await,
            Err(e) => Err(e),
        };
        if let Err(e) = bound {
            let _ = self.delete(tid).await;
            return Err(e);
        }
        targets.insert(machine.to_string(), (boot, tid));
        Ok(tid)
    }

    /// Removes the target of this boot of `machine`, if it still has one.
    async fn unexport(&self, machine: &str, boot: u64) {
        let mut targets = self.targets.lock().await;
        if let Some(&(b, tid)) = targets.get(machine)
            && b == boot
        {
            targets.remove(machine);
            let _ = self.delete(tid).await;
        }
    }

    async fn delete(&self, tid: u32) -> Result<(), String> {
        self.tgtadm(&["--op", "delete", "--force", "--mode", "target", "--tid", &tid.to_string()]).await.map(|_| ())
    }

    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

fn make_tls(host: &str) -> anyhow::Result<Tls> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ferric ramdisk-sim CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut names = vec![host.to_string(), "localhost".to_string()];
    if host != "127.0.0.1" {
        names.push("127.0.0.1".into());
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, host);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)?;
    Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), ca_pem: ca_cert.pem() })
}

impl Shared {
    fn machine(&self, id: &str) -> Option<Arc<Machine>> {
        if let Some(m) = self.machines.read().unwrap().get(id) {
            return Some(m.clone());
        }
        let id = self.names.read().unwrap().get(id).cloned()?;
        self.machines.read().unwrap().get(&id).cloned()
    }

    fn add_emulator(&self, e: &EmulatorConfig) -> anyhow::Result<()> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .user_agent("ferric ramdisk-sim");
        match &e.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).with_context(|| format!("emulator ca_file {}", ca.display()))?;
                b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
            }
            None => b = b.tls_danger_accept_invalid_certs(true),
        }
        let auth = match (&e.username, &e.password) {
            (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
            _ => None,
        };
        let bmc = Arc::new(Bmc {
            url: e.url.trim_end_matches('/').to_string(),
            auth,
            client: b.build()?,
            limit: tokio::sync::Semaphore::new(self.cfg.bmc_concurrency.max(1)),
        });
        let mut machines = self.machines.write().unwrap();
        for s in &e.systems {
            if s.id.is_empty() || s.id == "notify" || s.id == "control" || s.id.contains('/') {
                bail!("system id {:?} cannot name a machine", s.id);
            }
            if machines.contains_key(&s.id) {
                bail!("system {:?} is configured twice", s.id);
            }
            let faults = self.cfg.faults.get(&s.id).cloned().unwrap_or_default();
            machines.insert(
                s.id.clone(),
                Arc::new(Machine {
                    id: s.id.clone(),
                    bmc: bmc.clone(),
                    system_path: format!("/redfish/v1/Systems/{}", s.id),
                    macs: Mutex::new(s.macs.iter().map(|m| m.to_ascii_lowercase()).collect()),
                    faults: Mutex::new(faults),
                    disk: self.disks_dir.join(format!("{}.img", sanitize(&s.id))),
                    st: Mutex::new(MState::default()),
                }),
            );
        }
        Ok(())
    }
}

// ---- the BMC ---------------------------------------------------------------

impl Bmc {
    fn req(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        let r = self
            .req(self.client.get(format!("{}{path}", self.url)))
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn post(&self, path: &str, body: Value) -> Result<u16, String> {
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        let r = self
            .req(self.client.post(format!("{}{path}", self.url)))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        Ok(r.status().as_u16())
    }
}

// ---- power and boot --------------------------------------------------------

fn power_is_on(s: &str) -> bool {
    s.eq_ignore_ascii_case("on")
}

/// Where a pending power state ends: on (`On`, `ForceOn`, `*Restart`) or off.
fn pending_target_on(state: &str) -> bool {
    state.contains("On") || state.contains("Restart")
}

impl Observation {
    fn from_notification(v: &Value) -> Observation {
        let pending = v.get("pending_power").filter(|p| p.is_object()).map(|p| Pending {
            state: p.get("power_state").and_then(Value::as_str).unwrap_or("").to_string(),
            apply_time: p.get("apply_time").and_then(Value::as_f64).unwrap_or(0.0),
        });
        Observation {
            power_on: power_is_on(v.get("power_state").and_then(Value::as_str).unwrap_or("Off")),
            pending,
            source: "notify",
        }
    }
}

impl Machine {
    fn status(&self) -> MachineStatus {
        let st = self.st.lock().unwrap();
        let (agent, node_uuid, commands, heartbeats) = match &st.agent {
            Some(a) => {
                let i = a.inner.lock().unwrap();
                (i.phase.name().to_string(), i.node_uuid.clone(), i.commands.len(), i.heartbeats)
            }
            None => ("none".to_string(), None, 0, 0),
        };
        MachineStatus {
            id: self.id.clone(),
            powered_on: st.on,
            boot: st.epoch,
            agent,
            node_uuid,
            commands,
            heartbeats,
            faults: self.faults.lock().unwrap().clone(),
        }
    }

    fn boot_no(&self) -> u64 {
        self.st.lock().unwrap().epoch
    }

    /// What a power observation means: a power-off, a power cycle, a
    /// power-on — decided at once, without waiting (the emulator waits for
    /// the notification's answer).
    fn observe(self: &Arc<Self>, sim: &Arc<Shared>, obs: Observation) {
        let now = now_f64();
        let mut later: Option<f64> = None;
        {
            let mut st = self.st.lock().unwrap();
            let effective_on = match &obs.pending {
                Some(p) => {
                    let fresh = st.last_pending.as_ref() != Some(p);
                    if fresh {
                        st.last_pending = Some(p.clone());
                        // a power cycle: off now, on when it is applied
                        if p.state.contains("Restart") && st.on {
                            self.power_off_locked(sim, &mut st, "power cycle", obs.source);
                        }
                    }
                    if p.apply_time <= now {
                        pending_target_on(&p.state)
                    } else {
                        if fresh {
                            later = Some(p.apply_time);
                        }
                        obs.power_on
                    }
                }
                None => {
                    if obs.source == "notify" {
                        st.last_pending = None;
                    }
                    obs.power_on
                }
            };
            if !effective_on && st.on {
                self.power_off_locked(sim, &mut st, "power off", obs.source);
            } else if effective_on && !st.on {
                self.power_on_locked(sim, &mut st, obs.source);
            }
        }
        if let Some(at) = later {
            // the emulator applies a delayed power change when it is read
            // after its time: look again then
            let (m, sim2) = (self.clone(), sim.clone());
            let pending = obs.pending.clone();
            tokio::spawn(async move {
                let wait = (at - now_f64()).max(0.0) + 0.05;
                tokio::select! {
                    _ = sim2.cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {
                        if m.st.lock().unwrap().last_pending == pending {
                            let on = pending.as_ref().map(|p| pending_target_on(&p.state)).unwrap_or(false);
                            m.observe(&sim2, Observation { power_on: on, pending: None, source: "pending" });
                        }
                    }
                }
            });
        }
    }

    fn power_off_locked(self: &Arc<Self>, sim: &Arc<Shared>, st: &mut MState, reason: &str, source: &str) {
        st.on = false;
        if let Some(t) = st.boot_cancel.take() {
            t.cancel();
        }
        sim.log.write(&self.id, st.epoch, "power_off", json!({ "reason": reason, "source": source }));
        if let Some(a) = st.agent.take() {
            a.stop(sim, reason);
        }
    }

    fn power_on_locked(self: &Arc<Self>, sim: &Arc<Shared>, st: &mut MState, source: &str) {
        st.on = true;
        st.epoch += 1;
        let token = sim.cancel.child_token();
        if let Some(old) = st.boot_cancel.replace(token.clone()) {
            old.cancel();
        }
        sim.log.write(&self.id, st.epoch, "power_on", json!({ "source": source }));
        let (m, sim2, epoch) = (self.clone(), sim.clone(), st.epoch);
        tokio::spawn(async move {
            let t = token.clone();
            tokio::select! {
                _ = t.cancelled() => {}
                _ = m.boot(&sim2, epoch, token) => {}
            }
        });
    }

    /// The firmware: boots what the override and the media say.
    async fn boot(self: &Arc<Self>, sim: &Arc<Shared>, epoch: u64, token: CancellationToken) {
        // the machine boots whatever its BMC's web service says; reading
        // that is retried while the service errs (a busy emulator answers
        // 500 "database is locked" now and then)
        let mut attempt = 0u32;
        let system = loop {
            let failure = match self.bmc.get(&self.system_path).await {
                Ok((200, v)) => break v,
                Ok((status, v)) => json!({ "error": format!("GET system: {status}"), "body": v, "attempt": attempt }),
                Err(e) => json!({ "error": e, "attempt": attempt }),
            };
            sim.log.write(&self.id, epoch, "bmc", failure);
            attempt += 1;
            if attempt >= 10 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        };
        let boot = &system["Boot"];
        let uefi = boot["BootSourceOverrideMode"].as_str() != Some("Legacy");
        let enabled = boot["BootSourceOverrideEnabled"].as_str().unwrap_or("Disabled");
        let device = match boot["BootSourceOverrideTarget"].as_str() {
            Some(t) if enabled != "Disabled" && t != "None" => t.to_string(),
            _ => "Hdd".to_string(),
        };
        if device == "Cd" || device == "UsbCd" {
            let cd = self.media(sim, "Cd").await;
            let Some(cd) = cd else {
                sim.log.write(
                    &self.id,
                    epoch,
                    "boot",
                    json!({ "device": device, "target": "none", "reason": "no CD inserted" }),
                );
                return;
            };
            sim.log.write(
                &self.id,
                epoch,
                "boot",
                json!({ "device": device, "target": "ramdisk", "cd": cd, "mode": if uefi { "UEFI" } else { "Legacy" } }),
            );
            let delay = self.faults.lock().unwrap().boot_delay_ms.unwrap_or(sim.cfg.boot_delay_ms);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let agent = Arc::new(Agent {
                machine: self.clone(),
                epoch,
                cancel: token,
                started_at: now_f64(),
                force_heartbeat: tokio::sync::Notify::new(),
                command_lock: tokio::sync::Mutex::new(()),
                inner: Mutex::new(AgentInner {
                    phase: Phase::Starting,
                    token: None,
                    node_uuid: None,
                    api_urls: Vec::new(),
                    api_version: (1, 31),
                    https: false,
                    commands: Vec::new(),
                    cached_image_id: None,
                    partition_uuids: None,
                    md5_enabled: true,
                    heartbeats: 0,
                    journal: Vec::new(),
                }),
            });
            {
                let mut st = self.st.lock().unwrap();
                if st.epoch != epoch || !st.on {
                    return;
                }
                st.agent = Some(agent.clone());
            }
            sim.log.write(&self.id, epoch, "agent_start", json!({}));
            agent.run(sim, &cd, uefi).await;
        } else if device == "Hdd" {
            let disk = disk_summary(&self.disk);
            sim.log.write(&self.id, epoch, "boot", json!({ "device": device, "target": "instance", "disk": disk }));
        } else {
            sim.log.write(&self.id, epoch, "boot", json!({ "device": device, "target": "none" }));
        }
    }

    /// The image URL of an inserted virtual medium.
    async fn media(&self, sim: &Shared, device: &str) -> Option<String> {
        // a 5xx or a failed request is the BMC's web service, not the
        // slot: asked again a few times
        for attempt in 0..10u64 {
            match self.bmc.get(&format!("{}/VirtualMedia/{device}", self.system_path)).await {
                Ok((200, v)) => {
                    let image = v["Image"].as_str().unwrap_or("");
                    return (v["Inserted"].as_bool().unwrap_or(false) && !image.is_empty()).then(|| image.to_string());
                }
                Ok((status, v)) if status < 500 => {
                    let _ = v;
                    return None;
                }
                Ok((status, v)) => sim.log.write(
                    &self.id,
                    self.boot_no(),
                    "bmc",
                    json!({ "error": format!("GET VirtualMedia/{device}: {status}"), "body": v, "attempt": attempt }),
                ),
                Err(e) => sim.log.write(&self.id, self.boot_no(), "bmc", json!({ "error": e, "attempt": attempt })),
            }
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
        }
        None
    }

    /// The MACs of its NICs: configured, else read from the BMC once.
    async fn mac_addresses(&self) -> Vec<String> {
        let known = self.macs.lock().unwrap().clone();
        if !known.is_empty() {
            return known;
        }
        let mut found = Vec::new();
        if let Ok((200, list)) = self.bmc.get(&format!("{}/EthernetInterfaces", self.system_path)).await {
            for member in list["Members"].as_array().cloned().unwrap_or_default() {
                if let Some(path) = member["@odata.id"].as_str()
                    && let Ok((200, nic)) = self.bmc.get(path).await
                    && let Some(mac) = nic["MACAddress"].as_str()
                {
                    found.push(mac.to_ascii_lowercase());
                }
            }
        }
        if !found.is_empty() {
            *self.macs.lock().unwrap() = found.clone();
        }
        found
    }

    /// Powers the machine through its BMC (what a ramdisk's `poweroff` or
    /// `reboot` amounts to), on a task of its own: the BMC's notification
    /// of this very request ends the agent that asked.
    fn bmc_reset(self: &Arc<Self>, sim: &Arc<Shared>, reset: &'static str) {
        let (m, sim) = (self.clone(), sim.clone());
        tokio::spawn(async move {
            let asked_in = m.boot_no();
            // a read first: the emulator applies a pending power change on a
            // read, and ignores a ForceOff of a system it still thinks is off
            let _ = m.bmc.get(&m.system_path).await;
            // a real ramdisk's power-off is immediate: if the machine went
            // off (and maybe on again, from its disk) while the BMC was slow
            // to answer, there is nothing left to power off
            if reset == "ForceOff" && (m.boot_no() != asked_in || !m.st.lock().unwrap().on) {
                sim.log.write(&m.id, asked_in, "bmc", json!({ "reset": reset, "skipped": "already off" }));
                return;
            }
            let r = m
                .bmc
                .post(&format!("{}/Actions/ComputerSystem.Reset", m.system_path), json!({ "ResetType": reset }))
                .await;
            let boot = m.boot_no();
            match r {
                Ok(s) if s < 300 => sim.log.write(&m.id, boot, "bmc", json!({ "reset": reset, "status": s })),
                Ok(s) => sim.log.write(&m.id, boot, "bmc", json!({ "reset": reset, "status": s, "error": "refused" })),
                Err(e) => sim.log.write(&m.id, boot, "bmc", json!({ "reset": reset, "error": e })),
            }
            let _ = m.bmc.get(&m.system_path).await;
            // the machine went down whether or not the BMC told us — unless
            // it was powered on again meanwhile (a conductor that saw it off
            // boots the instance at once)
            if reset == "ForceOff" && m.boot_no() == asked_in {
                m.observe(&sim, Observation { power_on: false, pending: None, source: "agent" });
            }
        });
    }
}

fn disk_summary(path: &Path) -> Value {
    let Ok(head) = read_head(path) else { return json!({ "exists": false }) };
    let parts = count_partitions(&head);
    json!({
        "exists": true,
        "root_uuid": disk_signature(&head),
        "partitions": parts.as_ref().ok(),
        "partition_table_error": parts.err(),
    })
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    head.truncate(n.max(512));
    head.resize(head.len().max(512), 0);
    Ok(head)
}

/// `0x%08x` of the MBR disk signature, as `hexdump -s 440 -n 4 -e '"0x%08x"'`
/// prints it on x86 (what IPA reports as a whole disk's root uuid).
fn disk_signature(head: &[u8]) -> String {
    format!("0x{:08x}", u32::from_le_bytes([head[440], head[441], head[442], head[443]]))
}

/// Partitions in the MBR (or the GPT behind a protective MBR).
fn count_partitions(head: &[u8]) -> Result<usize, String> {
    if head.len() < 512 || head[510] != 0x55 || head[511] != 0xaa {
        return Err(format!("Error: {DISK_DEVICE}: unrecognised disk label"));
    }
    let types: Vec<u8> = (0..4).map(|i| head[446 + 16 * i + 4]).collect();
    if types.contains(&0xee) {
        let h = &head[512..];
        if h.len() < 92 || &h[..8] != b"EFI PART" {
            return Err(format!("Error: {DISK_DEVICE}: unrecognised disk label (no GPT header)"));
        }
        let lba = u64::from_le_bytes(h[72..80].try_into().unwrap()) as usize;
        let num = u32::from_le_bytes(h[80..84].try_into().unwrap()) as usize;
        let size = u32::from_le_bytes(h[84..88].try_into().unwrap()) as usize;
        let mut n = 0;
        for i in 0..num.min(256) {
            let off = lba * 512 + i * size;
            if off + 16 > head.len() {
                break;
            }
            if head[off..off + 16].iter().any(|b| *b != 0) {
                n += 1;
            }
        }
        return Ok(n);
    }
    Ok(types.iter().filter(|t| **t != 0).count())
}

// ---- the agent -------------------------------------------------------------

/// An error as IPA serialises its `RESTError`s.
#[derive(Debug, Clone)]
struct RestError {
    kind: &'static str,
    code: u16,
    message: &'static str,
    details: String,
}

impl RestError {
    fn new(kind: &'static str, code: u16, message: &'static str, details: impl Into<String>) -> RestError {
        RestError { kind, code, message, details: details.into() }
    }
    fn execution(details: impl Into<String>) -> RestError {
        RestError::new("CommandExecutionError", 500, "Command execution failed", details)
    }
    fn invalid_params(details: impl Into<String>) -> RestError {
        RestError::new("InvalidCommandParamsError", 400, "Invalid command parameters", details)
    }
    fn download(image: &str, msg: impl std::fmt::Display) -> RestError {
        RestError::new(
            "ImageDownloadError",
            500,
            "Error downloading image",
            format!("Download of image {image} failed: {msg}"),
        )
    }
    fn json(&self) -> Value {
        json!({ "type": self.kind, "code": self.code, "message": self.message, "details": self.details })
    }
    fn text(&self) -> String {
        format!("{}: {}", self.message, self.details)
    }
}

enum CmdError {
    Rest(RestError),
    /// IPA's `CLEAN_VERSION_MISMATCH` status.
    VersionMismatch(RestError),
    /// The agent crashed (a fault) or its machine went down: nobody will
    /// ever see this command end.
    Gone,
}

impl From<RestError> for CmdError {
    fn from(e: RestError) -> Self {
        CmdError::Rest(e)
    }
}

/// Python's `dict` repr, for messages IPA formats with `%s`.
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{s}'"),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", py_repr(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn hwm_versions() -> Value {
    json!({ HWM_NAME: HWM_VERSION })
}

fn uniform(a: f64, b: f64) -> f64 {
    a + rand::random::<f64>() * (b - a)
}

impl Agent {
    fn log(&self, sim: &Shared, event: &str, fields: Value) {
        sim.log.write(&self.machine.id, self.epoch, event, fields.clone());
        let mut i = self.inner.lock().unwrap();
        if i.journal.len() < 500 {
            i.journal.push(format!("{} {event} {fields}", ts(Utc::now())));
        }
    }

    fn phase(&self) -> Phase {
        self.inner.lock().unwrap().phase
    }

    fn gone(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A crashed ramdisk: no answers, no heartbeats, its commands frozen.
    fn crash(&self, sim: &Shared, reason: &str) {
        {
            let mut i = self.inner.lock().unwrap();
            if i.phase == Phase::Crashed {
                return;
            }
            i.phase = Phase::Crashed;
        }
        self.cancel.cancel();
        self.log(sim, "agent_crash", json!({ "reason": reason }));
        self.log_interrupted(sim, reason);
    }

    /// The machine went down under the agent.
    fn stop(&self, sim: &Shared, reason: &str) {
        self.cancel.cancel();
        if let Some(p) = sim.iscsi.clone() {
            let (id, boot) = (self.machine.id.clone(), self.epoch);
            tokio::spawn(async move { p.unexport(&id, boot).await });
        }
        self.log_interrupted(sim, reason);
        let (n, hb, phase) = {
            let i = self.inner.lock().unwrap();
            (i.commands.len(), i.heartbeats, i.phase)
        };
        self.log(
            sim,
            "agent_stop",
            json!({ "reason": reason, "phase": phase.name(), "commands": n, "heartbeats": hb }),
        );
    }

    fn log_interrupted(&self, sim: &Shared, reason: &str) {
        let cmds = self.inner.lock().unwrap().commands.clone();
        for c in cmds {
            let mut c = c.lock().unwrap();
            if c.status == "RUNNING" && c.ended.is_none() {
                let end = Utc::now();
                c.ended = Some(end);
                sim.log.write(
                    &self.machine.id,
                    self.epoch,
                    "command",
                    json!({
                        "id": c.id, "name": c.full_name, "step": c.step, "status": "RUNNING",
                        "interrupted": reason, "user_agent": c.user_agent,
                        "started_at": ts(c.started), "ended_at": ts(end),
                    }),
                );
            }
        }
    }

    async fn run(self: &Arc<Self>, sim: &Arc<Shared>, cd_url: &str, uefi: bool) {
        // the ramdisk reads its parameters; when that fails IPA exits and
        // systemd starts it again (RestartSec), which reads them again —
        // from whatever the BMC's slot holds by then
        let restart = Duration::from_millis(sim.cfg.agent_restart_ms.max(10));
        let params = loop {
            match self.read_params(sim, cd_url, uefi).await {
                Ok(p) => break p,
                Err(e) => {
                    self.log(sim, "agent_error", json!({ "error": e, "restart_in_ms": restart.as_millis() as u64 }));
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(restart) => {}
                    }
                }
            }
        };
        let api_urls: Vec<String> = params
            .get("ipa-api-url")
            .map(|u| {
                u.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect()
            })
            .unwrap_or_default();
        let media_token = params.get("ipa-agent-token").cloned().filter(|t| !t.is_empty());
        let mut macs = self.machine.mac_addresses().await;
        if let Some(b) = params.get("BOOTIF") {
            let mac = bootif_mac(b);
            if !mac.is_empty() && !macs.contains(&mac) {
                macs.insert(0, mac);
            }
        }
        self.log(
            sim,
            "params",
            json!({
                "api_urls": api_urls, "bootif": params.get("BOOTIF"), "macs": macs,
                "media_token": media_token.is_some(), "source": params.get("_source"),
            }),
        );
        if api_urls.is_empty() {
            self.log(sim, "agent_error", json!({ "error": "no ipa-api-url: nothing to look up" }));
            return;
        }
        {
            let mut i = self.inner.lock().unwrap();
            i.api_urls = api_urls;
            i.token = media_token.clone();
            i.phase = Phase::LookingUp;
        }
        let content = loop {
            match self.lookup(sim, &macs).await {
                Some(c) => break c,
                None => {
                    // IPA exits when lookup times out; systemd starts it again
                    self.log(sim, "agent_error", json!({ "error": "lookup timed out; the agent starts over" }));
                }
            }
        };
        let node_uuid = content["node"]["uuid"].as_str().unwrap_or_default().to_string();
        let config = &content["config"];
        let lookup_token = config["agent_token"].as_str().map(str::to_string);
        let heartbeat_timeout = config["heartbeat_timeout"].as_f64().unwrap_or(300.0);
        let md5 = config["agent_md5_checksum_enable"].as_bool();
        let token = match lookup_token.as_deref() {
            Some(t) if t.len() >= 32 => Some((t.to_string(), "lookup")),
            _ => media_token.map(|t| (t, "media")),
        };
        let Some((token, token_from)) = token else {
            self.inner.lock().unwrap().phase = Phase::Locked;
            self.log(
                sim,
                "agent_error",
                json!({ "error": "no agent token from lookup nor media: the agent locks itself down (as IPA does)", "node_uuid": node_uuid }),
            );
            return;
        };
        let https = {
            let mut i = self.inner.lock().unwrap();
            i.node_uuid = Some(node_uuid.clone());
            i.token = Some(token);
            if let Some(m) = md5 {
                i.md5_enabled = m;
            }
            i.https = sim.tls.is_some() && i.api_version >= (1, 68);
            i.phase = Phase::Serving;
            i.https
        };
        // not the token: its fingerprint, so a test sees a fresh one per session
        let fingerprint = {
            use sha2::Digest as _;
            let t = self.inner.lock().unwrap().token.clone().unwrap_or_default();
            hex::encode(&sha2::Sha256::digest(t.as_bytes())[..8])
        };
        self.log(
            sim,
            "agent_ready",
            json!({ "node_uuid": node_uuid, "token_from": token_from, "https": https, "token_fingerprint": fingerprint }),
        );
        if let (Some(iqn), Some(key)) = (params.get("iscsi_target_iqn"), params.get("deploy_key")) {
            self.pass_deploy_info(sim, &node_uuid, iqn, key).await;
        }
        self.heartbeat_loop(sim, &node_uuid, heartbeat_timeout).await;
    }

    /// The `iscsi` deploy's ramdisk side: export the disk, then tell the
    /// API where (retried while the API is unreachable or answers 5xx).
    async fn pass_deploy_info(self: &Arc<Self>, sim: &Arc<Shared>, node_uuid: &str, iqn: &str, key: &str) {
        let error = self.machine.faults.lock().unwrap().iscsi_error.clone();
        let body = match (&sim.iscsi, error) {
            (_, Some(e)) => json!({ "key": key, "error": e }),
            (None, _) => json!({ "key": key, "error": "this simulator was started without iscsi: no target" }),
            (Some(portal), None) => {
                let disk = self.machine.disk.clone();
                let size = sim.cfg.disk_size_bytes;
                if let Err(e) = tokio::task::spawn_blocking(move || open_disk(&disk, size).map(drop)).await {
                    self.log(sim, "agent_error", json!({ "error": format!("disk: {e}") }));
                }
                match portal.export(&self.machine.id, self.epoch, iqn, &self.machine.disk).await {
                    Ok(tid) => {
                        self.log(sim, "iscsi_export", json!({ "iqn": iqn, "tid": tid, "port": portal.port }));
                        let host = sim.advertise.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        json!({ "address": host, "iqn": iqn, "key": key, "port": portal.port })
                    }
                    Err(e) => {
                        self.log(sim, "agent_error", json!({ "error": format!("iSCSI export: {e}") }));
                        json!({ "key": key, "error": e })
                    }
                }
            }
        };
        let urls = self.inner.lock().unwrap().api_urls.clone();
        let path = format!("/v1/nodes/{node_uuid}/vendor_passthru/pass_deploy_info");
        // retried while the API cannot take it yet: unreachable, 5xx, or
        // 409 (the node is locked, e.g. while a new owner takes it over)
        let mut pause = sim.cfg.lookup_interval_ms.max(10);
        for attempt in 0..30u32 {
            if self.cancel.is_cancelled() {
                return;
            }
            let r = api_request(sim, &urls, Method::POST, &path, &[], Some("1.31"), Some(&body)).await;
            let (status, text) = match r {
                Ok((s, t, _)) => (Some(s), t),
                Err(e) => (None, e),
            };
            self.log(sim, "pass_deploy_info", json!({ "status": status, "body": text, "attempt": attempt }));
            match status {
                Some(s) if s < 500 && s != 409 => return,
                _ => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    }
                    pause = (pause * 2).min(sim.cfg.lookup_max_interval_ms.max(pause));
                }
            }
        }
    }

    /// What IPA's `get_agent_params` reads: the kernel command line, and
    /// the `ir-vfd-dev` floppy's `parameters.txt` on top of it when the
    /// command line says `boot_method=vmedia`.
    async fn read_params(&self, sim: &Shared, cd_url: &str, uefi: bool) -> Result<BTreeMap<String, String>, String> {
        let mut params = BTreeMap::new();
        let mut source = Vec::new();
        let always = sim.cfg.cd_params == CdParams::Always;
        if always {
            let (file, cmdline) = self.cd_cmdline(sim, cd_url, uefi).await?;
            params = parse_params(&cmdline);
            source.push(format!("cd {file}"));
        }
        let vmedia = !always || params.get("boot_method").map(String::as_str) == Some("vmedia");
        if vmedia {
            let floppy = self.machine.media(sim, "Floppy").await;
            if let Some(floppy) = floppy {
                // a BMC streams the slot from its URL (as iLO and iDRAC
                // do): a conductor gone since the insert means a read error
                let bytes =
                    fetch(&sim.download, &floppy).await.map_err(|e| format!("reading the floppy {floppy}: {e}"))?;
                match floppy_params(&bytes) {
                    Ok((label, text)) => {
                        if !label.eq_ignore_ascii_case("ir-vfd-dev") {
                            self.log(
                                sim,
                                "agent_error",
                                json!({ "error": format!("the floppy's label is {label:?}, not ir-vfd-dev: IPA finds it by label") }),
                            );
                        }
                        params.extend(parse_params(&text));
                        source.push(format!("floppy ({label})"));
                    }
                    Err(e) => self.log(sim, "agent_error", json!({ "error": format!("floppy {floppy}: {e}") })),
                }
            }
        }
        if !always && !params.contains_key("ipa-api-url") {
            let (file, cmdline) = self.cd_cmdline(sim, cd_url, uefi).await?;
            let mut merged = parse_params(&cmdline);
            merged.extend(params);
            params = merged;
            source.push(format!("cd {file}"));
        }
        params.insert("_source".into(), source.join(" + "));
        Ok(params)
    }

    /// The kernel command line of a CD (downloaded once per URL).
    async fn cd_cmdline(&self, sim: &Shared, cd_url: &str, uefi: bool) -> Result<(String, String), String> {
        let key = format!("{}#{}", cd_url.split('?').next().unwrap_or(cd_url), if uefi { "uefi" } else { "bios" });
        let cell = sim.cd_cache.lock().unwrap().entry(key).or_default().clone();
        cell.get_or_try_init(|| async {
            let iso = fetch(&sim.download, cd_url).await.map_err(|e| format!("reading the CD {cd_url}: {e}"))?;
            iso_cmdline(&sim.tmp_dir, &self.machine.id, &iso, uefi).await
        })
        .await
        .cloned()
    }

    /// The API's version (`default_version.version` of `GET /`), kept once
    /// known; 1.31 when it cannot be read.
    async fn api_version(&self, sim: &Shared) -> (u32, u32) {
        let (known, urls) = {
            let i = self.inner.lock().unwrap();
            (i.api_version, i.api_urls.clone())
        };
        if known != (1, 31) {
            return known;
        }
        if let Ok((200, body, _)) = api_request(sim, &urls, Method::GET, "/", &[], None, None).await {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(ver) = v["default_version"]["version"].as_str().and_then(parse_version) {
                self.inner.lock().unwrap().api_version = ver;
                return ver;
            }
        }
        (1, 31)
    }

    async fn lookup(&self, sim: &Shared, macs: &[String]) -> Option<Value> {
        let cfg = &sim.cfg;
        let start = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        let mut conflict_pause = 0usize;
        loop {
            attempt += 1;
            let version = self.api_version(sim).await;
            let header = format_version(version.min((1, 62)));
            let urls = self.inner.lock().unwrap().api_urls.clone();
            let query = vec![("addresses".to_string(), macs.join(","))];
            let r = api_request(sim, &urls, Method::GET, "/v1/lookup", &query, Some(&header), None).await;
            let mut wait = {
                let base = cfg.lookup_interval_ms.max(1) as f64;
                let cap = (base * 2f64.powi(attempt.min(30) as i32 - 1)).min(cfg.lookup_max_interval_ms.max(1) as f64);
                Duration::from_millis(uniform(base.min(cap), cap) as u64)
            };
            match r {
                Ok((200, body, _)) => {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let node = v["node"]["uuid"].as_str().map(str::to_string);
                    let token = match v["config"]["agent_token"].as_str() {
                        Some("******") => "masked",
                        Some(t) if t.len() >= 32 => "issued",
                        Some(_) => "invalid",
                        None => "none",
                    };
                    self.log(
                        sim,
                        "lookup",
                        json!({ "attempt": attempt, "status": 200, "api_version": header, "node_uuid": node, "token": token, "addresses": macs }),
                    );
                    if node.is_some() && v.get("config").is_some_and(Value::is_object) {
                        return Some(v);
                    }
                }
                Ok((status, body, _)) => {
                    self.log(
                        sim,
                        "lookup",
                        json!({ "attempt": attempt, "status": status, "api_version": header, "error": fault_of(&body), "addresses": macs }),
                    );
                    if status == 409 {
                        let pauses = &cfg.lookup_conflict_pause_ms;
                        let p = pauses.get(conflict_pause).or(pauses.last()).copied().unwrap_or(5000);
                        conflict_pause += 1;
                        wait = Duration::from_millis(p);
                    }
                }
                Err(e) => {
                    self.log(sim, "lookup", json!({ "attempt": attempt, "status": 0, "error": e, "addresses": macs }))
                }
            }
            if start.elapsed() + wait > Duration::from_millis(cfg.lookup_timeout_ms) {
                return None;
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn heartbeat_loop(&self, sim: &Shared, node_uuid: &str, heartbeat_timeout: f64) {
        let cfg = &sim.cfg;
        let mut last: Option<tokio::time::Instant> = None;
        let mut interval = Duration::ZERO;
        loop {
            let now = tokio::time::Instant::now();
            let due = last.map(|l| l + interval).unwrap_or(now);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
                _ = self.force_heartbeat.notified() => {
                    // a command ended: heartbeat now, but not too soon after the last
                    let soonest = last.map(|l| l + Duration::from_millis(cfg.forced_heartbeat_min_ms)).unwrap_or(now);
                    let at = soonest.max(tokio::time::Instant::now()).min(due);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
            let lose = {
                let mut f = self.machine.faults.lock().unwrap();
                if f.lose_heartbeats > 0 {
                    f.lose_heartbeats -= 1;
                    true
                } else {
                    false
                }
            };
            let ok = if lose {
                self.inner.lock().unwrap().heartbeats += 1;
                self.log(sim, "heartbeat_lost", json!({ "node_uuid": node_uuid }));
                true
            } else {
                self.heartbeat(sim, node_uuid).await
            };
            last = Some(tokio::time::Instant::now());
            interval = if ok {
                match cfg.heartbeat_interval_ms {
                    Some(ms) => Duration::from_millis(ms.max(1)),
                    None => Duration::from_secs_f64(heartbeat_timeout * uniform(0.3, 0.6)),
                }
            } else {
                match cfg.heartbeat_retry_ms {
                    Some(ms) => Duration::from_millis(ms.max(1)),
                    None => Duration::from_secs_f64(5.0 * uniform(1.0, 2.0)),
                }
            };
        }
    }

    async fn heartbeat(&self, sim: &Shared, node_uuid: &str) -> bool {
        let version = self.api_version(sim).await;
        let (urls, token, https) = {
            let i = self.inner.lock().unwrap();
            (i.api_urls.clone(), i.token.clone(), i.https)
        };
        let callback = format!("{}://{}/{}", if https { "https" } else { "http" }, sim.advertise, self.machine.id);
        let mut body = json!({ "callback_url": callback });
        if version >= (1, 62) {
            body["agent_token"] = token.into();
        }
        if version >= (1, 36) {
            body["agent_version"] = sim.cfg.agent_version.clone().into();
        }
        if version >= (1, 68)
            && https
            && let Some(t) = &sim.tls
        {
            body["agent_verify_ca"] = t.ca_pem.clone().into();
        }
        let header = format_version(version.min((1, 68)));
        let path = format!("/v1/heartbeat/{node_uuid}");
        let r = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            r = api_request(sim, &urls, Method::POST, &path, &[], Some(&header), Some(&body)) => r,
        };
        let n = {
            let mut i = self.inner.lock().unwrap();
            i.heartbeats += 1;
            i.heartbeats
        };
        match r {
            Ok((202, _, _)) => {
                self.log(sim, "heartbeat", json!({ "n": n, "status": 202, "node_uuid": node_uuid, "api_version": header, "callback_url": callback }));
                true
            }
            Ok((status, b, _)) => {
                self.log(
                    sim,
                    "heartbeat",
                    json!({ "n": n, "status": status, "node_uuid": node_uuid, "api_version": header, "error": fault_of(&b) }),
                );
                false
            }
            Err(e) => {
                self.log(sim, "heartbeat", json!({ "n": n, "status": 0, "node_uuid": node_uuid, "error": e }));
                false
            }
        }
    }
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn format_version(v: (u32, u32)) -> String {
    format!("{}.{}", v.0, v.1)
}

/// `BOOTIF=01-52-54-00-12-34-56` (PXE style) or a plain MAC.
fn bootif_mac(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let s = if s.len() == 20 && s.starts_with("01-") { &s[3..] } else { s.as_str() };
    s.replace('-', ":")
}

/// The message of an Ironic error body.
fn fault_of(body: &str) -> String {
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return body.chars().take(300).collect(),
    };
    let inner = match v.get("error_message") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        Some(o) => o.clone(),
        None => v.clone(),
    };
    inner
        .get("faultstring")
        .or(inner.get("title"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// One request to the API: the URLs in turn while they cannot be reached.
async fn api_request(
    sim: &Shared,
    urls: &[String],
    method: Method,
    path: &str,
    query: &[(String, String)],
    version: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, String, reqwest::header::HeaderMap), String> {
    let mut last = String::from("no API URL");
    for url in urls {
        let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
        let full = if query.is_empty() {
            format!("{url}{path}")
        } else {
            let q: Vec<String> =
                query.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect();
            format!("{url}{path}?{}", q.join("&"))
        };
        let mut r =
            sim.http.request(m, full).header("Accept", "application/json").header("Content-Type", "application/json");
        if let Some(v) = version {
            r = r.header("X-OpenStack-Ironic-API-Version", v);
        }
        if let Some(b) = body {
            r = r.body(serde_json::to_vec(b).unwrap_or_default());
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let text = resp.text().await.unwrap_or_default();
                return Ok((status, text, headers));
            }
            Err(e) => last = format!("{url}{path}: {e}"),
        }
    }
    Err(last)
}

/// As Python's `requests` encodes query values (`,` and `:` too).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    Ok(r.bytes().await.map_err(|e| e.to_string())?.to_vec())
}

/// `key=value` pairs separated by whitespace (IPA's reading of the kernel
/// command line and of `parameters.txt`).
fn parse_params(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace().filter_map(|o| o.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The volume label and `parameters.txt` of a FAT image.
fn floppy_params(bytes: &[u8]) -> Result<(String, String), String> {
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(bytes.to_vec()), fatfs::FsOptions::new())
        .map_err(|e| format!("not a FAT image: {e}"))?;
    let label = fs.read_volume_label_from_root_dir().ok().flatten().unwrap_or_else(|| fs.volume_label());
    let root = fs.root_dir();
    let mut f = root.open_file("parameters.txt").map_err(|e| format!("no parameters.txt: {e}"))?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| format!("parameters.txt: {e}"))?;
    Ok((label.trim().to_string(), text))
}

/// A CD's kernel command line, from the boot loader the machine uses:
/// GRUB's `linux` line (UEFI) or isolinux's `APPEND` (BIOS), the other one
/// when that is missing. Returns the file it came from, and the line.
async fn iso_cmdline(tmp: &Path, machine: &str, iso: &[u8], uefi: bool) -> Result<(String, String), String> {
    const GRUB: &str = "/EFI/BOOT/grub.cfg";
    const ISOLINUX: &str = "/isolinux/isolinux.cfg";
    let dir = tempfile::Builder::new()
        .prefix(&format!("iso-{}", sanitize(machine)))
        .tempdir_in(tmp)
        .map_err(|e| e.to_string())?;
    let img = dir.path().join("cd.iso");
    tokio::fs::write(&img, iso).await.map_err(|e| e.to_string())?;
    let order = if uefi { [GRUB, ISOLINUX] } else { [ISOLINUX, GRUB] };
    let mut errors = Vec::new();
    for (n, file) in order.iter().enumerate() {
        let out = dir.path().join(format!("{n}.cfg"));
        let r = tokio::process::Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&img)
            .arg("-extract")
            .arg(file)
            .arg(&out)
            .output()
            .await
            .map_err(|e| format!("xorriso: {e} (scripts/deps.sh installs it)"))?;
        if !r.status.success() || !out.exists() {
            errors.push(format!("no {file}"));
            continue;
        }
        let cfg = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let line = if *file == GRUB { grub_cmdline(&cfg) } else { isolinux_cmdline(&cfg) };
        match line {
            Some(l) => return Ok((file.to_string(), l)),
            None => errors.push(format!("{file} has no kernel line")),
        }
    }
    Err(format!("no kernel command line on the CD: {}", errors.join(", ")))
}

fn isolinux_cmdline(cfg: &str) -> Option<String> {
    cfg.lines().map(str::trim).find_map(|l| {
        let (k, rest) = l.split_once(char::is_whitespace)?;
        k.eq_ignore_ascii_case("append").then(|| rest.trim().to_string())
    })
}

/// `linux <kernel> 'a=b' c=d ...` of a grub.cfg, unquoted.
fn grub_cmdline(cfg: &str) -> Option<String> {
    cfg.lines().map(str::trim).find_map(|l| {
        let mut words = l.split_whitespace();
        let k = words.next()?;
        (k == "linux" || k == "linuxefi")
            .then(|| words.skip(1).map(|w| w.trim_matches('\'').trim_matches('"')).collect::<Vec<_>>().join(" "))
    })
}

// ---- commands --------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sync,
    Async,
}

/// IPA's extensions; a command of another is a 404, an unknown command of
/// one of these a 400.
const EXTENSIONS: &[&str] =
    &["clean", "deploy", "flow", "image", "log", "poll", "rescue", "service", "standby", "system"];

fn command_kind(ext: &str, cmd: &str) -> Option<Kind> {
    Some(match (ext, cmd) {
        ("deploy", "get_deploy_steps") | ("clean", "get_clean_steps") => Kind::Sync,
        ("deploy", "execute_deploy_step") | ("clean", "execute_clean_step") => Kind::Async,
        ("standby", "get_partition_uuids") | ("standby", "sync") => Kind::Sync,
        ("standby", "prepare_image") | ("standby", "power_off") | ("standby", "run_image") => Kind::Async,
        ("image", "install_bootloader") => Kind::Async,
        ("log", "collect_system_logs") => Kind::Sync,
        _ => return None,
    })
}

/// What a Python function does with the wrong keyword arguments.
fn check_args(
    func: &str,
    params: &Map<String, Value>,
    required: &[&str],
    optional: &[&str],
    kwargs: bool,
) -> Result<(), String> {
    let missing: Vec<&str> = required.iter().copied().filter(|r| !params.contains_key(*r)).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|m| format!("'{m}'")).collect();
        let list = match names.len() {
            1 => names[0].clone(),
            _ => format!("{} and {}", names[..names.len() - 1].join(", "), names[names.len() - 1]),
        };
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(format!("{func}() missing {} required positional argument{s}: {list}", missing.len()));
    }
    if !kwargs
        && let Some(k) = params.keys().find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
    {
        return Err(format!("{func}() got an unexpected keyword argument '{k}'"));
    }
    Ok(())
}

fn deploy_steps() -> Value {
    json!([
        { "step": "erase_devices_metadata", "priority": 0, "interface": "deploy", "reboot_requested": false },
        { "step": "apply_configuration", "priority": 0, "interface": "raid", "reboot_requested": false,
          "argsinfo": {
              "raid_config": { "description": "The RAID configuration to apply.", "required": true },
              "delete_existing": { "description": "Whether to delete the existing RAID configuration first (default True).", "required": false } } },
        { "step": "clean_uefi_nvram", "priority": 0, "interface": "deploy", "reboot_requested": false,
          "argsinfo": { "match_patterns": { "description": "Regular expressions; UEFI NVRAM entries matching any are deleted.", "required": false } } },
        { "step": "write_image", "priority": 0, "interface": "deploy", "reboot_requested": false },
        { "step": "inject_files", "priority": 0, "interface": "deploy", "reboot_requested": false,
          "argsinfo": {
              "files": { "description": "Files to inject: a list of {path, partition, content (base64), mode, dirmode}.", "required": false },
              "verify_ca": { "description": "Whether to verify TLS certificates.", "required": false } } },
        { "step": "execute_bootc_install", "priority": 0, "interface": "deploy", "reboot_requested": false },
    ])
}

fn clean_steps() -> Value {
    let step = |name: &str, priority: u32, interface: &str| json!({ "step": name, "priority": priority, "interface": interface, "reboot_requested": false, "abortable": true });
    let mut nvram = step("clean_uefi_nvram", 0, "deploy");
    nvram["argsinfo"] = json!({ "match_patterns": { "description": "Regular expressions; UEFI NVRAM entries matching any are deleted.", "required": false } });
    json!([
        step("erase_devices", 10, "deploy"),
        step("erase_devices_metadata", 99, "deploy"),
        step("erase_devices_express", 0, "deploy"),
        step("erase_pstore", 0, "deploy"),
        nvram,
        step("delete_configuration", 0, "raid"),
        step("create_configuration", 0, "raid"),
        step("burnin_cpu", 0, "deploy"),
        step("burnin_gpu", 0, "deploy"),
        step("burnin_disk", 0, "deploy"),
        step("burnin_memory", 0, "deploy"),
        step("burnin_network", 0, "deploy"),
    ])
}

/// Steps of the generic hardware manager that succeed here doing nothing.
const NOOP_STEPS: &[&str] = &[
    "apply_configuration",
    "clean_uefi_nvram",
    "inject_files",
    "execute_bootc_install",
    "erase_pstore",
    "delete_configuration",
    "create_configuration",
    "burnin_cpu",
    "burnin_gpu",
    "burnin_disk",
    "burnin_memory",
    "burnin_network",
];

impl Agent {
    fn fault_for(&self, full: &str, step: Option<&str>) -> (Option<String>, u64) {
        let f = self.machine.faults.lock().unwrap();
        let ext = full.split('.').next().unwrap_or("");
        let keys: Vec<String> = [Some(full.to_string()), step.map(|s| format!("{ext}.{s}")), Some("*".to_string())]
            .into_iter()
            .flatten()
            .collect();
        let fail = keys.iter().find_map(|k| f.fail_commands.get(k).cloned());
        let delay = keys.iter().find_map(|k| f.command_delay_ms.get(k).copied()).unwrap_or(0);
        (fail, delay)
    }

    fn token_ok(&self, token: Option<&str>) -> bool {
        let i = self.inner.lock().unwrap();
        matches!((token, &i.token), (Some(t), Some(k)) if !t.is_empty() && t == k)
    }

    /// `POST /v1/commands/`: the command's JSON, or an HTTP error.
    async fn execute(
        self: &Arc<Self>,
        sim: &Arc<Shared>,
        full: &str,
        params: Map<String, Value>,
        user_agent: &str,
        wait: bool,
    ) -> Result<Value, Reply> {
        let guard = tokio::select! {
            _ = self.cancel.cancelled() => return Err(Reply::Unreachable),
            g = self.command_lock.lock() => g,
        };
        let Some((ext, cmd)) = full.split_once('.') else {
            return Err(Reply::fault(400, "Invalid command: Command name must be of the form <extension>.<name>"));
        };
        let busy = {
            let i = self.inner.lock().unwrap();
            i.commands
                .last()
                .map(|c| c.lock().unwrap())
                .filter(|c| c.status == "RUNNING")
                .map(|c| c.command_name.clone())
        };
        if let Some(b) = busy {
            self.log(
                sim,
                "command_rejected",
                json!({ "name": full, "status": 409, "busy_with": b, "user_agent": user_agent }),
            );
            return Err(Reply::fault(409, &format!("Agent is busy: executing command {b}")));
        }
        if !EXTENSIONS.contains(&ext) {
            return Err(Reply::fault(404, &format!("Not found: Extension with id {ext} not found.")));
        }
        let Some(kind) = command_kind(ext, cmd) else {
            return Err(Reply::fault(400, &format!("Invalid command: Unknown command: {cmd}")));
        };
        let step = params.get("step").and_then(|s| s.get("step")).and_then(Value::as_str).map(str::to_string);
        let (fail, delay) = self.fault_for(full, step.as_deref());
        if full == "standby.prepare_image"
            && let Err(e) = self.validate_image_info(params.get("image_info"))
        {
            return Err(Reply::fault(e.code, &e.text()));
        }
        let started = Utc::now();
        let (done, _) = tokio::sync::watch::channel(false);
        let mut c = Cmd {
            id: uuid::Uuid::new_v4().to_string(),
            command_name: cmd.to_string(),
            full_name: full.to_string(),
            step: step.clone(),
            status: "RUNNING".into(),
            result: Value::Null,
            error: Value::Null,
            user_agent: user_agent.to_string(),
            started,
            ended: None,
            done,
        };
        if kind == Kind::Sync {
            if delay > 0 {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Reply::Unreachable),
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                }
            }
            let r = match fail {
                Some(msg) => Err(RestError::execution(msg)),
                None => self.run_sync(full, &params),
            };
            match r {
                Ok(v) => {
                    c.status = "SUCCEEDED".into();
                    c.result = v;
                }
                Err(e) => {
                    c.status = "FAILED".into();
                    c.error = e.json();
                }
            }
            c.ended = Some(Utc::now());
            let out = c.json();
            self.log_command(sim, &c);
            let _ = c.done.send(true);
            self.inner.lock().unwrap().commands.push(Arc::new(Mutex::new(c)));
            drop(guard);
            return Ok(out);
        }
        let mut rx = c.done.subscribe();
        let cmd_ref = Arc::new(Mutex::new(c));
        self.inner.lock().unwrap().commands.push(cmd_ref.clone());
        let (out_now, start_fields) = {
            let c = cmd_ref.lock().unwrap();
            (c.json(), command_fields(&c))
        };
        // an asynchronous command is logged when it starts, too
        self.log(sim, "command_start", start_fields);
        let (me, sim2, full2) = (self.clone(), sim.clone(), full.to_string());
        tokio::spawn(async move {
            let token = me.cancel.clone();
            let work = async {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                match (fail, step.as_deref()) {
                    (Some(msg), Some(s)) if full2.ends_with("_step") => Err(CmdError::Rest(step_error(&full2, s, msg))),
                    (Some(msg), _) => Err(CmdError::Rest(RestError::execution(msg))),
                    (None, _) => me.run_async(&sim2, &full2, params).await,
                }
            };
            let r = tokio::select! {
                _ = token.cancelled() => return,
                r = work => r,
            };
            if me.gone() && !matches!(full2.as_str(), "standby.power_off" | "standby.run_image") {
                return;
            }
            let mut c = cmd_ref.lock().unwrap();
            if c.ended.is_some() {
                return;
            }
            match r {
                Ok(v) => {
                    c.status = "SUCCEEDED".into();
                    c.result = v;
                }
                Err(CmdError::Rest(e)) => {
                    c.status = "FAILED".into();
                    c.error = e.json();
                }
                Err(CmdError::VersionMismatch(e)) => {
                    c.status = "CLEAN_VERSION_MISMATCH".into();
                    c.error = e.json();
                }
                Err(CmdError::Gone) => return,
            }
            c.ended = Some(Utc::now());
            let fields = command_fields(&c);
            let _ = c.done.send(true);
            // the log takes the agent's lock: never while holding a command's
            drop(c);
            me.log(&sim2, "command", fields);
            me.force_heartbeat.notify_one();
            match full2.as_str() {
                "standby.power_off" => {
                    // IPA answers, then runs poweroff: from here on nothing
                    // answers and no heartbeat goes out (a second power_off
                    // from another conductor finds the agent gone)
                    me.inner.lock().unwrap().phase = Phase::ShuttingDown;
                    me.cancel.cancel();
                    me.log(&sim2, "agent_shutdown", json!({}));
                    me.machine.bmc_reset(&sim2, "ForceOff")
                }
                "standby.run_image" => me.machine.bmc_reset(&sim2, "ForceRestart"),
                _ => {}
            }
        });
        drop(guard);
        if !wait {
            return Ok(out_now);
        }
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Reply::Unreachable),
            _ = rx.wait_for(|d| *d) => Ok(self.command_json(None).unwrap_or(out_now)),
        }
    }

    /// The last command's JSON, or the one with this id.
    fn command_json(&self, id: Option<&str>) -> Option<Value> {
        let i = self.inner.lock().unwrap();
        match id {
            Some(id) => i.commands.iter().map(|c| c.lock().unwrap()).find(|c| c.id == id).map(|c| c.json()),
            None => i.commands.last().map(|c| c.lock().unwrap().json()),
        }
    }

    fn log_command(&self, sim: &Shared, c: &Cmd) {
        self.log(sim, "command", command_fields(c));
    }

    fn run_sync(&self, full: &str, params: &Map<String, Value>) -> Result<Value, RestError> {
        match full {
            "deploy.get_deploy_steps" | "clean.get_clean_steps" => {
                let (func, key, steps) = if full.starts_with("deploy") {
                    ("get_deploy_steps", "deploy_steps", deploy_steps())
                } else {
                    ("get_clean_steps", "clean_steps", clean_steps())
                };
                check_args(func, params, &["node", "ports"], &[], false).map_err(RestError::execution)?;
                if params["node"].get("uuid").is_none() {
                    return Err(RestError::execution("'uuid'"));
                }
                Ok(json!({ key: { HWM_CLASS: steps }, "hardware_manager_version": hwm_versions() }))
            }
            "standby.get_partition_uuids" => {
                check_args("get_partition_uuids", params, &[], &[], false).map_err(RestError::execution)?;
                Ok(self.inner.lock().unwrap().partition_uuids.clone().unwrap_or_else(|| json!({})))
            }
            "standby.sync" => {
                check_args("sync", params, &[], &[], false).map_err(RestError::execution)?;
                Ok(Value::Null)
            }
            "log.collect_system_logs" => {
                check_args("collect_system_logs", params, &[], &[], false).map_err(RestError::execution)?;
                Ok(json!({ "system_logs": self.system_logs() }))
            }
            other => Err(RestError::execution(format!("{other} is not simulated"))),
        }
    }

    /// A small base64 tar.gz: the agent's journal of this boot and its state.
    fn system_logs(&self) -> String {
        use base64::Engine as _;
        let (journal, state) = {
            let i = self.inner.lock().unwrap();
            let state = json!({
                "machine": self.machine.id, "boot": self.epoch, "node_uuid": i.node_uuid,
                "phase": i.phase.name(), "commands": i.commands.len(), "heartbeats": i.heartbeats,
                "started_at": self.started_at,
            });
            (i.journal.join("\n") + "\n", state)
        };
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
        for (name, data) in [("journal", journal.into_bytes()), ("ramdisk-sim.json", state.to_string().into_bytes())] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(Utc::now().timestamp().max(0) as u64);
            h.set_cksum();
            let _ = tar.append_data(&mut h, name, data.as_slice());
        }
        let gz = tar.into_inner().and_then(|gz| gz.finish()).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(gz)
    }

    async fn run_async(
        self: &Arc<Self>,
        sim: &Arc<Shared>,
        full: &str,
        params: Map<String, Value>,
    ) -> Result<Value, CmdError> {
        match full {
            "deploy.execute_deploy_step" | "clean.execute_clean_step" => self.execute_step(sim, full, params).await,
            "standby.prepare_image" => {
                check_args("prepare_image", &params, &["image_info"], &["configdrive"], false)
                    .map_err(RestError::execution)?;
                let msg = self.prepare_image(sim, &params["image_info"], params.get("configdrive")).await?;
                Ok(json!({ "result": format!("prepare_image: {msg}") }))
            }
            "standby.power_off" | "standby.run_image" => {
                let func = if full.ends_with("power_off") { "power_off" } else { "run_image" };
                check_args(func, &params, &[], &[], false).map_err(RestError::execution)?;
                Ok(Value::Null)
            }
            "image.install_bootloader" => {
                check_args(
                    "install_bootloader",
                    &params,
                    &["root_uuid"],
                    &["efi_system_part_uuid", "prep_boot_part_uuid", "target_boot_mode", "ignore_bootloader_failure"],
                    false,
                )
                .map_err(RestError::execution)?;
                Ok(Value::Null)
            }
            other => Err(RestError::execution(format!("{other} is not simulated")).into()),
        }
    }

    async fn execute_step(
        self: &Arc<Self>,
        sim: &Arc<Shared>,
        full: &str,
        params: Map<String, Value>,
    ) -> Result<Value, CmdError> {
        let deploy = full.starts_with("deploy");
        let (func, version_key, result_key, step_key) = if deploy {
            ("execute_deploy_step", "deploy_version", "deploy_result", "deploy_step")
        } else {
            ("execute_clean_step", "clean_version", "clean_result", "clean_step")
        };
        check_args(func, &params, &["step", "node", "ports"], &[version_key], true).map_err(RestError::execution)?;
        if params["node"].get("uuid").is_none() {
            return Err(RestError::execution("'uuid'").into());
        }
        if let Some(v) = params.get(version_key).filter(|v| !v.is_null())
            && *v != hwm_versions()
        {
            let e = RestError::new(
                "VersionMismatch",
                409,
                "Hardware managers version mismatch, reload agent with correct version",
                format!("Current versions: {}, versions used by ironic: {}", py_repr(&hwm_versions()), py_repr(v)),
            );
            return Err(CmdError::VersionMismatch(e));
        }
        let step = params["step"].clone();
        let Some(name) = step.get("step").and_then(Value::as_str).map(str::to_string) else {
            let what = if deploy { "deploy_step" } else { "clean_step" };
            return Err(RestError::execution(format!("Malformed {what}, no \"step\" key: {}", py_repr(&step))).into());
        };
        let mut kwargs: Map<String, Value> = params
            .iter()
            .filter(|(k, _)| !["step", "node", "ports", version_key].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(Value::Object(args)) = step.get("args") {
            kwargs.extend(args.clone());
        }
        let unexpected = |e: String| CmdError::Rest(step_error(full, &name, format!("TypeError: {e}")));
        let result = match name.as_str() {
            "write_image" => {
                check_args("write_image", &kwargs, &["image_info"], &["configdrive"], false).map_err(unexpected)?;
                let msg = self.prepare_image(sim, &kwargs["image_info"], kwargs.get("configdrive")).await?;
                json!({ "result": format!("prepare_image: {msg}") })
            }
            "erase_devices_metadata" | "erase_devices_express" => {
                check_args(&name, &kwargs, &[], &[], false).map_err(unexpected)?;
                self.erase(sim, false).await?;
                Value::Null
            }
            "erase_devices" => {
                check_args(&name, &kwargs, &[], &[], false).map_err(unexpected)?;
                self.erase(sim, true).await?;
                json!({ DISK_DEVICE: null })
            }
            n if NOOP_STEPS.contains(&n) => Value::Null,
            n => {
                return Err(RestError::new(
                    "HardwareManagerMethodNotFound",
                    500,
                    "No HardwareManager found to handle method",
                    format!("Could not find method: {n}"),
                )
                .into());
            }
        };
        Ok(json!({ result_key: result, step_key: step }))
    }

    async fn erase(&self, sim: &Shared, all: bool) -> Result<(), RestError> {
        let disk = self.machine.disk.clone();
        let size = sim.cfg.disk_size_bytes;
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = open_disk(&disk, size)?;
            if all {
                f.set_len(0)?;
                f.set_len(size)?;
            } else {
                zero_ends(&f, size)?;
            }
            f.sync_data()
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let what = if all { "erase_devices" } else { "erase_devices_metadata" };
        match r {
            Ok(()) => {
                self.log(sim, "disk_erased", json!({ "step": what }));
                Ok(())
            }
            Err(e) => Err(RestError::new(
                "BlockDeviceEraseError",
                500,
                "Error erasing block device",
                format!("{DISK_DEVICE}: {e}"),
            )),
        }
    }
}

fn command_fields(c: &Cmd) -> Value {
    let mut f = json!({
        "id": c.id, "name": c.full_name, "status": c.status, "user_agent": c.user_agent,
        "started_at": ts(c.started), "ended_at": c.ended.map(ts),
    });
    if let Some(s) = &c.step {
        f["step"] = s.clone().into();
    }
    if !c.error.is_null() {
        f["error"] = format!(
            "{}: {}",
            c.error["message"].as_str().unwrap_or_default(),
            c.error["details"].as_str().unwrap_or_default()
        )
        .into();
    }
    f
}

fn step_error(full: &str, step: &str, msg: String) -> RestError {
    if full.starts_with("clean") {
        RestError::new(
            "CleaningError",
            500,
            "Clean step failed",
            format!("Unexpected exception performing clean step {step}. {msg}"),
        )
    } else {
        RestError::new(
            "DeploymentError",
            500,
            "Deploy step failed",
            format!("Unexpected exception performing deploy step {step}. {msg}"),
        )
    }
}

fn open_disk(path: &Path, size: u64) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    if f.metadata()?.len() < size {
        f.set_len(size)?;
    }
    Ok(f)
}

/// What `destroy_disk_metadata` amounts to: the first and the last MiB.
fn zero_ends(mut f: &std::fs::File, size: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; MIB.min(size) as usize];
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&zeros)?;
    f.seek(SeekFrom::Start(size.saturating_sub(zeros.len() as u64)))?;
    f.write_all(&zeros)?;
    Ok(())
}

// ---- images ----------------------------------------------------------------

enum Hasher {
    Md5(md5::Md5),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn named(algo: &str) -> Option<Hasher> {
        use sha2::Digest as _;
        Some(match algo {
            "md5" => Hasher::Md5(md5::Md5::new()),
            "sha224" => Hasher::Sha224(sha2::Sha224::new()),
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            "sha384" => Hasher::Sha384(sha2::Sha384::new()),
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            _ => return None,
        })
    }

    /// IPA's choice by the length of a hex checksum.
    fn by_length(checksum: &str, md5_enabled: bool) -> Result<Hasher, String> {
        match checksum.len() {
            128 => Ok(Hasher::named("sha512").unwrap()),
            64 => Ok(Hasher::named("sha256").unwrap()),
            32 if md5_enabled => Ok(Hasher::named("md5").unwrap()),
            32 => Err("MD5 support is disabled, and support will be removed in a 2024 version of Ironic.".into()),
            _ => Err(
                "Unable to identify checksum algorithm used, and a value is not specified in the os_hash_algo setting."
                    .into(),
            ),
        }
    }

    fn update(&mut self, b: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Sha224(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn hex(self) -> String {
        use sha2::Digest as _;
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha224(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha384(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }

    fn fresh(&self) -> Hasher {
        Hasher::named(match self {
            Hasher::Md5(_) => "md5",
            Hasher::Sha224(_) => "sha224",
            Hasher::Sha256(_) => "sha256",
            Hasher::Sha384(_) => "sha384",
            Hasher::Sha512(_) => "sha512",
        })
        .unwrap()
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_hex_of(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A checksum file as IPA reads one: a lone checksum, or the line naming
/// the image's file (`<hex>  name`, `<hex> *name`, `ALGO (name) = <hex>`).
fn parse_checksum_file(text: &str, image_url: &str) -> Result<String, String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return Err("Empty checksum file".into());
    }
    if lines.len() == 1 && !lines[0].contains(' ') {
        return if is_hex_of(lines[0], &[32, 64, 128]) {
            Ok(lines[0].to_string())
        } else {
            Err(format!("Invalid checksum file (No valid checksum found) {lines:?}"))
        };
    }
    let fname = image_url.split(['?', '#']).next().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
    for l in lines.iter().filter(|l| !l.starts_with('#')) {
        let words: Vec<&str> = l.split_whitespace().collect();
        let names_it =
            words.last().is_some_and(|w| w.trim_start_matches('*') == fname) || l.contains(&format!("({fname}) "));
        if !names_it {
            continue;
        }
        if let Some(w) = words.iter().find(|w| is_hex_of(w, &[32, 64, 128])) {
            return Ok(w.to_string());
        }
    }
    Err(format!("Checksum file does not contain name {fname}"))
}

enum DlError {
    Fatal(RestError),
    Retry(RestError),
    Crashed,
}

impl Agent {
    /// IPA's `_validate_image_info`.
    fn validate_image_info(&self, info: Option<&Value>) -> Result<(), RestError> {
        let empty = json!({});
        let info = info.filter(|v| !v.is_null()).unwrap_or(&empty);
        for f in ["id", "urls"] {
            if info.get(f).is_none() {
                return Err(RestError::invalid_params(format!("Image is missing '{f}' field.")));
            }
        }
        if info["urls"].as_array().is_none_or(|a| a.is_empty()) {
            return Err(RestError::invalid_params("Image 'urls' must be a list with at least one element."));
        }
        let md5_enabled = self.inner.lock().unwrap().md5_enabled;
        let mut avail = false;
        if let Some(c) = info.get("checksum").filter(|c| !c.is_null()) {
            let Some(c) = c.as_str().filter(|c| !c.is_empty()) else {
                return Err(RestError::invalid_params("Image 'checksum' must be a non-empty string."));
            };
            avail |= is_url(c) || c.len() > 32 || md5_enabled;
        }
        let algo = info.get("os_hash_algo").filter(|v| !v.is_null());
        let value = info.get("os_hash_value").filter(|v| !v.is_null());
        if algo.is_some() || value.is_some() {
            if algo.and_then(Value::as_str).is_none_or(|s| s.is_empty()) {
                return Err(RestError::invalid_params("Image 'os_hash_algo' must be a non-empty string."));
            }
            if value.and_then(Value::as_str).is_none_or(|s| s.is_empty()) {
                return Err(RestError::invalid_params("Image 'os_hash_value' must be a non-empty string."));
            }
            avail = true;
        }
        if !avail {
            return Err(RestError::invalid_params(
                "Image checksum is not available, either the 'checksum' field or the 'os_hash_algo' and 'os_hash_value' fields pair must be set for image verification.",
            ));
        }
        Ok(())
    }

    /// IPA's choice of algorithm and expected value (`ImageDownload`).
    async fn expected_hash(&self, sim: &Shared, info: &Value, id: &str) -> Result<(Hasher, String), RestError> {
        let md5_enabled = self.inner.lock().unwrap().md5_enabled;
        let algo = info["os_hash_algo"].as_str().filter(|s| !s.is_empty());
        let checksum = info["checksum"].as_str().filter(|s| !s.is_empty());
        let first_url = info["urls"][0].as_str().unwrap_or("");
        let fetch_sum = |url: String| async move {
            let text = fetch(&sim.http, &url).await.map_err(|e| RestError::download(&url, e))?;
            parse_checksum_file(&String::from_utf8_lossy(&text), first_url).map_err(|e| RestError::download(&url, e))
        };
        let (hasher, mut expected, retrieved) = if let Some(h) = algo.and_then(Hasher::named) {
            (h, info["os_hash_value"].as_str().unwrap_or("").to_string(), false)
        } else if let Some(c) = checksum.filter(|c| is_url(c)) {
            let v = fetch_sum(c.to_string()).await?;
            let h = Hasher::by_length(&v, md5_enabled).map_err(|e| {
                RestError::new(
                    "RESTError",
                    500,
                    "An error occurred",
                    format!("Unable to proceed with image {id} as the checksum indicator has been used but the algorithm could not be identified. Error: {e}"),
                )
            })?;
            (h, v, true)
        } else if let Some(c) = checksum {
            let h = Hasher::by_length(c, md5_enabled).map_err(|e| {
                RestError::new(
                    "RESTError",
                    500,
                    "An error occurred",
                    format!("Unable to proceed with image {id} as the checksum indicator has been used but the algorithm could not be identified. Error: {e}"),
                )
            })?;
            (h, c.to_string(), false)
        } else {
            return Err(RestError::new(
                "RESTError",
                500,
                "An error occurred",
                format!(
                    "Unable to verify image {id} with available checksums. Please make sure the specified 'os_hash_algo' (currently {}) is supported by this ramdisk, or provide a md5 checksum via the 'checksum' field",
                    algo.unwrap_or("None")
                ),
            ));
        };
        if !retrieved && is_url(&expected) {
            expected = fetch_sum(expected).await?;
        }
        Ok((hasher, expected))
    }

    /// `standby.prepare_image` (also the `write_image` deploy step): the
    /// message IPA returns.
    async fn prepare_image(
        self: &Arc<Self>,
        sim: &Arc<Shared>,
        info: &Value,
        configdrive: Option<&Value>,
    ) -> Result<String, CmdError> {
        self.validate_image_info(Some(info))?;
        let id = match &info["id"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let disk_format = info["disk_format"].as_str().unwrap_or("");
        let partition_image = info["image_type"].as_str() == Some("partition");
        let stream = info["stream_raw_images"].as_bool().unwrap_or(false) && disk_format == "raw";
        let cached = self.inner.lock().unwrap().cached_image_id.clone();
        let size = sim.cfg.disk_size_bytes;
        let disk = self.machine.disk.clone();
        let offset = if partition_image { MIB } else { 0 };
        if cached.as_deref() != Some(id.as_str()) {
            let (hasher, expected) = self.expected_hash(sim, info, &id).await?;
            let urls: Vec<String> =
                info["urls"].as_array().unwrap().iter().filter_map(|u| u.as_str().map(str::to_string)).collect();
            let tmp = sim.tmp_dir.join(format!("{}.download", sanitize(&self.machine.id)));
            let target = if stream { disk.clone() } else { tmp.clone() };
            let location = if stream { DISK_DEVICE.to_string() } else { format!("/tmp/{id}") };
            let mut attempt = 0;
            let bytes = loop {
                match self
                    .download_once(sim, &urls, &id, hasher.fresh(), &expected, &target, stream, offset, &location)
                    .await
                {
                    Ok(n) => break n,
                    Err(DlError::Crashed) => return Err(CmdError::Gone),
                    Err(DlError::Fatal(e)) => return Err(e.into()),
                    Err(DlError::Retry(e)) => {
                        if attempt >= sim.cfg.download_retries {
                            return Err(e.into());
                        }
                        attempt += 1;
                        self.log(sim, "download", json!({ "image": id, "retry": attempt, "error": e.text() }));
                        tokio::select! {
                            _ = self.cancel.cancelled() => return Err(CmdError::Gone),
                            _ = tokio::time::sleep(Duration::from_millis(sim.cfg.download_retry_interval_ms)) => {}
                        }
                    }
                }
            };
            if !stream {
                let fmt = disk_format.to_string();
                let (tmp2, disk2) = (tmp.clone(), disk.clone());
                let r = tokio::task::spawn_blocking(move || write_from_file(&tmp2, &disk2, size, &fmt, offset))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                let _ = std::fs::remove_file(&tmp);
                if let Err(e) = r {
                    return Err(RestError::new(
                        "ImageWriteError",
                        500,
                        "Error writing image to device",
                        format!("Writing image to device {DISK_DEVICE} failed with exit code 1. stdout: . stderr: {e}"),
                    )
                    .into());
                }
            }
            if partition_image {
                let d = disk.clone();
                let image_len = bytes;
                tokio::task::spawn_blocking(move || write_partition_table(&d, size, image_len))
                    .await
                    .map_err(|e| RestError::execution(e.to_string()))?
                    .map_err(|e| RestError::execution(e.to_string()))?;
            }
            self.log(
                sim,
                "image_written",
                json!({ "image": id, "bytes": bytes, "disk_format": disk_format, "streamed": stream, "partition_image": partition_image,
                        "configdrive": configdrive.is_some_and(|c| !c.is_null()) }),
            );
            let mut i = self.inner.lock().unwrap();
            i.cached_image_id = Some(id.clone());
            i.partition_uuids = Some(if partition_image {
                json!({ "root uuid": uuid::Uuid::new_v4().to_string(), "partitions": { "root": format!("{DISK_DEVICE}1") } })
            } else {
                json!({})
            });
        }
        // IPA checks the disk has a partition table it can read
        let head = read_head(&disk).map_err(|e| RestError::execution(e.to_string()))?;
        match count_partitions(&head) {
            Err(e) => {
                return Err(RestError::new(
                    "DeploymentError",
                    500,
                    "Deploy step failed",
                    format!(
                        "Unable to find a valid partition table on the disk after writing the image. The image may be corrupted or it uses a different sector size than the device. Error: {e}"
                    ),
                )
                .into());
            }
            Ok(0) => {
                return Err(RestError::new(
                    "DeploymentError",
                    500,
                    "Deploy step failed",
                    format!("No partitions found on the device {DISK_DEVICE} after writing the image."),
                )
                .into());
            }
            Ok(_) => {}
        }
        let root = {
            let mut i = self.inner.lock().unwrap();
            let uuids = i.partition_uuids.get_or_insert_with(|| json!({}));
            if !partition_image {
                uuids["root uuid"] = disk_signature(&head).into();
            }
            uuids["root uuid"].as_str().unwrap_or("").to_string()
        };
        Ok(format!("image ({id}) written to device {DISK_DEVICE} root_uuid={root}"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_once(
        &self,
        sim: &Shared,
        urls: &[String],
        id: &str,
        mut hasher: Hasher,
        expected: &str,
        target: &Path,
        stream: bool,
        offset: u64,
        location: &str,
    ) -> Result<u64, DlError> {
        let started = std::time::Instant::now();
        let mut details = Vec::new();
        let mut resp = None;
        for url in urls {
            match sim.download.get(url).send().await {
                Ok(r) if r.status() == 200 => {
                    resp = Some((url.clone(), r));
                    break;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let headers = format!("{:?}", r.headers());
                    let body = r.text().await.unwrap_or_default();
                    let msg = format!(
                        "Received status code {status} from {url}, expected 200. Response body: {body} Response headers: {headers}"
                    );
                    if status < 500 {
                        return Err(DlError::Fatal(RestError::new(
                            "ImageDownloadFatalError",
                            500,
                            "Error downloading image",
                            format!("Download of image {id} failed: {msg}"),
                        )));
                    }
                    details.push(format!(
                        "URL: {url}; time: {:.3} seconds. Error: {msg}",
                        started.elapsed().as_secs_f64()
                    ));
                }
                Err(e) => details
                    .push(format!("URL: {url}; time: {:.3} seconds. Error: {e}", started.elapsed().as_secs_f64())),
            }
        }
        let Some((url, mut r)) = resp else {
            return Err(DlError::Retry(RestError::download(id, details.join("\n "))));
        };
        self.log(sim, "download", json!({ "image": id, "url": url, "stream": stream }));
        let size = sim.cfg.disk_size_bytes;
        let file = {
            let (t, s) = (target.to_path_buf(), stream);
            tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                if s { open_disk(&t, size) } else { std::fs::File::create(&t) }
            })
            .await
            .map_err(|e| DlError::Retry(RestError::download(id, e)))?
            .map_err(|e| {
                DlError::Retry(RestError::download(id, format!("Unable to write image to {location}. Error: {e}")))
            })?
        };
        let mut file = tokio::fs::File::from_std(file);
        if stream {
            tokio::io::AsyncSeekExt::seek(&mut file, SeekFrom::Start(offset))
                .await
                .map_err(|e| DlError::Retry(RestError::download(id, e)))?;
        }
        let mut n: u64 = 0;
        loop {
            let chunk = match r.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(DlError::Retry(RestError::download(
                        id,
                        format!("Unable to write image to {location}. Error: {e}"),
                    )));
                }
            };
            n += chunk.len() as u64;
            let (die, after) = {
                let f = self.machine.faults.lock().unwrap();
                (f.die_during_download, f.die_after_bytes)
            };
            if (die && n > 0) || after.is_some_and(|a| n >= a) {
                self.log(sim, "download", json!({ "image": id, "received": n, "fault": "die during download" }));
                self.crash(sim, "fault: died during the image download");
                return Err(DlError::Crashed);
            }
            if stream && offset + n > size {
                return Err(DlError::Retry(RestError::download(
                    id,
                    format!("Unable to write image to device {DISK_DEVICE}. Error: [Errno 28] No space left on device"),
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| {
                DlError::Retry(RestError::download(id, format!("Unable to write image to {location}. Error: {e}")))
            })?;
        }
        file.flush().await.map_err(|e| DlError::Retry(RestError::download(id, e)))?;
        let _ = file.sync_data().await;
        let got = hasher.hex();
        if got != expected {
            return Err(DlError::Retry(RestError::new(
                "ImageChecksumError",
                500,
                "Error verifying image checksum",
                // IPA passes location and image id the other way round
                format!(
                    "Image failed to verify against checksum. location: {id}; image ID: {location}; image checksum: {expected}; verification checksum: {got}"
                ),
            )));
        }
        self.log(sim, "download", json!({ "image": id, "url": url, "bytes": n, "verified": got }));
        Ok(n)
    }
}

/// A downloaded (not streamed) image onto the disk: its metadata destroyed
/// first, then the image converted to raw (qcow2 by `qemu-img`) at `offset`.
fn write_from_file(tmp: &Path, disk: &Path, size: u64, format: &str, offset: u64) -> Result<(), String> {
    let f = open_disk(disk, size).map_err(|e| e.to_string())?;
    zero_ends(&f, size).map_err(|e| e.to_string())?;
    drop(f);
    if format == "qcow2" {
        if offset != 0 {
            return Err("partition images in qcow2 are not simulated".into());
        }
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw", "-n"])
            .arg(tmp)
            .arg(disk)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        return Ok(());
    }
    let len = std::fs::metadata(tmp).map_err(|e| e.to_string())?.len();
    if offset + len > size {
        return Err(format!("the image ({len} bytes) does not fit on the disk ({size} bytes)"));
    }
    let mut src = std::fs::File::open(tmp).map_err(|e| e.to_string())?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(disk).map_err(|e| e.to_string())?;
    dst.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    std::io::copy(&mut src, &mut dst).map_err(|e| e.to_string())?;
    dst.sync_data().map_err(|e| e.to_string())
}

/// A partition image: an MBR with one Linux partition from 1 MiB holding it.
fn write_partition_table(disk: &Path, size: u64, image_len: u64) -> std::io::Result<()> {
    let mut f = open_disk(disk, size)?;
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&rand::random::<u32>().to_le_bytes());
    let start = (MIB / 512) as u32;
    let sectors = (image_len.div_ceil(512).max(1)).min(size / 512 - start as u64) as u32;
    let e = &mut mbr[446..462];
    e[0] = 0x80;
    e[4] = 0x83;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.sync_data()
}

// ---- the HTTP server -------------------------------------------------------

enum Reply {
    Json(u16, Value),
    Empty(u16),
    Unreachable,
}

impl Reply {
    fn fault(code: u16, msg: &str) -> Reply {
        Reply::Json(code, json!({ "faultcode": if code >= 500 { "Server" } else { "Client" }, "faultstring": msg }))
    }
    fn status(&self) -> Option<u16> {
        match self {
            Reply::Json(s, _) | Reply::Empty(s) => Some(*s),
            Reply::Unreachable => None,
        }
    }
}

async fn serve(sim: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = sim.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        tokio::spawn(async move {
            let cancel = sim.cancel.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = connection(sim, stream) => {}
            }
        });
    }
}

async fn connection(sim: Arc<Shared>, stream: tokio::net::TcpStream) {
    let mut first = [0u8; 1];
    let is_tls = match &sim.tls {
        Some(_) => matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16),
        None => false,
    };
    if is_tls {
        let acceptor = sim.tls.as_ref().unwrap().acceptor.clone();
        if let Ok(s) = acceptor.accept(stream).await {
            serve_http(sim, s).await;
        }
    } else {
        serve_http(sim, stream).await;
    }
}

async fn serve_http<I>(sim: Arc<Shared>, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let sim = sim.clone();
        async move { handle(sim, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
}

fn query_pairs(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(k)).or_insert_with(|| percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(sim: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query());
    let user_agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = req.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
    let trimmed = path.trim_start_matches('/');
    let (first, rest) = match trimmed.split_once('/') {
        Some((f, r)) => (f, format!("/{r}")),
        None => (trimmed, String::new()),
    };
    let reply = match first {
        "notify" => notify(&sim, &body),
        "control" => control(&sim, &method, rest.trim_start_matches('/'), &body),
        "" => Reply::Json(200, json!({ "name": "ferric ramdisk-sim", "machines": sim.machines.read().unwrap().len() })),
        id => {
            let r = agent_api(&sim, id, &method, &rest, &query, &user_agent, &body).await;
            if sim.cfg.log_requests
                && let Some(m) = sim.machine(id)
            {
                let status = r.status().map(Value::from).unwrap_or_else(|| "unreachable".into());
                sim.log.write(
                    &m.id,
                    m.boot_no(),
                    "request",
                    json!({ "method": method.as_str(), "path": rest, "status": status, "user_agent": user_agent }),
                );
            }
            r
        }
    };
    match reply {
        Reply::Json(status, v) => {
            let mut body = serde_json::to_vec(&v).unwrap_or_default();
            body.push(b'\n');
            Ok(Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(std::io::Error::other)?)
        }
        Reply::Empty(status) => Ok(Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT))
            .body(Full::new(Bytes::new()))
            .map_err(std::io::Error::other)?),
        Reply::Unreachable => {
            if sim.cfg.unreachable == Unreachable::Hang {
                sim.cancel.cancelled().await;
            }
            Err(std::io::Error::other("the machine does not answer"))
        }
    }
}

/// `PUT /notify`: the emulator's whole system dict, on every state write.
/// Decided at once (the emulator waits for this answer inside the BMC
/// request that caused it).
fn notify(sim: &Arc<Shared>, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return Reply::fault(400, "not JSON") };
    let uuid = v["uuid"].as_str().unwrap_or("");
    let name = v["name"].as_str().unwrap_or("");
    let m = sim.machine(uuid).or_else(|| sim.machine(name));
    let Some(m) = m else { return Reply::Empty(204) };
    if !name.is_empty() && name != m.id {
        sim.names.write().unwrap().entry(name.to_string()).or_insert_with(|| m.id.clone());
    }
    m.observe(sim, Observation::from_notification(&v));
    Reply::Empty(204)
}

fn control(sim: &Arc<Shared>, method: &Method, id: &str, body: &[u8]) -> Reply {
    let Some(m) = sim.machine(id.trim_end_matches('/')) else {
        return Reply::fault(404, &format!("no machine {id:?}"));
    };
    if *method == Method::GET {
        return Reply::Json(200, serde_json::to_value(m.status()).unwrap_or_default());
    }
    if *method != Method::POST && *method != Method::PUT {
        return Reply::fault(405, "GET or POST");
    }
    let Ok(Value::Object(mut change)) = serde_json::from_slice::<Value>(body) else {
        return Reply::fault(400, "a JSON object of Faults fields (and \"crash\": true)");
    };
    let crash = change.remove("crash").and_then(|c| c.as_bool()).unwrap_or(false);
    if !change.is_empty() {
        let mut current = serde_json::to_value(m.faults.lock().unwrap().clone()).unwrap_or_default();
        for (k, v) in change {
            current[k] = v;
        }
        match serde_json::from_value::<Faults>(current) {
            Ok(f) => {
                *m.faults.lock().unwrap() = f.clone();
                sim.log.write(&m.id, m.boot_no(), "faults", json!({ "faults": f }));
            }
            Err(e) => return Reply::fault(400, &format!("faults: {e}")),
        }
    }
    if crash {
        let agent = m.st.lock().unwrap().agent.clone();
        if let Some(a) = agent {
            a.crash(sim, "crashed through the control API");
        }
    }
    Reply::Json(200, serde_json::to_value(m.status()).unwrap_or_default())
}

const WERKZEUG_404: &str = "404 Not Found: The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.";

/// The agent API of one machine, as IPA's `api/app.py` routes it.
async fn agent_api(
    sim: &Arc<Shared>,
    id: &str,
    method: &Method,
    rest: &str,
    query: &HashMap<String, String>,
    user_agent: &str,
    body: &[u8],
) -> Reply {
    let Some(m) = sim.machine(id) else { return Reply::fault(404, WERKZEUG_404) };
    let agent = m.st.lock().unwrap().agent.clone();
    let Some(agent) = agent.filter(|a| a.phase() == Phase::Serving) else { return Reply::Unreachable };
    let base =
        format!("{}://{}/{}", if agent.inner.lock().unwrap().https { "https" } else { "http" }, sim.advertise, m.id);
    let token = query.get("agent_token").map(String::as_str);
    let wait = query.get("wait").is_some_and(|w| w.eq_ignore_ascii_case("true"));
    let unauthorized = || Reply::fault(401, "401 Unauthorized: Token invalid.");
    let get = *method == Method::GET;
    let not_allowed = || Reply::fault(405, "405 Method Not Allowed: The method is not allowed for the requested URL.");
    let version = || {
        json!({ "id": "v1", "links": [
            { "href": format!("{base}/v1"), "rel": "self" },
            { "href": format!("{IPA_DOCS}/"), "rel": "describedby", "type": "text/html" },
        ] })
    };
    match rest {
        "" | "/" => {
            if !get {
                return not_allowed();
            }
            Reply::Json(
                200,
                json!({
                    "name": "OpenStack Ironic Python Agent API",
                    "description": "Ironic Python Agent is a provisioning agent for OpenStack Ironic",
                    "versions": [version()],
                    "default_version": version(),
                }),
            )
        }
        "/v1" | "/v1/" => {
            if !get {
                return not_allowed();
            }
            let mut v = version();
            v["commands"] = json!([{ "href": format!("{base}/v1/commands"), "rel": "self" }, { "href": format!("{base}/commands"), "rel": "bookmark" }]);
            v["status"] = json!([{ "href": format!("{base}/v1/status"), "rel": "self" }, { "href": format!("{base}/status"), "rel": "bookmark" }]);
            v["media_types"] = json!([{ "base": "application/json", "type": "application/vnd.openstack.ironic-python-agent.v1+json" }]);
            Reply::Json(200, v)
        }
        "/v1/status" | "/status" => {
            if !get {
                return not_allowed();
            }
            Reply::Json(200, json!({ "started_at": agent.started_at, "version": sim.cfg.agent_version }))
        }
        "/v1/commands/" | "/v1/commands" | "/commands/" | "/commands" => {
            if *method == Method::GET {
                if !agent.token_ok(token) {
                    return unauthorized();
                }
                let list: Vec<Value> =
                    agent.inner.lock().unwrap().commands.iter().map(|c| c.lock().unwrap().json()).collect();
                Reply::Json(200, json!({ "commands": list }))
            } else if *method == Method::POST {
                if !agent.token_ok(token) {
                    return unauthorized();
                }
                let v: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return Reply::fault(400, &format!("400 Bad Request: Failed to decode JSON object: {e}")),
                };
                let (Some(name), Some(Value::Object(params))) =
                    (v.get("name").and_then(Value::as_str), v.get("params"))
                else {
                    return Reply::fault(400, "400 Bad Request: Missing or invalid name or params");
                };
                match agent.execute(sim, name, params.clone(), user_agent, wait).await {
                    Ok(v) => Reply::Json(200, v),
                    Err(r) => r,
                }
            } else {
                not_allowed()
            }
        }
        p if p.starts_with("/v1/commands/") || p.starts_with("/commands/") => {
            if !get {
                return not_allowed();
            }
            if !agent.token_ok(token) {
                return unauthorized();
            }
            let cid = p.rsplit('/').next().unwrap_or("");
            let found = agent.inner.lock().unwrap().commands.iter().find(|c| c.lock().unwrap().id == cid).cloned();
            let Some(c) = found else {
                return Reply::fault(404, &format!("Not found: Command Result with id {cid} not found."));
            };
            if wait {
                let mut rx = c.lock().unwrap().done.subscribe();
                tokio::select! {
                    _ = agent.cancel.cancelled() => return Reply::Unreachable,
                    _ = rx.wait_for(|d| *d) => {}
                }
            }
            let v = c.lock().unwrap().json();
            Reply::Json(200, v)
        }
        _ => Reply::fault(404, WERKZEUG_404),
    }
}

/// The fallback to notifications: every machine's power, read from its BMC.
async fn poll_loop(sim: Arc<Shared>, every: Duration) {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        tokio::select! {
            _ = sim.cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let machines: Vec<Arc<Machine>> = sim.machines.read().unwrap().values().cloned().collect();
        for m in machines {
            let (sim, limit) = (sim.clone(), limit.clone());
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else { return };
                if let Ok((200, v)) = m.bmc.get(&m.system_path).await
                    && let Some(p) = v["PowerState"].as_str()
                {
                    m.observe(&sim, Observation { power_on: power_is_on(p), pending: None, source: "poll" });
                }
            });
        }
    }
}
