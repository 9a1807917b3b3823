//! `ferric`: run Ferric. See `ferric --help`.

/// The API renders nodes as trees of small JSON values; mimalloc serves
/// those allocations at a fraction of glibc malloc's cost (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferric_cli::{ApiFlags, CommonFlags, ConductorFlags, DbCmd, LeaseFlags, overrides};
use ferric_common::config::Config;

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
    // the default OpenTelemetry service name: the server's role; `db`
    // commands export nothing
    let service = match &cli.mode {
        Mode::Api { .. } => Some("ferric-api"),
        Mode::Conductor { .. } => Some("ferric-conductor"),
        Mode::AllInOne { .. } => Some("ferric"),
        Mode::Db { .. } => None,
    };
    let run = cfg.clone();
    ferric_cli::run_process(&cfg, service, move |shutdown, hurry| async move {
        match cli.mode {
            Mode::AllInOne { .. } => ferric_cli::run_all_in_one(run, shutdown).await,
            Mode::Api { .. } => ferric_cli::run_api(run, shutdown).await,
            Mode::Conductor { .. } => ferric_cli::run_conductor(run, shutdown, hurry).await,
            Mode::Db { cmd, .. } => ferric_cli::run_db(run, cmd).await,
        }
    })
}
