//! `ferric-conductor`: the same as `ferric conductor`. See `ferric-conductor --help`.

/// The API renders nodes as trees of small JSON values; mimalloc serves
/// those allocations at a fraction of glibc malloc's cost (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::Parser;
use ferric_common::config::Config;

#[derive(Parser)]
#[command(name = "ferric-conductor", version, about = "Ferric conductor process (membership in etcd, shared database)")]
struct Cli {
    /// TOML configuration file; FERRIC_<SECTION>__<KEY> variables and flags override it.
    #[arg(long, short, env = "FERRIC_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    common: ferric_cli::CommonFlags,
    #[command(flatten)]
    flags: ferric_cli::ConductorFlags,
    #[command(flatten)]
    lease: ferric_cli::LeaseFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = ferric_cli::overrides(&cli.common, None, Some(&cli.flags), Some(&cli.lease));
    let cfg = Config::load(cli.config.as_deref(), flags)?;
    let run = cfg.clone();
    ferric_cli::run_process(&cfg, Some("ferric-conductor"), move |shutdown, hurry| {
        ferric_cli::run_conductor(run, shutdown, hurry)
    })
}
