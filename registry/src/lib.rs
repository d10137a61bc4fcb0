//! berth's HTTP surface: the OCI Distribution API (`/v2/`), health and metrics.
//!
//! The principal type is [`Registry`], configured by [`RegistryConfig`], built over a
//! [`berth_storage::BlobStore`] and a [`berth_storage::MetadataStore`]; [`Registry::router`]
//! turns it into an axum `Router`.
//!
//! Invariants: this is the only crate that speaks HTTP; every `/v2/` error is produced by
//! [`error::OciError`]; a handler never holds a whole blob in memory (bodies are streamed to
//! and from files); storage and database calls run on blocking threads, never on the async
//! executor.
#![deny(missing_docs)]

pub mod api;
pub mod auth;
mod blobs;
pub mod derived;
pub mod error;
mod listing;
mod manifests;
pub mod metrics;
pub mod route;
pub mod source;
pub mod tls;
pub mod torrent;
mod uploads;
pub mod zerocopy;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_oci::RepoName;
use berth_storage::{BlobStore, MetadataStore};

/// Locks `m`, taking the data even if another thread panicked while holding it: every
/// mutex here guards plain tables whose each update is one statement, so a panic elsewhere
/// cannot leave them half-written, and one failed request must not wedge the node.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

use crate::error::{ErrorCode, OciError};
use crate::metrics::Metrics;
use crate::route::V2Route;

/// Settings of the registry API. Every field has a working default.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Largest blob accepted, in bytes (default 64 GiB).
    pub blob_size_max: u64,
    /// Largest page of tags or repositories returned by one listing request (default 1000).
    pub page_size_max: usize,
    /// Upload sessions kept in memory at once (default 4096). Evicted sessions are resumed
    /// from disk on their next request.
    pub upload_sessions_max: usize,
    /// Derived images (zstd / gzip / squash), see [`derived`].
    pub transcoder: derived::DerivedConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            blob_size_max: 64 << 30,
            page_size_max: 1000,
            upload_sessions_max: 4096,
            transcoder: derived::DerivedConfig::default(),
        }
    }
}

impl RegistryConfig {
    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.blob_size_max == 0 {
            return Err("registry.blob_size_max must be positive".into());
        }
        if self.page_size_max == 0 {
            return Err("registry.page_size_max must be positive".into());
        }
        if self.upload_sessions_max == 0 {
            return Err("registry.upload_sessions_max must be positive".into());
        }
        self.transcoder.validate()?;
        Ok(())
    }
}

/// The registry: storage, metadata, upload sessions and metrics.
pub struct Registry {
    config: RegistryConfig,
    blobs: BlobStore,
    meta: Arc<dyn MetadataStore>,
    uploads: uploads::Sessions,
    metrics: Metrics,
    mirror: source::Mirror,
    lifecycle: api::Lifecycle,
    derived: derived::Derived,
    /// Identity and access control; `None` when `auth.enabled = false` (everything open).
    auth: Option<Arc<auth::Auth>>,
}

type Shared = Arc<Registry>;

impl Registry {
    /// Builds a registry over a blob store and a metadata store, and reconciles the two views
    /// of upload sessions left by a crash: staging data the database does not know (a
    /// monolithic upload) is discarded, and sessions whose staging data is gone are forgotten.
    pub fn new(
        config: RegistryConfig,
        blobs: BlobStore,
        meta: Arc<dyn MetadataStore>,
    ) -> Result<Registry, OciError> {
        let known: std::collections::HashSet<String> = meta.upload_ids()?.into_iter().collect();
        let staged: std::collections::HashSet<String> =
            blobs.staged_upload_ids()?.into_iter().collect();
        for id in staged.difference(&known) {
            if let Some(id) = berth_storage::UploadId::parse(id) {
                tracing::info!(upload = id.as_str(), "discarding orphaned staging data");
                blobs.discard_upload(&id)?;
            }
        }
        for id in known.difference(&staged) {
            tracing::info!(
                upload = id.as_str(),
                "forgetting upload session without staging data"
            );
            meta.delete_upload(id)?;
        }
        let uploads = uploads::Sessions::new(config.upload_sessions_max);
        let derived = derived::Derived::new(config.transcoder.clone(), blobs.root());
        Ok(Registry {
            config,
            blobs,
            meta,
            uploads,
            metrics: Metrics::default(),
            mirror: source::Mirror::default(),
            lifecycle: api::Lifecycle::default(),
            derived,
            auth: None,
        })
    }

    /// Takes a blob that failed an integrity check out of service: it is moved to
    /// `quarantine/` and counted. Called from blocking threads.
    pub(crate) fn note_corrupt(&self, digest: &berth_oci::Digest) {
        self.metrics.record_corrupt_blob();
        if let Err(e) = self.blobs.quarantine(digest) {
            tracing::error!(%digest, error = %e, "could not quarantine corrupt blob");
        }
    }

    /// Makes this registry a pull-through cache: local misses are fetched from `source`
    /// (see [`source`]).
    pub fn with_content_source(
        mut self,
        source: std::sync::Arc<dyn source::ContentSource>,
    ) -> Self {
        self.mirror.source = Some(source);
        self
    }

    /// Sets the tracker announce URL written into served `.torrent` files.
    pub fn with_torrent_announce(mut self, announce: Option<String>) -> Self {
        self.mirror.announce = announce;
        self
    }

    /// The metrics registry (the node adds its own series).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The HTTP router: `/v2/...`, `/metrics`, `/healthz`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(render_metrics))
            .route("/berth/v1/torrent/{*path}", get(torrent::get))
            .route("/berth/v1/squash/{*path}", get(derived::squash_archive))
            .route("/api/v1/{*path}", axum::routing::any(auth::api::dispatch))
            .route(
                "/auth/token",
                get(auth::token::endpoint).post(auth::token::endpoint),
            )
            .route("/auth/oidc/login", get(auth::oidc::login))
            .route("/auth/oidc/callback", get(auth::oidc::callback))
            .fallback(dispatch)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                auth::guard_extras,
            ))
            .with_state(self)
    }
}

async fn render_metrics(State(reg): State<Shared>) -> Response {
    let mut resp = reg.metrics.render().into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Runs a metadata read inline on the async worker. Only for single indexed lookups in the
/// metadata database (microseconds, from SQLite's page cache): a hop to the blocking pool
/// cost more than the lookup itself. Manifest GETs went from ~25k to ~33–52k req/s with 16
/// clients here (docs/benchmarks.md). File reads never use this: they may wait on the disk.
pub(crate) fn metadata_read<T>(f: impl FnOnce() -> Result<T, OciError>) -> Result<T, OciError> {
    f()
}

/// Runs a storage or database call on a blocking thread.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, OciError>
where
    F: FnOnce() -> Result<T, OciError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => Err(OciError::internal(&join)),
    }
}

async fn dispatch(State(reg): State<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = route::parse(&path);
    let label = route.map_or("other", |r| r.label());
    let mut resp = match route {
        // Identity: authenticate and authorize before any storage access (no-op with auth off).
        Some(route) => match auth::authorize_v2(&reg, &route, req).await {
            Ok((req, audit)) => {
                let resp = handle(&reg, route, req)
                    .await
                    .unwrap_or_else(|e| e.into_response());
                auth::record(audit, resp.status()).await;
                resp
            }
            Err(e) => e.into_response(),
        },
        None => OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "no such endpoint",
        )
        .into_response(),
    };
    let status = resp.status().as_u16();
    reg.metrics
        .record_request(label, metrics::method_label(&method), status);
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(%method, %path, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    let (parts, body) = resp.into_parts();
    let body = match (label, parts.extensions.get::<source::Origin>()) {
        ("blob", None) if status < 300 => {
            reg.metrics.count_source_body(source::Origin::Local, body)
        }
        _ => body,
    };
    Response::from_parts(parts, reg.metrics.count_body(body))
}

async fn handle(reg: &Shared, route: V2Route<'_>, req: Request) -> Result<Response, OciError> {
    // Split now: handlers borrow the head across awaits, and only `Parts` is `Sync`.
    let (req, body) = req.into_parts();
    let method = req.method.clone();
    let unsupported = || {
        Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{method} is not supported on this endpoint"),
        ))
    };
    match route {
        V2Route::Base => match method {
            Method::GET | Method::HEAD => Ok(json_response(StatusCode::OK, "{}")),
            _ => unsupported(),
        },
        V2Route::Catalog => match method {
            Method::GET => listing::catalog(reg, &req).await,
            _ => unsupported(),
        },
        V2Route::Tags { repo } => match method {
            Method::GET => listing::tags(reg, repo_name(repo)?, &req).await,
            _ => unsupported(),
        },
        V2Route::Referrers { repo, digest } => match method {
            Method::GET => listing::referrers(reg, repo_name(repo)?, digest, &req).await,
            _ => unsupported(),
        },
        V2Route::Manifest { repo, reference } => {
            let repo = repo_name(repo)?;
            if let Some(resp) = derived::intercept(reg, &repo, reference, &method).await {
                return resp;
            }
            match method {
                Method::GET => manifests::get(reg, repo, reference, &req, true).await,
                Method::HEAD => manifests::get(reg, repo, reference, &req, false).await,
                Method::PUT => {
                    let resp = manifests::put(reg, repo.clone(), reference, &req, body).await;
                    if resp.is_ok() {
                        derived::after_push(reg, &repo, reference);
                    }
                    resp
                }
                Method::DELETE => manifests::delete(reg, repo, reference).await,
                _ => unsupported(),
            }
        }
        V2Route::Blob { repo, digest } => {
            let repo = repo_name(repo)?;
            match method {
                Method::GET => blobs::get(reg, repo, digest, &req, true).await,
                Method::HEAD => blobs::get(reg, repo, digest, &req, false).await,
                Method::DELETE => blobs::delete(reg, repo, digest).await,
                _ => unsupported(),
            }
        }
        V2Route::UploadStart { repo } => match method {
            Method::POST => uploads::start(reg, repo_name(repo)?, &req, body).await,
            _ => unsupported(),
        },
        V2Route::Upload { repo, id } => {
            let repo = repo_name(repo)?;
            match method {
                Method::PATCH => uploads::patch(reg, repo, id, &req, body).await,
                Method::PUT => uploads::finish(reg, repo, id, &req, body).await,
                Method::GET => uploads::status(reg, repo, id).await,
                Method::DELETE => uploads::cancel(reg, repo, id).await,
                _ => unsupported(),
            }
        }
    }
}

fn repo_name(raw: &str) -> Result<RepoName, OciError> {
    Ok(RepoName::parse(raw)?)
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

/// Reads a query parameter (percent-decoded).
pub(crate) fn query_param(req: &Parts, name: &str) -> Option<String> {
    let query = req.uri.query()?;
    form_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn header_str<'a>(req: &'a Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}
