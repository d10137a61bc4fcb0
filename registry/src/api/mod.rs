//! The management API under `/api/v1` (JSON): tag history and restore (the time machine),
//! tag expiry, repository / namespace policies (immutable tags, retention, quotas), usage,
//! and garbage collection. Also the background worker that expires tags, applies retention
//! and collects garbage.
//!
//! Reads are open; every other method needs `Authorization: Bearer <api.admin_token>`. With
//! no token configured, writes answer `403 DENIED` saying how to enable them (identity and
//! per-user permissions are a separate issue). Errors use the same `{"errors":[…]}` body as
//! `/v2/`.

pub mod labels;
mod routes;
mod worker;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use berth_oci::RepoName;
use berth_storage::gc::{GcOptions, GcReport};
use berth_storage::retention::RetentionReport;

pub(crate) use routes::dispatch;
pub use worker::run_background;

use crate::error::OciError;
use crate::{blocking, Registry, Shared};

/// Garbage collection, expiry and the time machine. `[gc]` in the node's config file.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Whether the background worker runs GC and retention (default true).
    pub enabled: bool,
    /// Seconds between background GC + retention runs (default 3600).
    pub interval_seconds: u64,
    /// Unreferenced blob links and orphan files younger than this, or read within it, are
    /// kept (default 3600): the longest a client may take between a blob `HEAD`/upload and
    /// the manifest `PUT` that uses it.
    pub grace_seconds: u64,
    /// Time-machine window: every tag change stays restorable this long (default 14 days).
    pub time_machine_seconds: u64,
    /// Seconds between sweeps that delete expired tags (default 30; reads hide expired
    /// tags immediately regardless).
    pub expiry_interval_seconds: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval_seconds: 3600,
            grace_seconds: 3600,
            time_machine_seconds: 14 * 86_400,
            expiry_interval_seconds: 30,
        }
    }
}

impl GcConfig {
    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_seconds == 0 {
            return Err("gc.interval_seconds must be positive".into());
        }
        if self.expiry_interval_seconds == 0 {
            return Err("gc.expiry_interval_seconds must be positive".into());
        }
        let ten_years = 10 * 365 * 86_400;
        if self.grace_seconds > ten_years || self.time_machine_seconds > ten_years {
            return Err(
                "gc.grace_seconds and gc.time_machine_seconds must be under 10 years".into(),
            );
        }
        Ok(())
    }

    /// The GC options these settings give.
    pub fn options(&self, dry_run: bool) -> GcOptions {
        GcOptions {
            grace: std::time::Duration::from_secs(self.grace_seconds),
            time_machine: std::time::Duration::from_secs(self.time_machine_seconds),
            dry_run,
        }
    }
}

/// The management API. `[api]` in the node's config file.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token for mutating `/api/v1` requests (env `BERTH_ADMIN_TOKEN`). Unset: writes
    /// are refused.
    pub admin_token: Option<String>,
}

/// Lifecycle state held by the registry.
#[derive(Default)]
pub(crate) struct Lifecycle {
    gc: GcConfig,
    api: ApiConfig,
    /// Serialises GC runs (worker and API) and keeps the last report.
    last_gc: tokio::sync::Mutex<Option<GcReport>>,
}

impl Lifecycle {
    /// Blob reads skip re-recording use younger than this: a tenth of the grace period,
    /// at most a minute, so a read protects its link for at least 90% of the grace period.
    pub(crate) fn touch_debounce_ms(&self) -> i64 {
        ((self.gc.grace_seconds as i64).saturating_mul(100)).min(60_000)
    }
}

impl Registry {
    /// Sets the lifecycle (GC, expiry, time machine) and management API settings.
    pub fn with_lifecycle(mut self, gc: GcConfig, api: ApiConfig) -> Self {
        self.lifecycle.gc = gc;
        self.lifecycle.api = api;
        self
    }
}

/// Counters of the lifecycle workers, rendered into `/metrics`.
#[derive(Default)]
pub struct LifecycleMetrics {
    gc_runs: AtomicU64,
    manifests_deleted: AtomicU64,
    blobs_deleted: AtomicU64,
    bytes_reclaimed: AtomicU64,
    tags_expired: AtomicU64,
    tags_pruned: AtomicU64,
}

impl LifecycleMetrics {
    fn record_gc(&self, r: &GcReport) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.manifests_deleted
            .fetch_add(r.manifests_deleted, Ordering::Relaxed);
        self.blobs_deleted
            .fetch_add(r.blobs_deleted + r.orphan_files_deleted, Ordering::Relaxed);
        self.bytes_reclaimed
            .fetch_add(r.bytes_reclaimed, Ordering::Relaxed);
    }

    /// Appends the lifecycle series to a text exposition.
    pub fn render(&self, out: &mut String) {
        let series = [
            (
                "berth_gc_runs_total",
                "Garbage collection runs completed.",
                &self.gc_runs,
            ),
            (
                "berth_gc_manifests_deleted_total",
                "Manifests deleted by GC.",
                &self.manifests_deleted,
            ),
            (
                "berth_gc_blobs_deleted_total",
                "Blob files deleted by GC (incl. orphans).",
                &self.blobs_deleted,
            ),
            (
                "berth_gc_bytes_reclaimed_total",
                "Bytes of blob files deleted by GC.",
                &self.bytes_reclaimed,
            ),
            (
                "berth_tags_expired_total",
                "Tags deleted because they expired.",
                &self.tags_expired,
            ),
            (
                "berth_tags_pruned_total",
                "Tags deleted by retention policies.",
                &self.tags_pruned,
            ),
        ];
        for (name, help, v) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Runs one GC (serialised with any other run) and records it in the metrics.
pub async fn run_gc(reg: &Arc<Registry>, dry_run: bool) -> Result<GcReport, OciError> {
    let mut last = reg.lifecycle.last_gc.lock().await;
    let reg2 = reg.clone();
    let opts = reg.lifecycle.gc.options(dry_run);
    let report = blocking(move || {
        berth_storage::gc::collect(&reg2.blobs, reg2.meta.as_ref(), &opts)
            .map_err(|e| OciError::internal(&e))
    })
    .await?;
    if !dry_run {
        reg.metrics.lifecycle.record_gc(&report);
        *last = Some(report.clone());
        tracing::info!(
            manifests = report.manifests_deleted,
            blobs = report.blobs_deleted,
            orphans = report.orphan_files_deleted,
            bytes = report.bytes_reclaimed,
            duration_ms = report.duration_ms,
            "gc run finished"
        );
    }
    Ok(report)
}

/// Deletes expired tags (recording `expire` events). Returns how many.
pub async fn run_expiry(reg: &Shared) -> Result<u64, OciError> {
    const EXPIRE_BATCH: usize = 1000;
    let reg2 = reg.clone();
    let expired = blocking(move || Ok(reg2.meta.expire_tags(now_ms(), EXPIRE_BATCH)?)).await?;
    for (repo, tag) in &expired {
        tracing::info!(repo = repo.as_str(), tag, "tag expired");
    }
    reg.metrics
        .lifecycle
        .tags_expired
        .fetch_add(expired.len() as u64, Ordering::Relaxed);
    Ok(expired.len() as u64)
}

/// Applies retention to the repositories whose name is `repo`, or that are in namespace
/// `namespace`, or (both `None`) to all.
pub async fn run_retention(
    reg: &Shared,
    repo: Option<RepoName>,
    namespace: Option<String>,
    dry_run: bool,
) -> Result<Vec<RetentionReport>, OciError> {
    const CATALOG_PAGE: usize = 1000;
    const CATALOG_PAGES_MAX: usize = 1000;
    let reg2 = reg.clone();
    let reports = blocking(move || {
        let repos: Vec<RepoName> = match repo {
            Some(r) => vec![r],
            None => {
                let mut all = Vec::new();
                let mut last: Option<String> = None;
                for _ in 0..CATALOG_PAGES_MAX {
                    let page = reg2.meta.catalog(last.as_deref(), CATALOG_PAGE)?;
                    last = page.items.last().cloned();
                    for name in page.items {
                        let Ok(r) = RepoName::parse(&name) else {
                            continue;
                        };
                        if namespace.as_deref().is_none_or(|ns| r.namespace() == ns) {
                            all.push(r);
                        }
                    }
                    if !page.more {
                        break;
                    }
                }
                all
            }
        };
        let mut out = Vec::new();
        for r in repos {
            let report =
                berth_storage::retention::apply(reg2.meta.as_ref(), &r, now_ms(), dry_run)?;
            if report.policy.is_some() {
                out.push(report);
            }
        }
        Ok(out)
    })
    .await?;
    if !dry_run {
        let n: usize = reports.iter().map(|r| r.pruned.len()).sum();
        reg.metrics
            .lifecycle
            .tags_pruned
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(reports)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
