//! Bounded in-memory caches of immutable blob facts, shared by every clone of a `BlobStore`:
//! - the **chunk-index cache** (decoded crcs), so a blob GET does not read and decode its
//!   `.idx` sidecar every time;
//! - the **small-blob cache** (the checked bytes of whole blobs of at most
//!   [`SMALL_BLOB_MAX`]), so a GET of a hot config or tiny layer costs no `open`, `statx`,
//!   read and `close` (4 of a 4 KiB GET's 6 system calls; docs/benchmarks.md).
//!
//! Blobs are content-addressed and immutable, so a cached entry stays right until the blob is
//! removed or quarantined, which invalidate it. What the caches do not relax: every read from
//! disk still checks its chunk's bytes against the crc (a small blob enters its cache only
//! as bytes that passed that check, so it never serves bytes nobody checked), and
//! `open_verified` still checks that the index covers the file's current length. Scrub
//! (`BlobStore::verify`) reads blob and sidecar from disk, so damage on disk is still found
//! (and quarantine drops the cached copy).
//!
//! A read racing a remove or a quarantine can put an entry back just after its invalidation.
//! It holds checked data of that same digest, so the worst case is a correct copy outliving its
//! file: GC removes only blobs no repository links, and a GET checks the link first.
//!
//! Bounds: a number of entries and a weight (bytes of crcs, or of blob); an entry heavier than
//! a quarter of the weight budget is not cached. Eviction is first-in first-out: simple,
//! O(1), and a miss costs one small file read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_oci::Digest;
use bytes::Bytes;

/// Most blobs whose crcs are cached.
pub(crate) const INDEX_ENTRIES_MAX: usize = 16_384;
/// Most bytes of crcs cached (4 bytes per MiB of blob: 8 MiB of crcs cover 2 TiB of blobs).
pub(crate) const INDEX_CRC_BYTES_MAX: usize = 8 << 20;
/// Largest blob whose bytes are cached whole.
pub const SMALL_BLOB_MAX: usize = 64 << 10;
/// Most bytes of small blobs cached (counted in RSS: the node's budget under load is 64 MiB).
pub(crate) const SMALL_BLOB_BYTES_MAX: usize = 8 << 20;

/// Decoded chunk crcs by blob.
pub(crate) type IndexCache = FifoCache<Arc<[u32]>>;
/// Checked bytes of whole small blobs.
pub(crate) type SmallBlobCache = FifoCache<Bytes>;

pub(crate) fn index_cache() -> IndexCache {
    FifoCache::new(INDEX_ENTRIES_MAX, INDEX_CRC_BYTES_MAX, |crcs| {
        crcs.len() * 4
    })
}

pub(crate) fn small_blob_cache() -> SmallBlobCache {
    // Each entry weighs at least 64 bytes (its map slot and `Bytes` header cost about that),
    // so tiny blobs are bounded by the entry count, larger ones by the 8 MiB of bytes.
    FifoCache::new(16_384, SMALL_BLOB_BYTES_MAX, |bytes| bytes.len().max(64))
}

#[derive(Debug)]
struct Inner<V> {
    map: HashMap<Digest, V>,
    /// Insertion order; may hold digests already removed from `map` (skipped on eviction).
    order: VecDeque<Digest>,
    weight: usize,
}

/// A bounded digest → value map, evicting first-in first-out.
#[derive(Clone, Debug)]
pub(crate) struct FifoCache<V> {
    inner: Arc<Mutex<Inner<V>>>,
    entries_max: usize,
    weight_max: usize,
    weigh: fn(&V) -> usize,
}

impl<V: Clone> FifoCache<V> {
    fn new(entries_max: usize, weight_max: usize, weigh: fn(&V) -> usize) -> Self {
        FifoCache {
            inner: Arc::new(Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                weight: 0,
            })),
            entries_max,
            weight_max,
            weigh,
        }
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<V> {
        self.lock().map.get(digest).cloned()
    }

    pub(crate) fn insert(&self, digest: &Digest, value: V) {
        let weight = (self.weigh)(&value);
        if weight > self.weight_max / 4 {
            return; // a huge entry would evict a quarter of the cache: not worth it
        }
        let weigh = self.weigh;
        let mut inner = self.lock();
        if let Some(old) = inner.map.insert(digest.clone(), value) {
            inner.weight -= weigh(&old);
        } else {
            inner.order.push_back(digest.clone());
        }
        inner.weight += weight;
        while inner.map.len() > self.entries_max || inner.weight > self.weight_max {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.weight -= weigh(&old);
            }
        }
        // Stale queue entries (removed digests) are bounded too.
        if inner.order.len() > 2 * self.entries_max {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|d| map.contains_key(d));
        }
    }

    pub(crate) fn invalidate(&self, digest: &Digest) {
        let weigh = self.weigh;
        let mut inner = self.lock();
        if let Some(old) = inner.map.remove(digest) {
            inner.weight -= weigh(&old);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock leaves consistent data (every update is complete
        // before it can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn stats(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.order.len(), inner.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_entries_and_bytes_and_invalidated() {
        let cache = index_cache();
        let digests: Vec<Digest> = (0..INDEX_ENTRIES_MAX + 10)
            .map(|i| Digest::sha256_of(&i.to_le_bytes()))
            .collect();
        for d in &digests {
            cache.insert(d, Arc::from(vec![1u32; 2]));
        }
        let (entries, _, bytes) = cache.stats();
        assert_eq!(entries, INDEX_ENTRIES_MAX);
        assert_eq!(bytes, INDEX_ENTRIES_MAX * 8);
        assert!(cache.get(&digests[0]).is_none(), "oldest evicted first");
        let newest = &digests[digests.len() - 1];
        assert_eq!(cache.get(newest).as_deref(), Some(&[1u32, 1][..]));
        cache.invalidate(newest);
        assert!(cache.get(newest).is_none());

        // Bytes: entries of INDEX_CRC_BYTES_MAX / 8 bytes each; at most 8 fit.
        let cache = index_cache();
        for d in &digests[..20] {
            cache.insert(d, Arc::from(vec![0u32; INDEX_CRC_BYTES_MAX / 32]));
        }
        let (entries, order, bytes) = cache.stats();
        assert_eq!((entries, order), (8, 8));
        assert_eq!(bytes, INDEX_CRC_BYTES_MAX);
        // Too big to cache at all.
        cache.insert(&digests[30], Arc::from(vec![0u32; INDEX_CRC_BYTES_MAX]));
        assert!(cache.get(&digests[30]).is_none());

        // Invalidated digests leave the queue bounded.
        let cache = index_cache();
        for _ in 0..3 {
            for d in &digests[..INDEX_ENTRIES_MAX] {
                cache.insert(d, Arc::from(vec![0u32; 1]));
                cache.invalidate(d);
            }
        }
        let (entries, order, bytes) = cache.stats();
        assert_eq!((entries, bytes), (0, 0));
        assert!(order <= 2 * INDEX_ENTRIES_MAX + 1, "{order}");
    }

    #[test]
    fn small_blobs_are_bounded_by_their_bytes() {
        let cache = small_blob_cache();
        let blob = Bytes::from(vec![7u8; SMALL_BLOB_MAX]);
        let n = SMALL_BLOB_BYTES_MAX / SMALL_BLOB_MAX;
        for i in 0..n + 5 {
            cache.insert(&Digest::sha256_of(&i.to_le_bytes()), blob.clone());
        }
        let (entries, _, bytes) = cache.stats();
        assert_eq!((entries, bytes), (n, SMALL_BLOB_BYTES_MAX));
        assert!(cache
            .get(&Digest::sha256_of(&0usize.to_le_bytes()))
            .is_none());
    }
}
