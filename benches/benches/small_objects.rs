//! Small objects (issue 4): durable writes of 1000 × 16 KiB objects with 1 and 4 writers,
//! (a) through the real store (`UploadWriter` + `BlobStore::commit`: a file and an index per
//! blob, fsync of file, index and directories, then rename), with each I/O engine, versus
//! (b) a prototype append-only segment of CRC-checked records with group commit: one
//! `fdatasync` covers every record appended, by any writer, before it started. Nobody returns
//! before their record is durable in either layout.
//!
//! `cargo bench -p berth-benches --bench small_objects` (plain `main`: each round is a few
//! seconds of fsyncs, too slow for criterion's sampling). Prints one line per layout ×
//! writers: median of `ROUNDS` rounds, objects/s, fsync calls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_oci::{Algorithm, Digest};
use berth_storage::{BlobStore, IoEngine, UploadWriter};

const OBJECTS: usize = 1000;
const OBJECT_LEN: usize = 16 << 10;
const ROUNDS: usize = 3;

fn object(round: usize, i: usize) -> Vec<u8> {
    let mut x = ((round as u64 + 1) * 0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1);
    (0..OBJECT_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `writers` threads, each storing its share of the round's objects with `put`.
fn run_writers(writers: usize, round: usize, put: &(dyn Fn(&[u8]) + Sync)) -> Duration {
    let objects: Vec<Vec<u8>> = (0..OBJECTS).map(|i| object(round, i)).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let objects = &objects;
            s.spawn(move || {
                for obj in objects.iter().skip(w).step_by(writers) {
                    put(obj);
                }
            });
        }
    });
    start.elapsed()
}

/// (b): an append-only segment. Record: magic, payload length, crc32 of digest + payload,
/// sha256 digest, payload.
struct Segment {
    file: File,
    state: Mutex<SegmentState>,
    synced: Condvar,
    fsyncs: AtomicU64,
}

#[derive(Default)]
struct SegmentState {
    /// End of the appended (written, maybe not durable) records.
    end: u64,
    /// Everything before this offset is durable.
    durable: u64,
    syncing: bool,
}

const RECORD_MAGIC: u32 = 0xBE47_0001;

impl Segment {
    fn create(path: &std::path::Path) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Segment {
            file,
            state: Mutex::new(SegmentState::default()),
            synced: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        })
    }

    /// Appends one record and returns once it is durable.
    fn put(&self, payload: &[u8]) -> io::Result<u64> {
        let digest = Digest::sha256_of(payload);
        let digest_bytes = hex::decode(digest.hex()).map_err(io::Error::other)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&digest_bytes);
        crc.update(payload);
        let mut record = Vec::with_capacity(12 + 32 + payload.len());
        record.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc.finalize().to_le_bytes());
        record.extend_from_slice(&digest_bytes);
        record.extend_from_slice(payload);
        // Write under the lock (a page-cache copy, microseconds), so every byte before `end`
        // is written when a sync starts.
        let end = {
            let mut state = self
                .state
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            self.file.write_all_at(&record, state.end)?;
            state.end += record.len() as u64;
            state.end
        };
        self.sync_upto(end)?;
        Ok(end - record.len() as u64)
    }

    /// Group commit: the first waiter syncs everything appended so far; the others wait for
    /// a sync that started after their record was written.
    fn sync_upto(&self, end: u64) -> io::Result<()> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        loop {
            if state.durable >= end {
                return Ok(());
            }
            if state.syncing {
                state = self
                    .synced
                    .wait(state)
                    .map_err(|_| io::Error::other("poisoned"))?;
                continue;
            }
            state.syncing = true;
            let target = state.end;
            drop(state);
            let result = self.file.sync_data();
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            state = self
                .state
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            state.syncing = false;
            if result.is_ok() {
                state.durable = state.durable.max(target);
            }
            self.synced.notify_all();
            result?;
        }
    }

    /// Reads every record back and checks its crc (the pair assertion of the prototype).
    fn check(&self) -> io::Result<usize> {
        let len = self.file.metadata()?.len();
        let (mut at, mut count) = (0u64, 0usize);
        let mut head = [0u8; 44];
        while at < len {
            self.file.read_exact_at(&mut head, at)?;
            let word =
                |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let (magic, n, crc) = (word(0), word(4) as usize, word(8));
            let mut payload = vec![0u8; n];
            self.file.read_exact_at(&mut payload, at + 44)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&head[12..44]);
            h.update(&payload);
            if magic != RECORD_MAGIC || h.finalize() != crc {
                return Err(io::Error::other(format!("bad record at {at}")));
            }
            at += 44 + n as u64;
            count += 1;
        }
        Ok(count)
    }
}

/// The reference "before": the commit sequence the store used before issue 4's engine work,
/// replayed with std calls: write + fsync the staging file, fsync the staging directory,
/// write + fsync the index, rename both, fsync the shard directory.
fn legacy_put(root: &std::path::Path, obj: &[u8]) -> io::Result<()> {
    let digest = Digest::sha256_of(obj);
    let mut chunks = berth_storage::ChunkHasher::default();
    chunks.update(obj);
    let index = chunks.finish().encode();
    let staging = root.join("uploads").join(digest.hex());
    std::fs::create_dir_all(&staging)?;
    let data = staging.join("data");
    let f = File::create(&data)?;
    f.write_all_at(obj, 0)?;
    f.sync_all()?;
    File::open(&staging)?.sync_all()?;
    let shard = root.join("blobs").join(&digest.hex()[..2]);
    if !shard.exists() {
        std::fs::create_dir_all(&shard)?;
        File::open(root.join("blobs"))?.sync_all()?;
    }
    let idx = staging.join("idx");
    let i = File::create(&idx)?;
    i.write_all_at(&index, 0)?;
    i.sync_all()?;
    std::fs::rename(&idx, shard.join(format!("{}.idx", digest.hex())))?;
    std::fs::rename(&data, shard.join(digest.hex()))?;
    File::open(&shard)?.sync_all()?;
    std::fs::remove_dir_all(&staging)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(name: &str, writers: usize, times: Vec<Duration>, fsyncs: Option<u64>) {
    let rates: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", OBJECTS as f64 / t.as_secs_f64()))
        .collect();
    let m = median(times);
    println!(
        "{name:<28} writers={writers} median {:>8.1} ms  {:>7.0} objects/s  (rounds: {} objects/s){}",
        m.as_secs_f64() * 1e3,
        OBJECTS as f64 / m.as_secs_f64(),
        rates.join(", "),
        fsyncs
            .map(|f| format!("  fdatasyncs/round: {f}"))
            .unwrap_or_default()
    );
}

fn main() {
    // Under `cargo test --benches` / `cargo bench -- --list` only prove it starts.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        println!("small_objects: bench");
        return;
    }
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("tempdir");
    println!(
        "{OBJECTS} × {} KiB durable writes; data on {}",
        OBJECT_LEN >> 10,
        dir.path().display()
    );
    for writers in [1usize, 4] {
        let legacy = dir.path().join("legacy");
        let times = (0..ROUNDS)
            .map(|round| {
                let put = |obj: &[u8]| legacy_put(&legacy, obj).expect("legacy put");
                run_writers(writers, round + 1000 * writers, &put)
            })
            .collect();
        report("legacy_commit_sequence/std", writers, times, None);
        for engine in IoEngine::ALL {
            let store = BlobStore::open_with(
                &dir.path().join(format!("store-{}", engine.as_str())),
                engine,
            )
            .expect("store");
            let times = (0..ROUNDS)
                .map(|round| {
                    let put = |obj: &[u8]| {
                        let digest = Digest::sha256_of(obj);
                        let mut w =
                            UploadWriter::create(&store, Algorithm::Sha256).expect("create");
                        w.write(obj).expect("write");
                        store.commit(w, &digest).expect("commit");
                    };
                    run_writers(writers, round + 10 * writers, &put)
                })
                .collect();
            report(
                &format!("file_per_blob/{}", engine.as_str()),
                writers,
                times,
                None,
            );
        }
        let mut times = Vec::new();
        let mut fsyncs = 0;
        for round in 0..ROUNDS {
            let segment = Segment::create(&dir.path().join(format!("segment-{writers}-{round}")))
                .expect("segment");
            let put = |obj: &[u8]| {
                segment.put(obj).expect("append");
            };
            times.push(run_writers(writers, round + 100, &put));
            assert_eq!(segment.check().expect("check"), OBJECTS);
            fsyncs = segment.fsyncs.load(Ordering::Relaxed);
        }
        report("segment_group_commit", writers, times, Some(fsyncs));
    }
}
