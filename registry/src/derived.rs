//! Derived images: zstd / gzip re-compressions and squashed images, made on demand (or
//! eagerly on push) by `berth-transcoder` and stored as ordinary content-addressed blobs and
//! manifests of the same repository.
//!
//! References (docs/api.md): `<tag>--berth-zstd`, `<tag>--berth-gzip`, `<tag>--berth-squash`
//! name the derived image of `<tag>`; every tag containing `--berth-` is reserved and refused
//! on push. `GET /berth/v1/squash/<repo>/<tag>` serves the squashed image as a `docker load`
//! archive.
//!
//! A manifest lists its layers' digests, so a manifest request waits until every layer is
//! converted (layers convert in parallel, at most `conversions_max` at once on blocking
//! threads). Each conversion streams blob file -> decoder -> encoder -> `UploadWriter` with
//! bounded memory, and the result becomes visible only through `BlobStore::commit` (verified
//! digest); a failure discards the staging file. Concurrent requests for the same derived
//! image share one build (single-flight). A derived layer's digest is known only when its
//! conversion ends, so neither the manifest nor a derived blob can be served earlier: the
//! protocol names content by digest. What can stream (the `docker load` archive) streams
//! from the finished, cached layer.
//!
//! Finished builds are remembered in a bounded map and in the on-disk index
//! [`DerivedIndex`] (`<data>/derived/`, one atomically written file per source manifest and
//! variant), so a restarted node re-serves derived images without converting again. An
//! entry is only a hint: the manifest it names is looked up in the metadata store, and a
//! missing one (collected by GC) means "build again".
//!
//! A multi-platform index derives each image child (single-flight per child) and becomes a
//! new OCI index with the same platforms and annotations; children that are not tar-layer
//! images (attestations, artifacts) and nested indexes are kept as they are.
//!
//! Derived manifests are stored untagged through `put_manifest`, so their blob references
//! are recorded for GC.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::manifest::{self, Descriptor, ManifestKind};
use berth_oci::{Algorithm, Digest, RepoName, Tag};
use berth_storage::meta::{NewManifest, StoredManifest};
use berth_storage::{CheckedReader, StorageError, UploadWriter};
use berth_transcoder::image::{self, LayerOut};
use berth_transcoder::{Compression, DiffId, TranscodeError, TranscoderConfig};
use bytes::Bytes;

use crate::error::{ErrorCode, OciError};
use crate::lock;
use crate::{blocking, Shared};

/// Marks derived references; tags containing it are reserved.
pub const RESERVED_TAG_MARKER: &str = "--berth-";
/// Finished derived images remembered in memory.
const FINISHED_MAX: usize = 10_000;
/// Largest entry of the on-disk index (a digest string is 71 bytes for sha256).
const INDEX_ENTRY_SIZE_MAX: u64 = 256;
/// Largest image config read into memory.
const CONFIG_SIZE_MAX: u64 = 8 << 20;
/// Chunks of a blob in flight to the socket when streaming a `docker load` archive.
const STREAM_CHUNKS_AHEAD: usize = 4;
const STREAM_CHUNK_SIZE: usize = 512 << 10;

/// Settings of derived images. Every field has a working default.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DerivedConfig {
    /// zstd level (default 3).
    pub zstd_level: i32,
    /// gzip level (default 6).
    pub gzip_level: u32,
    /// Compression threads per layer (default 0 = all cores).
    pub threads: usize,
    /// Layers converted at once across the node (default 2).
    pub conversions_max: usize,
    /// Largest ratio of uncompressed to compressed layer size (default 1000).
    pub expansion_ratio_max: u64,
    /// Absolute cap on a layer's uncompressed size in bytes (default 64 GiB).
    pub uncompressed_size_max: u64,
    /// Repositories whose pushes are converted eagerly: exact names, or prefixes ending in
    /// `*` (`team/*`). Default: none.
    pub eager_repositories: Vec<String>,
    /// What eager conversion makes: `zstd` (default), `gzip` or `squash`.
    pub eager_variants: Vec<String>,
}

impl Default for DerivedConfig {
    fn default() -> Self {
        let t = TranscoderConfig::default();
        DerivedConfig {
            zstd_level: t.zstd_level,
            gzip_level: t.gzip_level,
            threads: t.threads,
            conversions_max: 2,
            expansion_ratio_max: t.expansion_ratio_max,
            uncompressed_size_max: t.uncompressed_size_max,
            eager_repositories: Vec::new(),
            eager_variants: vec!["zstd".into()],
        }
    }
}

impl DerivedConfig {
    /// The transcoder settings.
    pub fn transcoder(&self) -> TranscoderConfig {
        TranscoderConfig {
            zstd_level: self.zstd_level,
            gzip_level: self.gzip_level,
            threads: self.threads,
            expansion_ratio_max: self.expansion_ratio_max,
            uncompressed_size_max: self.uncompressed_size_max,
            ..TranscoderConfig::default()
        }
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.transcoder().validate()?;
        if self.conversions_max == 0 || self.conversions_max > 64 {
            return Err("transcoder.conversions_max must be within 1..=64".into());
        }
        for v in &self.eager_variants {
            if Variant::parse(v).is_none() {
                return Err(format!(
                    "transcoder.eager_variants: unknown variant {v:?} (zstd, gzip, squash)"
                ));
            }
        }
        Ok(())
    }

    fn eager_for(&self, repo: &RepoName) -> bool {
        self.eager_repositories
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => repo.as_str().starts_with(prefix),
                None => p == repo.as_str(),
            })
    }
}

/// What a derived reference asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Every layer zstd-compressed.
    Zstd,
    /// Every layer gzip-compressed.
    Gzip,
    /// One gzip layer holding the merged file tree.
    Squash,
}

impl Variant {
    fn parse(s: &str) -> Option<Variant> {
        match s {
            "zstd" => Some(Variant::Zstd),
            "gzip" => Some(Variant::Gzip),
            "squash" => Some(Variant::Squash),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Zstd => "zstd",
            Variant::Gzip => "gzip",
            Variant::Squash => "squash",
        }
    }
}

/// Splits `v1--berth-zstd` into (`v1`, zstd). `None` for ordinary references.
pub fn parse_reference(reference: &str) -> Option<(Tag, Variant)> {
    let (base, variant) = reference.rsplit_once(RESERVED_TAG_MARKER)?;
    Some((Tag::parse(base).ok()?, Variant::parse(variant)?))
}

type Key = (String, String, Variant);
type Failure = (StatusCode, ErrorCode, String, Option<serde_json::Value>);
type Flight = Arc<tokio::sync::OnceCell<Result<Digest, Failure>>>;

/// Per-registry state: the conversion limiter, builds in flight and finished builds.
pub(crate) struct Derived {
    config: DerivedConfig,
    transcoder: TranscoderConfig,
    permits: Arc<tokio::sync::Semaphore>,
    flights: Mutex<HashMap<Key, Flight>>,
    finished: Mutex<HashMap<Key, Digest>>,
    index: DerivedIndex,
}

impl Derived {
    pub(crate) fn new(config: DerivedConfig, data_dir: &Path) -> Derived {
        Derived {
            transcoder: config.transcoder(),
            permits: Arc::new(tokio::sync::Semaphore::new(config.conversions_max.max(1))),
            config,
            flights: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashMap::new()),
            index: DerivedIndex {
                dir: data_dir.join("derived"),
            },
        }
    }
}

/// Counters of derived-image work, rendered into `/metrics`.
#[derive(Default)]
pub struct DerivedMetrics {
    layers_converted: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    manifests_built: AtomicU64,
    failures: AtomicU64,
}

impl DerivedMetrics {
    /// Appends the transcoder series to a text exposition.
    pub fn render(&self, out: &mut String) {
        let series = [
            (
                "berth_transcode_layers_total",
                "Layers converted or squashed (not counting cache hits).",
                &self.layers_converted,
            ),
            (
                "berth_transcode_input_bytes_total",
                "Uncompressed bytes that went through the transcoder.",
                &self.bytes_in,
            ),
            (
                "berth_transcode_output_bytes_total",
                "Bytes the transcoder wrote (derived layer blobs).",
                &self.bytes_out,
            ),
            (
                "berth_derived_manifests_built_total",
                "Derived manifests (images and indexes) built, not found in a cache.",
                &self.manifests_built,
            ),
            (
                "berth_derived_failures_total",
                "Derived-image builds that failed.",
                &self.failures,
            ),
        ];
        for (name, help, v) in series {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
    }

    fn layer(&self, uncompressed: u64, written: u64) {
        self.layers_converted.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(uncompressed, Ordering::Relaxed);
        self.bytes_out.fetch_add(written, Ordering::Relaxed);
    }
}

/// The on-disk index of finished derived images: `<dir>/<hex>` where `hex` is the sha256 of
/// `repo \n source digest \n variant`, holding the derived manifest's digest. Files are
/// written to a temporary name, fsynced and renamed, so a reader sees a whole entry or none;
/// an unreadable entry is ignored (the image is built again and the entry rewritten).
struct DerivedIndex {
    dir: PathBuf,
}

impl DerivedIndex {
    fn path(&self, key: &Key) -> PathBuf {
        let name = format!("{}\n{}\n{}", key.0, key.1, key.2.name());
        self.dir.join(Digest::sha256_of(name.as_bytes()).hex())
    }

    /// The derived manifest recorded for `key`, if any (blocking).
    fn get(&self, key: &Key) -> Option<Digest> {
        let path = self.path(key);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the derived-image index");
                return None;
            }
        };
        let mut text = String::new();
        if let Err(e) = file.take(INDEX_ENTRY_SIZE_MAX).read_to_string(&mut text) {
            tracing::warn!(path = %path.display(), error = %e, "reading the derived-image index");
            return None;
        }
        let parsed = Digest::parse(text.trim()).ok();
        if parsed.is_none() {
            tracing::warn!(path = %path.display(), "ignoring a malformed derived-image index entry");
        }
        parsed
    }

    /// Records `key -> digest` atomically and durably (blocking).
    fn put(&self, key: &Key, digest: &Digest) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        // Unique per write: two writers never share (and truncate) one temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(digest.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        let result = write();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The `/v2/<repo>/manifests/<reference>` hook: serves derived references, refuses writes to
/// reserved ones. `None` lets the ordinary handler run.
pub(crate) async fn intercept(
    reg: &Shared,
    repo: &RepoName,
    reference: &str,
    method: &Method,
) -> Option<Result<Response, OciError>> {
    if !reference.contains(RESERVED_TAG_MARKER) {
        return None;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Some(Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Denied,
            format!("tags containing {RESERVED_TAG_MARKER:?} are reserved for derived images"),
        )));
    }
    let Some((base, variant)) = parse_reference(reference) else {
        return Some(Err(OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            format!("unknown derived reference {reference:?} (use <tag>--berth-zstd, --berth-gzip or --berth-squash)"),
        )));
    };
    Some(serve_manifest(reg, repo, &base, variant, *method == Method::GET).await)
}

async fn serve_manifest(
    reg: &Shared,
    repo: &RepoName,
    base: &Tag,
    variant: Variant,
    with_body: bool,
) -> Result<Response, OciError> {
    let m = resolve(reg, repo, base, variant).await?;
    Ok(crate::manifests::manifest_response(
        &m.digest,
        &m.media_type,
        &m.content,
        with_body,
    ))
}

/// The derived manifest of `repo:base` for `variant`, built at most once at a time.
async fn resolve(
    reg: &Shared,
    repo: &RepoName,
    base: &Tag,
    variant: Variant,
) -> Result<StoredManifest, OciError> {
    let (r2, repo2, base2) = (reg.clone(), repo.clone(), base.clone());
    let source = blocking(move || Ok(r2.meta.manifest_by_tag(&repo2, &base2)?))
        .await?
        .ok_or_else(|| {
            OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::ManifestUnknown,
                format!("manifest unknown: {repo}:{base}"),
            )
        })?;
    derive(reg, repo, source, variant).await
}

/// Builds (or finds) the derived image of `source`.
pub(crate) async fn derive(
    reg: &Shared,
    repo: &RepoName,
    source: StoredManifest,
    variant: Variant,
) -> Result<StoredManifest, OciError> {
    let key: Key = (repo.to_string(), source.digest.to_string(), variant);
    if let Some(m) = cached(reg, repo, &key).await? {
        return Ok(m);
    }
    let flight = lock(&reg.derived.flights)
        .entry(key.clone())
        .or_default()
        .clone();
    let (r2, repo2, key2) = (reg.clone(), repo.clone(), key.clone());
    let outcome = flight
        .get_or_init(|| async move {
            // A task of its own: a client that disconnects does not cancel the build others wait on.
            let task = tokio::spawn(async move {
                let built = build(&r2, &repo2, source, variant).await;
                let counters = &r2.metrics.transcode;
                match &built {
                    Ok(digest) => {
                        counters.manifests_built.fetch_add(1, Ordering::Relaxed);
                        // Recorded by the flight's leader only, once per build.
                        let (r3, digest) = (r2.clone(), digest.clone());
                        let recorded = blocking(move || {
                            if let Err(e) = r3.derived.index.put(&key2, &digest) {
                                // Only a cache: the image is served; a restart rebuilds it.
                                tracing::warn!(error = %e, digest = %digest, "recording a derived image on disk");
                            }
                            Ok(())
                        });
                        let _ = recorded.await;
                    }
                    Err(_) => {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                built.map_err(|e| (e.status, e.code, e.message, e.detail))
            });
            task.await.unwrap_or_else(|e| {
                Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    e.to_string(),
                    None,
                ))
            })
        })
        .await
        .clone();
    {
        let mut flights = lock(&reg.derived.flights);
        if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&key);
        }
    }
    let digest = outcome.map_err(|(status, code, msg, detail)| {
        let err = OciError::new(
            status,
            code,
            format!("cannot derive the {} image: {msg}", variant.name()),
        );
        match detail {
            Some(d) => err.with_detail(d),
            None => err,
        }
    })?;
    remember(&reg.derived.finished, key, digest.clone());
    let (r2, repo2) = (reg.clone(), repo.clone());
    blocking(move || Ok(r2.meta.manifest_by_digest(&repo2, &digest)?))
        .await?
        .ok_or_else(|| OciError::internal(&io::Error::other("derived manifest vanished")))
}

fn remember(finished: &Mutex<HashMap<Key, Digest>>, key: Key, digest: Digest) {
    let mut finished = lock(finished);
    if finished.len() >= FINISHED_MAX {
        finished.clear();
    }
    finished.insert(key, digest);
}

/// A finished derived image from memory or the on-disk index whose manifest is still stored.
async fn cached(
    reg: &Shared,
    repo: &RepoName,
    key: &Key,
) -> Result<Option<StoredManifest>, OciError> {
    let known = lock(&reg.derived.finished).get(key).cloned();
    let (r2, repo2, key2) = (reg.clone(), repo.clone(), key.clone());
    blocking(move || {
        let from_disk = known.is_none();
        let Some(d) = known.or_else(|| r2.derived.index.get(&key2)) else {
            return Ok(None);
        };
        let m = r2.meta.manifest_by_digest(&repo2, &d)?;
        if m.is_some() && from_disk {
            remember(&r2.derived.finished, key2, d);
        }
        Ok(m)
    })
    .await
}

/// The transcoder's error (mapped in `error.rs`), naming the layer it concerns.
fn layer_error(e: TranscodeError, layer: &Digest) -> OciError {
    let mut err = OciError::from(e);
    if let Some(detail) = err.detail.as_mut() {
        detail["layer"] = serde_json::Value::String(layer.to_string());
    }
    err
}

/// Runs `produce` into a fresh upload; commits it under the digest `produce` reports (the
/// store checks it against the upload's own hash, which the transcoder reads instead of
/// hashing the output twice) and links it into `repo`, or discards the staging file on error.
fn store_blob<T>(
    reg: &Shared,
    repo: &RepoName,
    produce: impl FnOnce(UploadWriter) -> Result<(T, Digest, u64, UploadWriter), OciError>,
) -> Result<T, OciError> {
    let writer = UploadWriter::create(&reg.blobs, Algorithm::Sha256)?;
    let id = writer.id().clone();
    match produce(writer) {
        Ok((value, digest, size, sink)) => {
            reg.blobs.commit(sink, &digest)?;
            reg.meta.link_blob(repo, &digest, size)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(discard) = reg.blobs.discard_upload(&id) {
                tracing::warn!(error = %discard, "discarding failed conversion");
            }
            Err(e)
        }
    }
}

fn read_small_blob(reg: &Shared, digest: &Digest) -> Result<Vec<u8>, OciError> {
    use std::io::Read;
    let blob = reg.blobs.open_blob(digest)?.ok_or_else(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("blob {digest} missing"),
        )
    })?;
    if blob.len > CONFIG_SIZE_MAX {
        return Err(OciError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::SizeInvalid,
            format!("image config larger than {CONFIG_SIZE_MAX} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(blob.len as usize);
    blob.file
        .take(CONFIG_SIZE_MAX)
        .read_to_end(&mut out)
        .map_err(|e| {
            OciError::from(StorageError::Io {
                context: format!("reading {digest}"),
                source: e,
            })
        })?;
    Ok(out)
}

fn layer_compression(d: &Descriptor) -> Result<Compression, OciError> {
    Compression::from_media_type(&d.media_type).ok_or_else(|| {
        OciError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unsupported,
            format!(
                "layer {} has media type {:?}, not a tar layer",
                d.digest, d.media_type
            ),
        )
    })
}

/// A stored layer for reading from start to end, every 1 MiB chunk checked against its crc32
/// before its bytes are used (so a conversion of a stored tar need not re-hash it).
fn open_layer(reg: &Shared, d: &Descriptor) -> Result<(CheckedReader, u64), OciError> {
    let blob = reg.blobs.open_verified(&d.digest)?.ok_or_else(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            format!("layer {} missing", d.digest),
        )
    })?;
    let len = blob.len;
    Ok((blob.into_reader(), len))
}

/// Converts one layer (blocking). Same compression in and out keeps the blob.
fn convert_layer(
    reg: &Shared,
    repo: &RepoName,
    d: &Descriptor,
    to: Compression,
    diff_id: Option<Digest>,
) -> Result<LayerOut, OciError> {
    let from = layer_compression(d)?;
    if from == to {
        return Ok(LayerOut {
            media_type: to.oci_layer_media_type().into(),
            digest: d.digest.clone(),
            size: d.size,
        });
    }
    let _span = tracing::info_span!("transcode", repo = %repo, digest = %d.digest, to = to.name())
        .entered();
    let (input, len) = open_layer(reg, d)?;
    let cfg = reg.derived.transcoder.clone();
    // A stored tar whose digest is its diff_id, read through checked reads: not re-hashed.
    let known = match &diff_id {
        Some(id) if from == Compression::None && *id == d.digest => DiffId::KnownInput(id),
        other => other.as_ref().into(),
    };
    let done = store_blob(reg, repo, |sink| {
        let (done, sink) = berth_transcoder::transcode_self_digesting(
            &cfg,
            from,
            to,
            input,
            len,
            known,
            sink,
            UploadWriter::digest_of_written,
        )
        .map_err(|e| layer_error(e, &d.digest))?;
        Ok((done.clone(), done.digest, done.size, sink))
    })?;
    reg.metrics
        .transcode
        .layer(done.uncompressed_size, done.size);
    tracing::info!(new = %done.digest, size = done.size, "layer converted");
    Ok(LayerOut {
        media_type: to.oci_layer_media_type().into(),
        digest: done.digest,
        size: done.size,
    })
}

async fn build(
    reg: &Shared,
    repo: &RepoName,
    source: StoredManifest,
    variant: Variant,
) -> Result<Digest, OciError> {
    let parsed = manifest::parse(&source.content, Some(&source.media_type))?;
    if parsed.kind == ManifestKind::Index {
        return build_index(reg, repo, &source, &parsed, variant).await;
    }
    let config = parsed.config.clone().ok_or_else(|| {
        OciError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ManifestInvalid,
            "manifest has no config",
        )
    })?;
    let (r2, cd) = (reg.clone(), config.digest.clone());
    let config_bytes = blocking(move || read_small_blob(&r2, &cd)).await?;
    let diff_ids = image::diff_ids(&config_bytes).map_err(OciError::from)?;
    if diff_ids.len() != parsed.layers.len() {
        return Err(OciError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ManifestInvalid,
            "the config's diff_ids do not match the manifest's layers",
        ));
    }
    let (new_config, layers) = match variant {
        Variant::Zstd | Variant::Gzip => {
            let to = if variant == Variant::Zstd {
                Compression::Zstd
            } else {
                Compression::Gzip
            };
            (
                None,
                convert_all(reg, repo, &parsed.layers, &diff_ids, to).await?,
            )
        }
        Variant::Squash => {
            let _permit = reg.derived.permits.clone().acquire_owned().await;
            let (r2, repo2, layers, src) = (
                reg.clone(),
                repo.clone(),
                parsed.layers.clone(),
                source.digest.clone(),
            );
            let (cfg, layer) =
                blocking(move || squash_blocking(&r2, &repo2, &layers, &config_bytes, &src))
                    .await?;
            (Some(cfg), vec![layer])
        }
    };
    let content = image::rewrite_manifest(
        &source.content,
        &source.digest,
        variant.name(),
        new_config.as_ref().map(|(d, s)| (d, *s)),
        &layers,
    )
    .map_err(OciError::from)?;
    record_derived(reg, repo, content, image::OCI_MANIFEST).await
}

/// Derives every image child of an index and stores the new index.
async fn build_index(
    reg: &Shared,
    repo: &RepoName,
    source: &StoredManifest,
    parsed: &manifest::ParsedManifest,
    variant: Variant,
) -> Result<Digest, OciError> {
    let jobs = parsed.manifests.iter().map(|child| {
        let (reg, repo, child) = (reg.clone(), repo.clone(), child.clone());
        async move {
            let (r2, repo2, cd) = (reg.clone(), repo.clone(), child.digest.clone());
            let stored = blocking(move || Ok(r2.meta.manifest_by_digest(&repo2, &cd)?))
                .await?
                .ok_or_else(|| {
                    OciError::new(
                        StatusCode::NOT_FOUND,
                        ErrorCode::ManifestUnknown,
                        format!("child manifest {} of the index is not stored", child.digest),
                    )
                })?;
            if !derivable_image(&stored) {
                return Ok::<_, OciError>(None);
            }
            let m = derive_child(reg, repo, stored, variant).await?;
            Ok(Some((m.digest, m.content.len() as u64)))
        }
    });
    let children = futures_util::future::try_join_all(jobs).await?;
    let content = image::rewrite_index(&source.content, &source.digest, variant.name(), &children)
        .map_err(OciError::from)?;
    record_derived(reg, repo, content, image::OCI_INDEX).await
}

/// [`derive`] for an index's child, boxed as a `Send` future: derive -> build ->
/// build_index -> derive is a recursive async call, whose future type must be named.
fn derive_child(
    reg: Shared,
    repo: RepoName,
    source: StoredManifest,
    variant: Variant,
) -> futures_util::future::BoxFuture<'static, Result<StoredManifest, OciError>> {
    Box::pin(async move { derive(&reg, &repo, source, variant).await })
}

/// An image manifest whose layers are all tar layers (not an attestation or artifact).
fn derivable_image(m: &StoredManifest) -> bool {
    match manifest::parse(&m.content, Some(&m.media_type)) {
        Ok(p) => {
            p.kind == ManifestKind::Image
                && !p.layers.is_empty()
                && p.layers
                    .iter()
                    .all(|l| Compression::from_media_type(&l.media_type).is_some())
        }
        Err(_) => false,
    }
}

async fn convert_all(
    reg: &Shared,
    repo: &RepoName,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    to: Compression,
) -> Result<Vec<LayerOut>, OciError> {
    let jobs = layers.iter().zip(diff_ids).map(|(d, id)| {
        let (r2, repo2, d, id) = (reg.clone(), repo.clone(), d.clone(), id.clone());
        async move {
            let _permit = r2.derived.permits.clone().acquire_owned().await;
            let r3 = r2.clone();
            blocking(move || convert_layer(&r3, &repo2, &d, to, Some(id))).await
        }
    });
    futures_util::future::try_join_all(jobs).await
}

/// Squashes the layers into one gzip layer and writes the new config (blocking).
fn squash_blocking(
    reg: &Shared,
    repo: &RepoName,
    layers: &[Descriptor],
    config: &[u8],
    source: &Digest,
) -> Result<((Digest, u64), LayerOut), OciError> {
    let _span = tracing::info_span!("squash", repo = %repo, source = %source).entered();
    let cfg = reg.derived.transcoder.clone();
    let mut kinds = Vec::with_capacity(layers.len());
    for d in layers {
        kinds.push(layer_compression(d)?);
    }
    let done = store_blob(reg, repo, |sink| {
        let pipe = berth_transcoder::EncodePipeline::into_self_digesting(
            &cfg,
            Compression::Gzip,
            sink,
            UploadWriter::digest_of_written,
        )
        .map_err(OciError::from)?;
        let mut open = |i: usize| {
            let d = &layers[i];
            let (input, len) = open_layer(reg, d)
                .map_err(|e| TranscodeError::Input(io::Error::other(e.message)))?;
            berth_transcoder::decoder(kinds[i], input, cfg.expansion_limit(len))
        };
        let (_, pipe) = berth_transcoder::squash::squash(&cfg, layers.len(), &mut open, pipe)
            .map_err(OciError::from)?;
        let (done, sink) = pipe.finish().map_err(OciError::from)?;
        Ok((done.clone(), done.digest, done.size, sink))
    })?;
    reg.metrics
        .transcode
        .layer(done.uncompressed_size, done.size);
    let new_config = image::squash_config(config, &done.diff_id, source).map_err(OciError::from)?;
    let config_digest = Digest::sha256_of(&new_config);
    let config_len = new_config.len() as u64;
    store_blob(reg, repo, |mut sink| {
        sink.write_all(&new_config)
            .map_err(|e| OciError::internal(&e))?;
        Ok(((), config_digest.clone(), config_len, sink))
    })?;
    Ok((
        (config_digest, config_len),
        LayerOut {
            media_type: Compression::Gzip.oci_layer_media_type().into(),
            digest: done.digest,
            size: done.size,
        },
    ))
}

/// `GET /berth/v1/squash/<repo>/<tag>`: the squashed image as a `docker load` archive,
/// streamed from the cached squashed layer.
pub(crate) async fn squash_archive(
    State(reg): State<Shared>,
    AxPath(rest): AxPath<String>,
) -> Response {
    squash_archive_inner(&reg, &rest)
        .await
        .unwrap_or_else(|e| e.into_response())
}

async fn squash_archive_inner(reg: &Shared, rest: &str) -> Result<Response, OciError> {
    let (repo, tag) = rest.rsplit_once('/').ok_or_else(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameInvalid,
            "expected /berth/v1/squash/<repo>/<tag>",
        )
    })?;
    let repo = RepoName::parse(repo)?;
    let tag = Tag::parse(tag)?;
    let m = resolve(reg, &repo, &tag, Variant::Squash).await?;
    let parsed = manifest::parse(&m.content, Some(&m.media_type))?;
    if parsed.kind == ManifestKind::Index {
        return Err(OciError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unsupported,
            format!("{repo}:{tag} is a multi-platform index; a docker-load archive holds one image: use a platform's tag"),
        ));
    }
    let (config, layer) = match (parsed.config, parsed.layers.first()) {
        (Some(c), Some(l)) => (c, l.clone()),
        _ => {
            return Err(OciError::internal(&io::Error::other(
                "squashed manifest malformed",
            )))
        }
    };
    let (r2, cd) = (reg.clone(), config.digest.clone());
    let config_bytes = blocking(move || read_small_blob(&r2, &cd)).await?;
    let repo_tag = format!("{repo}:{tag}");
    let (head, tail) = image::docker_archive(
        &config_bytes,
        &config.digest,
        &layer.digest,
        layer.size,
        &repo_tag,
    )
    .map_err(OciError::from)?;
    let (r2, ld) = (reg.clone(), layer.digest.clone());
    let (input, _) = blocking(move || {
        open_layer(
            &r2,
            &Descriptor {
                media_type: String::new(),
                digest: ld,
                size: 0,
                artifact_type: None,
                annotations: None,
                platform: None,
                urls: None,
            },
        )
    })
    .await?;
    let total = head.len() as u64 + layer.size + tail.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(STREAM_CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut input = input;
        if tx.blocking_send(Ok(Bytes::from(head))).is_err() {
            return;
        }
        loop {
            let mut buf = vec![0u8; STREAM_CHUNK_SIZE];
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::from(tail)));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert("content-length", HeaderValue::from(total));
    Ok(resp)
}

/// After a manifest push by tag: converts eagerly when the repository is configured so.
pub(crate) fn after_push(reg: &Shared, repo: &RepoName, reference: &str) {
    if !reg.derived.config.eager_for(repo)
        || reference.starts_with("sha") && reference.contains(':')
    {
        return;
    }
    let Ok(tag) = Tag::parse(reference) else {
        return;
    };
    let variants: Vec<Variant> = reg
        .derived
        .config
        .eager_variants
        .iter()
        .filter_map(|v| Variant::parse(v))
        .collect();
    let (reg, repo) = (reg.clone(), repo.clone());
    let task = async move {
        for v in variants {
            match resolve(&reg, &repo, &tag, v).await {
                Ok(m) => {
                    tracing::info!(repo = %repo, tag = %tag, variant = v.name(), digest = %m.digest, "eager conversion done")
                }
                Err(e) => {
                    tracing::warn!(repo = %repo, tag = %tag, variant = v.name(), error = ?e, "eager conversion failed")
                }
            }
        }
    };
    tokio::spawn(task);
}

/// Records a derived manifest or index (untagged, so GC sees its references) and returns its
/// digest.
async fn record_derived(
    reg: &Shared,
    repo: &RepoName,
    content: Vec<u8>,
    media_type: &'static str,
) -> Result<Digest, OciError> {
    let (r2, repo2) = (reg.clone(), repo.clone());
    blocking(move || {
        let parsed = manifest::parse(&content, Some(media_type))?;
        let digest = Digest::sha256_of(&content);
        r2.meta.put_manifest(NewManifest {
            repo: &repo2,
            digest: &digest,
            parsed: &parsed,
            content: &content,
            tag: None,
            tag_options: Default::default(),
        })?;
        Ok(digest)
    })
    .await
}
