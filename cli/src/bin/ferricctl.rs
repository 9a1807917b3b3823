//! `ferricctl`: operator CLI for the ring. See `ferricctl --help`.

use clap::{Parser, Subcommand};
use ferric_cli::ctl;
use ferric_common::config::Config;
use ferric_common::membership::etcd::EtcdMembership;
use ferric_common::ring::{Member, MemberState};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ferricctl",
    version,
    about = "Ferric operator CLI: the ring, node ownership, what-if rebalancing, drain",
    long_about = "Ferric operator CLI: the ring, node ownership, what-if rebalancing, drain.\n\n\
        It reads the same configuration as the servers: --config FILE (or FERRIC_CONFIG) and the \
        FERRIC_<SECTION>__<KEY> variables (FERRIC_MEMBERSHIP__ETCD_ENDPOINTS, FERRIC_API__PUBLIC_URL, ...). \
        Ring settings come from the members' own records in etcd, so what it prints is what the conductors do."
)]
struct Cli {
    /// The servers' TOML configuration file
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// etcd endpoints, comma-separated [default: membership.etcd_endpoints]
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// Ferric API base URL, for the node list [default: api.public_url, else http://<api.listen>]
    #[arg(long)]
    api: Option<String>,
    /// A user of the API's htpasswd file (auth_strategy http_basic); with --os-password
    #[arg(long, env = "OS_USERNAME")]
    os_username: Option<String>,
    #[arg(long, env = "OS_PASSWORD", hide_env_values = true)]
    os_password: Option<String>,
    /// A Keystone token for the API (auth_strategy keystone), e.g. from `openstack token issue`
    #[arg(long, env = "OS_TOKEN", hide_env_values = true)]
    os_token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The ring: members, epoch, nodes per conductor, balance
    Ring {
        #[command(subcommand)]
        cmd: RingCmd,
    },
    /// Node placement
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Conductor operations
    Conductor {
        #[command(subcommand)]
        cmd: ConductorCmd,
    },
}

#[derive(Subcommand)]
enum ConductorCmd {
    /// Take a conductor out of service: it leaves the ring, hands its
    /// operations off at a step boundary, waits until every node it held has
    /// a new owner, then exits. Nothing fails.
    Drain {
        /// Conductor id [default: conductor.id of the configuration, i.e. FERRIC_CONDUCTOR__ID — so a conductor's
        /// own container (the Helm chart's preStop hook) drains itself with no argument]
        id: Option<String>,
        /// Wait until it is done (the process exited), showing progress
        #[arg(long)]
        wait: bool,
        /// Drain even when no other conductor can take its nodes (they have
        /// no owner until one joins)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum RingCmd {
    /// Members, epoch, node count per conductor, balance
    Show,
    /// What would move if conductors were removed and/or added
    Simulate {
        /// Conductor id to remove (repeatable)
        #[arg(long)]
        remove: Vec<String>,
        /// Conductor id to add (repeatable)
        #[arg(long)]
        add: Vec<String>,
        /// Conductor group of the added conductors
        #[arg(long, default_value = "")]
        add_group: String,
        /// Hardware types of the added conductors (default: those of the current members)
        #[arg(long, value_delimiter = ',')]
        add_hardware_types: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Which conductor owns a node (UUID or name), its partition and replicas
    Owner { node: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut flags = serde_json::json!({});
    if let Some(e) = &cli.etcd_endpoints {
        flags["membership"] = serde_json::json!({"etcd_endpoints": e});
    }
    let cfg = Config::load(cli.config.as_deref(), flags)?;
    if cfg.membership.etcd_endpoints.is_empty() {
        anyhow::bail!(
            "no etcd endpoints: give --etcd-endpoints, FERRIC_MEMBERSHIP__ETCD_ENDPOINTS or membership.etcd_endpoints \
             in the --config file"
        );
    }
    ferric_cli::ctl::use_credentials(match (&cli.os_token, &cli.os_username, &cli.os_password) {
        (Some(t), _, _) => ferric_cli::ctl::ApiCredentials::Token(t.clone()),
        (None, Some(u), Some(p)) => ferric_cli::ctl::ApiCredentials::Basic { username: u.clone(), password: p.clone() },
        _ => ferric_cli::ctl::ApiCredentials::None,
    });
    let api = cli.api.clone().unwrap_or_else(|| {
        if cfg.api.public_url.is_empty() { format!("http://{}", cfg.api.listen) } else { cfg.api.public_url.clone() }
    });
    tokio::runtime::Runtime::new()?.block_on(async move {
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let configured = ferric_cli::ring_settings(&cfg);
        let m = EtcdMembership::start(
            ferric_common::membership::etcd::EtcdEndpoints::from_config(&cfg.membership)?,
            configured.clone(),
            ferric_common::membership::etcd::WatchSettings::from_config(&cfg.membership),
            cancel.clone(),
        )
        .await?;
        let ring = ctl::with_members_settings(m.current(), &configured)?;
        match cli.cmd {
            Cmd::Ring { cmd: RingCmd::Show } => {
                let nodes = ctl::fetch_nodes(&api).await?;
                print!("{}", ctl::show(&ring, &nodes));
            }
            Cmd::Ring { cmd: RingCmd::Simulate { remove, add, add_group, add_hardware_types } } => {
                let hw = if add_hardware_types.is_empty() {
                    let mut all: Vec<String> = ring.members().iter().flat_map(|m| m.hardware_types.clone()).collect();
                    all.sort();
                    all.dedup();
                    all
                } else {
                    add_hardware_types
                };
                let added: Vec<Member> = add
                    .iter()
                    .map(|id| Member {
                        id: id.clone().into(),
                        incarnation: format!("{id}/simulated").into(),
                        grpc_url: String::new(),
                        http_url: String::new(),
                        conductor_group: add_group.clone(),
                        hardware_types: hw.clone(),
                        state: MemberState::Active,
                        ring_settings: String::new(),
                        database_id: String::new(),
                    })
                    .collect();
                let nodes = ctl::fetch_nodes(&api).await?;
                print!(
                    "{}",
                    ctl::simulate(
                        &ring,
                        &nodes,
                        &remove.iter().map(|r| r.as_str().into()).collect::<Vec<_>>(),
                        &added
                    )?
                );
            }
            Cmd::Node { cmd: NodeCmd::Owner { node } } => {
                let n = ctl::fetch_node(&api, &node).await?;
                print!("{}", ctl::owner(&ring, &n));
            }
            Cmd::Conductor { cmd: ConductorCmd::Drain { id, wait, force } } => {
                let id = match id.or_else(|| (!cfg.conductor.id.is_empty()).then(|| cfg.conductor.id.clone())) {
                    Some(id) => id,
                    None => anyhow::bail!(
                        "which conductor? give its id (ferricctl conductor drain ID), or set conductor.id / \
                         FERRIC_CONDUCTOR__ID"
                    ),
                };
                let tls = ferric_common::tls::GrpcTls::from_config(&cfg.grpc);
                ctl::drain(m.subscribe(), &id.into(), wait, force, tls.as_ref()).await?;
            }
        }
        Ok(())
    })
}
