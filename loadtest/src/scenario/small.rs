//! `small`: the metadata path. Setup pushes `count` single-layer images with `size`-byte
//! (default 4 KiB) layers; steps rotate HEAD layer, GET layer (verified) and GET manifest by
//! tag (verified), spread over the images.

use super::{ensure_images, ids, pick};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Digest, Image, ImageShape};
use crate::error::ReqError;
use crate::stats::{OpKind, Recorder};
use std::time::Instant;

struct Item {
    tag: String,
    manifest: Digest,
    layer: Digest,
    layer_size: u64,
}

/// Prepared small-object workload.
pub struct Small {
    repo: String,
    items: Vec<Item>,
    seed: u64,
}

impl Small {
    /// Pushes the tiny images.
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<Small, ReqError> {
        let repo = format!("{}/small", cfg.repo_prefix);
        let shape = ImageShape {
            layers: cfg.layers(),
            layer_size: cfg.size(),
        };
        let images: Vec<(String, Image)> = (0..cfg.count().unwrap_or(1))
            .map(|i| {
                let key = derive_key(cfg.seed, &[ids::SMALL, shape.layer_size, i]);
                (format!("s{}-t{i}", cfg.seed), Image::build(key, shape))
            })
            .collect();
        ensure_images(client, &repo, &images).await?;
        let items = images
            .into_iter()
            .filter_map(|(tag, img)| {
                let layer = img.layers.first()?;
                Some(Item {
                    tag,
                    layer: layer.digest.clone(),
                    layer_size: layer.content.len(),
                    manifest: img.manifest_digest,
                })
            })
            .collect();
        Ok(Small {
            repo,
            items,
            seed: cfg.seed,
        })
    }

    /// One HEAD, blob GET or manifest GET.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let i = pick(self.seed, ids::SMALL, seq / 3, self.items.len() as u64) as usize;
        let Some(it) = self.items.get(i) else { return };
        let t = Instant::now();
        match seq % 3 {
            0 => {
                let r = client
                    .head_blob(&self.repo, &it.layer)
                    .await
                    .and_then(|len| match len {
                        Some(l) if l == it.layer_size => Ok(0),
                        other => Err(ReqError::protocol(format!(
                            "HEAD {}: length {other:?}, want {}",
                            it.layer, it.layer_size
                        ))),
                    });
                rec.record(OpKind::BlobHead, t, &r);
            }
            1 => {
                let r = client.get_blob(&self.repo, &it.layer, it.layer_size).await;
                rec.record(OpKind::BlobGet, t, &r);
            }
            _ => {
                let r = client
                    .get_manifest(&self.repo, &it.tag, Some(&it.manifest))
                    .await
                    .map(|m| m.len() as u64);
                rec.record(OpKind::ManifestGet, t, &r);
            }
        }
    }
}
