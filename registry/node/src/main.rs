//! `berth`: a container registry and peer-to-peer distribution node.
//!
//! This binary only parses the command line, loads configuration, installs the log
//! subscriber and wires the library crates together.

mod admin;
mod bittorrent;
mod config;
mod identity;
mod mirror;
mod p2p;
mod peers_cmd;
mod pieces;
mod serve;
mod transcode;
mod upstream;

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
    /// Convert the layers of a local OCI layout directory offline (zstd, gzip or none).
    Transcode {
        /// Target compression: zstd, gzip or none.
        #[arg(long, default_value = "zstd")]
        to: String,
        /// The source OCI layout directory.
        input: PathBuf,
        /// The new OCI layout directory.
        output: PathBuf,
    },
    /// Verify stored blobs against their checksums (and digests with --full).
    Scrub {
        /// The node's data directory.
        #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
        data_dir: PathBuf,
        /// Re-hash every blob instead of checking per-chunk crc32 only.
        #[arg(long)]
        full: bool,
        /// Only report corrupt blobs; leave them in place (default: move them to
        /// `quarantine/`, so they are never served and the next push stores a good copy).
        #[arg(long)]
        no_quarantine: bool,
        /// Disk I/O engine: auto, io_uring or std.
        #[arg(long, env = "BERTH_IO_ENGINE", default_value = "auto")]
        io_engine: berth_storage::IoEngineChoice,
    },
    /// Collect garbage in a stopped node's data directory (running node: POST /api/v1/gc).
    Gc(admin::GcArgs),
    /// Tag history, restore (time machine) and expiry.
    Tag {
        #[command(subcommand)]
        cmd: admin::TagCmd,
    },
    /// Apply (or with no --apply, report) a repository's retention policy.
    Retention(admin::RetentionArgs),
    /// Identity administration: `berth admin bootstrap --data-dir DIR --user NAME`.
    Admin {
        #[command(subcommand)]
        cmd: identity::AdminCmd,
    },
    /// Download a layer over BitTorrent (`.torrent` file or magnet), verify its digest and
    /// store it (`--data-dir` of a stopped node, or `--node URL` of a running one).
    Fetch(bittorrent::FetchArgs),
    /// List a running node's peers: addresses, what they provide, bytes received, bans.
    Peers(peers_cmd::PeersArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    install_tracing();
    match cli.command {
        Command::Serve(args) => {
            let config = config::NodeConfig::load(args)?;
            install_io_engine(config.storage.io_engine)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("berth-worker")
                .build()?;
            runtime.block_on(serve::run(config))
        }
        Command::Transcode { to, input, output } => {
            let to = berth_transcoder::Compression::parse(&to)
                .ok_or_else(|| anyhow::anyhow!("--to must be zstd, gzip or none"))?;
            transcode::run(&input, &output, to, &Default::default())
        }
        Command::Scrub {
            data_dir,
            full,
            no_quarantine,
            io_engine,
        } => {
            install_io_engine(io_engine)?;
            serve::scrub(&data_dir, full, !no_quarantine)
        }
        Command::Gc(args) => admin::gc(args),
        Command::Tag { cmd } => admin::tag(cmd),
        Command::Retention(args) => admin::retention(args),
        Command::Admin { cmd } => identity::admin(cmd),
        Command::Fetch(args) => bittorrent::fetch(args),
        Command::Peers(args) => peers_cmd::run(args),
    }
}

/// Probes and installs the blob I/O engine for every `BlobStore` this process opens; logs the
/// choice (a forced `io_uring` that is unavailable is a start-up error).
fn install_io_engine(choice: berth_storage::IoEngineChoice) -> Result<()> {
    let engine = berth_storage::IoEngine::select(choice)?;
    berth_storage::io::set_default(engine);
    tracing::info!(io_engine = engine.as_str(), configured = ?choice, "blob I/O engine selected");
    Ok(())
}

fn install_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
