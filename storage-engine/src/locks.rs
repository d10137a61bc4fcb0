//! The per-digest lock that makes blob file deletion safe against concurrent links.
//!
//! Held by (1) an upload's commit from the dedup check / rename through the database link,
//! (2) a mount from its `stat` through the link, and (3) GC from its "no repository links
//! this digest" check through the file removal. So a link and a deletion of the same digest
//! never interleave: either the link is recorded first (GC sees it and keeps the file), or
//! the file is gone first (the commit renames its own staged copy in; the mount falls back
//! to an upload).
//!
//! Striped, not one mutex per digest: a fixed table of [`DIGEST_LOCK_STRIPES`] mutexes
//! indexed by the digest's leading hex, process-wide (shared by every `BlobStore` of the
//! process). Bounded memory, no allocation, no `unsafe`; two different digests contend only
//! when they share a stripe (1 in 1024) and are committed at the same instant. A holder
//! never takes a second digest lock, so stripes cannot deadlock.

use std::sync::{Mutex, MutexGuard};

use berth_oci::Digest;

use crate::BlobStore;

/// Number of lock stripes.
pub const DIGEST_LOCK_STRIPES: usize = 1024;

static STRIPES: [Mutex<()>; DIGEST_LOCK_STRIPES] = [const { Mutex::new(()) }; DIGEST_LOCK_STRIPES];

/// Holds the lock of one digest (its stripe) until dropped.
pub struct DigestGuard {
    _guard: MutexGuard<'static, ()>,
}

fn stripe(digest: &Digest) -> usize {
    let hex = digest.hex();
    let lead = u32::from_str_radix(&hex[..hex.len().min(6)], 16).unwrap_or(0);
    lead as usize % DIGEST_LOCK_STRIPES
}

impl BlobStore {
    /// Locks `digest` against a concurrent link or deletion (see the module doc). Blocking:
    /// call from a blocking thread, and never hold two digest locks at once.
    pub fn lock_digest(&self, digest: &Digest) -> DigestGuard {
        let guard = STRIPES[stripe(digest)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        DigestGuard { _guard: guard }
    }
}
