//! `ferric`: run Ferric. See `ferric --help`.

/// The API renders nodes as trees of small JSON values; mimalloc serves
/// those allocations at a fraction of glibc malloc's cost (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferric_cli::{ApiFlags, CommonFlags, ConductorFlags, DbCmd, LeaseFlags, overrides};
use ferric_common::config::{Config, init_logging};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "ferric", version, about = "Ferric: bare-metal provisioning with an Ironic-compatible API")]
struct Cli {
    /// TOML configuration file. Every key can also be set as
    /// FERRIC_<SECTION>__<KEY> (e.g. FERRIC_DATABASE__URL); flags win over both.
    #[arg(long, short, global = true, env = "FERRIC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// API and one conductor in one process, SQLite under the data dir,
    /// in-process membership. Listens on 127.0.0.1:6385 by default.
    AllInOne {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        api: ApiFlags,
        #[command(flatten)]
        conductor: ConductorFlags,
    },
    /// A stateless API process (needs etcd and a shared database). Same as `ferric-api`.
    Api {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// A conductor process (needs etcd and a shared database). Same as `ferric-conductor`.
    Conductor {
        #[command(flatten)]
        common: CommonFlags,
        #[command(flatten)]
        conductor: ConductorFlags,
        #[command(flatten)]
        lease: LeaseFlags,
    },
    /// The database schema: `migrate` (the Helm chart's migration Job), `status`, `check [--wait SECS]`
    Db {
        #[command(flatten)]
        common: CommonFlags,
        #[command(subcommand)]
        cmd: DbCmd,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = match &cli.mode {
        Mode::AllInOne { common, api, conductor } => overrides(common, Some(api), Some(conductor), None),
        Mode::Api { common, api } => overrides(common, Some(api), None, None),
        Mode::Conductor { common, conductor, lease } => overrides(common, None, Some(conductor), Some(lease)),
        Mode::Db { common, .. } => overrides(common, None, None, None),
    };
    let cfg = Config::load(cli.config.as_deref(), flags)?;
    init_logging(&cfg.log);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let hurry = CancellationToken::new();
        ferric_cli::cancel_on_signals(shutdown.clone(), hurry.clone());
        match cli.mode {
            Mode::AllInOne { .. } => ferric_cli::run_all_in_one(cfg, shutdown).await,
            Mode::Api { .. } => ferric_cli::run_api(cfg, shutdown).await,
            Mode::Conductor { .. } => ferric_cli::run_conductor(cfg, shutdown, hurry).await,
            Mode::Db { cmd, .. } => ferric_cli::run_db(cfg, cmd).await,
        }
    })
}
