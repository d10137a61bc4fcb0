//! Blob links answered from memory on the read path of small GETs.
//!
//! A GET first asks whether the repository links the blob and whether its use was recorded
//! lately (`blob_use`). On a 4 KiB GET that SQLite read transaction, with its `fcntl` locks
//! on the WAL index, was ~7% of the machine's samples (docs/benchmarks.md). This keeps the
//! answer — size and last recorded use — for links found in the database, and forgets all of
//! them whenever anything is written: a link is served from here only while no write has
//! happened since it was read, so a delete, a garbage collection or a touch is seen at once.
//!
//! Writes by other processes are not seen here. None of those allowed while a node runs
//! removes a link (`berth tag` and `berth retention` change tags; `berth fetch --data-dir`
//! and `berth gc` are for a stopped node), and no negative answer is kept, so a link added
//! elsewhere is found by the next read.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock;

/// Entries kept at most; the map is emptied when full (the next reads refill it). An entry
/// is ~170 bytes (two strings and the map's overhead): at most ~3 MiB, inside the node's
/// memory budget (docs/benchmarks.md).
const LINKS_MAX: usize = 16_384;

#[derive(Default)]
pub(super) struct LinkCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every write; an answer read before a write is not remembered after it.
    generation: u64,
    /// (repository, digest) → (size, last recorded use in ms).
    links: HashMap<(String, String), (i64, i64)>,
}

impl LinkCache {
    /// The remembered link of `digest` in `repo`, if no write happened since it was read.
    pub(super) fn get(&self, repo: &str, digest: &str) -> Option<(i64, i64)> {
        let inner = lock(&self.inner);
        inner
            .links
            .get(&(repo.to_owned(), digest.to_owned()))
            .copied()
    }

    /// The generation to pass to [`LinkCache::remember`]: read it before the database.
    pub(super) fn generation(&self) -> u64 {
        lock(&self.inner).generation
    }

    /// Keeps a link read from the database when nothing was written since `generation`.
    pub(super) fn remember(&self, generation: u64, repo: &str, digest: &str, link: (i64, i64)) {
        let mut inner = lock(&self.inner);
        if inner.generation != generation {
            return;
        }
        if inner.links.len() >= LINKS_MAX {
            inner.links.clear();
        }
        inner
            .links
            .insert((repo.to_owned(), digest.to_owned()), link);
    }

    /// Forgets every link: called after each committed (or attempted) write.
    pub(super) fn written(&self) {
        let mut inner = lock(&self.inner);
        inner.generation = inner.generation.wrapping_add(1);
        inner.links.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_forgets_links_and_refuses_answers_read_before_it() {
        let cache = LinkCache::default();
        let g = cache.generation();
        cache.remember(g, "r", "d", (4, 100));
        assert_eq!(cache.get("r", "d"), Some((4, 100)));
        cache.written();
        assert_eq!(cache.get("r", "d"), None, "a write forgets");
        // Read before the write, remembered after it: dropped.
        cache.remember(g, "r", "d", (4, 100));
        assert_eq!(cache.get("r", "d"), None, "a stale answer is not kept");
        let g2 = cache.generation();
        cache.remember(g2, "r", "d", (4, 200));
        assert_eq!(cache.get("r", "d"), Some((4, 200)));
    }
}
