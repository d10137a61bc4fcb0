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
    let meta: Arc<dyn berth_storage::meta::MetadataStore> = Arc::new(meta);
    // The peer layer (issue 5): off unless `[p2p] listen` is set.
    let p2p = if config.p2p.listen.is_empty() {
        None
    } else {
        Some(crate::p2p::P2p::start(
            &config.p2p,
            config.listen,
            blobs.clone(),
            meta.clone(),
            config
                .auth
                .enabled
                .then(|| data_dir.join("metadata.sqlite"))
                .as_deref(),
        )?)
    };
    let registry = Registry::new(config.registry.clone(), blobs, meta)
        .map_err(|e| anyhow::anyhow!("starting registry: {}", e.message))?;
    let registry = crate::mirror::wire(registry, &config, p2p.clone())?;
    // Identity and access (issue 7): off unless `auth.enabled`.
    let registry = if config.auth.enabled {
        let auth = berth_registry::auth::Auth::open(
            config.auth.clone(),
            data_dir,
            &data_dir.join("metadata.sqlite"),
        )
        .map_err(|e| anyhow::anyhow!("starting identity and access: {e}"))?;
        registry.with_auth(auth)
    } else {
        registry
    };
    let registry = Arc::new(registry.with_lifecycle(config.gc.clone(), config.api.clone()));
    // Tag expiry, retention and GC; stops when `_lifecycle_stop` is dropped at return.
    let (_lifecycle_stop, lifecycle_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(berth_registry::auth::run_audit_pruning(
        registry.clone(),
        lifecycle_rx.clone(),
    ));
    tokio::spawn(berth_registry::api::run_background(
        registry.clone(),
        lifecycle_rx,
    ));
    // BitTorrent seeding (issue 5): opt-in; stops when `_seeder` is dropped at return.
    let _seeder = match config.bittorrent.seed {
        true => Some(
            crate::bittorrent::Seeder::start(
                &config.bittorrent,
                data_dir,
                config.torrent_announce.clone(),
            )
            .await?,
        ),
        false => None,
    };
    let app = registry.router();
    // Peer-layer routes and rate limits (issue 5; rate limits also without p2p).
    let app = crate::p2p::wire_http(app, p2p.as_ref(), &config.p2p);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, data_dir = %data_dir.display(), "berth node serving");
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    // Peer addresses feed the audit log ("from where").
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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
pub fn scrub(data_dir: &Path, full: bool, quarantine: bool) -> Result<()> {
    let blobs = BlobStore::open(data_dir).context("opening blob store")?;
    let report = blobs.scrub(full, quarantine).context("scrubbing")?;
    println!(
        "scrubbed {} blobs ({} bytes): {} corrupt",
        report.checked,
        report.bytes,
        report.corrupt.len()
    );
    for (digest, detail) in &report.corrupt {
        println!("CORRUPT {digest}: {detail}");
    }
    if report.quarantined > 0 {
        println!(
            "moved {} corrupt blob(s) to {}",
            report.quarantined,
            data_dir.join("quarantine").display()
        );
    }
    if !report.corrupt.is_empty() {
        anyhow::bail!("{} corrupt blob(s) found", report.corrupt.len());
    }
    Ok(())
}
