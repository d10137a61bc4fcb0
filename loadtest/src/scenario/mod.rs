//! Workloads. Each scenario module has a `setup` (untimed; pushes the data it needs,
//! skipping blobs the registry already has) and a `step(seq)` that performs one operation
//! and records it. `seq` is the operation's global index for its target: every choice a
//! step makes derives from `(seed, seq)`, so runs are reproducible.

pub mod blob_get;
pub mod list;
pub mod mixed;
pub mod pull;
pub mod push;
pub mod small;

use crate::client::Client;
use crate::config::{RunConfig, ScenarioKind};
use crate::data::{Blob, Image};
use crate::error::ReqError;
use crate::oci::UploadMode;
use crate::stats::{OpKind, Recorder};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::time::Instant;

/// Path ids that keep the scenarios' generated content apart (public so tests can
/// regenerate exactly what a run pushed).
pub mod ids {
    #![allow(missing_docs)]
    pub const PULL: u64 = 1;
    pub const PUSH: u64 = 2;
    pub const MIXED: u64 = 3;
    pub const SMALL: u64 = 4;
    pub const LIST: u64 = 5;
    pub const BLOB: u64 = 6;
}

/// Setup uploads in flight at once.
const SETUP_PARALLELISM: usize = 8;

/// A prepared workload for one target.
pub enum Workload {
    /// See [`pull`].
    Pull(pull::Pull),
    /// See [`push`].
    Push(push::Push),
    /// See [`mixed`].
    Mixed(mixed::Mixed),
    /// See [`small`].
    Small(small::Small),
    /// See [`list`].
    List(list::List),
    /// See [`blob_get`].
    BlobGet(blob_get::BlobGet),
}

impl Workload {
    /// Runs the untimed setup phase against `client`.
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<Workload, ReqError> {
        client.ping().await?;
        Ok(match cfg.scenario {
            ScenarioKind::Pull => Workload::Pull(pull::Pull::setup(cfg, client).await?),
            ScenarioKind::Push => Workload::Push(push::Push::setup(cfg).await),
            ScenarioKind::Mixed => Workload::Mixed(mixed::Mixed::setup(cfg, client).await?),
            ScenarioKind::Small => Workload::Small(small::Small::setup(cfg, client).await?),
            ScenarioKind::List => Workload::List(list::List::setup(cfg, client).await?),
            ScenarioKind::BlobGet => {
                Workload::BlobGet(blob_get::BlobGet::setup(cfg, client).await?)
            }
        })
    }

    /// Performs operation `seq`, recording every request it makes.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        match self {
            Workload::Pull(w) => w.step(client, seq, rec).await,
            Workload::Push(w) => w.step(client, seq, rec).await,
            Workload::Mixed(w) => w.step(client, seq, rec).await,
            Workload::Small(w) => w.step(client, seq, rec).await,
            Workload::List(w) => w.step(client, seq, rec).await,
            Workload::BlobGet(w) => w.step(client, seq, rec).await,
        }
    }

    /// The kind recorded for an operation aborted at the phase's hard deadline.
    pub fn main_op(&self) -> OpKind {
        match self {
            Workload::Pull(_) | Workload::Mixed(_) => OpKind::Pull,
            Workload::Push(_) => OpKind::Push,
            Workload::Small(_) => OpKind::ManifestGet,
            Workload::List(_) => OpKind::CatalogWalk,
            Workload::BlobGet(_) => OpKind::BlobGet,
        }
    }
}

/// Pushes `blob` unless the registry already has it with the right length.
pub async fn ensure_blob(client: &Client, repo: &str, blob: &Blob) -> Result<(), ReqError> {
    if client.head_blob(repo, &blob.digest).await? == Some(blob.content.len()) {
        return Ok(());
    }
    client.push_blob(repo, blob, UploadMode::Put, 0).await
}

/// Setup: makes `image` available as `repo:tag` (blobs first, then the manifest).
pub async fn ensure_image(
    client: &Client,
    repo: &str,
    tag: &str,
    image: &Image,
) -> Result<(), ReqError> {
    let uploads = image.layers.iter().chain([&image.config]);
    let uploads = uploads.map(|b| ensure_blob(client, repo, b)).collect();
    all_ok(bounded(uploads, SETUP_PARALLELISM).await)?;
    client.put_manifest(repo, tag, &image.manifest).await
}

/// Setup: makes many images available, `SETUP_PARALLELISM` at a time.
pub async fn ensure_images(
    client: &Client,
    repo: &str,
    images: &[(String, Image)],
) -> Result<(), ReqError> {
    let pushes = images
        .iter()
        .map(|(tag, img)| ensure_image(client, repo, tag, img))
        .collect();
    all_ok(bounded(pushes, SETUP_PARALLELISM).await)
}

/// Runs `futs` with at most `limit` in flight; outputs in completion order.
///
/// Used instead of `StreamExt::buffer_unordered` over a mapping closure: that form trips
/// rustc's higher-ranked lifetime inference when the future must be `Send` (tokio::spawn).
pub async fn bounded<F: Future>(futs: Vec<F>, limit: usize) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futs.len());
    let mut pending = futs.into_iter();
    let mut running: FuturesUnordered<F> = pending.by_ref().take(limit.max(1)).collect();
    while let Some(r) = running.next().await {
        out.push(r);
        running.extend(pending.next());
    }
    out
}

/// The first error of a batch, if any.
pub fn all_ok(results: Vec<Result<(), ReqError>>) -> Result<(), ReqError> {
    results.into_iter().collect()
}

/// Pulls `repo:tag` as `docker pull` does, recording each request, and returns the content
/// bytes received. The manifest is checked against `expected` when given.
pub async fn pull_image(
    client: &Client,
    repo: &str,
    tag: &str,
    expected: Option<&crate::data::Digest>,
    parallelism: usize,
    rec: &mut Recorder,
) -> Result<u64, ReqError> {
    let t = Instant::now();
    let manifest = client.get_manifest(repo, tag, expected).await;
    rec.record(
        OpKind::ManifestGet,
        t,
        &manifest.as_ref().map(|m| m.len() as u64).map_err(clone_err),
    );
    let manifest = manifest?;
    let manifest_len = manifest.len() as u64;
    let manifest = crate::oci::parse_manifest(&manifest)?;
    let parse = |d: &crate::oci::Descriptor| {
        crate::data::Digest::parse(&d.digest)
            .map(|dg| (dg, d.size))
            .ok_or_else(|| ReqError::protocol(format!("bad digest {:?} in manifest", d.digest)))
    };
    let (config_digest, config_size) = parse(&manifest.config)?;
    let t = Instant::now();
    let config = client.get_blob(repo, &config_digest, config_size).await;
    rec.record(
        OpKind::BlobGet,
        t,
        &config.as_ref().map(|b| *b).map_err(clone_err),
    );
    let mut total = manifest_len + config?;
    let layers = manifest
        .layers
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let gets = layers
        .into_iter()
        .map(|(d, size)| async move {
            let t = Instant::now();
            let r = client.get_blob(repo, &d, size).await;
            (t.elapsed(), r)
        })
        .collect();
    let results = bounded(gets, parallelism).await;
    let mut first_err = None;
    for (elapsed, r) in results {
        rec.record_elapsed(
            OpKind::BlobGet,
            elapsed,
            &r.as_ref().map(|b| *b).map_err(clone_err),
        );
        match r {
            Ok(b) => total += b,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(total), Err)
}

/// Copies an error for recording while the original propagates.
pub fn clone_err(e: &ReqError) -> ReqError {
    ReqError::new(e.kind, e.detail.clone())
}

/// Maps `seq` to an index in `0..n`, scrambled so concurrent workers spread over items.
pub fn pick(seed: u64, salt: u64, seq: u64, n: u64) -> u64 {
    crate::data::derive_key(seed, &[salt, seq]) % n.max(1)
}
