//! `berth`: a container registry and peer-to-peer distribution node.
//!
//! This binary only parses the command line, loads configuration, installs the log
//! subscriber and wires the library crates together.

mod config;
mod serve;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Container registry and P2P distribution node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the OCI registry API, metrics and health endpoints.
    Serve(config::ServeArgs),
    /// Verify stored blobs against their checksums (and digests with --full).
    Scrub {
        /// The node's data directory.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
        data_dir: PathBuf,
        /// Re-hash every blob instead of checking per-chunk crc32 only.
        #[arg(long)]
        full: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    install_tracing();
    match cli.command {
        Command::Serve(args) => {
            let config = config::NodeConfig::load(args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("berth-worker")
                .build()?;
            runtime.block_on(serve::run(config))
        }
        Command::Scrub { data_dir, full } => serve::scrub(&data_dir, full),
    }
}

fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
