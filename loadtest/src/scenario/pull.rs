//! `pull`: what `docker pull` does. Setup pushes `count` images of `layers` × `size`; each
//! step pulls one of them by tag (manifest with docker's `Accept`, config, then layers with
//! `image_parallelism` in flight) and verifies every digest.

use super::{ensure_images, ids, pick, pull_image};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Digest, Image, ImageShape};
use crate::error::ReqError;
use crate::stats::{OpKind, Recorder};
use std::time::Instant;

/// Prepared pull workload.
pub struct Pull {
    repo: String,
    /// `(tag, manifest digest)` of each image.
    images: Vec<(String, Digest)>,
    seed: u64,
    parallelism: usize,
}

impl Pull {
    /// Pushes the images (skipping blobs already present).
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<Pull, ReqError> {
        let repo = format!("{}/pull", cfg.repo_prefix);
        let shape = ImageShape {
            layers: cfg.layers(),
            layer_size: cfg.size(),
        };
        let images: Vec<(String, Image)> = (0..cfg.count().unwrap_or(1))
            .map(|i| {
                let key = derive_key(cfg.seed, &[ids::PULL, i]);
                (image_tag(cfg.seed, i), Image::build(key, shape))
            })
            .collect();
        ensure_images(client, &repo, &images).await?;
        Ok(Pull {
            repo,
            images: images
                .into_iter()
                .map(|(t, img)| (t, img.manifest_digest))
                .collect(),
            seed: cfg.seed,
            parallelism: cfg.image_parallelism,
        })
    }

    /// Pulls one image.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let i = pick(self.seed, ids::PULL, seq, self.images.len() as u64) as usize;
        let Some((tag, digest)) = self.images.get(i) else {
            return;
        };
        let t = Instant::now();
        let r = pull_image(client, &self.repo, tag, Some(digest), self.parallelism, rec).await;
        rec.record(OpKind::Pull, t, &r);
    }
}

/// Tag of pull image `i` under `seed`.
pub fn image_tag(seed: u64, i: u64) -> String {
    format!("s{seed}-i{i}")
}
