//! Fleet mode: one origin `berth` plus N `berth` nodes on loopback; all N pull one image at
//! once; report each node's completion time and the origin's egress.
//!
//! Modes: with `--node-arg`s (e.g. `--node-arg=--upstream --node-arg={origin}`), nodes are
//! started and each pull goes through a node's `/v2/` API, so the node fetches from the
//! origin ("via-nodes"). Without them no node can reach the origin, so N independent clients
//! pull straight from the origin ("direct", the reference shape). Origin egress is read from
//! its Prometheus `/metrics` (`berth_http_response_bytes_total`, summed over labels, after
//! minus before); a registry without that counter reports egress as unavailable.
//!
//! Child processes: every one is started with `kill_on_drop`, and [`run`] kills and reaps
//! them on every exit path, Ctrl-C included. Ports are picked by binding `127.0.0.1:0` and
//! releasing it, which can race with another process on a busy machine; a node that fails to
//! come up is reported with the tail of its log.

use crate::client::{read_small, Call, Client, ClientConfig, ReqBody};
use crate::data::{derive_key, Image, ImageShape};
use crate::error::{Error, ReqError};
use crate::scenario::{ensure_image, ids, pull_image};
use crate::stats::{Live, Recorder};
use http::Method;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Most nodes in a fleet (each is a process with its own data dir on a 2-core box).
pub const NODES_MAX: usize = 256;
/// How long a node gets to answer `GET /v2/`.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest `/metrics` body read.
const METRICS_SIZE_MAX: usize = 16 << 20;
/// The origin's egress counter.
pub const EGRESS_COUNTER: &str = "berth_http_response_bytes_total";
/// Fleet-mode id in content derivation.
const FLEET_ID: u64 = 7;

/// Fleet flags.
#[derive(clap::Args, Clone, Debug)]
pub struct FleetArgs {
    /// The berth binary (default: `berth` next to this executable).
    #[arg(long)]
    pub berth_bin: Option<PathBuf>,
    /// Nodes that pull at once.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Extra argument for every node (repeatable); `{origin}` becomes the origin's URL,
    /// `{p2p_listen}` a per-node libp2p multiaddr on loopback and `{peers}` the
    /// comma-separated multiaddrs of all other nodes (a berth p2p fleet).
    /// With none, clients pull directly from the origin ("direct" mode).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Extra argument for the origin (repeatable).
    #[arg(long = "origin-arg", allow_hyphen_values = true)]
    pub origin_args: Vec<String>,
    /// Layer size.
    #[arg(short = 's', long, value_parser = crate::config::parse_size, default_value = "16MiB")]
    pub size: u64,
    /// Layers in the image.
    #[arg(long, default_value_t = 4)]
    pub layers: u32,
    /// Content seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Blobs in flight per pulling node.
    #[arg(long, default_value_t = 3)]
    pub image_parallelism: usize,
    /// Per-request head/frame timeout.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Deadline for the whole fleet pull.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "10m")]
    pub deadline: Duration,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Pause between all nodes answering and the pull (lets p2p nodes connect).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "0s")]
    pub settle: Duration,
    /// A name for this run in reports and plots (e.g. `p2p` or `no-p2p`).
    #[arg(long, default_value = "")]
    pub label: String,
}

/// One node's pull.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeResult {
    /// Node index.
    pub index: usize,
    /// URL pulled from.
    pub url: String,
    /// Seconds from the common start to completion (or failure).
    pub seconds: f64,
    /// Content bytes received.
    pub bytes: u64,
    /// Failure, if any.
    pub error: Option<String>,
    /// Blob bytes the node got from peers (`berth_blob_bytes_total{source="peer"}`).
    pub peer_bytes: Option<u64>,
    /// Blob bytes the node got from its upstream (`{source="upstream"}`).
    pub upstream_bytes: Option<u64>,
}

/// Fleet results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetReport {
    /// `via-nodes` or `direct`.
    pub mode: String,
    /// Origin URL.
    pub origin: String,
    /// Image content bytes (layers + config + manifest).
    pub image_bytes: u64,
    /// Per-node results, by index.
    pub nodes: Vec<NodeResult>,
    /// Completion-time percentiles over successful nodes, seconds.
    pub p50_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Slowest.
    pub max_s: f64,
    /// Bytes the origin served during the pull, if its `/metrics` has the counter.
    pub origin_egress_bytes: Option<u64>,
    /// `origin_egress_bytes / image_bytes`.
    pub origin_copies: Option<f64>,
    /// The run's `--label`.
    #[serde(default)]
    pub label: String,
    /// Origin egress since the start of the pull, sampled every [`EGRESS_SAMPLE`]:
    /// (seconds, bytes).
    #[serde(default)]
    pub origin_egress_timeline: Vec<(f64, u64)>,
}

/// How often the origin's egress counter is sampled during a fleet pull.
pub const EGRESS_SAMPLE: Duration = Duration::from_millis(250);
/// Most egress samples kept (10 minutes at [`EGRESS_SAMPLE`]).
const EGRESS_SAMPLES_MAX: usize = 2400;

impl FleetReport {
    /// Human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let ok = self.nodes.iter().filter(|n| n.error.is_none()).count();
        let _ = writeln!(
            s,
            "\n== fleet {} ({}) origin {}  {} nodes, {} ok  image {:.1} MB",
            self.label,
            self.mode,
            self.origin,
            self.nodes.len(),
            ok,
            self.image_bytes as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "completion s: p50 {:.3}  p99 {:.3}  max {:.3}",
            self.p50_s, self.p99_s, self.max_s
        );
        match (self.origin_egress_bytes, self.origin_copies) {
            (Some(b), Some(c)) => {
                let _ = writeln!(
                    s,
                    "origin egress: {:.1} MB = {c:.2} image copies",
                    b as f64 / 1e6
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "origin egress: unavailable (no {EGRESS_COUNTER} in /metrics)"
                );
            }
        }
        let sum = |f: fn(&NodeResult) -> Option<u64>| -> Option<u64> {
            self.nodes.iter().map(f).sum::<Option<u64>>()
        };
        if let (Some(p), Some(u)) = (sum(|n| n.peer_bytes), sum(|n| n.upstream_bytes)) {
            let _ = writeln!(
                s,
                "node blob bytes: from peers {:.1} MB, from the origin {:.1} MB",
                p as f64 / 1e6,
                u as f64 / 1e6
            );
        }
        let _ = writeln!(
            s,
            "{:>5} {:>10} {:>12}  url / error",
            "node", "seconds", "MB"
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "{:>5} {:>10.3} {:>12.1}  {}",
                n.index,
                n.seconds,
                n.bytes as f64 / 1e6,
                n.error.as_deref().unwrap_or(&n.url)
            );
        }
        s
    }
}

struct Node {
    url: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Fleet {
    nodes: Vec<Node>,
}

impl Fleet {
    async fn shutdown(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.start_kill();
        }
        for n in &mut self.nodes {
            let _ = tokio::time::timeout(Duration::from_secs(5), n.child.wait()).await;
        }
        self.nodes.clear();
    }
}

/// Runs the fleet experiment; child nodes are killed on every exit path.
pub async fn run(args: FleetArgs) -> Result<FleetReport, Error> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(Error::Config(format!("nodes: must be 1..={NODES_MAX}")));
    }
    if args.layers == 0 || args.layers > crate::config::LAYERS_MAX {
        return Err(Error::Config("layers: must be 1..=128".into()));
    }
    let mut fleet = Fleet::default();
    let res = tokio::select! {
        r = drive(&args, &mut fleet) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Fleet("interrupted".into())),
    };
    fleet.shutdown().await;
    res
}

fn berth_bin(args: &FleetArgs) -> Result<PathBuf, Error> {
    if let Some(p) = &args.berth_bin {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("locating this executable", e))?;
    Ok(exe.with_file_name("berth"))
}

fn client(url: &str, args: &FleetArgs) -> Result<Client, Error> {
    let cfg = ClientConfig {
        pool_idle_per_host: args.image_parallelism,
        timeout: args.timeout,
        credentials: None,
    };
    Client::new(url, &cfg).map_err(|reason| Error::Target {
        url: url.to_owned(),
        reason,
    })
}

async fn drive(args: &FleetArgs, fleet: &mut Fleet) -> Result<FleetReport, Error> {
    let bin = berth_bin(args)?;
    let origin = spawn_node(&bin, &args.origin_args, None, "origin").await?;
    let origin_url = origin.url.clone();
    fleet.nodes.push(origin);
    wait_ready(&fleet.nodes[0], &origin_url, args).await?;
    let origin_client = client(&origin_url, args)?;
    let shape = ImageShape {
        layers: args.layers,
        layer_size: args.size,
    };
    let image = Image::build(derive_key(args.seed, &[ids::PULL, FLEET_ID]), shape);
    let (repo, tag) = ("loadtest/fleet", format!("s{}", args.seed));
    ensure_image(&origin_client, repo, &tag, &image)
        .await
        .map_err(|e| Error::Fleet(format!("pushing the image to the origin: {e}")))?;

    let via_nodes = !args.node_args.is_empty();
    let mut urls = Vec::with_capacity(args.nodes);
    let p2p_addrs: Vec<String> = (0..args.nodes)
        .map(|_| free_port().map(|p| format!("/ip4/127.0.0.1/tcp/{p}")))
        .collect::<Result<_, _>>()?;
    for i in 0..args.nodes {
        if via_nodes {
            let peers: Vec<&str> = p2p_addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.as_str())
                .collect();
            let node_args: Vec<String> = args
                .node_args
                .iter()
                .map(|a| {
                    a.replace("{p2p_listen}", &p2p_addrs[i])
                        .replace("{peers}", &peers.join(","))
                })
                .collect();
            let node = spawn_node(&bin, &node_args, Some(&origin_url), &format!("node{i}")).await?;
            urls.push(node.url.clone());
            fleet.nodes.push(node);
        } else {
            urls.push(origin_url.clone());
        }
    }
    for (n, url) in fleet.nodes.iter().skip(1).zip(&urls) {
        wait_ready(n, url, args).await?;
    }
    tokio::time::sleep(args.settle).await;
    let before = egress(&origin_client).await;
    let start = Instant::now();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = async {
        let mut timeline = Vec::new();
        let base = before.unwrap_or(0);
        while timeline.len() < EGRESS_SAMPLES_MAX {
            if let Some(b) = egress(&origin_client).await {
                timeline.push((start.elapsed().as_secs_f64(), b.saturating_sub(base)));
            }
            tokio::select! {
                _ = tokio::time::sleep(EGRESS_SAMPLE) => {}
                _ = &mut stop_rx => break,
            }
        }
        timeline
    };
    let pulls = async {
        let r = pull_all(args, repo, &tag, &image, &urls).await;
        let _ = stop_tx.send(());
        r
    };
    let (results, mut timeline) = tokio::join!(pulls, sampler);
    let mut results = results?;
    let after = egress(&origin_client).await;
    if let Some(a) = after {
        timeline.push((
            start.elapsed().as_secs_f64(),
            a.saturating_sub(before.unwrap_or(0)),
        ));
    }
    if via_nodes {
        for r in &mut results {
            let Ok(c) = client(&r.url, args) else {
                continue;
            };
            let text = metrics_text(&c).await;
            let get = |src: &str| {
                text.as_deref().and_then(|t| {
                    sum_counter(t, &format!("berth_blob_bytes_total{{source=\"{src}\"}}"))
                })
            };
            r.peer_bytes = get("peer");
            r.upstream_bytes = get("upstream");
        }
    }
    let egress = before.zip(after).map(|(b, a)| a.saturating_sub(b));
    let mut report = summarise(via_nodes, &origin_url, &image, results, egress);
    report.label = args.label.clone();
    report.origin_egress_timeline = timeline;
    Ok(report)
}

async fn pull_all(
    args: &FleetArgs,
    repo: &str,
    tag: &str,
    image: &Image,
    urls: &[String],
) -> Result<Vec<NodeResult>, Error> {
    let clients = urls
        .iter()
        .map(|u| client(u, args))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let pulls = clients.iter().enumerate().map(|(i, c)| async move {
        let mut rec = Recorder::new(Arc::new(Live::default()));
        let r = pull_image(
            c,
            repo,
            tag,
            Some(&image.manifest_digest),
            args.image_parallelism,
            &mut rec,
        )
        .await;
        NodeResult {
            index: i,
            url: c.base().to_owned(),
            seconds: start.elapsed().as_secs_f64(),
            bytes: *r.as_ref().unwrap_or(&0),
            error: r.err().map(|e: ReqError| e.to_string()),
            peer_bytes: None,
            upstream_bytes: None,
        }
    });
    tokio::time::timeout(args.deadline, futures_util::future::join_all(pulls))
        .await
        .map_err(|_| {
            Error::Fleet(format!(
                "fleet pull exceeded --deadline {:?}",
                args.deadline
            ))
        })
}

fn summarise(
    via_nodes: bool,
    origin: &str,
    image: &Image,
    nodes: Vec<NodeResult>,
    egress: Option<u64>,
) -> FleetReport {
    let mut times: Vec<f64> = nodes
        .iter()
        .filter(|n| n.error.is_none())
        .map(|n| n.seconds)
        .collect();
    times.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        if times.is_empty() {
            return 0.0;
        }
        // Nearest-rank percentile: the smallest value with at least q of the samples at or below it.
        let idx = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
        times[idx]
    };
    let image_bytes = image.total_bytes();
    FleetReport {
        mode: if via_nodes { "via-nodes" } else { "direct" }.into(),
        origin: origin.to_owned(),
        image_bytes,
        p50_s: rank(0.5),
        p99_s: rank(0.99),
        max_s: times.last().copied().unwrap_or(0.0),
        origin_copies: egress.map(|b| b as f64 / image_bytes.max(1) as f64),
        origin_egress_bytes: egress,
        nodes,
        label: String::new(),
        origin_egress_timeline: Vec::new(),
    }
}

fn free_port() -> Result<u16, Error> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("picking a port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("picking a port", e))
}

async fn spawn_node(
    bin: &PathBuf,
    extra: &[String],
    origin: Option<&str>,
    name: &str,
) -> Result<Node, Error> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("berth-fleet-{name}-"))
        .tempdir()
        .map_err(|e| Error::io("creating a node data dir", e))?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = dir.path().join("node.log");
    let log_file = std::fs::File::create(&log).map_err(|e| Error::io("creating a node log", e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| Error::io("creating a node log", e))?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .args(["--listen", &listen, "--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra.iter().map(|a| match origin {
            Some(o) => a.replace("{origin}", o),
            None => a.clone(),
        }))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {} ({name})", bin.display()), e))?;
    tracing::info!(node = name, %listen, "started");
    Ok(Node {
        url: format!("http://{listen}"),
        child,
        log,
        _dir: dir,
    })
}

async fn wait_ready(node: &Node, url: &str, args: &FleetArgs) -> Result<(), Error> {
    let c = client(url, args)?;
    let t = Instant::now();
    loop {
        if c.ping().await.is_ok() {
            return Ok(());
        }
        if t.elapsed() > NODE_START_TIMEOUT {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: String = log.lines().rev().take(10).collect::<Vec<_>>().join(" | ");
            return Err(Error::Fleet(format!(
                "{url} not ready after {NODE_START_TIMEOUT:?}; log tail: {tail}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of the egress counter across label sets, or `None` if absent or unreadable.
async fn egress(origin: &Client) -> Option<u64> {
    sum_counter(&metrics_text(origin).await?, EGRESS_COUNTER)
}

/// A registry's `/metrics` text, if it serves one.
async fn metrics_text(origin: &Client) -> Option<String> {
    let call = Call {
        method: Method::GET,
        url: "/metrics",
        headers: &[],
        scope: "",
    };
    let resp = origin.send(&call, &|| ReqBody::Empty).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = read_small(resp, METRICS_SIZE_MAX, origin.timeout())
        .await
        .ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// Sums every sample of `name` in a Prometheus text exposition.
pub fn sum_counter(text: &str, name: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = match rest.chars().next() {
            Some('{') => rest.rfind('}').map(|i| &rest[i + 1..]),
            Some(' ') | Some('\t') => Some(rest),
            _ => None, // a longer metric name sharing the prefix
        };
        let value = rest
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value.filter(|v| v.is_finite() && *v >= 0.0) {
            *total.get_or_insert(0u64) += v as u64;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_counter_over_labels() {
        let text = "# HELP berth_http_response_bytes_total bytes\n\
            # TYPE berth_http_response_bytes_total counter\n\
            berth_http_response_bytes_total{route=\"blob\",status=\"200\"} 1000\n\
            berth_http_response_bytes_total{route=\"manifest\"} 24 1700000000\n\
            berth_http_response_bytes_total_created 5\n\
            other_total 9\n";
        assert_eq!(sum_counter(text, EGRESS_COUNTER), Some(1024));
        assert_eq!(sum_counter("x 1\n", EGRESS_COUNTER), None);
        assert_eq!(
            sum_counter("berth_http_response_bytes_total 3e3\n", EGRESS_COUNTER),
            Some(3000)
        );
    }
}
