//! The peer layer's wiring: peers first, then the upstream.
//!
//! The principal type is [`PeerSource`], the node's [`ContentSource`] when `[p2p]` is
//! enabled: on a local miss it asks the swarm (Kademlia) who provides the digest, takes the
//! piece SHA-1s from a provider's `.torrent` endpoint, and fetches *different* 1 MiB pieces
//! from several providers at once as HTTP `Range` GETs of `/v2/<repo>/blobs/<digest>`
//! ([`P2pConfig::pieces_in_flight`] at a time). Every piece is checked against its SHA-1
//! before it is used; a peer that sends a bad piece is banned for the process lifetime (log
//! line, `berth_peer_bans_total`) and the piece is fetched elsewhere. With no provider, or
//! when providers fail, pieces come from the upstream (Range GETs when it needs no
//! credentials, else the whole blob). The final sha256 is still checked by
//! `BlobStore::commit` (the registry's write-through).
//!
//! Why HTTP for piece bytes and not a libp2p stream or QUIC: loopback HTTP from the blob
//! store runs at 2.8–3.3 GB/s here, QUIC request-response at ≈ 240 MB/s with a core per side
//! (FIELD-NOTES), and HTTP keeps the registry's `/v2/` authorisation in force for peers, so
//! private content needs no second access-control path.
//!
//! Announcements: every blob in a public repository is announced at start-up and within
//! [`ANNOUNCE_SCAN`] of its commit (a scan of `blobs/`); private blobs never are.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_oci::{Digest, Reference, RepoName};
use berth_registry::source::{
    BoxFuture, ContentSource, FetchedBlob, FetchedManifest, ManifestAnswer, Origin, SourceError,
};
use berth_storage::meta::MetadataStore;
use berth_storage::BlobStore;
use berth_swarm::{Provider, Swarm, SwarmConfig};
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha1::Digest as _;

use crate::upstream::Upstreams;

/// Header marking a request made by a peer's piece or manifest fetch. A node never passes
/// such a request on to its own peers or upstream (no fetch loops between nodes).
pub const PEER_HEADER: &str = "x-berth-peer";

tokio::task_local! {
    /// Set while a request from a peer is handled (see [`PEER_HEADER`]).
    static FROM_PEER: bool;
}

fn from_peer() -> bool {
    FROM_PEER.try_with(|v| *v).unwrap_or(false)
}

/// How often `blobs/` is scanned for blobs to announce.
pub const ANNOUNCE_SCAN: Duration = Duration::from_secs(1);
/// Pieces fetched ahead of the one the client waits for (bounds memory per fetch:
/// this many MiB).
const PIECE_WINDOW: usize = 8;
/// Largest `.torrent` read from a peer.
const TORRENT_SIZE_MAX: usize = 8 << 20;
/// Largest piece length accepted from a peer's torrent.
const PIECE_LEN_MAX: u64 = 16 << 20;
/// Peers for which per-peer counters are kept.
const PEER_STATS_MAX: usize = 4096;
/// Time to connect and get a response head from a peer.
const PEER_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Blob entries remembered by the announcer.
const ANNOUNCED_MAX: usize = berth_swarm::PROVIDED_KEYS_MAX;

/// `[p2p]`: the peer layer (off unless `listen` is set).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen multiaddrs, e.g. `/ip4/127.0.0.1/tcp/4001` (empty: p2p off).
    pub listen: Vec<String>,
    /// Peers to connect to at start, as multiaddrs.
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the local network (multicast; off by default).
    pub mdns: bool,
    /// The registry address told to peers (`host:port`); default: `listen`.
    pub advertise_http: Option<String>,
    /// How long a provider lookup may take before falling back to the upstream.
    pub lookup_timeout_ms: u64,
    /// Pieces fetched from peers at once (different pieces from different peers).
    pub pieces_in_flight: usize,
    /// A piece not received within this time is fetched elsewhere.
    pub piece_timeout_ms: u64,
    /// Bandwidth cap in MiB/s for blob responses and for peer/upstream fetches, each
    /// direction separately (none by default).
    pub rate_limit_mbps: Option<f64>,
    /// Test only: corrupt every ranged blob response (a lying peer).
    pub liar: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            advertise_http: None,
            lookup_timeout_ms: 500,
            pieces_in_flight: 4,
            piece_timeout_ms: 10_000,
            rate_limit_mbps: None,
            liar: false,
        }
    }
}

impl P2pConfig {
    /// Checks ranges; names the field at fault.
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.pieces_in_flight) {
            anyhow::bail!("p2p.pieces_in_flight must be 1..=64");
        }
        if !(10..=60_000).contains(&self.lookup_timeout_ms) {
            anyhow::bail!("p2p.lookup_timeout_ms must be 10..=60000");
        }
        if !(100..=600_000).contains(&self.piece_timeout_ms) {
            anyhow::bail!("p2p.piece_timeout_ms must be 100..=600000");
        }
        if let Some(r) = self.rate_limit_mbps {
            if !(r > 0.0 && r <= 1e6) {
                anyhow::bail!("p2p.rate_limit_mbps must be > 0");
            }
        }
        for a in self.listen.iter().chain(&self.bootstrap) {
            a.parse::<berth_swarm::Addr>()
                .with_context(|| format!("p2p multiaddr {a:?}"))?;
        }
        Ok(())
    }
}

/// A token bucket shared by every transfer in one direction. Debt is allowed (a frame
/// larger than the bucket passes, and the next waits), so frames of any size work.
pub struct RateLimiter {
    bytes_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `mib_per_sec` with a 256 KiB burst.
    pub fn new(mib_per_sec: f64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec: mib_per_sec * 1048576.0,
            state: Mutex::new((256.0 * 1024.0, Instant::now())),
        }
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut s = lock(&self.state);
            let now = Instant::now();
            let burst = 256.0 * 1024.0;
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.bytes_per_sec).min(burst);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.bytes_per_sec)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of the peer layer (rendered into `/metrics`, listed by `/berth/v1/peers`).
#[derive(Default)]
pub struct PeerStats {
    bytes_from: Mutex<HashMap<String, u64>>,
    banned: Mutex<HashSet<String>>,
    bans: AtomicU64,
    bad_pieces: AtomicU64,
    upstream_pieces: AtomicU64,
}

impl PeerStats {
    fn add_bytes(&self, peer: &str, n: u64) {
        let mut m = lock(&self.bytes_from);
        if m.contains_key(peer) || m.len() < PEER_STATS_MAX {
            *m.entry(peer.to_owned()).or_default() += n;
        }
    }

    fn is_banned(&self, peer: &str) -> bool {
        lock(&self.banned).contains(peer)
    }

    fn ban(&self, peer: &str, why: &str) {
        let mut b = lock(&self.banned);
        if b.len() < PEER_STATS_MAX && b.insert(peer.to_owned()) {
            self.bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer, reason = why, "peer banned for the process lifetime");
        }
    }

    /// Appends the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP berth_peer_bytes_total Blob bytes received from each peer.\n");
        out.push_str("# TYPE berth_peer_bytes_total counter\n");
        for (peer, n) in lock(&self.bytes_from).iter() {
            let _ = writeln!(out, "berth_peer_bytes_total{{peer=\"{peer}\"}} {n}");
        }
        let c = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        c(
            out,
            "berth_peer_bans_total",
            "Peers banned for sending a bad piece.",
            self.bans.load(Ordering::Relaxed),
        );
        c(
            out,
            "berth_peer_bad_pieces_total",
            "Pieces that failed their SHA-1.",
            self.bad_pieces.load(Ordering::Relaxed),
        );
        c(
            out,
            "berth_peer_upstream_pieces_total",
            "Pieces of peer fetches taken from the upstream.",
            self.upstream_pieces.load(Ordering::Relaxed),
        );
    }
}

/// The running peer layer: the swarm handle, counters and limits.
pub struct P2p {
    /// The swarm handle.
    pub swarm: Swarm,
    /// Counters.
    pub stats: Arc<PeerStats>,
    config: P2pConfig,
    down: Option<Arc<RateLimiter>>,
    /// Limits blob responses (used by [`throttle_layer`]).
    pub up: Option<Arc<RateLimiter>>,
}

impl P2p {
    /// Starts the swarm and the announcer.
    pub fn start(
        config: &P2pConfig,
        http_listen: std::net::SocketAddr,
        blobs: BlobStore,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<Arc<P2p>> {
        let parse = |v: &[String]| -> Result<Vec<berth_swarm::Addr>> {
            v.iter()
                .map(|a| a.parse().with_context(|| format!("p2p multiaddr {a:?}")))
                .collect()
        };
        let swarm = Swarm::start(SwarmConfig {
            listen: parse(&config.listen)?,
            bootstrap: parse(&config.bootstrap)?,
            mdns: config.mdns,
            http_addr: config
                .advertise_http
                .clone()
                .unwrap_or_else(|| http_listen.to_string()),
        })?;
        tracing::info!(peer = %swarm.local_peer_id(), "p2p started");
        let limiter = |r: Option<f64>| r.map(|r| Arc::new(RateLimiter::new(r)));
        let p2p = Arc::new(P2p {
            swarm: swarm.clone(),
            stats: Arc::default(),
            config: config.clone(),
            down: limiter(config.rate_limit_mbps),
            up: limiter(config.rate_limit_mbps),
        });
        tokio::spawn(tracing::Instrument::instrument(
            announce_loop(swarm, blobs, meta),
            tracing::info_span!("announcer"),
        ));
        Ok(p2p)
    }

    /// Whether a response should be corrupted (test-only liar mode).
    pub fn liar(&self) -> bool {
        self.config.liar
    }
}

/// Scans `blobs/` every [`ANNOUNCE_SCAN`] and announces blobs of public repositories.
async fn announce_loop(swarm: Swarm, blobs: BlobStore, meta: Arc<dyn MetadataStore>) {
    // digest -> announced? (false: private or not linked yet; re-checked every 30 scans)
    let mut seen: HashMap<Digest, bool> = HashMap::new();
    let mut round: u64 = 0;
    loop {
        round += 1;
        let root = blobs.root().to_path_buf();
        let found = tokio::task::spawn_blocking(move || list_blobs(&root))
            .await
            .unwrap_or_default();
        for d in found {
            match seen.get(&d) {
                Some(true) => continue,
                Some(false) if !round.is_multiple_of(30) => continue,
                _ => {}
            }
            if seen.len() >= ANNOUNCED_MAX && !seen.contains_key(&d) {
                break;
            }
            let meta2 = meta.clone();
            let d2 = d.clone();
            let public = tokio::task::spawn_blocking(move || -> bool {
                let Ok(Some((repo, _))) = meta2.any_repo_blob(&d2) else {
                    return false;
                };
                matches!(meta2.repo_info(&repo), Ok(Some(info)) if info.public)
            })
            .await
            .unwrap_or(false);
            let announced = public && swarm.provide(&d.to_string());
            if announced {
                tracing::debug!(digest = %d, "announced");
            }
            seen.insert(d, announced);
        }
        tokio::time::sleep(ANNOUNCE_SCAN).await;
    }
}

/// Digests stored under `root/blobs/` (bounded by [`ANNOUNCED_MAX`]).
fn list_blobs(root: &std::path::Path) -> Vec<Digest> {
    let mut out = Vec::new();
    for alg in ["sha256", "sha512"] {
        let Ok(shards) = std::fs::read_dir(root.join("blobs").join(alg)) else {
            continue;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                if out.len() >= ANNOUNCED_MAX {
                    return out;
                }
                let name = f.file_name();
                let Some(name) = name.to_str() else { continue };
                if let Ok(d) = Digest::parse(&format!("{alg}:{name}")) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Piece layout and hashes of one blob, from a `.torrent`.
#[derive(Debug, PartialEq, Eq)]
struct PieceInfo {
    len: u64,
    piece_len: u64,
    hashes: Vec<[u8; 20]>,
}

/// Reads `length`, `piece length` and `pieces` out of a single-file `.torrent`.
fn parse_torrent(t: &[u8]) -> Option<PieceInfo> {
    fn int_after(t: &[u8], key: &[u8]) -> Option<u64> {
        let at = find(t, key)? + key.len();
        let rest = t.get(at..)?.strip_prefix(b"i")?;
        let end = rest.iter().position(|&b| b == b'e')?;
        std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()
    }
    fn find(t: &[u8], needle: &[u8]) -> Option<usize> {
        t.windows(needle.len()).position(|w| w == needle)
    }
    let len = int_after(t, b"6:length")?;
    let piece_len = int_after(t, b"12:piece length")?;
    let at = find(t, b"6:pieces")? + 8;
    let rest = t.get(at..)?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let n: usize = std::str::from_utf8(rest.get(..colon)?).ok()?.parse().ok()?;
    let flat = rest.get(colon + 1..colon + 1 + n)?;
    if !n.is_multiple_of(20) || piece_len == 0 || piece_len > PIECE_LEN_MAX {
        return None;
    }
    let hashes: Vec<[u8; 20]> = flat
        .chunks_exact(20)
        .filter_map(|c| c.try_into().ok())
        .collect();
    if hashes.len() as u64 != len.div_ceil(piece_len) {
        return None;
    }
    Some(PieceInfo {
        len,
        piece_len,
        hashes,
    })
}

/// Why one piece fetch failed.
enum PieceError {
    /// The bytes did not match the piece hash: ban the sender.
    Bad,
    /// Transport failure, timeout, refusal: try elsewhere.
    Failed(String),
}

/// The node's content source with p2p: peers first, then the upstream.
pub struct PeerSource {
    p2p: Arc<P2p>,
    upstream: Option<Arc<Upstreams>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl PeerSource {
    /// Peers via `p2p`, then `upstream` (if any).
    pub fn new(p2p: Arc<P2p>, upstream: Option<Arc<Upstreams>>) -> PeerSource {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PEER_HEAD_TIMEOUT));
        PeerSource {
            p2p,
            upstream,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn get(
        &self,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let mut req = Request::get(url)
            .header("user-agent", "berth-peer")
            .header(PEER_HEADER, "1");
        if let Some((s, e)) = range {
            req = req.header("range", format!("bytes={s}-{e}"));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(PEER_HEAD_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: timed out")),
        }
    }

    async fn torrent(&self, base: &str, repo: &RepoName, digest: &Digest) -> Option<PieceInfo> {
        let url = format!("{base}/berth/v1/torrent/{repo}/blobs/{digest}");
        let resp = self.get(&url, None).await.ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let body = http_body_util::Limited::new(resp.into_body(), TORRENT_SIZE_MAX);
        let bytes = tokio::time::timeout(PEER_HEAD_TIMEOUT, body.collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        parse_torrent(&bytes)
    }

    /// One piece from `base`, checked against `hash`.
    async fn piece(
        &self,
        base: &str,
        repo: &RepoName,
        digest: &Digest,
        (start, end): (u64, u64),
        hash: [u8; 20],
        timeout: Duration,
    ) -> Result<Bytes, PieceError> {
        let work = async {
            let url = format!("{base}/v2/{repo}/blobs/{digest}");
            let resp = self
                .get(&url, Some((start, end)))
                .await
                .map_err(PieceError::Failed)?;
            let want = (end - start + 1) as usize;
            // 200 is acceptable only when the "range" is the whole blob.
            if resp.status() != StatusCode::PARTIAL_CONTENT
                && !(resp.status() == StatusCode::OK && start == 0)
            {
                return Err(PieceError::Failed(format!("{url}: {}", resp.status())));
            }
            let mut body = resp.into_body();
            let mut buf = BytesMut::with_capacity(want);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| PieceError::Failed(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > want {
                        return Err(PieceError::Bad);
                    }
                    if let Some(l) = &self.p2p.down {
                        l.take(data.len()).await;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            if buf.len() != want {
                return Err(PieceError::Failed(format!("{url}: short piece")));
            }
            let got: [u8; 20] = sha1::Sha1::digest(&buf).into();
            if got != hash {
                return Err(PieceError::Bad);
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PieceError::Failed("piece timed out".into())),
        }
    }

    /// Starts a swarm fetch, or `None` when no usable provider answered.
    async fn from_peers(
        self: &Arc<Self>,
        ns: Option<&str>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Option<FetchedBlob> {
        let timeout = Duration::from_millis(self.p2p.config.lookup_timeout_ms);
        let providers: Vec<Provider> = self
            .p2p
            .swarm
            .providers(&digest.to_string(), timeout)
            .await
            .into_iter()
            .filter(|p| p.http_addr.is_some() && !self.p2p.stats.is_banned(&p.peer.to_string()))
            .collect();
        tracing::debug!(%digest, providers = providers.len(), "provider lookup");
        if providers.is_empty() {
            return None;
        }
        let mut info = None;
        for p in providers.iter().take(3) {
            let base = format!("http://{}", p.http_addr.as_deref().unwrap_or_default());
            if let Some(i) = self.torrent(&base, repo, digest).await {
                info = Some(i);
                break;
            }
        }
        let info = info?;
        let upstream_base = self.upstream.as_ref().and_then(|u| u.plain_base(ns));
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let len = info.len;
        let me = self.clone();
        let (repo2, d2) = (repo.clone(), digest.clone());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Err(e) = me
                    .pieces(providers, upstream_base, &repo2, &d2, info, &tx)
                    .await
                {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                }
            },
            tracing::info_span!("swarm_fetch", digest = %digest),
        ));
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Some(FetchedBlob {
            origin: Origin::Peer,
            len: Some(len),
            body: Box::pin(body),
        })
    }

    /// Fetches every piece (different pieces from different peers), emitting them in order.
    async fn pieces(
        &self,
        providers: Vec<Provider>,
        upstream_base: Option<String>,
        repo: &RepoName,
        digest: &Digest,
        info: PieceInfo,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), String> {
        let n = info.hashes.len();
        let timeout = Duration::from_millis(self.p2p.config.piece_timeout_ms);
        let in_flight_max = self.p2p.config.pieces_in_flight;
        // (peer id, base URL, pieces in flight, alive for this fetch)
        let mut peers: Vec<(String, String, usize, bool)> = providers
            .into_iter()
            .filter_map(|p| {
                Some((
                    p.peer.to_string(),
                    format!("http://{}", p.http_addr?),
                    0,
                    true,
                ))
            })
            .collect();
        let mut todo: VecDeque<usize> = (0..n).collect();
        let mut attempts = vec![0usize; n];
        let mut ready: BTreeMap<usize, Bytes> = BTreeMap::new();
        let mut next_emit = 0usize;
        let mut running = FuturesUnordered::new();
        while next_emit < n {
            // Schedule: the least-loaded live peer gets the next piece inside the window.
            while running.len() < in_flight_max {
                let Some(&idx) = todo.front() else { break };
                if idx >= next_emit + PIECE_WINDOW {
                    break;
                }
                let live = peers
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, p)| p.3 && !self.p2p.stats.is_banned(&p.0))
                    .min_by_key(|(_, p)| p.2);
                let (who, base) = match live {
                    Some((i, p)) if attempts[idx] <= peers_len_hint(n) => {
                        p.2 += 1;
                        (Some(i), p.1.clone())
                    }
                    _ => match &upstream_base {
                        Some(b) => (None, b.clone()),
                        None => return Err(format!("piece {idx}: no peer or upstream left")),
                    },
                };
                todo.pop_front();
                attempts[idx] += 1;
                if attempts[idx] > 8 {
                    return Err(format!("piece {idx}: too many attempts"));
                }
                let start = idx as u64 * info.piece_len;
                let end = (start + info.piece_len).min(info.len) - 1;
                let hash = info.hashes[idx];
                let base2 = base;
                running.push(async move {
                    let r = self
                        .piece(&base2, repo, digest, (start, end), hash, timeout)
                        .await;
                    (idx, who, r)
                });
            }
            let Some((idx, who, result)) = running.next().await else {
                return Err("no piece could be scheduled".into());
            };
            if let Some(i) = who {
                peers[i].2 = peers[i].2.saturating_sub(1);
            }
            match (result, who) {
                (Ok(bytes), Some(i)) => {
                    self.p2p.stats.add_bytes(&peers[i].0, bytes.len() as u64);
                    ready.insert(idx, bytes);
                }
                (Ok(bytes), None) => {
                    self.p2p
                        .stats
                        .upstream_pieces
                        .fetch_add(1, Ordering::Relaxed);
                    ready.insert(idx, bytes);
                }
                (Err(PieceError::Bad), Some(i)) => {
                    self.p2p.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                    self.p2p.stats.ban(
                        &peers[i].0,
                        &format!("piece {idx} of {digest} failed its SHA-1"),
                    );
                    peers[i].3 = false;
                    todo.push_front(idx);
                }
                (Err(PieceError::Failed(why)), Some(i)) => {
                    tracing::info!(peer = %peers[i].0, piece = idx, error = %why, "peer dropped from this fetch");
                    peers[i].3 = false;
                    todo.push_front(idx);
                }
                (Err(PieceError::Bad), None) => {
                    return Err(format!("upstream piece {idx} failed its SHA-1"))
                }
                (Err(PieceError::Failed(why)), None) => return Err(why),
            }
            // Keep the retry queue ordered so the window logic holds.
            todo.make_contiguous().sort_unstable();
            while let Some(bytes) = ready.remove(&next_emit) {
                if tx.send(Ok(bytes)).await.is_err() {
                    return Ok(()); // the registry gave up on this fetch
                }
                next_emit += 1;
            }
        }
        Ok(())
    }
}

impl PeerSource {
    /// A manifest from connected peers, when the upstream is unavailable. The registry checks
    /// the bytes against the claimed (or requested) digest; a tag's answer is as trusted as a
    /// cached one.
    async fn manifest_from_peers(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Option<FetchedManifest> {
        let peers = self.p2p.swarm.peers();
        let candidates = peers
            .iter()
            .filter(|(id, i)| i.connected && !self.p2p.stats.is_banned(&id.to_string()))
            .filter_map(|(_, i)| i.http_addr.clone())
            .take(MANIFEST_PEERS_MAX);
        for http_addr in candidates {
            let url = format!("http://{http_addr}/v2/{repo}/manifests/{reference}");
            let mut req = Request::get(&url).header("accept", MANIFEST_ACCEPT);
            req = req
                .header("user-agent", "berth-peer")
                .header(PEER_HEADER, "1");
            let Ok(req) = req.body(Empty::new()) else {
                continue;
            };
            let Ok(Ok(resp)) =
                tokio::time::timeout(PEER_HEAD_TIMEOUT, self.client.request(req)).await
            else {
                continue;
            };
            if resp.status() != StatusCode::OK {
                continue;
            }
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let claimed = header("docker-content-digest").and_then(|d| Digest::parse(&d).ok());
            let media_type = header("content-type").unwrap_or_default();
            let body = http_body_util::Limited::new(resp.into_body(), MANIFEST_SIZE_MAX);
            let Ok(Ok(content)) = tokio::time::timeout(PEER_HEAD_TIMEOUT, body.collect()).await
            else {
                continue;
            };
            let digest = match (reference, claimed) {
                (Reference::Digest(d), _) => d.clone(),
                (_, Some(d)) => d,
                _ => continue,
            };
            tracing::info!(%repo, %reference, peer = %http_addr, "manifest from a peer");
            return Some(FetchedManifest {
                digest,
                media_type,
                content: content.to_bytes(),
            });
        }
        None
    }
}

/// Peers asked for a manifest when the upstream is down.
const MANIFEST_PEERS_MAX: usize = 4;
/// Largest manifest read from a peer.
const MANIFEST_SIZE_MAX: usize = 4 << 20;
/// Media types asked for (all of them, as the upstream client does).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Attempts per piece on peers before the upstream is used.
fn peers_len_hint(_pieces: usize) -> usize {
    3
}

/// The [`ContentSource`] chain: peers, then the upstream.
pub struct Chain(pub Arc<PeerSource>);

impl ContentSource for Chain {
    fn blob<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<FetchedBlob>, SourceError>> {
        Box::pin(async move {
            if from_peer() {
                // A peer asked for a blob we do not hold: say so, fetch nothing.
                return Ok(None);
            }
            if let Some(f) = self.0.from_peers(ns, repo, digest).await {
                return Ok(Some(f));
            }
            let Some(up) = &self.0.upstream else {
                return Ok(None);
            };
            let fetched = up.blob(ns, repo, digest).await?;
            Ok(fetched.map(|f| match self.0.p2p.down.clone() {
                None => f,
                Some(l) => FetchedBlob {
                    body: Box::pin(f.body.then(move |item| {
                        let l = l.clone();
                        async move {
                            if let Ok(b) = &item {
                                l.take(b.len()).await;
                            }
                            item
                        }
                    })),
                    ..f
                },
            }))
        })
    }

    fn manifest<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        reference: &'a Reference,
        cached: Option<&'a Digest>,
    ) -> BoxFuture<'a, Result<ManifestAnswer, SourceError>> {
        Box::pin(async move {
            let first = match &self.0.upstream {
                Some(up) => up.manifest(ns, repo, reference, cached).await,
                None => Err(SourceError::Unavailable("no upstream".into())),
            };
            match first {
                Err(SourceError::Unavailable(why)) if !from_peer() => {
                    match self.0.manifest_from_peers(repo, reference).await {
                        Some(m) => Ok(ManifestAnswer::Fetched(m)),
                        None => Err(SourceError::Unavailable(why)),
                    }
                }
                other => other,
            }
        })
    }
}

/// Middleware: caps blob response bandwidth and, in liar mode, corrupts ranged responses.
pub async fn throttle_layer(
    axum::extract::State(p2p): axum::extract::State<Arc<P2p>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_blob = req.uri().path().starts_with("/v2/") && req.uri().path().contains("/blobs/");
    let ranged = req.headers().contains_key("range");
    let peer = req.headers().contains_key(PEER_HEADER);
    let resp = FROM_PEER.scope(peer, next.run(req)).await;
    if !is_blob || (p2p.up.is_none() && !(p2p.liar() && ranged)) {
        return resp;
    }
    let liar = p2p.liar() && ranged;
    let up = p2p.up.clone();
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().then(move |item| {
        let up = up.clone();
        async move {
            let item = item.map(|b| {
                if liar && !b.is_empty() {
                    let mut v = b.to_vec();
                    v[0] ^= 0xff;
                    Bytes::from(v)
                } else {
                    b
                }
            });
            if let (Some(l), Ok(b)) = (&up, &item) {
                l.take(b.len()).await;
            }
            item
        }
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// `GET /berth/v1/peers`: known peers, their addresses, what they provide, bytes received.
pub async fn peers_handler(
    axum::extract::State(p2p): axum::extract::State<Arc<P2p>>,
) -> axum::response::Response {
    let bytes = lock(&p2p.stats.bytes_from).clone();
    let banned = lock(&p2p.stats.banned).clone();
    let peers: Vec<serde_json::Value> = p2p
        .swarm
        .peers()
        .into_iter()
        .map(|(id, info)| {
            let id = id.to_string();
            serde_json::json!({
                "peer_id": id,
                "addrs": info.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "http_addr": info.http_addr,
                "connected": info.connected,
                "provides": info.provides,
                "bytes_received": bytes.get(&id).copied().unwrap_or(0),
                "banned": banned.contains(&id),
            })
        })
        .collect();
    let body = serde_json::json!({
        "peer_id": p2p.swarm.local_peer_id().to_string(),
        "peers": peers,
    });
    let mut resp = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torrents_written_by_the_registry_parse() {
        let pieces = [[0x61u8; 20], [0x62u8; 20]];
        let t = berth_registry::torrent::encode(&berth_registry::torrent::TorrentSpec {
            name: "ab",
            length: 1048577,
            pieces: &pieces,
            announce: None,
            web_seed: Some("http://h/x"),
        });
        let info = parse_torrent(&t);
        assert_eq!(
            info,
            Some(PieceInfo {
                len: 1048577,
                piece_len: 1048576,
                hashes: pieces.to_vec()
            })
        );
        assert_eq!(parse_torrent(b"d6:lengthi5ee"), None);
        assert_eq!(parse_torrent(b""), None);
    }
}
