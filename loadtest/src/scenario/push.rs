//! `push`: each step pushes a new image (content derived from `(seed, seq)`, so nothing is
//! deduplicated by the registry): layers with `image_parallelism` in flight using the
//! configured upload mode, then the config, then the manifest by tag.
//!
//! The monolithic and single-PUT modes need a layer's digest before its first byte, as a
//! real client has it from building the layer. When the run is bounded by a request count
//! and its layers fit in [`PREPARED_BYTES_MAX`] (shared by the targets), every image is
//! generated and hashed into memory during the untimed setup, so the measured pushes cost
//! the client only the sending (like `curl -T` of a file in the page cache). Otherwise each
//! step generates and
//! hashes its image before the image's timer starts (≈ 1.8 GB/s of sha256 here: not in the
//! latencies, but in the run's wall time and on the shared cores) and generates the bytes
//! again as it sends them.

use super::{bounded, clone_err, ids};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Image, ImageShape, PREPARED_BYTES_MAX};
use crate::error::ReqError;
use crate::oci::UploadMode;
use crate::stats::{OpKind, Recorder};
use std::time::Instant;

/// Prepared push workload.
pub struct Push {
    repo: String,
    shape: ImageShape,
    seed: u64,
    salt: u64,
    mode: UploadMode,
    chunk_size: u64,
    parallelism: usize,
    /// Images of steps `0..prepared.len()`, generated before the timer (see the module
    /// docs); later steps generate theirs.
    prepared: Vec<Image>,
}

impl Push {
    /// Prepares the images of a request-bounded run in memory when they fit (on a blocking
    /// thread: generating and hashing 1 GiB takes about a second).
    pub async fn setup(cfg: &RunConfig) -> Push {
        let mut push = Push::with_repo(cfg, format!("{}/push", cfg.repo_prefix), ids::PUSH);
        let Some(steps) = cfg.requests() else {
            return push;
        };
        let image_bytes = push.shape.layer_size * u64::from(push.shape.layers);
        // Every target prepares its own copy: the budget is shared between them.
        let budget = PREPARED_BYTES_MAX / cfg.targets.len().max(1) as u64;
        if steps.saturating_mul(image_bytes) > budget {
            return push;
        }
        let (seed, salt, shape) = (push.seed, push.salt, push.shape);
        let build = move || {
            (0..steps)
                .map(|seq| Image::build_in_memory(derive_key(seed, &[salt, seq]), shape))
                .collect()
        };
        // Only a panic inside the generator fails the join: generate while sending instead.
        push.prepared = tokio::task::spawn_blocking(build).await.unwrap_or_default();
        push
    }

    /// A pusher into `repo`, content keyed by `salt`.
    pub fn with_repo(cfg: &RunConfig, repo: String, salt: u64) -> Push {
        Push {
            repo,
            shape: ImageShape {
                layers: cfg.layers(),
                layer_size: cfg.size(),
            },
            seed: cfg.seed,
            salt,
            mode: cfg.upload_mode,
            chunk_size: cfg.chunk_size,
            parallelism: cfg.image_parallelism,
            prepared: Vec::new(),
        }
    }

    /// The image step `seq` pushes (tests use it to compute expected byte counts).
    pub fn image(seed: u64, salt: u64, seq: u64, shape: ImageShape) -> Image {
        Image::build(derive_key(seed, &[salt, seq]), shape)
    }

    /// Pushes image `seq`.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let built;
        let image = match usize::try_from(seq).ok().and_then(|i| self.prepared.get(i)) {
            Some(image) => image,
            None => {
                built = Push::image(self.seed, self.salt, seq, self.shape);
                &built
            }
        };
        let tag = format!("s{}-p{seq}", self.seed);
        let t = Instant::now();
        let r = self.push_image(client, &tag, image, rec).await;
        rec.record(OpKind::Push, t, &r);
    }

    async fn push_image(
        &self,
        client: &Client,
        tag: &str,
        image: &Image,
        rec: &mut Recorder,
    ) -> Result<u64, ReqError> {
        let uploads = image.layers.iter().chain([&image.config]);
        let uploads = uploads
            .map(|blob| async move {
                let t = Instant::now();
                let r = client
                    .push_blob(&self.repo, blob, self.mode, self.chunk_size)
                    .await
                    .map(|()| blob.content.len());
                (t.elapsed(), r)
            })
            .collect();
        let results = bounded(uploads, self.parallelism).await;
        let mut total = 0;
        let mut first_err = None;
        for (elapsed, r) in results {
            rec.record_elapsed(
                OpKind::BlobPush,
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
        if let Some(e) = first_err {
            return Err(e);
        }
        let t = Instant::now();
        let r = client
            .put_manifest(&self.repo, tag, &image.manifest)
            .await
            .map(|()| image.manifest.len() as u64);
        rec.record(
            OpKind::ManifestPut,
            t,
            &r.as_ref().map(|b| *b).map_err(clone_err),
        );
        Ok(total + r?)
    }
}
