//! Configuration: one TOML file, every key overridable by `FERRIC_…`
//! environment variables (`FERRIC_<SECTION>__<KEY>`, e.g.
//! `FERRIC_DATABASE__URL`) and by command-line flags, in that order of
//! precedence (flags win). Option names follow Ironic's where one exists.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub mod auth;
pub use crate::secrets::Secret;
pub use auth::{AuthConfig, KeystoneAuthConfig};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where all-in-one keeps its SQLite file and HTTP root by default.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub conductor: ConductorConfig,
    pub database: DatabaseConfig,
    pub membership: MembershipConfig,
    pub grpc: GrpcConfig,
    pub log: LogConfig,
    pub deploy: DeployConfig,
    pub swift: SwiftConfig,
    pub image_cache: ImageCacheConfig,
    pub redfish: RedfishConfig,
    pub agent: AgentConfig,
    pub iscsi: IscsiConfig,
    pub pxe: PxeConfig,
    pub ipxe: IpxeConfig,
    pub auth: AuthConfig,
    pub keystone_authtoken: KeystoneAuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the Ironic REST API listens on.
    pub listen: String,
    /// Base URL put into links; empty = taken from each request's Host.
    pub public_url: String,
    /// Largest page a list returns (Ironic's `[api] max_limit`).
    pub max_limit: u32,
    /// How long one REST request may spend finding the node's owner and
    /// retrying across ring changes before it answers 503.
    pub request_deadline_ms: u64,
    /// Largest request body in bytes (a provision request carries its
    /// config drive, up to 64 MiB unpacked). The ramdisk's endpoints
    /// (lookup, heartbeat, pass_deploy_info) take at most 64 KiB.
    pub max_request_body_size: usize,
    /// After SIGTERM, keep serving this long with `/readyz` answering 503,
    /// so that load balancers (a Kubernetes Service's endpoints) stop
    /// sending before the listener closes. 0 = stop at once.
    pub shutdown_delay_ms: u64,
    /// Largest node, in bytes of its JSON document, that a create or a
    /// PATCH may leave; beyond it 413. Each PATCH body is bounded, but many
    /// of them adding to `extra`, `instance_info`, `properties` or
    /// `driver_info` grew a node without bound until the API→conductor
    /// message that carries it twice (its base and its patched copy) passed
    /// [`crate::rpc::MAX_MESSAGE_BYTES`] and every PATCH of it failed with a
    /// 500. The conductor checks the merged node again under the lock (and
    /// reads this key from its own configuration: give every process the
    /// same value). Default 96 MiB: a deploy keeps its config drive in
    /// `instance_info` (Ironic takes up to 64 MiB) and the node must still
    /// take PATCHes then, with 32 MiB for everything else; two copies
    /// (192 MiB) stay well below the 320 MiB message limit. Refused at
    /// load above half of that limit.
    pub max_node_document_bytes: usize,
    /// How long a client may take to send a request's headers, from its
    /// first byte (and a new connection its first request); then the
    /// connection is closed. Without it a client that opens connections
    /// and sends its headers a byte at a time (slowloris) holds them — and
    /// a task and a file descriptor each — forever.
    pub header_read_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open. Above the idle
    /// timeout of clients' connection pools (reqwest and Go: 90 s): a
    /// server that closes an idle connection first races the client's
    /// next request on it, which the client then loses.
    pub keep_alive_timeout_ms: u64,
    /// How long one request may take from its headers to its answer,
    /// reading its body included; then 503 with an Ironic error body naming
    /// this key. Bounds what a slow client or a stuck call holds. Must be
    /// longer than `request_deadline_ms` (the forwarder answers first when
    /// no conductor does). 60 s also bounds uploads: a config drive at
    /// `max_request_body_size` needs about 18 Mbit/s; raise it for slower
    /// links.
    pub request_timeout_ms: u64,
    /// Requests in handlers at once; beyond it a request is answered 503
    /// with `Retry-After` at once (load shedding: a bounded process, never
    /// an unbounded queue) and counted in `ferric_api_requests_shed_total`.
    /// `/healthz`, `/readyz` and `/metrics` are never shed, so that a busy
    /// API is not restarted or blinded.
    pub max_concurrent_requests: usize,
    /// Bytes of rendered node answers (`GET /v1/nodes/{node}`, node lists)
    /// kept by an API that is its database's only writer (all-in-one; a
    /// cluster's API processes keep none), served only while nothing was
    /// written since they were read. A node is about 3 KiB, a detailed
    /// page of 1,000 about 2.5 MiB: 64 MiB holds a 10,000-node fleet's
    /// nodes and a few pages. 0 = none.
    pub node_cache_bytes: usize,
    /// PEM certificate chain of the REST API; with `tls_key_file` it
    /// serves HTTPS only (empty: plain HTTP). Read again when the files
    /// change: a renewed certificate is served without a restart.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
}

/// Mutual TLS on the gRPC hop between API processes (and `ferricctl`)
/// and conductors (docs/security.md). All three set, or none (plaintext:
/// anyone who reaches a conductor's port may call it). One CA issues every
/// certificate of the hop: a conductor accepts only clients presenting a
/// certificate of this CA, and clients accept only conductors whose
/// certificate of this CA names the host of their advertised `grpc_url`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// PEM CA certificate(s) of the hop.
    pub ca_file: PathBuf,
    /// This process's PEM certificate chain: a conductor's serves (and
    /// authenticates its own reachability check, so it carries both the
    /// serverAuth and clientAuth usages); an API process's or ferricctl's
    /// authenticates it to conductors.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConductorConfig {
    /// Stable identity (e.g. the StatefulSet pod name); empty = hostname.
    pub id: String,
    pub conductor_group: String,
    /// gRPC listen address; port 0 picks a free one.
    pub grpc_listen: String,
    /// URL other processes use to reach the gRPC service; empty = derived
    /// from the bound address.
    pub grpc_url: String,
    /// The conductor's HTTP listener (/metrics, /healthz, /readyz, the HTTP
    /// root). Port 0 picks a free one; empty turns it off.
    pub http_listen: String,
    #[serde(deserialize_with = "list")]
    pub enabled_hardware_types: Vec<String>,
    /// Node lock attempts before answering NODE_LOCKED (Ironic: 3 × 1 s).
    pub lock_attempts: u32,
    pub lock_retry_interval_ms: u64,
    /// Operations that may run at once; beyond it new ones get 503
    /// ("lack of free conductor workers"), never an unbounded queue.
    pub max_operations: usize,
    /// How long a graceful shutdown waits for running operations to reach
    /// a step boundary.
    pub shutdown_timeout_ms: u64,
    /// Nodes taken over at once after a ring change; bounds the BMC and
    /// image work a rebalance starts.
    pub takeover_concurrency: usize,
    /// How often a light take-over pass runs when the ring did not change:
    /// my own orphaned locks, nodes nobody took over yet, lost power
    /// actions and orphaned operations, found through indexes.
    pub takeover_interval_ms: u64,
    /// How often a full pass reads every node the ring gives this conductor
    /// when nothing asked for one (a ring change, work left by the previous
    /// full pass): a safety net, not the way work is found.
    pub takeover_full_interval_secs: u64,
    /// How long a drain (ferricctl conductor drain, SIGTERM of a conductor
    /// process) waits for every node to have a new owner before it exits
    /// anyway.
    pub drain_timeout_ms: u64,
    /// How long a node waits for its ramdisk's callback (`wait call-back`,
    /// `clean wait`, ...) before the operation fails (Ironic's
    /// deploy_callback_timeout).
    pub callback_timeout_secs: u64,
    /// How often owned nodes' power states are read from their BMCs and
    /// callback deadlines checked; 0 turns periodic work off.
    pub periodic_interval_secs: u64,
    /// History entries kept per node, the newest (Ironic's
    /// `node_history_max_entries`); 0 = keep all.
    pub node_history_max_entries: u32,
    /// How often the history is pruned (by one conductor of the ring: the
    /// active member with the smallest id); the history of deleted nodes
    /// goes too.
    pub node_history_cleanup_interval_secs: u64,
    /// A conductor that has not reached the database for this long while
    /// another live conductor does fences itself, so the ring gives its
    /// nodes to those that can act on them (0 = never). When nobody
    /// reaches the database, nobody leaves.
    pub database_unreachable_fence_secs: u64,
    /// How long the record of an applied API call is kept (a call sent
    /// again within it is answered as applied instead of being applied
    /// twice); far above the API's request deadline, within which it
    /// retries. Pruned with the history.
    pub applied_call_retention_secs: u64,
    /// Seconds a power action waits for the BMC to report the new state
    /// (Ironic's `power_state_change_timeout`).
    pub power_state_change_timeout: u64,
    /// How often a power action re-reads the BMC while it waits.
    pub power_state_poll_interval_ms: u64,
    /// BMCs the periodic power sync reads at once (Ironic's
    /// `sync_power_state_workers`): a round over N nodes takes about
    /// N / workers BMC answers; a hung BMC holds one worker for its timeout.
    pub power_sync_workers: usize,
    /// Allocations this conductor picks nodes for at once; the others wait
    /// their turn `allocating` (each reads the free nodes of its resource
    /// class and tries them one by one).
    pub allocation_workers: usize,
    /// The longest one step of an operation, one power action or one node's
    /// take-over may run before it fails: a hung BMC, agent or image server
    /// must not hold a node lock forever. Above every bound of the work it
    /// wraps (an iSCSI image write, an image download, a power wait).
    pub step_timeout_secs: u64,
    /// The secret every conductor of the cluster derives agent tokens from
    /// (at least 16 bytes). Empty = one generated at the cluster's first
    /// start and kept in the database. Set it (the same on every conductor)
    /// so that reading the database is not enough to forge a ramdisk.
    pub cluster_secret: Secret,
    /// PEM certificate chain of the HTTP listener (`http_listen`: the HTTP
    /// root BMCs fetch boot media from, /metrics, /healthz); with
    /// `http_tls_key_file` it serves HTTPS only and the URLs handed to BMCs
    /// are `https://` (many BMCs take https virtual media). Reloaded when
    /// the files change.
    pub http_tls_cert_file: PathBuf,
    pub http_tls_key_file: PathBuf,
    /// CA the conductor checks its own HTTP root's certificate with when it
    /// probes `deploy.http_server_url` at start; empty = the system's
    /// roots. (BMCs check it with theirs.)
    pub http_tls_ca_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://<path>` or `postgres://user@host:port/db`; empty =
    /// `sqlite://<data_dir>/ferric.sqlite`.
    /// A secret (it may carry a password): printed as `***`. TLS to
    /// PostgreSQL is set in the URL: `?sslmode=verify-full&sslrootcert=
    /// /path/ca.pem` (and `sslcert`/`sslkey` for a client certificate).
    pub url: Secret,
    pub max_connections: u32,
    /// How long a query waits for a pooled connection (and so, during an
    /// outage, how long before it fails) — sqlx's default, 30 s.
    pub acquire_timeout_secs: u64,
    /// Bring the schema up to date at start. `false` (the Helm chart): only
    /// `ferric db migrate` changes the schema, and a process whose schema is
    /// behind refuses to start, naming the missing migrations. A schema
    /// newer than the binary is refused either way.
    pub auto_migrate: bool,
    /// How often a conductor checks that it reaches the database (and tells
    /// the others: `conductor.database_unreachable_fence_secs`).
    pub health_check_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// `local` (in-process, single conductor) or `etcd`.
    pub backend: String,
    #[serde(deserialize_with = "list")]
    pub etcd_endpoints: Vec<String>,
    /// PEM CA certificate etcd's server certificate is checked with; set
    /// for `https://` endpoints (empty: plaintext `http://` endpoints).
    pub etcd_ca_file: PathBuf,
    /// Client certificate and key presented to etcd (etcd's
    /// `--client-cert-auth`); both or neither, and only with `etcd_ca_file`.
    pub etcd_cert_file: PathBuf,
    pub etcd_key_file: PathBuf,
    /// etcd user and password (etcd's `auth enable`); empty = none.
    pub etcd_username: String,
    pub etcd_password: Secret,
    pub lease_ttl_secs: u64,
    /// A conductor fences itself (stops every BMC/image action and task at
    /// once) when its lease might expire within this margin: at
    /// `last acknowledged renewal (send time) + TTL − margin`, by its own
    /// monotonic clock. Safety assumes clocks drift less than the margin
    /// over one TTL; keep it well above scheduling hiccups.
    pub fence_margin_ms: u64,
    /// 2^partition_exponent ring partitions.
    pub partition_exponent: u8,
    /// A conductor takes at most ⌈(1+ε)·P/N⌉ partitions.
    pub load_epsilon: f64,
    pub replicas: usize,
    /// Let `ferric api` / `ferric conductor` processes run on SQLite. Off,
    /// because every process of a cluster must share one database, and a
    /// SQLite file is shared only on one host; a lab may turn it on.
    pub allow_sqlite: bool,
    /// How often a process asks etcd to confirm that its membership watch
    /// is current (a progress request): a watch can stall without the
    /// connection dropping (a member cut from its leader, a slow watcher),
    /// and a stalled watch is a stale ring.
    pub watch_progress_interval_ms: u64,
    /// A watch that has not answered a progress request for this long is
    /// stalled: it is dropped and the ring re-read from a fresh snapshot.
    pub watch_stall_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// tracing-subscriber EnvFilter directives; RUST_LOG overrides.
    pub filter: String,
}

/// Where boot artefacts (parameters floppies, boot ISOs) are published.
/// Names follow the iLO specs (`[deploy]` of ../shared/specs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// `true`: the conductor's own HTTP root (served on
    /// `conductor.http_listen` under `/httpboot/`); `false`: Swift. Ironic's
    /// default is Swift; Ferric's is the HTTP root, because a conductor
    /// serves it itself and all-in-one has no Swift.
    pub use_http_web_server_for_images: bool,
    /// Directory of the HTTP root; empty = `<data_dir>/httpboot`.
    pub http_server_root: PathBuf,
    /// URL of the HTTP root as BMCs reach it; empty = derived from the
    /// conductor's bound HTTP address (`http://<addr>/httpboot`).
    pub http_server_url: String,
    /// Minutes a parameters floppy lives (Swift `X-Delete-After`, temp URL
    /// expiry, HTTP-root clean-up).
    pub deploy_helper_images_ttl: u64,
    /// BIOS boot loader put into generated boot ISOs (El Torito, no
    /// emulation) and its library module, both from Debian's
    /// isolinux/syslinux-common packages.
    pub isolinux_bin: PathBuf,
    pub ldlinux_c32: PathBuf,
    /// UEFI boot loader (`BOOTX64.EFI`) for the ISO's EFI system partition:
    /// a GRUB image whose prefix is `/EFI/BOOT`, e.g.
    /// `grub-mkimage -O x86_64-efi -p /EFI/BOOT -o BOOTX64.EFI iso9660 fat
    /// part_gpt part_msdos search search_fs_file linux normal configfile
    /// echo serial terminal` (docs/boot-artefacts.md). Empty = boot ISOs
    /// boot by BIOS only.
    pub uefi_loader: PathBuf,
    /// The Ironic API URL a deploy ramdisk calls back (`ipa-api-url` in
    /// its parameters), as Ironic's `[deploy] external_callback_url`.
    /// Empty in all-in-one = the API's own listener; a conductor process
    /// needs it set before it can boot a ramdisk.
    pub external_callback_url: String,
    /// `uefi` or `bios`: the boot mode of nodes whose
    /// `properties.capabilities` do not say (`boot_mode:uefi`).
    pub default_boot_mode: String,
}

/// Network boot by PXE (the `pxe`/`ilo-pxe` boot interfaces) and the
/// conductor's embedded TFTP server, as Ironic's `[pxe]` options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PxeConfig {
    /// Directory the conductor writes per-node PXE files into (kernels,
    /// ramdisks, `pxelinux.cfg/01-<mac>`, `grub/grub.cfg-01-<mac>`) and its
    /// TFTP server serves; empty = `<data_dir>/tftpboot`.
    pub tftp_root: PathBuf,
    /// Address of the embedded TFTP server (`0.0.0.0:69` in a datacenter);
    /// empty = no TFTP server (an external one serves `tftp_root`).
    pub tftp_listen: String,
    /// Transfers the TFTP server runs at once; beyond it a request is
    /// answered "busy" and the firmware retries.
    pub tftp_max_transfers: usize,
    /// Largest TFTP block size (RFC 2348) granted to a client.
    pub tftp_max_blksize: u16,
    /// BIOS network boot loader copied into the TFTP root at start
    /// (`pxelinux.0`, with `deploy.ldlinux_c32` next to it); empty or
    /// missing = none copied (an operator provides it).
    pub pxe_bootfile: PathBuf,
    /// UEFI network boot loader copied into the TFTP root at start as
    /// `grubx64.efi`: a GRUB image whose prefix is `(tftp)/grub`, so it
    /// reads `grub/grub.cfg-01-<mac>`; empty = none copied.
    pub uefi_pxe_bootfile: PathBuf,
}

/// Network boot by iPXE (the `ipxe`/`ilo-ipxe` boot interfaces) and the
/// public `ipxe_config` endpoint of the API (Ironic's `[ipxe]` options).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IpxeConfig {
    /// `true`: iPXE downloads kernels and ramdisks from Swift by temporary
    /// URLs the API signs at each request (images named
    /// `swift://<container>/<object>` in the account of `[swift]`), and no
    /// conductor caches or serves them: any API process answers and a dead
    /// conductor strands no node mid-boot. `false`: the owning conductor
    /// caches them and serves them from its HTTP root.
    pub use_swift: bool,
    /// Scripts one client address may fetch per second from the public
    /// endpoint (a token bucket of `rate_limit_burst`); beyond it 429.
    pub rate_limit_per_sec: f64,
    pub rate_limit_burst: u32,
    /// Seconds a node told "not ready yet" (its boot files are being
    /// prepared) waits before it asks again.
    pub retry_delay_secs: u64,
}

/// The Swift publisher: tempauth (v1.0) credentials or a fixed storage
/// URL + token, the container, and temporary URL signing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SwiftConfig {
    /// v1.0 auth endpoint (`http://host:port/auth/v1.0`); empty = use
    /// `storage_url` + `auth_token`.
    pub auth_url: String,
    /// `account:user` for tempauth.
    pub user: String,
    pub key: Secret,
    /// `http://host:port/v1/AUTH_account`, when not obtained from auth_url.
    pub storage_url: String,
    pub auth_token: Secret,
    /// Container for floppies and boot ISOs; created when missing.
    pub swift_ilo_container: String,
    /// The account's `X-Account-Meta-Temp-URL-Key`; set on the account at
    /// start-up when `set_temp_url_key` is true.
    pub temp_url_key: Secret,
    pub set_temp_url_key: bool,
    /// Seconds a temporary URL to a boot ISO stays valid (floppies use the
    /// helper-image TTL).
    pub swift_temp_url_duration: u64,
    /// `sha256` (default) or `sha1` (old Swift clusters).
    pub temp_url_digest: String,
    /// Timeout of one Swift request.
    pub request_timeout_secs: u64,
}

/// Redfish BMCs (the `redfish` and `ilo` hardware types). Names follow
/// Ironic's `[redfish]` options where one exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedfishConfig {
    /// Attempts per BMC request (connection errors, timeouts, 5xx), the
    /// first included.
    pub connection_attempts: u32,
    /// Wait before the second attempt, doubled for every further one (at
    /// most 30 s).
    pub connection_retry_interval_ms: u64,
    /// BMC connections (each with its session and connection pool) a
    /// conductor keeps; the least recently used beyond it are closed.
    pub connection_cache_size: usize,
    /// Seconds one BMC request may take.
    pub request_timeout: u64,
    /// Seconds to establish a connection to a BMC.
    pub connect_timeout: u64,
    /// Kernel parameters every virtual-media ramdisk boots with (Ironic's
    /// `[redfish] kernel_append_params`).
    pub kernel_append_params: String,
    /// When the deploy/rescue media are ejected: `callback` (as soon as
    /// the ramdisk calls back; UEFI firmware that boots an inserted CD
    /// again cannot loop), `active` (when the instance's boot is prepared:
    /// installers that read the CD after calling back keep it), or
    /// `never` (left until replaced or the node is torn down).
    pub eject_media_after: String,
}

/// How conductors talk to deploy ramdisks (ironic-python-agent's API);
/// Ironic's `[agent]` names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Refuse heartbeats whose callback_url is not https:// (Ironic's
    /// default too): the agent API carries the session token.
    pub require_tls: bool,
    /// Attempts to deliver one command (connection errors, timeouts).
    pub max_command_attempts: u32,
    /// Seconds one request to an agent may take.
    pub command_timeout: u64,
    /// A command a step follows to its end is looked at this many times,
    /// `command_wait_interval_ms` apart, before the step fails.
    pub command_wait_attempts: u32,
    pub command_wait_interval_ms: u64,
    /// Seconds the ramdisk gets to power its machine off at the end of a
    /// deploy before the BMC is told to.
    pub post_deploy_power_off_timeout: u64,
    /// `on_failure` | `always` | `never`: when the ramdisk's logs
    /// (`log.collect_system_logs`) are saved under `deploy_logs_local_path`.
    pub deploy_logs_collect: String,
    /// Directory for collected ramdisk logs; empty = `<data_dir>/deploy-logs`.
    pub deploy_logs_local_path: PathBuf,
}

/// The conductor's content-addressed cache of source images (kernels,
/// ramdisks, deploy ISOs) downloaded from http(s)/file URLs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImageCacheConfig {
    /// Directory; empty = `<data_dir>/image-cache`.
    pub dir: PathBuf,
    /// Size bound; the least recently used images not in use are evicted.
    pub max_size_mb: u64,
    /// Timeout of one download (whole transfer).
    pub download_timeout_secs: u64,
    /// Downloads running at once; more wait their turn (a deploy of
    /// hundreds of nodes from as many images must not open hundreds of
    /// multi-GB transfers).
    pub max_concurrent_downloads: u32,
    /// `file://` images are read only under these directories (after
    /// resolving symbolic links), plus `<data_dir>/images`: a node's
    /// owner must not be able to have the conductor publish /etc/shadow.
    #[serde(deserialize_with = "list")]
    pub file_url_allowed_roots: Vec<String>,
}

/// The `iscsi` deploy: the conductor writes the image to the disk the
/// ramdisk exports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IscsiConfig {
    /// The writer: `qemu-img` built with libiscsi (Debian: qemu-utils and
    /// qemu-block-extra); it converts qcow2 on the way.
    pub qemu_img: String,
    /// Seconds one image write may take.
    pub write_timeout_secs: u64,
    /// Port of the ramdisk's target when pass_deploy_info names none.
    pub default_port: u16,
    /// Bytes per second one image write may use (qemu-img's `-r`), so a
    /// wave of deploys does not saturate the provisioning network; 0 = no
    /// limit.
    pub write_rate_limit_bytes_per_sec: u64,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            qemu_img: "qemu-img".into(),
            write_timeout_secs: 7200,
            default_port: 3260,
            write_rate_limit_bytes_per_sec: 0,
        }
    }
}

impl Default for PxeConfig {
    fn default() -> Self {
        PxeConfig {
            tftp_root: PathBuf::new(),
            tftp_listen: String::new(),
            tftp_max_transfers: 64,
            tftp_max_blksize: 1468,
            pxe_bootfile: PathBuf::from("/usr/lib/PXELINUX/pxelinux.0"),
            uefi_pxe_bootfile: PathBuf::new(),
        }
    }
}

impl Default for IpxeConfig {
    fn default() -> Self {
        IpxeConfig { use_swift: false, rate_limit_per_sec: 2.0, rate_limit_burst: 20, retry_delay_secs: 5 }
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            use_http_web_server_for_images: true,
            http_server_root: PathBuf::new(),
            http_server_url: String::new(),
            deploy_helper_images_ttl: 10,
            isolinux_bin: PathBuf::from("/usr/lib/ISOLINUX/isolinux.bin"),
            ldlinux_c32: PathBuf::from("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
            uefi_loader: PathBuf::new(),
            external_callback_url: String::new(),
            default_boot_mode: "uefi".into(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            require_tls: true,
            max_command_attempts: 3,
            command_timeout: 60,
            command_wait_attempts: 100,
            command_wait_interval_ms: 6000,
            post_deploy_power_off_timeout: 30,
            deploy_logs_collect: "on_failure".into(),
            deploy_logs_local_path: PathBuf::new(),
        }
    }
}

impl Default for RedfishConfig {
    fn default() -> Self {
        RedfishConfig {
            connection_attempts: 5,
            connection_retry_interval_ms: 4000,
            connection_cache_size: 1000,
            request_timeout: 60,
            connect_timeout: 10,
            kernel_append_params: "nofb vga=normal".into(),
            eject_media_after: "callback".into(),
        }
    }
}

impl Default for SwiftConfig {
    fn default() -> Self {
        SwiftConfig {
            auth_url: String::new(),
            user: String::new(),
            key: Secret::default(),
            storage_url: String::new(),
            auth_token: Secret::default(),
            swift_ilo_container: "ironic_ilo_container".into(),
            temp_url_key: Secret::default(),
            set_temp_url_key: false,
            swift_temp_url_duration: 1200,
            temp_url_digest: "sha256".into(),
            request_timeout_secs: 60,
        }
    }
}

impl Default for ImageCacheConfig {
    fn default() -> Self {
        ImageCacheConfig {
            dir: PathBuf::new(),
            max_size_mb: 20 * 1024,
            download_timeout_secs: 1800,
            max_concurrent_downloads: 4,
            file_url_allowed_roots: vec!["/var/lib/ferric/images".into()],
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".ferric"),
            api: ApiConfig::default(),
            conductor: ConductorConfig::default(),
            database: DatabaseConfig::default(),
            membership: MembershipConfig::default(),
            grpc: GrpcConfig::default(),
            log: LogConfig::default(),
            deploy: DeployConfig::default(),
            swift: SwiftConfig::default(),
            image_cache: ImageCacheConfig::default(),
            redfish: RedfishConfig::default(),
            agent: AgentConfig::default(),
            iscsi: IscsiConfig::default(),
            pxe: PxeConfig::default(),
            ipxe: IpxeConfig::default(),
            auth: AuthConfig::default(),
            keystone_authtoken: KeystoneAuthConfig::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:6385".into(),
            public_url: String::new(),
            max_limit: 1000,
            request_deadline_ms: 30_000,
            max_request_body_size: 128 * 1024 * 1024,
            shutdown_delay_ms: 0,
            max_node_document_bytes: 96 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 120_000,
            request_timeout_ms: 60_000,
            max_concurrent_requests: 1024,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            node_cache_bytes: 64 << 20,
        }
    }
}

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            id: String::new(),
            conductor_group: String::new(),
            grpc_listen: "127.0.0.1:0".into(),
            grpc_url: String::new(),
            http_listen: "127.0.0.1:0".into(),
            enabled_hardware_types: vec!["fake-hardware".into(), "redfish".into(), "ilo".into()],
            lock_attempts: 3,
            lock_retry_interval_ms: 1000,
            max_operations: 256,
            shutdown_timeout_ms: 60_000,
            takeover_concurrency: 16,
            takeover_interval_ms: 1000,
            takeover_full_interval_secs: 300,
            drain_timeout_ms: 300_000,
            callback_timeout_secs: 1800,
            periodic_interval_secs: 60,
            node_history_max_entries: 300,
            node_history_cleanup_interval_secs: 3600,
            applied_call_retention_secs: 3600,
            database_unreachable_fence_secs: 60,
            power_state_change_timeout: 60,
            power_state_poll_interval_ms: 1000,
            power_sync_workers: 8,
            allocation_workers: 16,
            step_timeout_secs: 10_800,
            cluster_secret: Secret::default(),
            http_tls_cert_file: PathBuf::new(),
            http_tls_key_file: PathBuf::new(),
            http_tls_ca_file: PathBuf::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::default(),
            max_connections: 10,
            acquire_timeout_secs: 30,
            auto_migrate: true,
            health_check_interval_ms: 2000,
        }
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            backend: "local".into(),
            etcd_endpoints: Vec::new(),
            etcd_ca_file: PathBuf::new(),
            etcd_cert_file: PathBuf::new(),
            etcd_key_file: PathBuf::new(),
            etcd_username: String::new(),
            etcd_password: Secret::default(),
            lease_ttl_secs: 6,
            fence_margin_ms: 1000,
            watch_progress_interval_ms: 1000,
            watch_stall_timeout_ms: 5000,
            partition_exponent: 16,
            load_epsilon: 0.02,
            replicas: 0,
            allow_sqlite: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "human".into(), filter: "info".into() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// A list from TOML (`["a", "b"]`) or from an environment variable, as
/// TOML array syntax or a comma-separated string
/// (`FERRIC_MEMBERSHIP__ETCD_ENDPOINTS=http://e1:2379,http://e2:2379`).
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect(),
    })
}

impl Config {
    /// Defaults, then the TOML file (if given; it must exist), then
    /// `FERRIC_*` variables, then `overrides` (from flags, as a TOML-shaped
    /// value with only the keys the user set).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        // only FERRIC_<SECTION>__<KEY> and FERRIC_DATA_DIR are settings;
        // other FERRIC_* variables (FERRIC_CONFIG, test knobs) are not
        let env = Env::prefixed("FERRIC_").filter(|k| k.as_str().contains("__") || k == "data_dir").split("__");
        fig = fig.merge(env).merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every duration of the configuration: key, value, seconds per unit.
    fn durations(&self) -> Vec<(&'static str, u64, f64)> {
        let (c, ms, s, min) = (&self.conductor, 0.001, 1.0, 60.0);
        vec![
            ("api.request_deadline_ms", self.api.request_deadline_ms, ms),
            ("api.shutdown_delay_ms", self.api.shutdown_delay_ms, ms),
            ("api.header_read_timeout_ms", self.api.header_read_timeout_ms, ms),
            ("api.keep_alive_timeout_ms", self.api.keep_alive_timeout_ms, ms),
            ("api.request_timeout_ms", self.api.request_timeout_ms, ms),
            ("conductor.lock_retry_interval_ms", c.lock_retry_interval_ms, ms),
            ("conductor.shutdown_timeout_ms", c.shutdown_timeout_ms, ms),
            ("conductor.takeover_interval_ms", c.takeover_interval_ms, ms),
            ("conductor.takeover_full_interval_secs", c.takeover_full_interval_secs, s),
            ("conductor.drain_timeout_ms", c.drain_timeout_ms, ms),
            ("conductor.callback_timeout_secs", c.callback_timeout_secs, s),
            ("conductor.periodic_interval_secs", c.periodic_interval_secs, s),
            ("conductor.power_state_change_timeout", c.power_state_change_timeout, s),
            ("conductor.power_state_poll_interval_ms", c.power_state_poll_interval_ms, ms),
            ("conductor.step_timeout_secs", c.step_timeout_secs, s),
            ("conductor.node_history_cleanup_interval_secs", c.node_history_cleanup_interval_secs, s),
            ("conductor.applied_call_retention_secs", c.applied_call_retention_secs, s),
            ("conductor.database_unreachable_fence_secs", c.database_unreachable_fence_secs, s),
            ("database.health_check_interval_ms", self.database.health_check_interval_ms, ms),
            ("database.acquire_timeout_secs", self.database.acquire_timeout_secs, s),
            ("membership.lease_ttl_secs", self.membership.lease_ttl_secs, s),
            ("membership.fence_margin_ms", self.membership.fence_margin_ms, ms),
            ("membership.watch_progress_interval_ms", self.membership.watch_progress_interval_ms, ms),
            ("membership.watch_stall_timeout_ms", self.membership.watch_stall_timeout_ms, ms),
            ("deploy.deploy_helper_images_ttl", self.deploy.deploy_helper_images_ttl, min),
            ("swift.swift_temp_url_duration", self.swift.swift_temp_url_duration, s),
            ("swift.request_timeout_secs", self.swift.request_timeout_secs, s),
            ("image_cache.download_timeout_secs", self.image_cache.download_timeout_secs, s),
            ("redfish.connection_retry_interval_ms", self.redfish.connection_retry_interval_ms, ms),
            ("redfish.request_timeout", self.redfish.request_timeout, s),
            ("redfish.connect_timeout", self.redfish.connect_timeout, s),
            ("agent.command_timeout", self.agent.command_timeout, s),
            ("agent.command_wait_interval_ms", self.agent.command_wait_interval_ms, ms),
            ("agent.post_deploy_power_off_timeout", self.agent.post_deploy_power_off_timeout, s),
            ("iscsi.write_timeout_secs", self.iscsi.write_timeout_secs, s),
            ("ipxe.retry_delay_secs", self.ipxe.retry_delay_secs, s),
        ]
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // a duration is added to clocks (Instant, chrono) and multiplied:
        // a huge one overflowed in arithmetic far from the configuration
        const MAX_DURATION_SECS: f64 = 30.0 * 86400.0;
        for (key, value, unit) in self.durations() {
            if value as f64 * unit > MAX_DURATION_SECS {
                return Err(ConfigError(format!(
                    "{key} = {value} is longer than 30 days; give at most {}",
                    (MAX_DURATION_SECS / unit) as u64
                )));
            }
        }
        self.validate_api()?;
        auth::validate(&self.auth, &self.keystone_authtoken)?;
        if !matches!(self.membership.backend.as_str(), "local" | "etcd") {
            return Err(ConfigError(format!(
                "membership.backend must be \"local\" or \"etcd\", not {:?}",
                self.membership.backend
            )));
        }
        if self.membership.backend == "etcd" && self.membership.etcd_endpoints.is_empty() {
            return Err(ConfigError("membership.backend = \"etcd\" needs membership.etcd_endpoints".into()));
        }
        if !(1..=24).contains(&self.membership.partition_exponent) {
            return Err(ConfigError("membership.partition_exponent must be within 1..=24".into()));
        }
        if self.membership.fence_margin_ms >= self.membership.lease_ttl_secs * 1000 {
            return Err(ConfigError(format!(
                "membership.fence_margin_ms ({}) must be below the lease TTL ({} s)",
                self.membership.fence_margin_ms, self.membership.lease_ttl_secs
            )));
        }
        let m = &self.membership;
        if m.watch_progress_interval_ms == 0 || m.watch_stall_timeout_ms <= m.watch_progress_interval_ms {
            return Err(ConfigError(format!(
                "membership.watch_stall_timeout_ms ({}) must be above membership.watch_progress_interval_ms ({}), \
                 which must be above 0",
                m.watch_stall_timeout_ms, m.watch_progress_interval_ms
            )));
        }
        if self.pxe.tftp_max_transfers == 0 {
            return Err(ConfigError("pxe.tftp_max_transfers must be at least 1".into()));
        }
        if !(512..=65464).contains(&self.pxe.tftp_max_blksize) {
            return Err(ConfigError(format!(
                "pxe.tftp_max_blksize must be within 512..=65464 (RFC 2348), not {}",
                self.pxe.tftp_max_blksize
            )));
        }
        if !(self.ipxe.rate_limit_per_sec.is_finite() && self.ipxe.rate_limit_per_sec > 0.0)
            || self.ipxe.rate_limit_burst == 0
        {
            return Err(ConfigError(
                "ipxe.rate_limit_per_sec must be a positive number and ipxe.rate_limit_burst at least 1".into(),
            ));
        }
        if self.ipxe.retry_delay_secs == 0 || self.ipxe.retry_delay_secs > 3600 {
            return Err(ConfigError("ipxe.retry_delay_secs must be within 1..=3600".into()));
        }
        for (key, bound) in [
            ("iscsi.write_timeout_secs", self.iscsi.write_timeout_secs),
            ("image_cache.download_timeout_secs", self.image_cache.download_timeout_secs),
            ("conductor.power_state_change_timeout", self.conductor.power_state_change_timeout),
        ] {
            if self.conductor.step_timeout_secs <= bound {
                return Err(ConfigError(format!(
                    "conductor.step_timeout_secs ({}) must be above {key} ({bound}): a step that writes an image, \
                     downloads one or waits for a power state would fail before its own bound",
                    self.conductor.step_timeout_secs
                )));
            }
        }
        if self.conductor.lock_attempts == 0 {
            return Err(ConfigError("conductor.lock_attempts must be at least 1".into()));
        }
        if self.conductor.power_sync_workers == 0 {
            return Err(ConfigError("conductor.power_sync_workers must be at least 1".into()));
        }
        if self.conductor.allocation_workers == 0 {
            return Err(ConfigError("conductor.allocation_workers must be at least 1".into()));
        }
        if self.conductor.max_operations == 0 {
            return Err(ConfigError("conductor.max_operations must be at least 1".into()));
        }
        if !matches!(self.swift.temp_url_digest.as_str(), "sha256" | "sha1") {
            return Err(ConfigError(format!(
                "swift.temp_url_digest must be \"sha256\" or \"sha1\", not {:?}",
                self.swift.temp_url_digest
            )));
        }
        if !self.deploy.use_http_web_server_for_images
            && self.swift.auth_url.is_empty()
            && self.swift.storage_url.is_empty()
        {
            return Err(ConfigError(
                "deploy.use_http_web_server_for_images = false publishes to Swift and needs swift.auth_url or swift.storage_url"
                    .into(),
            ));
        }
        if self.deploy.deploy_helper_images_ttl == 0 {
            return Err(ConfigError("deploy.deploy_helper_images_ttl must be at least 1 (minutes)".into()));
        }
        self.validate_tls()?;
        if !self.database.url.is_empty() {
            crate::db::Backend::of(self.database.url.expose())
                .map_err(|e| ConfigError(format!("database.url: {e}")))?;
        }
        if !matches!(self.deploy.default_boot_mode.as_str(), "uefi" | "bios") {
            return Err(ConfigError(format!(
                "deploy.default_boot_mode must be \"uefi\" or \"bios\", not {:?}",
                self.deploy.default_boot_mode
            )));
        }
        if !matches!(self.agent.deploy_logs_collect.as_str(), "on_failure" | "always" | "never") {
            return Err(ConfigError(format!(
                "agent.deploy_logs_collect must be \"on_failure\", \"always\" or \"never\", not {:?}",
                self.agent.deploy_logs_collect
            )));
        }
        if !matches!(self.redfish.eject_media_after.as_str(), "callback" | "active" | "never") {
            return Err(ConfigError(format!(
                "redfish.eject_media_after must be \"callback\", \"active\" or \"never\", not {:?}",
                self.redfish.eject_media_after
            )));
        }
        if !self.conductor.cluster_secret.is_empty() && self.conductor.cluster_secret.len() < 16 {
            return Err(ConfigError(format!(
                "conductor.cluster_secret must be at least 16 bytes long (it has {}); or leave it empty",
                self.conductor.cluster_secret.len()
            )));
        }
        if self.conductor.power_state_change_timeout == 0 {
            return Err(ConfigError("conductor.power_state_change_timeout must be at least 1 (seconds)".into()));
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return Err(ConfigError(format!("log.format must be \"human\" or \"json\", not {:?}", self.log.format)));
        }
        Ok(())
    }

    /// TLS keys that go together are set together (the files themselves
    /// are read by the process that serves or connects with them).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        let pairs = [
            ("api.tls_cert_file", &self.api.tls_cert_file, "api.tls_key_file", &self.api.tls_key_file),
            (
                "conductor.http_tls_cert_file",
                &self.conductor.http_tls_cert_file,
                "conductor.http_tls_key_file",
                &self.conductor.http_tls_key_file,
            ),
            (
                "membership.etcd_cert_file",
                &self.membership.etcd_cert_file,
                "membership.etcd_key_file",
                &self.membership.etcd_key_file,
            ),
        ];
        for (a, pa, b, pb) in pairs {
            if set(pa) != set(pb) {
                return Err(ConfigError(format!("{a} and {b} are set together or not at all")));
            }
        }
        let g = &self.grpc;
        if !(set(&g.ca_file) == set(&g.cert_file) && set(&g.cert_file) == set(&g.key_file)) {
            return Err(ConfigError(
                "grpc.ca_file, grpc.cert_file and grpc.key_file are set together (mutual TLS on the gRPC hop) or not \
                 at all"
                    .into(),
            ));
        }
        if set(&g.ca_file) && self.conductor.grpc_url.starts_with("http://") {
            return Err(ConfigError(format!(
                "conductor.grpc_url {} is plaintext but grpc.ca_file is set (mutual TLS): advertise https://",
                self.conductor.grpc_url
            )));
        }
        let m = &self.membership;
        if set(&m.etcd_cert_file) && !set(&m.etcd_ca_file) {
            return Err(ConfigError("membership.etcd_cert_file needs membership.etcd_ca_file (TLS to etcd)".into()));
        }
        if set(&m.etcd_ca_file)
            && let Some(e) = m.etcd_endpoints.iter().find(|e| !e.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "membership.etcd_ca_file is set (TLS to etcd) but endpoint {e} is not https://"
            )));
        }
        if m.etcd_username.is_empty() != m.etcd_password.is_empty() {
            return Err(ConfigError(
                "membership.etcd_username and membership.etcd_password are set together or not at all".into(),
            ));
        }
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        // a new node alone is about 2 KB of JSON
        const MIN_NODE_DOCUMENT_BYTES: usize = 16 * 1024;
        let max_node = crate::rpc::MAX_MESSAGE_BYTES / 2;
        if !(MIN_NODE_DOCUMENT_BYTES..=max_node).contains(&api.max_node_document_bytes) {
            return Err(ConfigError(format!(
                "api.max_node_document_bytes = {} must be within {MIN_NODE_DOCUMENT_BYTES}..={max_node} (half the \
                 API-conductor message limit: an update carries the node twice)",
                api.max_node_document_bytes
            )));
        }
        if api.header_read_timeout_ms == 0 || api.keep_alive_timeout_ms == 0 {
            return Err(ConfigError(
                "api.header_read_timeout_ms and api.keep_alive_timeout_ms must be at least 1".into(),
            ));
        }
        if api.request_timeout_ms <= api.request_deadline_ms {
            return Err(ConfigError(format!(
                "api.request_timeout_ms ({}) must be longer than api.request_deadline_ms ({}): a request that finds \
                 no conductor must be answered by the forwarder at its deadline, not cut short",
                api.request_timeout_ms, api.request_deadline_ms
            )));
        }
        if api.max_concurrent_requests == 0 {
            return Err(ConfigError("api.max_concurrent_requests must be at least 1".into()));
        }
        Ok(())
    }

    /// The database URL, defaulting to a SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("ferric.sqlite").display())
        } else {
            self.database.url.expose().to_string()
        }
    }

    /// The HTTP root directory, defaulting to `<data_dir>/httpboot`.
    pub fn http_server_root(&self) -> PathBuf {
        if self.deploy.http_server_root.as_os_str().is_empty() {
            self.data_dir.join("httpboot")
        } else {
            self.deploy.http_server_root.clone()
        }
    }

    /// The TFTP root, defaulting to `<data_dir>/tftpboot`.
    pub fn tftp_root(&self) -> PathBuf {
        if self.pxe.tftp_root.as_os_str().is_empty() {
            self.data_dir.join("tftpboot")
        } else {
            self.pxe.tftp_root.clone()
        }
    }

    /// The image cache directory, defaulting to `<data_dir>/image-cache`.
    pub fn image_cache_dir(&self) -> PathBuf {
        if self.image_cache.dir.as_os_str().is_empty() {
            self.data_dir.join("image-cache")
        } else {
            self.image_cache.dir.clone()
        }
    }

    /// The directories `file://` images may come from: the configured
    /// ones and `<data_dir>/images`.
    pub fn file_url_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = self.image_cache.file_url_allowed_roots.iter().map(PathBuf::from).collect();
        roots.push(self.data_dir.join("images"));
        roots
    }

    /// Where collected ramdisk logs go, defaulting to `<data_dir>/deploy-logs`.
    pub fn deploy_logs_dir(&self) -> PathBuf {
        if self.agent.deploy_logs_local_path.as_os_str().is_empty() {
            self.data_dir.join("deploy-logs")
        } else {
            self.agent.deploy_logs_local_path.clone()
        }
    }

    /// The conductor id, defaulting to the host name.
    pub fn conductor_id(&self) -> String {
        if !self.conductor.id.is_empty() {
            return self.conductor.id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ferric-conductor".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_past_30_days_are_refused_by_name() {
        for (key, unit_max) in [
            ("conductor.drain_timeout_ms", 2_592_000_000u64),
            ("membership.lease_ttl_secs", 2_592_000),
            ("deploy.deploy_helper_images_ttl", 43_200),
        ] {
            let (section, name) = key.split_once('.').unwrap();
            let at = |v: u64| super::Config::load(None, serde_json::json!({ section: { name: v } }));
            let err = at(u64::MAX).expect_err(key).to_string();
            assert!(err.contains(key) && err.contains("30 days"), "{err}");
            let err = at(unit_max + 1).expect_err(key).to_string();
            assert!(err.contains(&format!("at most {unit_max}")), "{err}");
            at(unit_max).unwrap_or_else(|e| panic!("{key} = {unit_max} is 30 days: {e}"));
        }
        // every duration key is listed, and each names a real key
        let cfg = super::Config::default();
        let json = serde_json::to_value(&cfg).unwrap();
        for (key, _, _) in cfg.durations() {
            let (section, name) = key.split_once('.').unwrap();
            assert!(json[section].get(name).is_some(), "{key} is not a configuration key");
        }
    }

    use super::*;

    #[test]
    fn api_bounds_are_refused_by_name() {
        let api = |v: serde_json::Value| Config::load(None, serde_json::json!({ "api": v }));
        let err =
            api(serde_json::json!({"request_deadline_ms": 5000, "request_timeout_ms": 5000})).unwrap_err().to_string();
        assert!(err.contains("api.request_timeout_ms") && err.contains("api.request_deadline_ms"), "{err}");
        api(serde_json::json!({"request_deadline_ms": 5000, "request_timeout_ms": 5001})).expect("longer is fine");
        let err = api(serde_json::json!({"max_node_document_bytes": 1024})).unwrap_err().to_string();
        assert!(err.contains("api.max_node_document_bytes"), "{err}");
        let half = crate::rpc::MAX_MESSAGE_BYTES / 2;
        api(serde_json::json!({"max_node_document_bytes": half})).expect("half the message limit");
        let err = api(serde_json::json!({"max_node_document_bytes": half + 1})).unwrap_err().to_string();
        assert!(err.contains("half"), "{err}");
        for key in ["max_concurrent_requests", "header_read_timeout_ms"] {
            let err = api(serde_json::json!({ key: 0 })).unwrap_err().to_string();
            assert!(err.contains(&format!("api.{key}")), "{err}");
        }
        let cfg = Config::default();
        assert!(
            cfg.api.max_node_document_bytes > 64 * 1024 * 1024,
            "a node must hold a config drive of Ironic's largest size (64 MiB)"
        );
    }

    #[test]
    fn debug_output_shows_no_configured_secret() {
        let cfg = Config::load(
            None,
            serde_json::json!({
                "database": {"url": "postgres://ferric:db-pass-1@db:5432/ferric"},
                "conductor": {"cluster_secret": "cluster-secret-0123456789"},
                "swift": {"key": "swift-key-2", "auth_token": "swift-token-3", "temp_url_key": "temp-url-key-4"},
                "membership": {"etcd_username": "ferric", "etcd_password": "etcd-pass-5"},
            }),
        )
        .unwrap();
        let shown = format!("{cfg:?} {cfg:#?}");
        for secret in ["db-pass-1", "cluster-secret", "swift-key-2", "swift-token-3", "temp-url-key-4", "etcd-pass-5"] {
            assert!(!shown.contains(secret), "{secret} printed by Debug");
        }
        assert!(shown.contains("etcd_username: \"ferric\""), "the rest still prints");
        // what uses them reads them whole
        assert_eq!(cfg.database_url(), "postgres://ferric:db-pass-1@db:5432/ferric");
        assert_eq!(cfg.membership.etcd_password.expose(), "etcd-pass-5");
    }

    #[test]
    fn tls_keys_that_go_together_are_refused_apart_by_name() {
        let load = |v: serde_json::Value| Config::load(None, v).map(|_| ()).map_err(|e| e.to_string());
        let e = load(serde_json::json!({"api": {"tls_cert_file": "/c.pem"}})).unwrap_err();
        assert!(e.contains("api.tls_cert_file and api.tls_key_file"), "{e}");
        let e = load(serde_json::json!({"grpc": {"ca_file": "/ca.pem", "cert_file": "/c.pem"}})).unwrap_err();
        assert!(e.contains("grpc.ca_file, grpc.cert_file and grpc.key_file"), "{e}");
        let e = load(serde_json::json!({"conductor": {"http_tls_key_file": "/k.pem"}})).unwrap_err();
        assert!(e.contains("conductor.http_tls_cert_file"), "{e}");
        let e =
            load(serde_json::json!({"membership": {"etcd_ca_file": "/ca.pem", "etcd_endpoints": ["http://e:2379"]}}))
                .unwrap_err();
        assert!(e.contains("http://e:2379") && e.contains("https://"), "{e}");
        let e = load(serde_json::json!({"membership": {"etcd_cert_file": "/c", "etcd_key_file": "/k"}})).unwrap_err();
        assert!(e.contains("membership.etcd_ca_file"), "{e}");
        let e = load(serde_json::json!({"membership": {"etcd_password": "x"}})).unwrap_err();
        assert!(e.contains("etcd_username"), "{e}");
        let grpc = serde_json::json!({"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"});
        load(serde_json::json!({ "grpc": grpc })).expect("all three");
        let e = load(serde_json::json!({"grpc": grpc, "conductor": {"grpc_url": "http://c1:6391"}})).unwrap_err();
        assert!(e.contains("conductor.grpc_url http://c1:6391 is plaintext"), "{e}");
        load(serde_json::json!({"grpc": grpc, "conductor": {"grpc_url": "https://c1:6391"}})).expect("https");
    }

    #[test]
    fn layering_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ferric.toml");
        std::fs::write(&f, "[api]\nlisten = \"127.0.0.1:7000\"\nmax_limit = 50\n[conductor]\nid = \"c-file\"\n")
            .unwrap();
        let flags = serde_json::json!({"conductor": {"id": "c-flag"}});
        let cfg = Config::load(Some(&f), flags).unwrap();
        assert_eq!(cfg.api.listen, "127.0.0.1:7000");
        assert_eq!(cfg.api.max_limit, 50);
        assert_eq!(cfg.conductor.id, "c-flag");
        assert_eq!(cfg.conductor.lock_attempts, 3);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ferric.toml");
        std::fs::write(&f, "[api]\nlisten_addr = \"x\"\n").unwrap();
        let err = Config::load(Some(&f), serde_json::json!({})).unwrap_err().to_string();
        assert!(err.contains("listen_addr"), "{err}");
        // a misspelt key in the environment is named too
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRIC_CONFIG", "ignored.toml");
            jail.set_env("FERRIC_TEST_KNOB", "ignored");
            jail.set_env("FERRIC_API__MAX_LIMIT", "7");
            assert_eq!(Config::load(None, serde_json::json!({})).unwrap().api.max_limit, 7);
            jail.set_env("FERRIC_API__LISTN", "x");
            let err = Config::load(None, serde_json::json!({})).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
        // lists from the environment: comma-separated, or TOML syntax
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRIC_MEMBERSHIP__ETCD_ENDPOINTS", "http://e1:2379, http://e2:2379");
            jail.set_env("FERRIC_CONDUCTOR__ENABLED_HARDWARE_TYPES", "[\"redfish\", \"ilo\"]");
            let cfg = Config::load(None, serde_json::json!({})).unwrap();
            assert_eq!(cfg.membership.etcd_endpoints, ["http://e1:2379", "http://e2:2379"]);
            assert_eq!(cfg.conductor.enabled_hardware_types, ["redfish", "ilo"]);
            jail.set_env("FERRIC_CONDUCTOR__ENABLED_HARDWARE_TYPES", "redfish");
            assert_eq!(
                Config::load(None, serde_json::json!({})).unwrap().conductor.enabled_hardware_types,
                ["redfish"]
            );
            Ok(())
        });
        let err = Config::load(None, serde_json::json!({"membership": {"backend": "zk"}})).unwrap_err().to_string();
        assert!(err.contains("membership.backend"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/ferric.toml")), serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
