//! Wiring: open the stores, build the registry, serve until a shutdown signal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_registry::Registry;
use berth_storage::{BlobStore, SqliteMetadata};

use crate::config::NodeConfig;

pub async fn run(config: NodeConfig) -> Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let blobs = BlobStore::open(data_dir).context("opening blob store")?;
    let meta = SqliteMetadata::open(&data_dir.join("metadata.sqlite"))
        .context("opening metadata database")?;
    let registry = Registry::new(config.registry.clone(), blobs, Arc::new(meta))
        .map_err(|e| anyhow::anyhow!("starting registry: {}", e.message))?;
    let app = Arc::new(registry).router();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, data_dir = %data_dir.display(), "berth node serving");
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stopping_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result??,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_seconds = grace.as_secs(), "grace period over; exiting with requests in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `berth scrub`: checks every stored blob; exits non-zero if any is corrupt.
pub fn scrub(data_dir: &Path, full: bool) -> Result<()> {
    let blobs = BlobStore::open(data_dir).context("opening blob store")?;
    let report = blobs.scrub(full).context("scrubbing")?;
    println!(
        "scrubbed {} blobs ({} bytes): {} corrupt",
        report.checked,
        report.bytes,
        report.corrupt.len()
    );
    for (digest, detail) in &report.corrupt {
        println!("CORRUPT {digest}: {detail}");
    }
    if !report.corrupt.is_empty() {
        anyhow::bail!("{} corrupt blob(s) found", report.corrupt.len());
    }
    Ok(())
}
