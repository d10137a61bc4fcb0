//! `mixed`: pulls of the `pull` data set interleaved with pushes of new images into a
//! separate repo; `push_ratio` of the steps (chosen from `(seed, seq)`) are pushes.

use super::{ids, pull::Pull, push::Push};
use crate::client::Client;
use crate::config::RunConfig;
use crate::data::derive_key;
use crate::error::ReqError;
use crate::stats::Recorder;

/// Prepared mixed workload.
pub struct Mixed {
    pull: Pull,
    push: Push,
    seed: u64,
    /// Pushes happen when a step's 64-bit draw is below this.
    push_below: u64,
}

impl Mixed {
    /// Sets up the pull data set.
    pub async fn setup(cfg: &RunConfig, client: &Client) -> Result<Mixed, ReqError> {
        Ok(Mixed {
            pull: Pull::setup(cfg, client).await?,
            push: Push::with_repo(cfg, format!("{}/mixed-push", cfg.repo_prefix), ids::MIXED),
            seed: cfg.seed,
            push_below: (cfg.push_ratio * u64::MAX as f64) as u64,
        })
    }

    /// One pull or one push.
    pub async fn step(&self, client: &Client, seq: u64, rec: &mut Recorder) {
        let draw = derive_key(self.seed, &[ids::MIXED, seq]);
        if draw < self.push_below {
            self.push.step(client, seq, rec).await;
        } else {
            self.pull.step(client, seq, rec).await;
        }
    }
}
