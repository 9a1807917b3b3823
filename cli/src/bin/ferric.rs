//! `ferric`: run Ferric. See `ferric --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferric_common::config::{Config, init_logging};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ferric",
    version,
    about = "Ferric: bare-metal provisioning with an Ironic-compatible API"
)]
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
        /// Address of the Ironic API [default: 127.0.0.1:6385]
        #[arg(long)]
        listen: Option<String>,
        /// Directory for the SQLite database and local state [default: .ferric]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Database URL (sqlite://PATH or postgres://...) [default: sqlite://<data-dir>/ferric.sqlite]
        #[arg(long)]
        database_url: Option<String>,
        /// Conductor id [default: the host name]
        #[arg(long)]
        conductor_id: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = Map::new();
    match &cli.mode {
        Mode::AllInOne {
            listen,
            data_dir,
            database_url,
            conductor_id,
        } => {
            if let Some(l) = listen {
                overrides.insert("api".into(), json!({"listen": l}));
            }
            if let Some(d) = data_dir {
                overrides.insert("data_dir".into(), json!(d));
            }
            if let Some(u) = database_url {
                overrides.insert("database".into(), json!({"url": u}));
            }
            if let Some(c) = conductor_id {
                overrides.insert("conductor".into(), json!({"id": c}));
            }
        }
    }
    let cfg = Config::load(cli.config.as_deref(), Value::Object(overrides))?;
    init_logging(&cfg.log);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        ferric_cli::cancel_on_signals(shutdown.clone());
        match cli.mode {
            Mode::AllInOne { .. } => ferric_cli::run_all_in_one(cfg, shutdown).await,
        }
    })
}
