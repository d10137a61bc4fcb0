//! Online garbage collection, driven by the metadata database.
//!
//! The principal function is [`collect`], configured by [`GcOptions`], reporting a
//! [`GcReport`]. One run:
//! 1. deletes manifests nothing keeps alive (tags, the time-machine window, referrers,
//!    index children, recent pushes) — liveness computed inside the deleting transaction;
//! 2. removes repository → blob links that no manifest of that repository references and
//!    that were neither linked nor read (`HEAD`/`GET`) during the grace period;
//! 3. deletes the file of each blob whose last link went away in step 2, under the
//!    per-digest lock (see [`crate::locks`]) and after re-checking that no repository links it;
//! 4. sweeps `blobs/` for files linked by no repository and older than the grace period
//!    (left by a crash between the rename into `blobs/` and the database link);
//! 5. forgets tag history older than the time-machine window.
//!
//! Steps 1–3 read only the database; step 4 lists the blob directories but is not on any
//! request path. Pushes and pulls continue throughout: no read-only window.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_oci::{Algorithm, Digest};

use crate::blob::io_err;
use crate::meta::{GcWindow, MetaError, MetadataStore};
use crate::{BlobStore, StorageError};

/// Manifests or links handled per database transaction (keeps the writer lock short).
pub const GC_BATCH_SIZE: usize = 500;
/// Batches per phase per run; what is left waits for the next run.
pub const GC_BATCHES_MAX: usize = 200;

/// What a GC run keeps and whether it deletes.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Links made or read within this period are kept, and so are orphan files younger
    /// than it.
    pub grace: Duration,
    /// Manifests a tag pointed at within this window stay restorable and are kept.
    pub time_machine: Duration,
    /// Report only.
    pub dry_run: bool,
}

/// What a GC run did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Manifests deleted (per repository).
    pub manifests_deleted: u64,
    /// Their bytes.
    pub manifest_bytes: u64,
    /// Repository → blob links removed.
    pub blob_links_removed: u64,
    /// Blob files deleted because their last link went away.
    pub blobs_deleted: u64,
    /// Blob files deleted because no repository ever linked them (crash leftovers).
    pub orphan_files_deleted: u64,
    /// Bytes of blob files deleted (both kinds).
    pub bytes_reclaimed: u64,
    /// Tag history rows older than the window, forgotten.
    pub history_pruned: u64,
    /// Wall time of the run.
    pub duration_ms: u64,
}

/// Why a GC run stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The blob store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn ms_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs one collection. See the module doc for the steps and `docs/ARCHITECTURE.md` for
/// the invariant that keeps it from deleting a blob a push relies on.
pub fn collect(
    blobs: &BlobStore,
    meta: &dyn MetadataStore,
    opts: &GcOptions,
) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let now = SystemTime::now();
    let now_ms = ms_since_epoch(now);
    let keep = GcWindow {
        now_ms,
        grace_start_ms: now_ms - opts.grace.as_millis() as i64,
        window_start_ms: now_ms - opts.time_machine.as_millis() as i64,
    };
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let batches = if opts.dry_run { 1 } else { GC_BATCHES_MAX };
    for _ in 0..batches {
        let dead = meta.gc_manifests(&keep, opts.dry_run, GC_BATCH_SIZE)?;
        report.manifests_deleted += dead.len() as u64;
        report.manifest_bytes += dead.iter().map(|c| c.size).sum::<u64>();
        if dead.len() < GC_BATCH_SIZE {
            break;
        }
    }
    for _ in 0..batches {
        let links = meta.gc_blob_links(&keep, opts.dry_run, GC_BATCH_SIZE)?;
        report.blob_links_removed += links.len() as u64;
        let mut per_digest: HashMap<Digest, (u64, u64)> = HashMap::new();
        for c in &links {
            let e = per_digest.entry(c.digest.clone()).or_insert((0, c.size));
            e.0 += 1;
        }
        for (digest, (candidate_links, size)) in per_digest {
            if opts.dry_run {
                if meta.blob_link_count(&digest)? == candidate_links {
                    report.blobs_deleted += 1;
                    report.bytes_reclaimed += size;
                }
            } else if let Some(len) = delete_if_unlinked(blobs, meta, &digest, None)? {
                report.blobs_deleted += 1;
                report.bytes_reclaimed += len;
            }
        }
        if links.len() < GC_BATCH_SIZE {
            break;
        }
    }
    let cutoff = now.checked_sub(opts.grace).unwrap_or(UNIX_EPOCH);
    for_each_stored_blob(blobs, |digest| {
        if opts.dry_run {
            if meta.blob_link_count(&digest)? == 0 && older_than(blobs, &digest, cutoff)? {
                report.orphan_files_deleted += 1;
                report.bytes_reclaimed += blobs.stat(&digest)?.unwrap_or(0);
            }
        } else if let Some(len) = delete_if_unlinked(blobs, meta, &digest, Some(cutoff))? {
            report.orphan_files_deleted += 1;
            report.bytes_reclaimed += len;
        }
        Ok(())
    })?;
    if !opts.dry_run {
        report.history_pruned = meta.prune_tag_history(keep.window_start_ms)?;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Deletes a blob file if no repository links it (and, with `cutoff`, if it was written
/// before then). Returns the bytes freed. The check and the removal happen under the
/// digest's lock, which every link path holds from its existence check to its database
/// link: a link cannot slip in between.
fn delete_if_unlinked(
    blobs: &BlobStore,
    meta: &dyn MetadataStore,
    digest: &Digest,
    cutoff: Option<SystemTime>,
) -> Result<Option<u64>, GcError> {
    let _guard = blobs.lock_digest(digest);
    if meta.blob_link_count(digest)? > 0 {
        return Ok(None);
    }
    let path = blobs.blob_path(digest);
    let md = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(|| format!("stat {}", path.display()))(e).into()),
    };
    if let Some(cutoff) = cutoff {
        if md.modified().map_or(true, |m| m > cutoff) {
            return Ok(None);
        }
    }
    blobs.remove(digest)?;
    tracing::debug!(%digest, bytes = md.len(), "gc: deleted blob");
    Ok(Some(md.len()))
}

fn older_than(blobs: &BlobStore, digest: &Digest, cutoff: SystemTime) -> Result<bool, GcError> {
    let path = blobs.blob_path(digest);
    match fs::metadata(&path) {
        Ok(m) => Ok(m.modified().is_ok_and(|t| t <= cutoff)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(|| format!("stat {}", path.display()))(e).into()),
    }
}

/// Calls `f` for every blob file under `blobs/`, one shard directory in memory at a time
/// (sidecars and stray names skipped).
fn for_each_stored_blob(
    blobs: &BlobStore,
    mut f: impl FnMut(Digest) -> Result<(), GcError>,
) -> Result<(), GcError> {
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let top = blobs.root().join("blobs").join(algorithm.as_str());
        for shard in names(&top)? {
            for name in names(&top.join(&shard))? {
                if let Ok(d) = Digest::parse(&format!("{}:{name}", algorithm.as_str())) {
                    f(d)?;
                }
            }
        }
    }
    Ok(())
}

fn names(dir: &std::path::Path) -> Result<Vec<String>, GcError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(|| format!("listing {}", dir.display()))(e).into()),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}
