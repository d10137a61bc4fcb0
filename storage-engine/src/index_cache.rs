//! A bounded in-memory cache of decoded chunk crcs, so a blob GET does not read and decode its
//! `.idx` sidecar every time.
//!
//! Blobs are content-addressed and immutable, so a cached entry stays right until the blob is
//! removed or quarantined, which invalidate it. What the cache does not relax: every read
//! still checks its chunk's bytes against the crc, and `open_verified` still checks that the
//! index covers the file's current length. Scrub (`BlobStore::verify`) reads the sidecar from
//! disk, so a damaged `.idx` is still found.
//!
//! Bounds: [`ENTRIES_MAX`] blobs and [`CRC_BYTES_MAX`] bytes of crcs (4 bytes per MiB of blob:
//! 8 MiB of crcs cover 2 TiB of blobs). Eviction is first-in first-out: simple, O(1), and a
//! miss costs one small file read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_oci::Digest;

/// Most blobs whose crcs are cached.
pub(crate) const ENTRIES_MAX: usize = 16_384;
/// Most bytes of crcs cached.
pub(crate) const CRC_BYTES_MAX: usize = 8 << 20;

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Digest, Arc<[u32]>>,
    /// Insertion order; may hold digests already removed from `map` (skipped on eviction).
    order: VecDeque<Digest>,
    crc_bytes: usize,
}

/// Shared by every clone of a `BlobStore`.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexCache {
    inner: Arc<Mutex<Inner>>,
}

impl IndexCache {
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<[u32]>> {
        self.lock().map.get(digest).cloned()
    }

    pub(crate) fn insert(&self, digest: &Digest, crcs: Arc<[u32]>) {
        let bytes = crcs.len() * 4;
        if bytes > CRC_BYTES_MAX / 4 {
            return; // a huge blob would evict a quarter of the cache: not worth it
        }
        let mut inner = self.lock();
        if let Some(old) = inner.map.insert(digest.clone(), crcs) {
            inner.crc_bytes -= old.len() * 4;
        } else {
            inner.order.push_back(digest.clone());
        }
        inner.crc_bytes += bytes;
        while inner.map.len() > ENTRIES_MAX || inner.crc_bytes > CRC_BYTES_MAX {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.crc_bytes -= old.len() * 4;
            }
        }
        // Stale queue entries (removed digests) are bounded too.
        if inner.order.len() > 2 * ENTRIES_MAX {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|d| map.contains_key(d));
        }
    }

    pub(crate) fn invalidate(&self, digest: &Digest) {
        let mut inner = self.lock();
        if let Some(old) = inner.map.remove(digest) {
            inner.crc_bytes -= old.len() * 4;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is complete
        // before it can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn stats(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.order.len(), inner.crc_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_entries_and_bytes_and_invalidated() {
        let cache = IndexCache::default();
        let digests: Vec<Digest> = (0..ENTRIES_MAX + 10)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .collect();
        for d in &digests {
            cache.insert(d, Arc::from(vec![1u32; 2]));
        }
        let (entries, _, bytes) = cache.stats();
        assert_eq!(entries, ENTRIES_MAX);
        assert_eq!(bytes, ENTRIES_MAX * 8);
        assert!(cache.get(&digests[0]).is_none(), "oldest evicted first");
        let newest = &digests[digests.len() - 1];
        assert_eq!(cache.get(newest).as_deref(), Some(&[1u32, 1][..]));
        cache.invalidate(newest);
        assert!(cache.get(newest).is_none());

        // Bytes: entries of CRC_BYTES_MAX / 8 bytes each; at most 8 fit.
        let cache = IndexCache::default();
        for d in &digests[..20] {
            cache.insert(d, Arc::from(vec![0u32; CRC_BYTES_MAX / 32]));
        }
        let (entries, order, bytes) = cache.stats();
        assert_eq!((entries, order), (8, 8));
        assert_eq!(bytes, CRC_BYTES_MAX);
        // Too big to cache at all.
        cache.insert(&digests[30], Arc::from(vec![0u32; CRC_BYTES_MAX]));
        assert!(cache.get(&digests[30]).is_none());

        // Invalidated digests leave the queue bounded.
        let cache = IndexCache::default();
        for _ in 0..3 {
            for d in &digests[..ENTRIES_MAX] {
                cache.insert(d, Arc::from(vec![0u32; 1]));
                cache.invalidate(d);
            }
        }
        let (entries, order, bytes) = cache.stats();
        assert_eq!((entries, bytes), (0, 0));
        assert!(order <= 2 * ENTRIES_MAX + 1, "{order}");
    }
}
