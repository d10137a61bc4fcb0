//! `push`: each step pushes a new image (content derived from `(seed, seq)`, so nothing is
//! deduplicated by the registry): layers with `image_parallelism` in flight using the
//! configured upload mode, then the config, then the manifest by tag.
//!
//! Layer digests are computed before the image's timer starts (a streaming hash pass):
//! the monolithic and single-PUT modes need the digest up front. That pass costs client
//! CPU (≈ 1.8 GB/s of sha256 here) that is not in the latencies but does share the cores.

use super::{bounded, clone_err, ids};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Image, ImageShape};
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
}

impl Push {
    /// Push needs no setup beyond the ping.
    pub fn new(cfg: &RunConfig) -> Push {
        Push::with_repo(cfg, format!("{}/push", cfg.repo_prefix), ids::PUSH)
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
        }
    }

    /// The image step `seq` pushes (tests use it to compute expected byte counts).
    pub fn image(seed: u64, salt: u64, seq: u64, shape: ImageShape) -> Image {
        Image::build(derive_key(seed, &[salt, seq]), shape)
    }

    /// Pushes image `seq`.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let image = Push::image(self.seed, self.salt, seq, self.shape);
        let tag = format!("s{}-p{seq}", self.seed);
        let t = Instant::now();
        let r = self.push_image(client, &tag, &image, rec).await;
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
