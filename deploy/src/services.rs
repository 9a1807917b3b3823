//! What a conductor lends its drivers, one per conductor incarnation and
//! shared by every task: media publishing, agent tokens, the BMC
//! connections and the settings drivers read.

use std::sync::Arc;
use std::time::Duration;

use ferric_common::config::Config;

use crate::bmc::redfish::{ClientSettings, RedfishClients};
use crate::media::Media;
use crate::token::AgentTokens;

/// Asked before every request to a BMC or to a ramdisk's agent: a
/// conductor that is fenced — or whose lease may have run out while no
/// watchdog looked — must not act on any machine. The conductor's fence
/// implements it; tools that drive a BMC outside a conductor use
/// [`Unguarded`].
pub trait ActGuard: Send + Sync + std::fmt::Debug {
    /// `Err(why)` when no machine may be acted on now.
    fn may_act(&self) -> Result<(), String>;
}

/// Always allows (a client used outside a conductor: tests, the lab).
#[derive(Debug, Clone, Copy)]
pub struct Unguarded;

impl ActGuard for Unguarded {
    fn may_act(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug)]
pub struct Services {
    pub media: Arc<Media>,
    pub tokens: AgentTokens,
    pub redfish: Arc<RedfishClients>,
    /// The client of deploy ramdisks' agent API.
    pub agent: crate::agent::AgentClient,
    pub settings: DriverSettings,
}

/// `[redfish] eject_media_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectPolicy {
    Callback,
    Active,
    Never,
}

impl EjectPolicy {
    pub fn parse(s: &str) -> Option<EjectPolicy> {
        match s {
            "callback" => Some(EjectPolicy::Callback),
            "active" => Some(EjectPolicy::Active),
            "never" => Some(EjectPolicy::Never),
            _ => None,
        }
    }
}

/// The settings drivers read.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// The API URL a ramdisk calls back (`ipa-api-url`); empty = none
    /// configured (booting a ramdisk is refused with a clear error).
    pub callback_url: String,
    pub kernel_append_params: String,
    pub eject_media_after: EjectPolicy,
    pub power_timeout: Duration,
    pub power_poll: Duration,
    /// `true` = UEFI unless a node says otherwise.
    pub default_uefi: bool,
    /// Where collected ramdisk logs are saved, and when.
    pub deploy_logs_dir: std::path::PathBuf,
    pub deploy_logs_collect: String,
    /// The iSCSI deploy's writer and its bounds (`[iscsi]`).
    pub qemu_img: String,
    pub iscsi_write_timeout: Duration,
    pub iscsi_default_port: u16,
    /// qemu-img's `-r` (bytes per second); 0 = none.
    pub iscsi_write_rate_limit: u64,
    /// Where the network-boot interfaces put their files.
    pub netboot: NetbootSettings,
}

/// Where the `pxe` and `ipxe` boot interfaces put a node's files.
#[derive(Debug, Clone, Default)]
pub struct NetbootSettings {
    /// `[pxe] tftp_root`.
    pub tftp_root: std::path::PathBuf,
    /// The conductor's HTTP root (iPXE files go under `ipxe/`).
    pub http_root: std::path::PathBuf,
    /// Where nodes reach the HTTP root; empty when this conductor serves
    /// none.
    pub http_url: String,
    /// `[ipxe] use_swift`.
    pub use_swift: bool,
}

impl DriverSettings {
    pub fn from_config(cfg: &Config) -> DriverSettings {
        DriverSettings {
            callback_url: cfg.deploy.external_callback_url.trim_end_matches('/').to_string(),
            kernel_append_params: cfg.redfish.kernel_append_params.clone(),
            eject_media_after: EjectPolicy::parse(&cfg.redfish.eject_media_after).unwrap_or(EjectPolicy::Callback),
            power_timeout: Duration::from_secs(cfg.conductor.power_state_change_timeout),
            power_poll: Duration::from_millis(cfg.conductor.power_state_poll_interval_ms.max(10)),
            default_uefi: cfg.deploy.default_boot_mode != "bios",
            deploy_logs_dir: cfg.deploy_logs_dir(),
            deploy_logs_collect: cfg.agent.deploy_logs_collect.clone(),
            qemu_img: cfg.iscsi.qemu_img.clone(),
            iscsi_write_timeout: Duration::from_secs(cfg.iscsi.write_timeout_secs.max(1)),
            iscsi_default_port: cfg.iscsi.default_port,
            iscsi_write_rate_limit: cfg.iscsi.write_rate_limit_bytes_per_sec,
            netboot: NetbootSettings {
                tftp_root: cfg.tftp_root(),
                http_root: cfg.http_server_root(),
                http_url: String::new(),
                use_swift: cfg.ipxe.use_swift,
            },
        }
    }
}

impl Services {
    /// `conductor_id` and `incarnation` say who sends requests to agents;
    /// `http_url` is where nodes reach this conductor's HTTP root.
    pub fn new(
        cfg: &Config,
        http_url: &str,
        media: Arc<Media>,
        tokens: AgentTokens,
        conductor_id: &str,
        incarnation: &str,
        guard: Arc<dyn ActGuard>,
    ) -> Services {
        Services {
            media,
            tokens,
            redfish: Arc::new(RedfishClients::new(ClientSettings::from_config(&cfg.redfish)).with_guard(guard.clone())),
            agent: crate::agent::AgentClient::new(
                crate::agent::AgentSettings::from_config(&cfg.agent),
                conductor_id,
                incarnation,
            )
            .with_guard(guard),
            settings: {
                let mut s = DriverSettings::from_config(cfg);
                s.netboot.http_url = http_url.trim_end_matches('/').to_string();
                s
            },
        }
    }
}
