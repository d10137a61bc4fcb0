//! Content from elsewhere: the seam through which a node becomes a pull-through cache.
//!
//! The principal trait is [`ContentSource`] ("get this manifest or blob from somewhere"),
//! implemented by the node (an upstream registry over HTTP today, peers later) and installed
//! with [`crate::Registry::with_content_source`]. The registry consults it only on a local
//! miss, so this crate never depends on the node's networking crates.
//!
//! Invariants:
//! - Nothing fetched becomes visible unverified: blob bytes stream through an
//!   [`UploadWriter`] and reach `blobs/` only via [`berth_storage::BlobStore::commit`],
//!   which checks the digest. The last frame of the client's copy is held back until that
//!   check passed, so a client never receives a complete body for bad bytes: its response
//!   is aborted instead.
//! - One fetch per digest at a time (single-flight): concurrent requests for a blob being
//!   fetched wait for it and are then served from disk.
//! - A fetched manifest is recorded in the metadata store only once everything it references
//!   is held (the store's own rule); until then it waits in a bounded in-memory table and is
//!   served from there.
//! - Manifests by tag are revalidated on every request (the source decides how cheaply: a
//!   `HEAD` when a digest is cached); when the source is unavailable the cached manifest is
//!   served.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_oci::{manifest, Digest, Reference, RepoName, Tag};
use berth_storage::meta::{MetaError, NewManifest};
use berth_storage::UploadWriter;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::error::{ErrorCode, OciError};
use crate::lock;
use crate::manifests::manifest_response;
use crate::{blocking, query_param, Shared};

/// A boxed, sendable future (the trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A blob's bytes as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Manifests fetched but not yet recordable (their blobs are still missing), per node.
const PENDING_MANIFESTS_MAX: usize = 4096;
/// Frames queued towards the client of a fetch: bounds memory per fetch (frames are
/// whatever the source sends, typically ≤ 64 KiB).
const CLIENT_QUEUE_DEPTH: usize = 16;

/// Where served blob bytes came from (the `source` label of
/// `berth_blob_bytes_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This node's disk.
    Local,
    /// Another berth node.
    Peer,
    /// The configured upstream registry.
    Upstream,
}

impl Origin {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Peer => "peer",
            Origin::Upstream => "upstream",
        }
    }
}

/// A blob being received from a source.
pub struct FetchedBlob {
    /// Who sends it.
    pub origin: Origin,
    /// Its length, if the source announced one.
    pub len: Option<u64>,
    /// The bytes.
    pub body: ByteStream,
    /// Where the frame starting at a byte offset came from, when a source mixes origins
    /// (the node's piece fetch: some pieces from peers, some from the upstream); `None`:
    /// every byte is from [`FetchedBlob::origin`]. Used for `berth_blob_bytes_total`.
    pub origin_at: Option<OriginAt>,
    /// SHA-1 of every 1 MiB piece (`berth_storage::CHUNK_SIZE`), when the source already
    /// checked each piece against them (the node's piece fetch): the write pass then skips
    /// computing them (`UploadWriter::use_known_piece_sha1s`). `None`: computed as written.
    pub piece_sha1s: Option<Vec<[u8; 20]>>,
    /// A file on the store's file system that already holds every byte of the body at its
    /// offset (the node's piece fetch writes verified pieces into one, and streams the body
    /// by reading them back, checked): the write pass adopts it as the staging file instead
    /// of writing every byte a second time (`UploadWriter::create_over`). `None`: written.
    pub stored_in: Option<std::path::PathBuf>,
}

/// Byte offset → where the frame starting there came from.
pub type OriginAt = Arc<dyn Fn(u64) -> Origin + Send + Sync>;

/// A manifest received from a source (not yet verified: the registry checks the digest).
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The digest the source claims (checked against the content).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes.
    pub content: Bytes,
}

/// What a source says about a manifest.
pub enum ManifestAnswer {
    /// The cached digest is still current.
    Unchanged,
    /// The current manifest.
    Fetched(FetchedManifest),
    /// The source does not have it.
    NotFound,
}

/// Why a source could not answer. Whose fault and whether to serve the cache follow from
/// the variant.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Down, timed out, rate limited (429) or failing (5xx): serve cached content.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The source refused our credentials (401/403 after authenticating).
    #[error("source refused access: {0}")]
    Refused(String),
    /// The source sent something malformed.
    #[error("source sent invalid data: {0}")]
    Invalid(String),
}

/// "Get this content from somewhere": implemented by the node, consulted on local misses.
///
/// `ns` is the registry host the client asked for (containerd's `?ns=` parameter), `None`
/// when the client did not say (the Docker daemon's `registry-mirrors`).
pub trait ContentSource: Send + Sync + 'static {
    /// Starts receiving a blob; `Ok(None)` when the source does not have it.
    fn blob<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<FetchedBlob>, SourceError>>;

    /// Resolves a manifest. With `cached`, the source may answer [`ManifestAnswer::Unchanged`]
    /// after a cheap check (an HTTP `HEAD`).
    fn manifest<'a>(
        &'a self,
        ns: Option<&'a str>,
        repo: &'a RepoName,
        reference: &'a Reference,
        cached: Option<&'a Digest>,
    ) -> BoxFuture<'a, Result<ManifestAnswer, SourceError>>;
}

#[derive(Clone)]
struct Pending {
    media_type: String,
    content: Bytes,
    tags: Vec<Tag>,
}

/// The registry's pull-through state: the source, fetches in flight, pending manifests.
#[derive(Default)]
pub(crate) struct Mirror {
    pub(crate) source: Option<Arc<dyn ContentSource>>,
    /// Tracker announce URL for served `.torrent` files.
    pub(crate) announce: Option<String>,
    inflight: Mutex<HashMap<Digest, tokio::sync::watch::Receiver<bool>>>,
    pending: Mutex<HashMap<(RepoName, Digest), Pending>>,
    pending_tags: Mutex<HashMap<(RepoName, Tag), Digest>>,
}

fn unavailable(e: &SourceError) -> OciError {
    let status = match e {
        SourceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SourceError::Refused(_) | SourceError::Invalid(_) => StatusCode::BAD_GATEWAY,
    };
    OciError::new(status, ErrorCode::Internal, e.to_string())
}

/// Called by the blob handler on a local miss. Without a source this is `BLOB_UNKNOWN`.
pub(crate) async fn blob_miss(
    reg: &Shared,
    repo: RepoName,
    digest: Digest,
    req: &Request,
    with_body: bool,
) -> Result<Response, OciError> {
    let Some(source) = reg.mirror.source.clone() else {
        return Err(OciError::blob_unknown(&digest));
    };
    let ns = query_param(req, "ns");
    // Two rounds at most: a fetch we waited for may have failed; then we try once ourselves.
    for _ in 0..2 {
        if let Some(resp) = serve_stored(reg, &repo, &digest, with_body).await? {
            return Ok(resp);
        }
        let role = join_or_lead(reg, &digest);
        match role {
            Err(tx) => {
                return lead_fetch(reg, source, ns, repo, digest, tx, with_body).await;
            }
            Ok(mut rx) => {
                // The sender is dropped when the fetch ends, successful or not.
                while rx.changed().await.is_ok() {}
            }
        }
    }
    Err(OciError::blob_unknown(&digest))
}

/// Joins the fetch of `digest` in flight (`Ok`), or becomes its leader (`Err`).
fn join_or_lead(
    reg: &Shared,
    digest: &Digest,
) -> Result<tokio::sync::watch::Receiver<bool>, tokio::sync::watch::Sender<bool>> {
    let mut inflight = lock(&reg.mirror.inflight);
    if let Some(rx) = inflight.get(digest) {
        return Ok(rx.clone());
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    inflight.insert(digest.clone(), rx);
    Err(tx)
}

/// Serves a blob already in the store (linking it into `repo` first), or `None`.
async fn serve_stored(
    reg: &Shared,
    repo: &RepoName,
    digest: &Digest,
    with_body: bool,
) -> Result<Option<Response>, OciError> {
    let (reg2, repo2, d) = (reg.clone(), repo.clone(), digest.clone());
    let opened = blocking(move || {
        // GC protocol: hold the digest lock from the existence check through the link.
        let _digest_lock = reg2.blobs.lock_digest(&d);
        let Some(blob) = reg2.blobs.open_blob(&d)? else {
            return Ok(None);
        };
        reg2.meta.link_blob(&repo2, &d, blob.len)?;
        Ok(Some(blob))
    })
    .await?;
    let Some(blob) = opened else { return Ok(None) };
    let len = blob.len;
    let body = if with_body {
        let file = Arc::new(blob.file);
        let chunks = futures_util::stream::unfold(0u64, move |offset| {
            let file = file.clone();
            async move {
                if offset >= len {
                    return None;
                }
                let n = (512u64 << 10).min(len - offset) as usize;
                let read = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, offset)
                        .map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                Some((read, offset + n as u64))
            }
        });
        Body::from_stream(chunks)
    } else {
        Body::empty()
    };
    Ok(Some(blob_response(body, Some(len), digest, Origin::Local)))
}

fn blob_response(body: Body, len: Option<u64>, digest: &Digest, origin: Origin) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        h.insert("content-length", HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    resp.extensions_mut().insert(origin);
    resp
}

/// Fetches `digest` from the source, writing it through an [`UploadWriter`] and streaming
/// it to this client at the same time. The fetch runs in its own task, so it completes for
/// the waiting requests even if this client goes away.
async fn lead_fetch(
    reg: &Shared,
    source: Arc<dyn ContentSource>,
    ns: Option<String>,
    repo: RepoName,
    digest: Digest,
    done: tokio::sync::watch::Sender<bool>,
    with_body: bool,
) -> Result<Response, OciError> {
    let finish = |reg: &Shared, digest: &Digest| {
        lock(&reg.mirror.inflight).remove(digest);
    };
    let fetched = match source.blob(ns.as_deref(), &repo, &digest).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            finish(reg, &digest);
            return Err(OciError::blob_unknown(&digest));
        }
        Err(e) => {
            finish(reg, &digest);
            tracing::warn!(%digest, repo = repo.as_str(), error = %e, "blob fetch failed");
            return Err(unavailable(&e));
        }
    };
    let (client_tx, client_rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CLIENT_QUEUE_DEPTH);
    let (origin, len) = (fetched.origin, fetched.len);
    let (reg2, repo2, d) = (reg.clone(), repo.clone(), digest.clone());
    let (finished_tx, finished_rx) = tokio::sync::oneshot::channel::<bool>();
    let span = tracing::info_span!("fetch", digest = %digest, repo = repo.as_str(), source = origin.label());
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let ok = write_through(&reg2, &repo2, &d, fetched, client_tx).await;
            lock(&reg2.mirror.inflight).remove(&d);
            drop(done);
            let _ = finished_tx.send(ok);
        },
        span,
    ));
    if !with_body {
        // HEAD: answer once the blob is stored (or say it is unknown).
        drop(client_rx);
        return match finished_rx.await {
            Ok(true) => serve_stored(reg, &repo, &digest, false)
                .await?
                .ok_or_else(|| OciError::blob_unknown(&digest)),
            _ => Err(OciError::blob_unknown(&digest)),
        };
    }
    let stream = futures_util::stream::unfold(client_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(blob_response(
        Body::from_stream(stream),
        len,
        &digest,
        origin,
    ))
}

/// The body of a fetch task. Returns whether the blob was stored.
async fn write_through(
    reg: &Shared,
    repo: &RepoName,
    digest: &Digest,
    fetched: FetchedBlob,
    client: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> bool {
    let abort = |client: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>, why: String| {
        tracing::warn!(error = %why, "fetch failed; nothing stored");
        let _ = client.try_send(Err(std::io::Error::other(why)));
    };
    let blobs = reg.blobs.clone();
    let algorithm = digest.algorithm();
    let (known, stored_in) = (fetched.piece_sha1s, fetched.stored_in);
    let writer = blocking(move || {
        let adopted = stored_in.and_then(|path| {
            UploadWriter::create_over(&blobs, algorithm, &path)
                .map_err(|e| tracing::warn!(error = %e, "writing the fetched blob instead"))
                .ok()
        });
        let mut writer = match adopted {
            Some(w) => w,
            None => UploadWriter::create(&blobs, algorithm)?,
        };
        if let Some(sha1s) = known {
            writer.use_known_piece_sha1s(sha1s)?;
        }
        Ok(writer)
    });
    let writer = match writer.await {
        Ok(w) => w,
        Err(e) => {
            abort(&client, e.message.clone());
            return false;
        }
    };
    // The newest frame is held back; it is released only after the digest was verified.
    let held: Arc<Mutex<Option<Bytes>>> = Arc::default();
    let (held2, client2, metrics) = (held.clone(), client.clone(), reg.clone());
    let origin = fetched.origin;
    let origin_at = fetched.origin_at.clone();
    let offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tee = fetched.body.then(move |item| {
        let (held, client, reg) = (held2.clone(), client2.clone(), metrics.clone());
        let (origin_at, offset) = (origin_at.clone(), offset.clone());
        async move {
            if let Ok(bytes) = &item {
                let at = offset.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let origin = origin_at.map_or(origin, |f| f(at));
                reg.metrics.add_source_bytes(origin, bytes.len() as u64);
                let previous = lock(&held).replace(bytes.clone());
                if let Some(previous) = previous {
                    // A client that went away does not stop the fetch.
                    let _ = client.send(Ok(previous)).await;
                }
            }
            item
        }
    });
    let limit = reg.config.blob_size_max;
    let (writer, written) = writer.write_stream(Box::pin(tee), limit).await;
    if let Err(e) = written {
        let (blobs, id) = (reg.blobs.clone(), writer.id().clone());
        drop(writer);
        let _ = blocking(move || Ok(blobs.discard_upload(&id)?)).await;
        abort(&client, e.to_string());
        return false;
    }
    let (reg2, repo2, d) = (reg.clone(), repo.clone(), digest.clone());
    let stored = blocking(move || {
        // GC protocol: hold the digest lock from the dedup check / rename through the link.
        let _digest_lock = reg2.blobs.lock_digest(&d);
        let size = reg2.blobs.commit(writer, &d)?;
        reg2.meta.link_blob(&repo2, &d, size)?;
        Ok(size)
    })
    .await;
    match stored {
        Ok(size) => {
            tracing::info!(size, "fetched blob stored");
            let last = lock(&held).take();
            if let Some(last) = last {
                let _ = client.send(Ok(last)).await;
            }
            record_pending(reg, repo).await;
            true
        }
        Err(e) => {
            abort(&client, e.message.clone());
            false
        }
    }
}

/// Called by the manifest handler before its local lookup. `Ok(None)` means "answer from
/// the metadata store as usual" (no source, an immutable local hit, or a revalidated tag).
pub(crate) async fn manifest_get(
    reg: &Shared,
    repo: &RepoName,
    reference: &Reference,
    req: &Request,
    with_body: bool,
) -> Result<Option<Response>, OciError> {
    let Some(source) = reg.mirror.source.clone() else {
        return Ok(None);
    };
    let ns = query_param(req, "ns");
    let (reg2, repo2, r) = (reg.clone(), repo.clone(), reference.clone());
    let local = blocking(move || {
        Ok(match &r {
            Reference::Tag(t) => reg2.meta.manifest_by_tag(&repo2, t)?.map(|m| m.digest),
            Reference::Digest(d) => reg2.meta.manifest_by_digest(&repo2, d)?.map(|m| m.digest),
        })
    })
    .await?;
    let pending_digest = match reference {
        Reference::Tag(t) => lock(&reg.mirror.pending_tags)
            .get(&(repo.clone(), t.clone()))
            .cloned(),
        Reference::Digest(d) => Some(d.clone()),
    };
    let pending = pending_digest.and_then(|d| {
        lock(&reg.mirror.pending)
            .get(&(repo.clone(), d.clone()))
            .map(|p| (d, p.clone()))
    });
    if matches!(reference, Reference::Digest(_)) && local.is_some() {
        return Ok(None); // content-addressed: nothing to revalidate
    }
    if let (Reference::Digest(_), Some((d, p))) = (reference, &pending) {
        return Ok(Some(manifest_response(
            d,
            &p.media_type,
            &p.content,
            with_body,
        )));
    }
    // A tag is revalidated; the newest of the recorded and the pending answer is "cached".
    let cached = pending.as_ref().map(|(d, _)| d.clone()).or(local.clone());
    let answer = source
        .manifest(ns.as_deref(), repo, reference, cached.as_ref())
        .await;
    // `None`: the metadata store answers (the cached manifest was recorded there).
    let serve_cached = || {
        pending
            .as_ref()
            .map(|(d, p)| manifest_response(d, &p.media_type, &p.content, with_body))
    };
    match answer {
        Ok(ManifestAnswer::Unchanged) => Ok(serve_cached()),
        Ok(ManifestAnswer::NotFound) => Err(OciError::manifest_unknown(reference)),
        Ok(ManifestAnswer::Fetched(m)) => {
            let m = verify_manifest(reference, m)?;
            let resp = manifest_response(&m.digest, &m.media_type, &m.content, with_body);
            let tag = match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            };
            remember(reg, repo, m, tag).await?;
            Ok(Some(resp))
        }
        Err(e) if cached.is_some() => {
            tracing::warn!(repo = repo.as_str(), %reference, error = %e, "source unavailable; serving the cached manifest");
            Ok(serve_cached())
        }
        Err(e) => Err(unavailable(&e)),
    }
}

fn verify_manifest(reference: &Reference, m: FetchedManifest) -> Result<FetchedManifest, OciError> {
    let actual = Digest::of(m.digest.algorithm(), &m.content);
    let wanted = match reference {
        Reference::Digest(d) => d,
        Reference::Tag(_) => &m.digest,
    };
    if &actual != wanted {
        return Err(OciError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ManifestInvalid,
            format!("the source sent a manifest with digest {actual}, not {wanted}"),
        ));
    }
    manifest::parse(&m.content, Some(&m.media_type))?;
    Ok(FetchedManifest {
        digest: actual,
        ..m
    })
}

/// Records a fetched manifest, or keeps it pending until its references are held.
async fn remember(
    reg: &Shared,
    repo: &RepoName,
    m: FetchedManifest,
    tag: Option<Tag>,
) -> Result<(), OciError> {
    {
        let mut pending = lock(&reg.mirror.pending);
        if pending.len() >= PENDING_MANIFESTS_MAX {
            pending.clear(); // bounded: forget the oldest generation wholesale
            lock(&reg.mirror.pending_tags).clear();
        }
        let entry = pending
            .entry((repo.clone(), m.digest.clone()))
            .or_insert_with(|| Pending {
                media_type: m.media_type.clone(),
                content: m.content.clone(),
                tags: Vec::new(),
            });
        if let Some(t) = &tag {
            if !entry.tags.contains(t) {
                entry.tags.push(t.clone());
            }
        }
    }
    if let Some(t) = tag {
        lock(&reg.mirror.pending_tags).insert((repo.clone(), t), m.digest.clone());
    }
    record_pending(reg, repo).await;
    Ok(())
}

/// Moves every pending manifest of `repo` whose references are now held into the metadata
/// store. Children before parents: repeats while progress is made (bounded by the count).
async fn record_pending(reg: &Shared, repo: &RepoName) {
    let candidates: Vec<(Digest, Pending)> = lock(&reg.mirror.pending)
        .iter()
        .filter(|((r, _), _)| r == repo)
        .map(|((_, d), p)| (d.clone(), p.clone()))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let (reg2, repo2) = (reg.clone(), repo.clone());
    let recorded = blocking(move || {
        let mut recorded = Vec::new();
        let mut left = candidates;
        for _ in 0..left.len() {
            let before = left.len();
            left.retain(|(d, p)| match put(&reg2, &repo2, d, p) {
                Ok(()) => {
                    recorded.push((d.clone(), p.tags.clone()));
                    false
                }
                Err(_) => true,
            });
            if left.len() == before {
                break;
            }
        }
        Ok(recorded)
    })
    .await
    .unwrap_or_default();
    let mut pending = lock(&reg.mirror.pending);
    let mut tags = lock(&reg.mirror.pending_tags);
    for (d, recorded_tags) in recorded {
        pending.remove(&(repo.clone(), d.clone()));
        for t in recorded_tags {
            let key = (repo.clone(), t);
            if tags.get(&key) == Some(&d) {
                tags.remove(&key);
            }
        }
    }
}

fn put(reg: &Shared, repo: &RepoName, digest: &Digest, p: &Pending) -> Result<(), MetaError> {
    let parsed = manifest::parse(&p.content, Some(&p.media_type))
        .map_err(|e| MetaError::Corrupt(e.to_string()))?;
    let mut tags: Vec<Option<&Tag>> = p.tags.iter().map(Some).collect();
    if tags.is_empty() {
        tags.push(None);
    }
    for tag in tags {
        reg.meta.put_manifest(NewManifest {
            repo,
            digest,
            parsed: &parsed,
            content: &p.content,
            tag,
            tag_options: Default::default(),
        })?;
    }
    Ok(())
}
