//! `blob-get`: repeated GETs of `count` (default 1) blobs of `size`, each download hashed
//! as it streams and checked against its digest. Raw read throughput.

use super::{ensure_blob, ids, pick};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::{derive_key, Blob, BlobSpec, Content};
use crate::error::ReqError;
use crate::stats::{OpKind, Recorder};
use std::time::Instant;

/// Prepared blob-get workload.
pub struct BlobGet {
    repo: String,
    blobs: Vec<Blob>,
    seed: u64,
}

impl BlobGet {
    /// Uploads the blobs unless present.
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<BlobGet, ReqError> {
        let repo = format!("{}/blob", cfg.repo_prefix);
        let size = cfg.size();
        let blobs: Vec<Blob> = (0..cfg.count().unwrap_or(1))
            .map(|i| {
                let spec = BlobSpec {
                    key: derive_key(cfg.seed, &[ids::BLOB, size, i]),
                    size,
                };
                Blob {
                    digest: spec.digest(),
                    content: Content::Gen(spec),
                }
            })
            .collect();
        for b in &blobs {
            ensure_blob(client, &repo, b).await?;
        }
        Ok(BlobGet {
            repo,
            blobs,
            seed: cfg.seed,
        })
    }

    /// One verified GET.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let i = pick(self.seed, ids::BLOB, seq, self.blobs.len() as u64) as usize;
        let Some(b) = self.blobs.get(i) else { return };
        let t = Instant::now();
        let r = client
            .get_blob(&self.repo, &b.digest, b.content.len())
            .await;
        rec.record(OpKind::BlobGet, t, &r);
    }
}
