//! The peer layer's wiring: peers first, then the upstream.
//!
//! The principal type is [`PeerSource`], the node's [`ContentSource`] when `[p2p]` is
//! enabled: on a local miss it asks the swarm (Kademlia) who provides the digest, takes the
//! piece SHA-1s from a provider's (or a berth upstream's) `.torrent` endpoint, announces the
//! digest at once and fetches *different* 1 MiB pieces from several providers as HTTP
//! `Range` GETs of `/v2/<repo>/blobs/<digest>` ([`P2pConfig::pieces_in_flight`] at a time):
//! the next [`URGENT_PIECES`] of the registry's in-order read first, then the rarest piece,
//! random among equals, each holder's have-bitfield re-read every
//! [`BITS_REFRESH`] from `/berth/v1/pieces/..`, new providers looked up every
//! [`LOOKUP_REFRESH`]. The upstream is asked only for pieces no holder has and no holder is
//! taking from it already (holders publish those too), so N cold nodes starting together
//! fetch each piece from the origin about once and the rest from each other. Verified pieces
//! go to a partial file ([`crate::pieces`]) and are served to peers from there while the
//! fetch runs; the registry receives them in order. Every piece is checked against its
//! SHA-1 before it is used or re-served; a peer that sends a bad piece is banned for the
//! process lifetime (log line, `berth_peer_bans_total`) and the piece is fetched elsewhere.
//! Without piece hashes (no provider, and an upstream that is not a berth node or needs
//! credentials) the whole blob streams from the upstream and is shared once committed. The
//! final sha256 is still checked by `BlobStore::commit` (the registry's write-through).
//!
//! Why HTTP for piece bytes and not a libp2p stream or QUIC: loopback HTTP from the blob
//! store runs at 2.8–3.3 GB/s here, QUIC request-response at ≈ 240 MB/s with a core per side
//! (FIELD-NOTES), and HTTP keeps the registry's `/v2/` authorisation in force for peers, so
//! private content needs no second access-control path.
//!
//! Announcements: a fetch of a public blob is announced when it starts; every blob in a
//! public repository is announced at start-up and within [`ANNOUNCE_SCAN`] of its commit (a
//! scan of `blobs/`); private blobs never are ([`Visibility`]: with `auth.enabled`, the
//! identity store's visibility, which defaults to private).

use std::collections::{HashMap, HashSet};
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

use crate::pieces::{Partial, Partials, PieceInfo, VerifiedPiece, PIECE_HEADER};
use crate::upstream::Upstreams;
use berth_registry::lock;

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
    /// Pieces fetched at once (different pieces from different peers, at most
    /// `HOLDER_IN_FLIGHT_MAX` from one). Default 16: 4 → 16 took a 16-node fleet from 55 to
    /// 44 s (docs/benchmarks.md).
    pub pieces_in_flight: usize,
    /// A piece not received within this time is fetched elsewhere.
    pub piece_timeout_ms: u64,
    /// Bandwidth cap in MiB/s of this node's traffic with other nodes, each direction
    /// separately: blob bytes fetched from peers and upstreams, and blob responses to peers
    /// (`x-berth-peer` requests). Applies with or without the peer layer (none by default).
    pub rate_limit_mbps: Option<f64>,
    /// Bandwidth cap in MiB/s of *all* blob responses (an origin's uplink; none by default).
    pub serve_rate_limit_mbps: Option<f64>,
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
            pieces_in_flight: 16,
            piece_timeout_ms: 10_000,
            rate_limit_mbps: None,
            serve_rate_limit_mbps: None,
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
        for (name, v) in [
            ("p2p.rate_limit_mbps", self.rate_limit_mbps),
            ("p2p.serve_rate_limit_mbps", self.serve_rate_limit_mbps),
        ] {
            if let Some(r) = v {
                if !(r > 0.0 && r <= 1e6) {
                    anyhow::bail!("{name} must be > 0 and at most 1e6");
                }
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

    /// How long bytes offered now would wait: the queue ahead of them (0 when idle).
    pub fn backlog(&self) -> Duration {
        let s = lock(&self.state);
        let now = Instant::now();
        let tokens = s.0 + now.duration_since(s.1).as_secs_f64() * self.bytes_per_sec;
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.bytes_per_sec)
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

/// A limiter of `mib_per_sec`, if set.
pub fn limiter(mib_per_sec: Option<f64>) -> Option<Arc<RateLimiter>> {
    mib_per_sec.map(|r| Arc::new(RateLimiter::new(r)))
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
    /// The cap on blob responses to peers (`rate_limit_mbps`); its backlog is told to peers.
    up: Option<Arc<RateLimiter>>,
    /// Fetches in progress, shared with peers while they run.
    pub partials: Arc<Partials>,
    /// Who may read what anonymously (what may be announced and shared).
    pub visibility: Arc<Visibility>,
    blobs: BlobStore,
}

/// Which repositories anonymous users may read: with `auth.enabled` the identity store's
/// visibility (unset = private), else the metadata store's `public` flag (a repository not
/// created yet is public: without auth everything is readable).
pub struct Visibility {
    meta: Arc<dyn MetadataStore>,
    identity: Option<Arc<dyn berth_storage::meta::identity::IdentityStore>>,
}

impl Visibility {
    /// Opens the identity store at `auth_db` when auth is enabled.
    pub fn open(meta: Arc<dyn MetadataStore>, auth_db: Option<&std::path::Path>) -> Result<Self> {
        let identity = match auth_db {
            Some(path) => Some(Arc::new(
                berth_storage::meta::identity_sqlite::SqliteIdentity::open(path)
                    .map_err(|e| anyhow::anyhow!("opening the identity store: {e}"))?,
            )
                as Arc<dyn berth_storage::meta::identity::IdentityStore>),
            None => None,
        };
        Ok(Visibility { meta, identity })
    }

    /// Whether anonymous users may read `repo`. Blocking; errors count as private.
    pub fn public(&self, repo: &RepoName) -> bool {
        match &self.identity {
            Some(id) => matches!(id.visibility(repo.as_str()), Ok(Some(true))),
            None => match self.meta.repo_info(repo) {
                Ok(Some(info)) => info.public,
                Ok(None) => true,
                Err(_) => false,
            },
        }
    }

    /// Whether a stored blob may be shared: some repository holds it and that one is public
    /// (conservative when a blob is in several). Blocking.
    pub fn blob_public(&self, digest: &Digest) -> bool {
        match self.meta.any_repo_blob(digest) {
            Ok(Some((repo, _))) => self.public(&repo),
            _ => false,
        }
    }
}

impl P2p {
    /// Starts the swarm and the announcer.
    /// `auth_db`: the metadata database when `auth.enabled` (visibility lives there).
    pub fn start(
        config: &P2pConfig,
        http_listen: std::net::SocketAddr,
        blobs: BlobStore,
        meta: Arc<dyn MetadataStore>,
        auth_db: Option<&std::path::Path>,
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
        let visibility = Arc::new(Visibility::open(meta, auth_db)?);
        let partials_dir = blobs.root().join("p2p-partial");
        let partials = Partials::open(partials_dir.clone())
            .with_context(|| format!("preparing {}", partials_dir.display()))?;
        let p2p = Arc::new(P2p {
            swarm: swarm.clone(),
            stats: Arc::default(),
            config: config.clone(),
            down: limiter(config.rate_limit_mbps),
            up: limiter(config.rate_limit_mbps),
            partials: Arc::new(partials),
            visibility: visibility.clone(),
            blobs: blobs.clone(),
        });
        tokio::spawn(tracing::Instrument::instrument(
            announce_loop(swarm, blobs, visibility),
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
async fn announce_loop(swarm: Swarm, blobs: BlobStore, visibility: Arc<Visibility>) {
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
            let (v, d2) = (visibility.clone(), d.clone());
            let public = tokio::task::spawn_blocking(move || v.blob_public(&d2))
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
    if !n.is_multiple_of(20) || piece_len == 0 || piece_len > PIECE_LEN_MAX || len == 0 {
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
    /// The holder does not have this piece yet (`416` + [`PIECE_HEADER`]).
    NotYet,
    /// Transport failure, timeout, refusal: try elsewhere.
    Failed(String),
}

/// What a holder's pieces endpoint said.
enum Bits {
    /// It holds the whole blob; its upload queue in ms.
    Complete { busy_ms: u64 },
    /// Verified pieces, pieces it is taking from the upstream, its upload queue in ms.
    Partial {
        have: Vec<bool>,
        upstream: Vec<bool>,
        busy_ms: u64,
    },
    /// It has nothing for us (fetch failed, private, gone).
    Missing,
}

/// One provider of the blob being fetched, as this fetch sees it.
struct Holder {
    id: String,
    base: String,
    /// `None`: the whole blob.
    have: Option<Vec<bool>>,
    upstream: Vec<bool>,
    in_flight: usize,
    failures: u32,
    alive: bool,
    refreshing: bool,
    /// Whether its bitfield was read at least once.
    known: bool,
    /// Its upload queue when its bitfield was last read (ms a new request would wait).
    busy_ms: u64,
}

impl Holder {
    fn has(&self, i: usize) -> bool {
        match &self.have {
            None => true,
            Some(h) => h.get(i).copied().unwrap_or(false),
        }
    }
}

/// What a fetch waits for.
enum Event {
    Piece(usize, Option<usize>, Result<VerifiedPiece, PieceError>),
    Bits(usize, Bits),
    Lookup(Vec<Provider>),
    Tick,
}

/// A holder whose upload queue is longer than this is asked only for pieces the client's
/// stream needs now (see the holder choice in `fetch`).
const HOLDER_BUSY_SKIP_MS: u64 = 250;
/// Pieces requested from one holder at once.
const HOLDER_IN_FLIGHT_MAX: usize = 1;
/// Pieces requested from the upstream at once while peers are around (all of
/// `pieces_in_flight` when there are none).
const UPSTREAM_IN_FLIGHT_PEERS: usize = 3;
/// How often holders' bitfields are re-read during a fetch.
const BITS_REFRESH: Duration = Duration::from_millis(200);
/// How often providers are looked up again during a fetch (nodes that started later).
const LOOKUP_REFRESH: Duration = Duration::from_secs(2);
/// Pieces right after the registry's read position that are fetched before rarer ones, so
/// that the client's in-order stream keeps moving.
const URGENT_PIECES: usize = 4;
/// How long the client's stream may wait for its next piece before this node takes it from
/// the upstream itself, even though the piece is another co-fetcher's share (see `fetch`).
const SHARE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a fetch leaves the upstream alone after one of its piece requests failed.
const UPSTREAM_PAUSE: Duration = Duration::from_millis(500);
/// The first re-lookup of a fetch (nodes that started at the same moment have announced).
const LOOKUP_FIRST: Duration = Duration::from_millis(300);
/// Holders tracked by one fetch.
const HOLDERS_MAX: usize = berth_swarm::PROVIDERS_MAX;
/// Failures (timeouts, errors) after which a holder is dropped from a fetch.
const HOLDER_FAILURES_MAX: u32 = 3;
/// Attempts per piece before the fetch fails.
const PIECE_ATTEMPTS_MAX: u32 = 12;
/// How long a finished fetch keeps serving its pieces while the registry commits the blob.
const COMMIT_WAIT: Duration = Duration::from_secs(120);

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

    async fn small_body(&self, url: &str, max: usize) -> Option<(StatusCode, Bytes)> {
        let resp = self.get(url, None).await.ok()?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), max);
        let bytes = tokio::time::timeout(PEER_HEAD_TIMEOUT, body.collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        Some((status, bytes))
    }

    async fn torrent(&self, base: &str, repo: &RepoName, digest: &Digest) -> Option<PieceInfo> {
        let url = format!("{base}/berth/v1/torrent/{repo}/blobs/{digest}");
        match self.small_body(&url, TORRENT_SIZE_MAX).await? {
            (StatusCode::OK, bytes) => parse_torrent(&bytes),
            _ => None,
        }
    }

    /// A holder's have-bitfield (`/berth/v1/pieces/..`).
    async fn bits(&self, base: &str, repo: &RepoName, digest: &Digest, n: usize) -> Bits {
        let url = format!("{base}/berth/v1/pieces/{repo}/blobs/{digest}");
        let Some((status, body)) = self.small_body(&url, PIECES_BODY_MAX).await else {
            return Bits::Missing;
        };
        if status != StatusCode::OK {
            return Bits::Missing;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return Bits::Missing;
        };
        // Older nodes send no `busy_ms`: idle.
        let busy_ms = v["busy_ms"].as_u64().unwrap_or(0);
        if v["complete"].as_bool() == Some(true) {
            return Bits::Complete { busy_ms };
        }
        let field = |k: &str| v[k].as_str().and_then(|h| crate::pieces::decode_bits(h, n));
        match (field("have"), field("upstream")) {
            (Some(have), Some(upstream)) => Bits::Partial {
                have,
                upstream,
                busy_ms,
            },
            _ => Bits::Missing,
        }
    }

    /// Piece `index` of `info` from `base`, checked against its SHA-1.
    async fn piece(
        &self,
        base: &str,
        repo: &RepoName,
        digest: &Digest,
        info: &PieceInfo,
        index: usize,
        timeout: Duration,
    ) -> Result<VerifiedPiece, PieceError> {
        let (start, end) = info.range(index);
        let work = async {
            let url = format!("{base}/v2/{repo}/blobs/{digest}");
            let resp = self
                .get(&url, Some((start, end)))
                .await
                .map_err(PieceError::Failed)?;
            let want = (end - start + 1) as usize;
            if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE
                && resp.headers().contains_key(PIECE_HEADER)
            {
                return Err(PieceError::NotYet);
            }
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
            VerifiedPiece::check(info, index, buf.freeze()).ok_or(PieceError::Bad)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PieceError::Failed("piece timed out".into())),
        }
    }

    /// Providers of `digest` (not banned, with an HTTP address).
    async fn lookup(&self, digest: &Digest) -> Vec<Provider> {
        let timeout = Duration::from_millis(self.p2p.config.lookup_timeout_ms);
        self.p2p
            .swarm
            .providers(&digest.to_string(), timeout)
            .await
            .into_iter()
            .filter(|p| p.http_addr.is_some() && !self.p2p.stats.is_banned(&p.peer.to_string()))
            .collect()
    }

    /// Starts a piece fetch (peers and/or a berth upstream, sharing verified pieces while it
    /// runs), or `None` when neither a provider nor the upstream has piece hashes for it.
    async fn from_peers(
        self: &Arc<Self>,
        ns: Option<&str>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Option<FetchedBlob> {
        let providers = self.lookup(digest).await;
        tracing::debug!(%digest, providers = providers.len(), "provider lookup");
        let upstream_base = self.upstream.as_ref().and_then(|u| u.plain_base(ns));
        let mut info = None;
        let bases = providers
            .iter()
            .take(3)
            .filter_map(|p| p.http_addr.as_ref().map(|a| format!("http://{a}")))
            .chain(upstream_base.clone());
        for base in bases {
            if let Some(i) = self.torrent(&base, repo, digest).await {
                info = Some(i);
                break;
            }
        }
        let info = info?;
        let (p2p, r, d) = (self.p2p.clone(), repo.clone(), digest.clone());
        let partial = tokio::task::spawn_blocking(move || {
            let public = p2p.visibility.public(&r);
            p2p.partials.begin(&d, info, public)
        })
        .await
        .ok()?;
        let partial = match partial {
            Ok(Some(p)) => p,
            Ok(None) => return None, // a previous fetch of it is still finishing
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot create the partial file");
                return None;
            }
        };
        if partial.public {
            // Share while downloading: peers may take verified pieces from us at once.
            self.p2p.swarm.provide(&digest.to_string());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let len = partial.info.len;
        let (me, p, tx2) = (self.clone(), partial.clone(), tx.clone());
        let (repo2, d2) = (repo.clone(), digest.clone());
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = me
                    .fetch(providers, upstream_base, &repo2, &d2, &p, &tx2)
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "piece fetch failed");
                    p.failed.store(true, Ordering::Release);
                    p.landed.notify_waiters();
                    me.p2p.partials.end(&d2);
                    let _ = tx2.send(Err(std::io::Error::other(e))).await;
                }
            },
            tracing::info_span!("swarm_fetch", digest = %digest),
        ));
        let (p2p, p) = (self.p2p.clone(), partial.clone());
        tokio::spawn(tracing::Instrument::instrument(
            emit(p2p, p, tx),
            tracing::info_span!("swarm_emit", digest = %digest),
        ));
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let p = partial.clone();
        // Every emitted piece matched these SHA-1s (and its CRC32 after the read-back).
        let piece_sha1s = (partial.info.piece_len == berth_storage::CHUNK_SIZE)
            .then(|| partial.info.hashes.clone());
        Some(FetchedBlob {
            origin: Origin::Peer,
            len: Some(len),
            body: Box::pin(body),
            origin_at: Some(Arc::new(move |offset| p.origin_at(offset))),
            piece_sha1s,
            // The body is read back from the partial file: the registry adopts that file.
            stored_in: Some(partial.path().to_path_buf()),
        })
    }

    /// The fetch loop: keeps up to `pieces_in_flight` piece requests running, rarest piece
    /// first (random among equals) from the least-loaded holder that has it; from the
    /// upstream only pieces no holder has and no holder is taking from it already.
    async fn fetch(
        &self,
        providers: Vec<Provider>,
        upstream_base: Option<String>,
        repo: &RepoName,
        digest: &Digest,
        partial: &Arc<Partial>,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), String> {
        let info = &partial.info;
        let n = info.hashes.len();
        let timeout = Duration::from_millis(self.p2p.config.piece_timeout_ms);
        let in_flight_max = self.p2p.config.pieces_in_flight;
        let mut holders: Vec<Holder> = Vec::new();
        let add = |holders: &mut Vec<Holder>, ps: Vec<Provider>| {
            for p in ps {
                let id = p.peer.to_string();
                let Some(addr) = p.http_addr else { continue };
                if holders.len() < HOLDERS_MAX && !holders.iter().any(|h| h.id == id) {
                    holders.push(Holder {
                        id,
                        base: format!("http://{addr}"),
                        have: Some(vec![false; n]),
                        upstream: vec![false; n],
                        in_flight: 0,
                        failures: 0,
                        alive: true,
                        refreshing: false,
                        known: false,
                        busy_ms: 0,
                    });
                }
            }
        };
        add(&mut holders, providers);
        let mut rng = Rng::seeded(digest, &self.p2p.swarm.local_peer_id().to_string());
        let mut in_flight = vec![false; n];
        let mut attempts = vec![0u32; n];
        let mut upstream_running = 0usize;
        let mut upstream_pause_until = Instant::now();
        let me = self.p2p.swarm.local_peer_id().to_string();
        // The registry's read position and since when it has not moved.
        let mut last_emit = (usize::MAX, Instant::now());
        let mut running: FuturesUnordered<BoxFuture<'_, Event>> = FuturesUnordered::new();
        // Connected nodes may be starting the same fetch: look again soon, and take few
        // pieces from the upstream until their bitfields are known.
        let swarm_peers = self.p2p.swarm.peers().iter().any(|(_, i)| i.connected);
        let (mut next_bits, mut next_lookup) = (Instant::now(), Instant::now() + LOOKUP_FIRST);
        let (mut tick_pending, mut lookup_pending) = (false, false);
        while !partial.complete() {
            if tx.is_closed() {
                return Err("the registry gave up on this fetch".into());
            }
            let now = Instant::now();
            if now >= next_bits {
                next_bits = now + BITS_REFRESH;
                for (k, h) in holders.iter_mut().enumerate() {
                    if h.alive && !h.refreshing && h.have.is_some() {
                        h.refreshing = true;
                        let base = h.base.clone();
                        running.push(Box::pin(async move {
                            Event::Bits(k, self.bits(&base, repo, digest, n).await)
                        }));
                    }
                }
            }
            if now >= next_lookup && !lookup_pending {
                next_lookup = now + LOOKUP_REFRESH;
                lookup_pending = true;
                running.push(Box::pin(
                    async move { Event::Lookup(self.lookup(digest).await) },
                ));
            }
            // Schedule piece requests.
            let busy = in_flight.iter().filter(|&&b| b).count();
            let mut free = in_flight_max.saturating_sub(busy);
            if free > 0 {
                let banned = |h: &Holder| self.p2p.stats.is_banned(&h.id);
                let mut counts = vec![0u32; n];
                let mut elsewhere_upstream = vec![false; n];
                for h in holders.iter().filter(|h| h.alive && !banned(h)) {
                    for (i, c) in counts.iter_mut().enumerate() {
                        if h.has(i) {
                            *c += 1;
                        }
                        if h.upstream.get(i).copied().unwrap_or(false) {
                            elsewhere_upstream[i] = true;
                        }
                    }
                }
                // The next pieces the registry waits for come first (the client's stream
                // must not stall), then the rarest, random among equals.
                let next = partial.next_emit();
                let mut wanted: Vec<(bool, u32, u64, usize)> = (0..n)
                    .filter(|&i| !in_flight[i] && !partial.has(i))
                    .map(|i| (i >= next + URGENT_PIECES, counts[i], rng.next(), i))
                    .collect();
                wanted.sort_unstable();
                // From holders, rarest first, each from its least busy holder; a piece whose
                // holders all have a long upload queue waits (unless the stream needs it
                // now), so that requests spread over idle uploaders instead of piling onto
                // the few holders of the newest pieces.
                for &(later, _, _, i) in wanted.iter().filter(|w| w.1 > 0) {
                    if free == 0 {
                        break;
                    }
                    let pick = holders
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, h)| {
                            h.alive && h.has(i) && h.in_flight < HOLDER_IN_FLIGHT_MAX && !banned(h)
                        })
                        .min_by_key(|(_, h)| (h.busy_ms, h.in_flight));
                    let Some((k, h)) = pick else { continue };
                    if later && h.busy_ms > HOLDER_BUSY_SKIP_MS {
                        continue;
                    }
                    h.in_flight += 1;
                    in_flight[i] = true;
                    attempts[i] += 1;
                    free -= 1;
                    let base = h.base.clone();
                    running.push(Box::pin(async move {
                        let r = self.piece(&base, repo, digest, info, i, timeout).await;
                        Event::Piece(i, Some(k), r)
                    }));
                }
                // From the upstream: pieces nobody has, nobody else takes from it.
                let peers_alive = holders.iter().any(|h| h.alive && !banned(h));
                let up_max = if peers_alive || swarm_peers {
                    UPSTREAM_IN_FLIGHT_PEERS
                } else {
                    in_flight_max
                };
                // Not before every holder's bitfield is known (it may have the piece), and
                // not while the upstream is failing.
                let unknown = holders.iter().any(|h| h.alive && !h.known && !banned(h));
                let upstream_ok = !unknown && Instant::now() >= upstream_pause_until;
                // Nodes fetching the same blob at once split the upstream's pieces between
                // them: piece i is the share of co-fetcher i mod n (in peer-id order), so no
                // two ask the upstream for the same piece even before their bitfields tell.
                // Another's share is taken once this node's own is all taken, when the
                // client's stream has waited for it for SHARE_PATIENCE, or when that
                // co-fetcher is gone (it drops out of `ids`).
                let (share_of, share_n) = {
                    let mut ids: Vec<&str> = holders
                        .iter()
                        .filter(|h| h.alive && h.have.is_some() && !banned(h))
                        .map(|h| h.id.as_str())
                        .chain(std::iter::once(me.as_str()))
                        .collect();
                    ids.sort_unstable();
                    let pos = ids.iter().position(|id| *id == me.as_str()).unwrap_or(0);
                    (pos, ids.len())
                };
                if next != last_emit.0 {
                    last_emit = (next, Instant::now());
                }
                let starving = last_emit.1.elapsed() >= SHARE_PATIENCE;
                if let Some(base) = upstream_base.as_ref().filter(|_| upstream_ok) {
                    // This node's share first (and pieces the stream starves for), then,
                    // once its share is all taken, the others' (co-fetchers may disagree on
                    // who is fetching: no piece must be left to nobody).
                    let mut order: Vec<(bool, usize)> = wanted
                        .iter()
                        .filter(|w| w.1 == 0)
                        .map(|&(later, _, _, i)| {
                            let mine = i % share_n == share_of;
                            (!(mine || (starving && !later)), i)
                        })
                        .collect();
                    order.sort_by_key(|(later, _)| *later); // stable: keeps `wanted`'s order
                    for (_, i) in order {
                        if free == 0 || upstream_running >= up_max {
                            break;
                        }
                        if in_flight[i] || (elsewhere_upstream[i] && peers_alive) {
                            continue;
                        }
                        in_flight[i] = true;
                        attempts[i] += 1;
                        free -= 1;
                        upstream_running += 1;
                        partial.set_upstream(i, true);
                        let base = base.clone();
                        running.push(Box::pin(async move {
                            let r = self.piece(&base, repo, digest, info, i, timeout).await;
                            Event::Piece(i, None, r)
                        }));
                    }
                }
                let busy = in_flight.iter().filter(|&&b| b).count();
                if !peers_alive && upstream_base.is_none() && busy == 0 {
                    return Err("no provider or upstream left".into());
                }
            }
            if !tick_pending {
                tick_pending = true;
                let until = next_bits.min(next_lookup);
                running.push(Box::pin(async move {
                    tokio::time::sleep_until(until.into()).await;
                    Event::Tick
                }));
            }
            let Some(event) = running.next().await else {
                continue;
            };
            match event {
                Event::Tick => tick_pending = false,
                Event::Lookup(found) => {
                    lookup_pending = false;
                    add(&mut holders, found);
                }
                Event::Bits(k, bits) => {
                    let h = &mut holders[k];
                    h.refreshing = false;
                    h.known = true;
                    match bits {
                        Bits::Complete { busy_ms } => {
                            h.have = None;
                            h.busy_ms = busy_ms;
                        }
                        Bits::Partial {
                            have,
                            upstream,
                            busy_ms,
                        } => {
                            h.have = Some(have);
                            h.upstream = upstream;
                            h.busy_ms = busy_ms;
                        }
                        Bits::Missing => h.alive = false,
                    }
                }
                Event::Piece(i, who, result) => {
                    in_flight[i] = false;
                    match who {
                        Some(k) => holders[k].in_flight = holders[k].in_flight.saturating_sub(1),
                        None => {
                            upstream_running -= 1;
                            partial.set_upstream(i, false);
                        }
                    }
                    match (result, who) {
                        (Ok(piece), who) => {
                            let origin = match who {
                                Some(k) => {
                                    self.p2p.stats.add_bytes(&holders[k].id, piece.len() as u64);
                                    Origin::Peer
                                }
                                None => {
                                    self.p2p
                                        .stats
                                        .upstream_pieces
                                        .fetch_add(1, Ordering::Relaxed);
                                    Origin::Upstream
                                }
                            };
                            let p = partial.clone();
                            tokio::task::spawn_blocking(move || p.store(piece, origin))
                                .await
                                .map_err(|e| e.to_string())?
                                .map_err(|e| format!("writing piece {i}: {e}"))?;
                        }
                        (Err(PieceError::NotYet), Some(k)) => {
                            if let Some(h) = holders[k].have.as_mut().and_then(|h| h.get_mut(i)) {
                                *h = false;
                            }
                            attempts[i] = attempts[i].saturating_sub(1);
                        }
                        (Err(PieceError::Bad), Some(k)) => {
                            self.p2p.stats.bad_pieces.fetch_add(1, Ordering::Relaxed);
                            self.p2p.stats.ban(
                                &holders[k].id,
                                &format!("piece {i} of {digest} failed its SHA-1"),
                            );
                            holders[k].alive = false;
                        }
                        (Err(PieceError::Failed(why)), Some(k)) => {
                            let h = &mut holders[k];
                            h.failures += 1;
                            if h.failures >= HOLDER_FAILURES_MAX {
                                tracing::info!(peer = %h.id, piece = i, error = %why, "peer dropped from this fetch");
                                h.alive = false;
                            }
                        }
                        (Err(PieceError::Bad), None) => {
                            return Err(format!("upstream piece {i} failed its SHA-1"))
                        }
                        (Err(PieceError::NotYet), None) => {}
                        (Err(PieceError::Failed(why)), None) => {
                            tracing::info!(piece = i, error = %why, "upstream piece failed");
                            upstream_pause_until = Instant::now() + UPSTREAM_PAUSE;
                        }
                    }
                    if attempts[i] > PIECE_ATTEMPTS_MAX {
                        return Err(format!("piece {i}: too many attempts"));
                    }
                }
            }
        }
        tracing::info!(pieces = n, "all pieces verified");
        Ok(())
    }
}

/// Largest pieces-endpoint answer read (a 16 GiB blob in 1 MiB pieces: 2 × 4 KiB of hex).
const PIECES_BODY_MAX: usize = 1 << 20;

/// Feeds the registry the pieces in order as they land; after the last one, keeps the
/// partial (and so the sharing) until the blob is committed, then ends it.
async fn emit(
    p2p: Arc<P2p>,
    partial: Arc<Partial>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    for i in 0..partial.info.hashes.len() {
        loop {
            let landed = partial.landed.notified();
            if partial.has(i) {
                break;
            }
            if partial.failed.load(Ordering::Acquire) || tx.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), landed).await;
        }
        let p = partial.clone();
        let read = tokio::task::spawn_blocking(move || p.read(i))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let item = match read {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(std::io::Error::other(format!("piece {i} vanished"))),
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        partial.set_next_emit(i + 1);
        if tx.send(item).await.is_err() || failed {
            p2p.partials.end(&partial.digest);
            return;
        }
    }
    drop(tx);
    let deadline = Instant::now() + COMMIT_WAIT;
    let path = p2p.blobs.blob_path(&partial.digest);
    while Instant::now() < deadline && !path.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p2p.partials.end(&partial.digest);
}

/// A small xorshift generator: random tie-breaks so that nodes pick different pieces.
struct Rng(u64);

impl Rng {
    fn seeded(digest: &Digest, me: &str) -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(digest.hex().as_bytes());
        h.write(me.as_bytes());
        Rng(h.finish() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
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
                Some(l) => throttle_blob(f, l),
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

/// The node's HTTP hooks: rate limits, and (with the peer layer) the peer-only answers
/// served from fetches in progress.
pub struct HttpHooks {
    p2p: Option<Arc<P2p>>,
    /// Responses to `x-berth-peer` requests.
    up_peers: Option<Arc<RateLimiter>>,
    /// Every blob response.
    up_all: Option<Arc<RateLimiter>>,
}

/// Adds `/berth/v1/peers` (with p2p) and the hooks layer to the node's router.
pub fn wire_http(app: axum::Router, p2p: Option<&Arc<P2p>>, config: &P2pConfig) -> axum::Router {
    let hooks = Arc::new(HttpHooks {
        p2p: p2p.cloned(),
        up_peers: match p2p {
            Some(p2p) => p2p.up.clone(),
            None => limiter(config.rate_limit_mbps),
        },
        up_all: limiter(config.serve_rate_limit_mbps),
    });
    if hooks.p2p.is_none() && hooks.up_peers.is_none() && hooks.up_all.is_none() && !config.liar {
        return app;
    }
    let app = match p2p {
        Some(p2p) => app.route(
            "/berth/v1/peers",
            axum::routing::get(peers_handler).with_state(p2p.clone()),
        ),
        None => app,
    };
    app.layer(axum::middleware::from_fn_with_state(hooks, http_layer))
}

/// Middleware: answers peers from fetches in progress, caps blob response bandwidth and,
/// in liar mode, corrupts ranged responses.
async fn http_layer(
    axum::extract::State(hooks): axum::extract::State<Arc<HttpHooks>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    let is_blob = path.starts_with("/v2/") && path.contains("/blobs/");
    let ranged = req.headers().contains_key("range");
    let peer = req.headers().contains_key(PEER_HEADER);
    let liar = hooks.p2p.as_ref().is_some_and(|p| p.liar()) && ranged;
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let early = match (&hooks.p2p, req.method() == http::Method::GET) {
        (Some(p2p), true) => peer_answer(p2p, range.as_deref(), &path, peer).await,
        _ => None,
    };
    let resp = match early {
        Some(r) => r,
        None => FROM_PEER.scope(peer, next.run(req)).await,
    };
    let limits: Vec<Arc<RateLimiter>> = [
        hooks.up_all.clone(),
        hooks.up_peers.clone().filter(|_| peer),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !is_blob || (limits.is_empty() && !liar) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().then(move |item| {
        let limits = limits.clone();
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
            if let Ok(b) = &item {
                for l in &limits {
                    l.take(b.len()).await;
                }
            }
            item
        }
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// A JSON response.
fn json_response(status: StatusCode, v: &serde_json::Value) -> axum::response::Response {
    let mut resp = axum::response::Response::new(axum::body::Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An OCI-style error body.
fn oci_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    json_response(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message}]}),
    )
}

/// `<prefix><repo>/blobs/<digest>` → (repo, digest).
fn repo_and_digest(path: &str, prefix: &str) -> Option<(RepoName, Digest)> {
    let (repo, digest) = path.strip_prefix(prefix)?.rsplit_once("/blobs/")?;
    Some((RepoName::parse(repo).ok()?, Digest::parse(digest).ok()?))
}

/// Requests a node answers from its fetches in progress (all other requests: `None`).
/// Only public fetches are answered; anything else goes to the registry, which applies
/// its authorization.
async fn peer_answer(
    p2p: &Arc<P2p>,
    range: Option<&str>,
    path: &str,
    peer: bool,
) -> Option<axum::response::Response> {
    if let Some(rest) = path.strip_prefix("/berth/v1/pieces/") {
        if !peer {
            return Some(oci_error(
                StatusCode::BAD_REQUEST,
                "UNSUPPORTED",
                "the pieces endpoint is for berth peers (x-berth-peer header)",
            ));
        }
        let Some((_, digest)) = repo_and_digest(&format!("/{rest}"), "/") else {
            return Some(oci_error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "expected /berth/v1/pieces/<repository>/blobs/<digest>",
            ));
        };
        return Some(pieces_answer(p2p, &digest).await);
    }
    if !peer {
        return None;
    }
    if let Some((_, digest)) = repo_and_digest(path, "/berth/v1/torrent/") {
        let partial = p2p.partials.get(&digest).filter(|p| p.public)?;
        let body = berth_registry::torrent::encode(&berth_registry::torrent::TorrentSpec {
            name: digest.hex(),
            length: partial.info.len,
            pieces: &partial.info.hashes,
            announce: None,
            web_seed: None,
        });
        let mut resp = axum::response::Response::new(axum::body::Body::from(body));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/x-bittorrent"),
        );
        return Some(resp);
    }
    let (_, digest) = repo_and_digest(path, "/v2/")?;
    let partial = p2p.partials.get(&digest).filter(|p| p.public)?;
    Some(serve_piece(&partial, range).await)
}

/// `GET /berth/v1/pieces/<repo>/blobs/<digest>`: the have-bitfield of a fetch in progress,
/// `{"complete": true}` for a stored public blob, else `404`.
async fn pieces_answer(p2p: &Arc<P2p>, digest: &Digest) -> axum::response::Response {
    let busy_ms = p2p
        .up
        .as_ref()
        .map_or(0, |l| l.backlog().as_millis() as u64);
    if let Some(partial) = p2p.partials.get(digest).filter(|p| p.public) {
        let mut answer = partial.describe();
        answer["busy_ms"] = busy_ms.into();
        return json_response(StatusCode::OK, &answer);
    }
    let (p, d) = (p2p.clone(), digest.clone());
    let stored = tokio::task::spawn_blocking(move || {
        matches!(p.blobs.stat(&d), Ok(Some(_))) && p.visibility.blob_public(&d)
    })
    .await
    .unwrap_or(false);
    if stored {
        return json_response(
            StatusCode::OK,
            &serde_json::json!({"complete": true, "busy_ms": busy_ms}),
        );
    }
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
        &format!("no pieces of {digest} here"),
    )
}

/// One whole piece of a fetch in progress (a peer's `Range` GET); `416` with
/// [`PIECE_HEADER`] when it is not verified yet.
async fn serve_piece(partial: &Arc<Partial>, range: Option<&str>) -> axum::response::Response {
    let range = range
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)));
    let piece = range.and_then(|(s, e)| partial.info.piece_of(s, e));
    let Some(i) = piece else {
        let mut resp = oci_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            "this blob is still being fetched: ask for exactly one piece (see its .torrent)",
        );
        resp.headers_mut()
            .insert(PIECE_HEADER, http::HeaderValue::from_static("unaligned"));
        return resp;
    };
    let p = partial.clone();
    let read = tokio::task::spawn_blocking(move || p.read(i))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match read {
        Ok(Some(bytes)) => {
            let (start, end) = partial.info.range(i);
            let mut resp = axum::response::Response::new(axum::body::Body::from(bytes));
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                http::HeaderValue::from_static("application/octet-stream"),
            );
            h.insert("content-length", http::HeaderValue::from(end - start + 1));
            if let Ok(v) =
                http::HeaderValue::from_str(&format!("bytes {start}-{end}/{}", partial.info.len))
            {
                h.insert("content-range", v);
            }
            resp
        }
        Ok(None) => {
            let mut resp = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                &format!("piece {i} is not here yet"),
            );
            resp.headers_mut()
                .insert(PIECE_HEADER, http::HeaderValue::from_static("missing"));
            resp
        }
        Err(e) => {
            tracing::error!(digest = %partial.digest, piece = i, error = %e, "cannot serve a piece");
            oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                &format!("piece {i}: {e}"),
            )
        }
    }
}

/// A content source whose blob bytes pass a download rate limit (the node without p2p).
pub struct Throttled(pub Arc<dyn ContentSource>, pub Arc<RateLimiter>);

impl ContentSource for Throttled {
    fn blob<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<FetchedBlob>, SourceError>> {
        Box::pin(async move {
            let fetched = self.0.blob(ns, repo, digest).await?;
            Ok(fetched.map(|f| throttle_blob(f, self.1.clone())))
        })
    }

    fn manifest<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        reference: &'a Reference,
        cached: Option<&'a Digest>,
    ) -> BoxFuture<'a, Result<ManifestAnswer, SourceError>> {
        self.0.manifest(ns, repo, reference, cached)
    }
}

fn throttle_blob(f: FetchedBlob, l: Arc<RateLimiter>) -> FetchedBlob {
    FetchedBlob {
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
    }
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
