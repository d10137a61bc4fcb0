//! The background worker: expires tags every `gc.expiry_interval_seconds`, and applies
//! retention then collects garbage every `gc.interval_seconds` (when `gc.enabled`).

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::Registry;

/// Runs until `stop` turns true (or its sender is dropped). One task; each step logs its
/// failure and the loop goes on.
pub async fn run_background(reg: Arc<Registry>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let gc = reg.lifecycle.gc.clone();
    let span = tracing::info_span!("lifecycle_worker");
    async move {
        let mut expiry = tokio::time::interval(Duration::from_secs(gc.expiry_interval_seconds));
        let mut collect = tokio::time::interval(Duration::from_secs(gc.interval_seconds));
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        collect.tick().await; // the first tick is immediate: wait one interval instead
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = expiry.tick() => {
                    if let Err(e) = super::run_expiry(&reg).await {
                        tracing::error!(error = %e.message, "tag expiry failed");
                    }
                }
                _ = collect.tick(), if gc.enabled => {
                    if let Err(e) = super::run_retention(&reg, None, None, false).await {
                        tracing::error!(error = %e.message, "retention failed");
                    }
                    if let Err(e) = super::run_gc(&reg, false).await {
                        tracing::error!(error = %e.message, "garbage collection failed");
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}
