//! `ferricctl`: operator CLI for the ring. See `ferricctl --help`.

use clap::{Parser, Subcommand};
use ferric_cli::ctl;
use ferric_common::membership::etcd::EtcdMembership;
use ferric_common::ring::{Member, MemberState};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "ferricctl", version, about = "Ferric operator CLI: the ring, node ownership, what-if rebalancing")]
struct Cli {
    /// etcd endpoints, comma-separated
    #[arg(long, env = "FERRIC_ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// Ferric API base URL (for the node list)
    #[arg(long, env = "FERRIC_API_URL", default_value = "http://127.0.0.1:6385")]
    api: String,
    /// Ring settings; must match the conductors' [membership] settings
    #[arg(long, default_value_t = 16)]
    partition_exponent: u8,
    #[arg(long, default_value_t = 0.02)]
    load_epsilon: f64,
    #[arg(long, default_value_t = 0)]
    replicas: usize,
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
        /// Conductor id
        id: String,
        /// Wait until it is done, showing progress
        #[arg(long)]
        wait: bool,
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
    tokio::runtime::Runtime::new()?.block_on(async move {
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let settings = ctl::settings(cli.partition_exponent, cli.load_epsilon, cli.replicas);
        let m = EtcdMembership::start(cli.etcd_endpoints.clone(), settings, cancel.clone()).await?;
        let ring = m.current();
        match cli.cmd {
            Cmd::Ring { cmd: RingCmd::Show } => {
                let nodes = ctl::fetch_nodes(&cli.api).await?;
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
                        id: id.clone(),
                        incarnation: format!("{id}/simulated"),
                        grpc_url: String::new(),
                        http_url: String::new(),
                        conductor_group: add_group.clone(),
                        hardware_types: hw.clone(),
                        state: MemberState::Active,
                        ring_settings: String::new(),
                        database_id: String::new(),
                    })
                    .collect();
                let nodes = ctl::fetch_nodes(&cli.api).await?;
                print!("{}", ctl::simulate(&ring, &nodes, &remove, &added)?);
            }
            Cmd::Node { cmd: NodeCmd::Owner { node } } => {
                let n = ctl::fetch_node(&cli.api, &node).await?;
                print!("{}", ctl::owner(&ring, &n));
            }
            Cmd::Conductor { cmd: ConductorCmd::Drain { id, wait } } => {
                let member = ring.member(&id).ok_or_else(|| anyhow::anyhow!("no conductor {id:?} in the ring"))?;
                ctl::drain(&member.grpc_url, &id, wait).await?;
            }
        }
        Ok(())
    })
}
