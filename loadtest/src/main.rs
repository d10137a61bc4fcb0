//! `berth-loadtest` CLI: parses flags into a [`RunConfig`] or fleet config, runs it, prints
//! the table and writes the JSON/SVG files. All logic lives in the library.

use anyhow::Context as _;
use berth_loadtest::auth::Credentials;
use berth_loadtest::config::{parse_duration, parse_size};
use berth_loadtest::{fleet, plot, RunConfig, ScenarioKind, UploadMode};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "berth-loadtest",
    version,
    about = "Load harness for OCI registries (plain HTTP)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// GET manifest by tag, config and layers, like `docker pull`.
    Pull(Common),
    /// Push new images of --layers x --size with --upload-mode.
    Push(Common),
    /// Pulls and pushes mixed by --push-ratio.
    Mixed(Common),
    /// HEAD/GET of tiny blobs and manifest GETs (metadata path).
    Small(Common),
    /// Catalog and tags/list walks following Link pagination.
    List(Common),
    /// Repeated verified GET of one blob of --size.
    BlobGet(Common),
    /// Run any scenario chosen with --scenario.
    Run {
        /// Scenario.
        #[arg(long, value_enum)]
        scenario: ScenarioKind,
        #[command(flatten)]
        common: Common,
    },
    /// Start an origin berth plus N berth nodes and measure a fleet-wide pull.
    Fleet(fleet::FleetArgs),
    /// Plot fleet runs (their `--json` files) into one SVG: nodes done and origin egress
    /// over time.
    FleetPlot {
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
        /// Fleet JSON reports, one series each.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Registry base URL (repeat to compare targets, run interleaved).
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Basic-auth user (also used to fetch bearer tokens).
    #[arg(long, env = "LOADTEST_USER")]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(long, env = "LOADTEST_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Concurrent clients per target.
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Measured time per target (e.g. 10s, 2m). Default 10s unless --requests is given.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Operations per target.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Unmeasured warm-up per target.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Interleaved rounds per target (default 1, or 2 with several targets).
    #[arg(long)]
    rounds: Option<u32>,
    /// Blob/layer size (4KiB, 256MiB, 1GiB...).
    #[arg(short = 's', long, value_parser = parse_size)]
    size: Option<u64>,
    /// Distinct items: images (pull/small), blobs (blob-get), repos (list), images to push.
    #[arg(long)]
    count: Option<u64>,
    /// Layers per image.
    #[arg(long)]
    layers: Option<u32>,
    /// Seed for all generated content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Blob upload mode.
    #[arg(long, value_enum, default_value_t = UploadMode::Put)]
    upload_mode: UploadMode,
    /// PATCH size for --upload-mode chunked.
    #[arg(long, value_parser = parse_size, default_value = "5MiB")]
    chunk_size: u64,
    /// Fraction of mixed operations that are pushes.
    #[arg(long, default_value_t = 0.1)]
    push_ratio: f64,
    /// Page size (n) for list walks.
    #[arg(long, default_value_t = 10)]
    page_size: u32,
    /// Tags per repository for the list scenario.
    #[arg(long, default_value_t = 20)]
    tags: u32,
    /// Blobs in flight within one image pull/push.
    #[arg(long, default_value_t = 3)]
    image_parallelism: usize,
    /// Timeout for a response head and for each body frame.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Repository name prefix.
    #[arg(long, default_value = "loadtest")]
    repo_prefix: String,
    /// Write the full results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write latency-distribution and throughput-over-time charts as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress output on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Exit non-zero if any request failed.
    #[arg(long)]
    fail_on_error: bool,
}

impl Common {
    fn into_config(self, scenario: ScenarioKind) -> anyhow::Result<RunConfig> {
        let credentials = match (self.user, self.password) {
            (Some(user), password) => Some(Credentials {
                user,
                password: password.unwrap_or_default(),
            }),
            (None, Some(_)) => anyhow::bail!("--password given without --user"),
            (None, None) => None,
        };
        Ok(RunConfig {
            scenario,
            targets: self.targets,
            credentials,
            concurrency: self.concurrency,
            duration: self.duration,
            requests: self.requests,
            warmup: self.warmup,
            rounds: self.rounds,
            size: self.size,
            count: self.count,
            layers: self.layers,
            seed: self.seed,
            upload_mode: self.upload_mode,
            chunk_size: self.chunk_size,
            push_ratio: self.push_ratio,
            page_size: self.page_size,
            tags: self.tags,
            image_parallelism: self.image_parallelism,
            timeout: self.timeout,
            repo_prefix: self.repo_prefix,
            progress: !self.quiet,
        })
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    let (scenario, common) = match cli.command {
        Command::Fleet(args) => return run_fleet(args).await,
        Command::FleetPlot { out, reports } => return fleet_plot(&out, &reports),
        Command::Run { scenario, common } => (scenario, common),
        Command::Pull(c) => (ScenarioKind::Pull, c),
        Command::Push(c) => (ScenarioKind::Push, c),
        Command::Mixed(c) => (ScenarioKind::Mixed, c),
        Command::Small(c) => (ScenarioKind::Small, c),
        Command::List(c) => (ScenarioKind::List, c),
        Command::BlobGet(c) => (ScenarioKind::BlobGet, c),
    };
    let (json, svg, fail_on_error) = (
        common.json.clone(),
        common.plot.clone(),
        common.fail_on_error,
    );
    let cfg = common.into_config(scenario)?;
    let report = tokio::select! {
        r = berth_loadtest::run(&cfg) => r.context("load run failed")?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    print!("{}", report.table());
    if let Some(path) = json {
        let body = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = svg {
        std::fs::write(&path, plot::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if fail_on_error && report.total_errors() > 0 {
        anyhow::bail!("{} requests failed", report.total_errors());
    }
    Ok(())
}

fn fleet_plot(out: &std::path::Path, reports: &[PathBuf]) -> anyhow::Result<()> {
    let runs = reports
        .iter()
        .map(|p| {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice::<fleet::FleetReport>(&text)
                .with_context(|| format!("parsing {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(out, plot::render_fleet(&runs))
        .with_context(|| format!("writing {}", out.display()))
}

async fn run_fleet(args: fleet::FleetArgs) -> anyhow::Result<()> {
    let json = args.json.clone();
    let report = fleet::run(args).await.context("fleet run failed")?;
    print!("{}", report.table());
    if let Some(path) = json {
        let body = serde_json::to_vec_pretty(&report).context("serialising the report")?;
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
