//! The BitTorrent door (issue 5): seeding stored blobs over the peer protocol, and
//! `berth fetch`, both with librqbit.
//!
//! The principal types are [`Seeder`] (a librqbit session that seeds the most recently linked
//! public blobs, configured by [`BitTorrentConfig`]) and [`FetchArgs`] (one download into the
//! store). librqbit lives only here: the `registry` crate knows nothing of it and bencodes the
//! metainfo itself (`berth_registry::torrent`), from the SHA-1 piece hashes computed at push.
//!
//! Invariants:
//! - Seeding never writes to, truncates or copies a blob: torrents are added with
//!   [`ReadOnlyStorage`], which opens `BlobStore::blob_path` read-only (`O_RDONLY`) and
//!   refuses every write. librqbit's default filesystem storage opens read-write and
//!   `ftruncate`s (FIELD-NOTES), which would touch mtime/ctime of an immutable blob.
//! - Torrents are added from our own metainfo, never from librqbit's `create_torrent`
//!   (one piece hash too many at exact multiples of the piece length, FIELD-NOTES). The info
//!   dictionary is the one `GET /berth/v1/torrent/..` serves, so the info-hash is the same.
//! - A blob that any non-public repository holds is never seeded (its info-hash on a
//!   tracker would advertise it).
//! - Seeding is bounded: at most `seed_max` torrents (the most recently linked blobs),
//!   because each costs ≈ 24 KB RSS, an fd and a 100 ms timer (FIELD-NOTES: 1000 torrents
//!   ≈ 4% of a core idle). librqbit has no fast-resume without its own persistence, so adding
//!   a torrent hashes the blob once through [`ReadOnlyStorage`] (≈ 1.8 GB/s SHA-1 here).
//! - `berth fetch` stores through `UploadWriter` + `BlobStore::commit`: only bytes whose
//!   OCI digest matches become visible. The expected digest is `--digest`, else
//!   `sha256:<info.name>` (our torrents name the file by the digest's hex; `name` is inside
//!   the info dictionary, so it is covered by the info-hash, unlike a top-level key).
//!
//! The set of blobs to seed is read from the metadata database directly, read-only (the
//! `MetadataStore` trait has no "recently linked" listing; see `SEED_QUERY`), every
//! `rescan_seconds`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_oci::{Digest, RepoName};
use berth_registry::torrent::{encode, TorrentSpec};
use berth_storage::{BlobStore, MetadataStore, SqliteMetadata, StorageError, UploadWriter};
use librqbit::storage::{BoxStorageFactory, StorageFactory, StorageFactoryExt, TorrentStorage};
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, ListenerMode, ListenerOptions,
    ManagedTorrentShared, Session, SessionOptions, TorrentMetadata,
};
use serde::Deserialize;

/// Largest `.torrent` file `berth fetch` reads (a 1 TiB blob has 1 Mi pieces: 20 MiB).
const TORRENT_FILE_SIZE_MAX: u64 = 32 << 20;
/// Read size when moving a downloaded file into the blob store.
const COPY_BUFFER_SIZE: usize = 1 << 20;

/// `[bittorrent]`: seeding over the BitTorrent peer protocol (off by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitTorrentConfig {
    /// Seed stored blobs of public repositories (`--seed`). Default false: no extra port.
    pub seed: bool,
    /// TCP address for incoming peer connections (`--bittorrent-listen`). Default
    /// `0.0.0.0:6881`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Also announce on the mainline DHT (default false; needs the Internet).
    pub dht: bool,
    /// Most torrents seeded at once: the most recently linked blobs (default 100).
    pub seed_max: usize,
    /// Seconds between scans for newly pushed or deleted blobs (default 10).
    pub rescan_seconds: u64,
}

impl Default for BitTorrentConfig {
    fn default() -> Self {
        BitTorrentConfig {
            seed: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 6881)),
            dht: false,
            seed_max: 100,
            rescan_seconds: 10,
        }
    }
}

/// Upper bound of `seed_max` (5000 torrents: 120 MB RSS, 12% of a core idle, FIELD-NOTES).
pub const SEED_MAX_LIMIT: usize = 5000;

impl BitTorrentConfig {
    /// Checks the limits.
    pub fn validate(&self) -> Result<()> {
        if self.seed_max == 0 || self.seed_max > SEED_MAX_LIMIT {
            bail!("invalid configuration: bittorrent.seed_max must be 1..={SEED_MAX_LIMIT}");
        }
        if self.rescan_seconds == 0 {
            bail!("invalid configuration: bittorrent.rescan_seconds must be at least 1");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Read-only storage over one blob file.

/// Creates a [`ReadOnlyStorage`] over one blob file.
#[derive(Clone)]
struct ReadOnlyFactory {
    path: PathBuf,
}

impl StorageFactory for ReadOnlyFactory {
    type Storage = ReadOnlyStorage;

    fn create(&self, _: &ManagedTorrentShared, _: &TorrentMetadata) -> Result<ReadOnlyStorage> {
        Ok(ReadOnlyStorage {
            path: self.path.clone(),
            file: None,
        })
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

/// A single-file torrent's storage that only reads: the blob is opened `O_RDONLY`, every
/// write, resize or removal is refused.
struct ReadOnlyStorage {
    path: PathBuf,
    file: Option<Arc<std::fs::File>>,
}

impl ReadOnlyStorage {
    fn file(&self, file_id: usize) -> Result<&std::fs::File> {
        if file_id != 0 {
            bail!("blob torrents have one file; got file id {file_id}");
        }
        self.file
            .as_deref()
            .with_context(|| format!("{} is not open", self.path.display()))
    }

    fn refuse<T>(&self, what: &str) -> Result<T> {
        bail!(
            "read-only blob storage: refusing to {what} {}",
            self.path.display()
        )
    }
}

impl TorrentStorage for ReadOnlyStorage {
    fn init(&mut self, _: &ManagedTorrentShared, metadata: &TorrentMetadata) -> Result<()> {
        let [info] = &metadata.file_infos[..] else {
            bail!("blob torrents have exactly one file");
        };
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {} read-only", self.path.display()))?;
        let len = file.metadata()?.len();
        if len != info.len {
            bail!(
                "{} is {len} bytes, the torrent says {}",
                self.path.display(),
                info.len
            );
        }
        self.file = Some(Arc::new(file));
        Ok(())
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file(file_id)?
            .read_exact_at(buf, offset)
            .with_context(|| format!("reading {} at {offset}", self.path.display()))
    }

    fn pwrite_all(&self, _: usize, _: u64, _: &[u8]) -> Result<()> {
        self.refuse("write")
    }

    fn remove_file(&self, _: usize, _: &Path) -> Result<()> {
        self.refuse("remove")
    }

    fn remove_directory_if_empty(&self, _: &Path) -> Result<()> {
        Ok(())
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> Result<()> {
        let len = self.file(file_id)?.metadata()?.len();
        if len != length {
            return self.refuse("resize");
        }
        Ok(())
    }

    fn take(&self) -> Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(ReadOnlyStorage {
            path: self.path.clone(),
            file: self.file.clone(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Session.

/// A librqbit session: trackers from the metainfo, DHT only if asked, no LSD, no UPnP, no
/// persistence (it would re-add torrents with the read-write filesystem storage).
async fn new_session(listen: SocketAddr, dht: bool, output: PathBuf) -> Result<Arc<Session>> {
    let listen = concrete_port(listen)?;
    let opts = SessionOptions {
        dht: dht.then(Default::default),
        persistence: None,
        fastresume: false,
        disable_local_service_discovery: true,
        ipv4_only: listen.is_ipv4(),
        listen: Some(ListenerOptions {
            mode: ListenerMode::TcpOnly,
            listen_addr: listen,
            enable_upnp_port_forwarding: false,
            // librqbit announces no port for a loopback listener (it would fall back to
            // 4240); trackers need the real one.
            announce_port: Some(listen.port()),
            ipv4_only: listen.is_ipv4(),
            ..Default::default()
        }),
        client_name_and_version: Some(format!("berth {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    Session::new_with_opts(output, opts)
        .await
        .with_context(|| format!("starting the BitTorrent session on {listen}"))
}

/// Port 0 → a free port now, so that it can be announced.
fn concrete_port(listen: SocketAddr) -> Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let probe = std::net::TcpListener::bind(listen)
        .with_context(|| format!("finding a free port on {}", listen.ip()))?;
    Ok(probe.local_addr()?)
}

// ---------------------------------------------------------------------------------------
// Seeding.

/// The newest `?1` blobs that only public repositories hold.
const SEED_QUERY: &str = "SELECT rb.digest, MAX(rb.linked_ms) AS t FROM repo_blobs rb \
     JOIN repositories r ON r.id = rb.repo_id GROUP BY rb.digest \
     HAVING MIN(r.public) = 1 ORDER BY t DESC LIMIT ?1";

/// Digests to seed, newest first.
fn seed_candidates(db: &Path, n: usize) -> Result<Vec<Digest>> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare(SEED_QUERY)?;
    let limit = i64::try_from(n).unwrap_or(i64::MAX);
    let rows = stmt.query_map([limit], |row| row.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let row: String = row?;
        match Digest::parse(&row) {
            Ok(d) => out.push(d),
            Err(e) => tracing::warn!(error = %e, "skipping an unparsable digest"),
        }
    }
    Ok(out)
}

/// Seeds blobs until dropped.
pub struct Seeder {
    session: Arc<Session>,
    task: tokio::task::JoinHandle<()>,
}

impl Seeder {
    /// Starts the session and the rescan task.
    pub async fn start(
        config: &BitTorrentConfig,
        data_dir: &Path,
        announce: Option<String>,
    ) -> Result<Seeder> {
        let blobs = BlobStore::open(data_dir).context("opening blob store")?;
        let session = new_session(config.listen, config.dht, data_dir.join("bittorrent")).await?;
        tracing::info!(
            listen = ?session.listen_addr(),
            seed_max = config.seed_max,
            tracker = announce.as_deref().unwrap_or("none"),
            "bittorrent seeding"
        );
        let state = SeedState {
            session: session.clone(),
            blobs,
            db: data_dir.join("metadata.sqlite"),
            announce,
            seed_max: config.seed_max,
            seeded: HashMap::new(),
        };
        let every = Duration::from_secs(config.rescan_seconds);
        let task = tokio::spawn(state.run(every));
        Ok(Seeder { session, task })
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        self.task.abort();
        self.session.cancellation_token().cancel();
    }
}

struct SeedState {
    session: Arc<Session>,
    blobs: BlobStore,
    db: PathBuf,
    announce: Option<String>,
    seed_max: usize,
    /// Digest → librqbit torrent id.
    seeded: HashMap<Digest, usize>,
}

impl SeedState {
    async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.rescan().await {
                tracing::warn!(error = %format!("{e:#}"), "bittorrent rescan failed");
            }
        }
    }

    async fn rescan(&mut self) -> Result<()> {
        let (db, n) = (self.db.clone(), self.seed_max);
        let want = tokio::task::spawn_blocking(move || seed_candidates(&db, n)).await??;
        let gone: Vec<Digest> = self
            .seeded
            .keys()
            .filter(|d| !want.contains(d))
            .cloned()
            .collect();
        for digest in gone {
            if let Some(id) = self.seeded.remove(&digest) {
                tracing::info!(%digest, "bittorrent: stop seeding");
                if let Err(e) = self.session.delete(id.into(), false).await {
                    tracing::warn!(%digest, error = %e, "bittorrent: removing torrent");
                }
            }
        }
        for digest in want {
            if self.seeded.contains_key(&digest) {
                continue;
            }
            match self.add(&digest).await {
                Ok(Some(id)) => {
                    tracing::info!(%digest, "bittorrent: seeding");
                    self.seeded.insert(digest, id);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%digest, error = %format!("{e:#}"), "bittorrent: cannot seed")
                }
            }
        }
        Ok(())
    }

    /// Adds one blob's torrent; `None` if the blob cannot be a torrent (empty, no index).
    async fn add(&self, digest: &Digest) -> Result<Option<usize>> {
        let (blobs, d) = (self.blobs.clone(), digest.clone());
        let found = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let Some(len) = blobs.stat(&d)? else {
                return Ok(None);
            };
            Ok(blobs.read_index(&d)?.map(|i| (len, i)))
        })
        .await??;
        let Some((length, index)) = found.filter(|(len, _)| *len > 0) else {
            return Ok(None);
        };
        let metainfo = encode(&TorrentSpec {
            name: digest.hex(),
            length,
            pieces: &index.sha1s,
            web_seed: None,
            announce: self.announce.as_deref(),
        });
        let opts = AddTorrentOptions {
            storage_factory: Some(
                ReadOnlyFactory {
                    path: self.blobs.blob_path(digest),
                }
                .boxed(),
            ),
            overwrite: true,
            paused: false,
            ..Default::default()
        };
        let resp = self
            .session
            .add_torrent(AddTorrent::from_bytes(metainfo), Some(opts))
            .await?;
        match resp {
            AddTorrentResponse::Added(id, _) | AddTorrentResponse::AlreadyManaged(id, _) => {
                Ok(Some(id))
            }
            AddTorrentResponse::ListOnly(_) => bail!("librqbit listed instead of adding"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// berth fetch.

/// `berth fetch`: download a layer over BitTorrent into the store.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// A `.torrent` file or a `magnet:` URI.
    pub source: String,
    /// The repository to link the blob into.
    #[arg(long)]
    pub repo: String,
    /// A stopped node's data directory to store into.
    #[arg(long, conflicts_with = "node", required_unless_present = "node")]
    pub data_dir: Option<PathBuf>,
    /// A running node's URL (e.g. `http://127.0.0.1:5000`): push through its /v2/ API.
    #[arg(long)]
    pub node: Option<String>,
    /// Expected digest [default: `sha256:<the torrent's name>`].
    #[arg(long)]
    pub digest: Option<String>,
    /// Give up after this many seconds without a complete, verified download.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
    /// TCP address for incoming peer connections (port 0: a free one).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub listen: SocketAddr,
    /// Also use the mainline DHT.
    #[arg(long)]
    pub dht: bool,
}

/// Removes the download directory however `fetch` ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `berth fetch`.
pub fn fetch(args: FetchArgs) -> Result<()> {
    let repo = RepoName::parse(&args.repo).map_err(|e| anyhow::anyhow!("--repo: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-fetch")
        .build()?;
    let unique = format!(
        "fetch-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let work = WorkDir(match &args.data_dir {
        Some(dir) => dir.join("bittorrent").join(unique),
        None => std::env::temp_dir().join(format!("berth-{unique}")),
    });
    std::fs::create_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let (file, digest) = runtime.block_on(download(&args, &work.0))?;
    let size = match (&args.data_dir, &args.node) {
        (Some(dir), _) => store_local(dir, &repo, &file, &digest)?,
        (None, Some(node)) => runtime.block_on(push_to_node(node, &repo, &file, &digest))?,
        (None, None) => bail!("one of --data-dir or --node is required"),
    };
    println!("fetched {digest} ({size} bytes) into {repo}");
    Ok(())
}

/// Downloads into `work`; returns the file and the expected digest.
async fn download(args: &FetchArgs, work: &Path) -> Result<(PathBuf, Digest)> {
    let add = if args.source.starts_with("magnet:") {
        AddTorrent::from_url(args.source.clone())
    } else {
        let path = Path::new(&args.source);
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if len > TORRENT_FILE_SIZE_MAX {
            bail!("{} is {len} bytes: not a torrent file", path.display());
        }
        AddTorrent::from_bytes(std::fs::read(path)?)
    };
    let session = new_session(args.listen, args.dht, work.to_path_buf()).await?;
    let limit = Duration::from_secs(args.timeout_seconds);
    let result = tokio::time::timeout(limit, fetch_torrent(&session, add, args, work)).await;
    session.stop().await;
    match result {
        Ok(r) => r,
        Err(_) => bail!(
            "BitTorrent download incomplete after {} s: no complete copy with matching piece \
             hashes arrived from any peer; nothing stored",
            args.timeout_seconds
        ),
    }
}

async fn fetch_torrent(
    session: &Arc<Session>,
    add: AddTorrent<'_>,
    args: &FetchArgs,
    work: &Path,
) -> Result<(PathBuf, Digest)> {
    let opts = AddTorrentOptions {
        output_folder: Some(work.to_string_lossy().into_owned()),
        overwrite: true,
        ..Default::default()
    };
    let handle = session
        .add_torrent(add, Some(opts))
        .await
        .context("adding the torrent")?
        .into_handle()
        .context("librqbit did not add the torrent")?;
    let (name, file, length) = handle
        .with_metadata(|m| {
            let files: Vec<_> = m
                .file_infos
                .iter()
                .map(|f| (f.relative_filename.clone(), f.len))
                .collect();
            (m.info.name().map(|n| n.into_owned()), files)
        })
        .map(|(name, files)| match &files[..] {
            [(file, len)] => Ok((name, file.clone(), *len)),
            _ => Err(anyhow::anyhow!(
                "a layer torrent has exactly one file; this one has {}",
                files.len()
            )),
        })??;
    let digest = match (&args.digest, &name) {
        (Some(d), _) => Digest::parse(d).map_err(|e| anyhow::anyhow!("--digest: {e}"))?,
        (None, Some(n)) => Digest::parse(&format!("sha256:{n}")).map_err(|_| {
            anyhow::anyhow!("the torrent's name {n:?} is not a sha256 hex digest; pass --digest")
        })?,
        (None, None) => bail!("the torrent has no name; pass --digest"),
    };
    tracing::info!(%digest, length, info_hash = %handle.info_hash().as_string(), "downloading");
    handle.wait_until_completed().await?;
    Ok((work.join(file), digest))
}

/// Streams the downloaded file through `UploadWriter`; `commit` checks the digest.
fn store_local(data_dir: &Path, repo: &RepoName, file: &Path, digest: &Digest) -> Result<u64> {
    let blobs = BlobStore::open(data_dir).context("opening blob store")?;
    let mut writer = UploadWriter::create(&blobs, digest.algorithm())?;
    let source =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut buf = vec![0u8; COPY_BUFFER_SIZE];
    let mut offset = 0u64;
    loop {
        let n = source.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
        offset += n as u64;
    }
    let size = match blobs.commit(writer, digest) {
        Ok(size) => size,
        Err(StorageError::DigestMismatch { expected, actual }) => bail!(
            "digest mismatch: the torrent names {expected} but its bytes hash to {actual}; \
             nothing stored"
        ),
        Err(e) => return Err(e).context("storing the blob"),
    };
    let meta = SqliteMetadata::open(&data_dir.join("metadata.sqlite"))
        .context("opening metadata database")?;
    meta.link_blob(repo, digest, size)
        .context("linking the blob into the repository")?;
    Ok(size)
}

/// Pushes the file into a running node (POST + PUT `?digest=`); the node verifies.
async fn push_to_node(node: &str, repo: &RepoName, file: &Path, digest: &Digest) -> Result<u64> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let base = node.trim_end_matches('/');
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let start = http::Request::post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .body(Full::new(bytes::Bytes::new()))?;
    let resp = client.request(start).await.context("starting the upload")?;
    if resp.status() != http::StatusCode::ACCEPTED {
        bail!("starting the upload: {} answered {}", base, resp.status());
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no Location in the upload response")?
        .to_string();
    let url = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    // Layers are read whole: bounded by the torrent's length, which was just downloaded.
    let bytes = tokio::fs::read(file).await?;
    let size = bytes.len() as u64;
    let put = http::Request::put(format!("{url}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(bytes::Bytes::from(bytes)))?;
    let resp = client.request(put).await.context("uploading the blob")?;
    let status = resp.status();
    if status != http::StatusCode::CREATED {
        let body = resp.into_body().collect().await?.to_bytes();
        bail!(
            "the node refused the blob ({status}): {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        );
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_candidates_skip_blobs_of_private_repositories() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("berth-bt-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("metadata.sqlite");
        let meta = SqliteMetadata::open(&db)?;
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64)));
        let (a, b, c) = (d('a')?, d('b')?, d('c')?);
        let (public, private) = (RepoName::parse("pub/x")?, RepoName::parse("priv/x")?);
        meta.link_blob(&public, &a, 1)?;
        meta.link_blob(&public, &b, 1)?;
        meta.link_blob(&private, &b, 1)?;
        meta.link_blob(&private, &c, 1)?;
        drop(meta);
        let conn = rusqlite::Connection::open(&db)?;
        conn.execute(
            "UPDATE repositories SET public = 0 WHERE name = 'priv/x'",
            [],
        )?;
        drop(conn);
        assert_eq!(seed_candidates(&db, 10)?, vec![a.clone()]);
        assert_eq!(seed_candidates(&db, 1)?.len(), 1);
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
