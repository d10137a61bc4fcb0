//! Lifecycle commands that open the data directory directly: `berth gc`, `berth tag
//! history|restore|expire`, `berth retention`.
//!
//! Tag and retention commands are safe with the node running (SQLite serialises writers
//! across processes). `berth gc` is for a stopped node only: the per-digest lock that keeps
//! GC from racing a push lives in the node's process; with the node running, use
//! `POST /api/v1/gc` instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use berth_oci::{Digest, RepoName, Tag};
use berth_storage::gc::GcOptions;
use berth_storage::meta::lifecycle::parse_expires_after;
use berth_storage::{BlobStore, MetadataStore, SqliteMetadata};

const DEFAULT_TIME_MACHINE_SECONDS: u64 = 14 * 86_400;

/// `berth gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    /// The (stopped) node's data directory.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    data_dir: PathBuf,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Unreferenced blobs younger than this are kept.
    #[arg(long, default_value_t = 3600)]
    grace_seconds: u64,
    /// Manifests a tag pointed at within this window are kept (time machine).
    #[arg(long, default_value_t = DEFAULT_TIME_MACHINE_SECONDS)]
    time_machine_seconds: u64,
}

/// `berth tag …`.
#[derive(clap::Subcommand)]
pub enum TagCmd {
    /// A tag's history (push, delete, restore, expire, retention), newest first, as JSON.
    History(TagArgs),
    /// Points a tag back at a manifest it had within the time-machine window.
    Restore {
        #[command(flatten)]
        tag: TagArgs,
        /// The manifest digest to restore.
        digest: String,
        /// The time-machine window.
        #[arg(long, default_value_t = DEFAULT_TIME_MACHINE_SECONDS)]
        time_machine_seconds: u64,
    },
    /// Sets (`--in 2h`) or clears (`--clear`) a tag's expiry.
    Expire {
        #[command(flatten)]
        tag: TagArgs,
        /// Expire after this long: a number and a unit s, m, h, d or w.
        #[arg(long = "in", conflicts_with = "clear")]
        after: Option<String>,
        /// Remove the expiry.
        #[arg(long)]
        clear: bool,
    },
}

/// A repository and tag in a data directory.
#[derive(clap::Args)]
pub struct TagArgs {
    /// The repository, e.g. `team/app`.
    repo: String,
    /// The tag.
    tag: String,
    /// The node's data directory.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    data_dir: PathBuf,
}

/// `berth retention`.
#[derive(clap::Args)]
pub struct RetentionArgs {
    /// The repository.
    repo: String,
    /// Delete the tags (default: dry run, report only).
    #[arg(long)]
    apply: bool,
    /// The node's data directory.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    data_dir: PathBuf,
}

fn open_meta(data_dir: &Path) -> Result<SqliteMetadata> {
    let path = data_dir.join("metadata.sqlite");
    anyhow::ensure!(path.exists(), "no metadata database at {}", path.display());
    SqliteMetadata::open(&path).context("opening metadata database")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn gc(args: GcArgs) -> Result<()> {
    let blobs = BlobStore::open(&args.data_dir).context("opening blob store")?;
    let meta = open_meta(&args.data_dir)?;
    let opts = GcOptions {
        grace: Duration::from_secs(args.grace_seconds),
        time_machine: Duration::from_secs(args.time_machine_seconds),
        dry_run: args.dry_run,
    };
    let report = berth_storage::gc::collect(&blobs, &meta, &opts).context("collecting garbage")?;
    print_json(&report)
}

fn parse_tag(a: &TagArgs) -> Result<(RepoName, Tag, SqliteMetadata)> {
    let repo = RepoName::parse(&a.repo).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tag = Tag::parse(&a.tag).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((repo, tag, open_meta(&a.data_dir)?))
}

pub fn tag(cmd: TagCmd) -> Result<()> {
    match cmd {
        TagCmd::History(a) => {
            let (repo, tag, meta) = parse_tag(&a)?;
            print_json(&meta.tag_history(&repo, &tag, 1000)?)
        }
        TagCmd::Restore {
            tag: a,
            digest,
            time_machine_seconds,
        } => {
            let (repo, tag, meta) = parse_tag(&a)?;
            let digest = Digest::parse(&digest).map_err(|e| anyhow::anyhow!("{e}"))?;
            let since = now_ms() - (time_machine_seconds as i64) * 1000;
            meta.restore_tag(&repo, &tag, &digest, since)?;
            println!("{repo}:{tag} -> {digest}");
            Ok(())
        }
        TagCmd::Expire {
            tag: a,
            after,
            clear,
        } => {
            let (repo, tag, meta) = parse_tag(&a)?;
            let at = match (after, clear) {
                (Some(v), false) => Some(
                    now_ms()
                        + parse_expires_after(&v).with_context(|| {
                            format!("--in {v:?}: expected e.g. 30s, 5m, 2h, 1d, 1w")
                        })?,
                ),
                (None, true) => None,
                _ => anyhow::bail!("give --in DURATION or --clear"),
            };
            anyhow::ensure!(meta.set_tag_expiry(&repo, &tag, at)?, "no tag {repo}:{tag}");
            println!("{repo}:{tag} expires_ms={at:?}");
            Ok(())
        }
    }
}

pub fn retention(args: RetentionArgs) -> Result<()> {
    let repo = RepoName::parse(&args.repo).map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = open_meta(&args.data_dir)?;
    let report = berth_storage::retention::apply(&meta, &repo, now_ms(), !args.apply)?;
    print_json(&report)
}
