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
    serve_connections(
        listener,
        app,
        Duration::from_secs(config.shutdown_grace_seconds),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// The accept loop: HTTP/1.1 connections served by hyper over [`SendfileIo`], so blob bodies
/// go file → socket with `sendfile(2)` (berth_registry::zerocopy). On SIGINT/SIGTERM it stops
/// accepting, closes idle keep-alive connections, and lets in-flight requests finish for
/// `grace`.
async fn serve_connections(listener: tokio::net::TcpListener, app: axum::Router, grace: Duration) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Headers and a sendfile body go out as separate writes: no Nagle delay between them.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let router = app.clone();
        let service = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            // Peer addresses feed the audit log ("from where").
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
            req.extensions_mut()
                .insert(berth_registry::zerocopy::ZeroCopy);
            tower::ServiceExt::oneshot(router.clone(), req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            // Vectored writes: hyper passes body frames by reference, which the zero-copy
            // path relies on (berth_registry::zerocopy's invariants).
            .writev(true)
            .serve_connection(
                TokioIo::new(berth_registry::zerocopy::SendfileIo::new(stream)),
                TowerToHyperService::new(service),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => tracing::warn!(
            grace_seconds = grace.as_secs(),
            "grace period over; exiting with requests in flight"
        ),
    }
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
