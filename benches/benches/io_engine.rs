//! I/O engine design choice (issue 4): per-operation latency of page-cache reads with std
//! `pread`, berth's engine on a thread-local io_uring (`IoEngine::IoUring`: submit and wait on
//! the caller's thread), and a dedicated ring thread fed by a channel (the alternative design,
//! prototyped here only). Sizes: 4 KiB (small blob GETs) and 1 MiB (one chunk); plus a batch
//! of 4 × 1 MiB (read-ahead: one submission vs four `pread`s).
//!
//! `cargo bench -p berth-benches --bench io_engine`
//!
//! The ring-thread prototype needs `unsafe` (raw buffer pointers cross the channel); it lives
//! in this benchmark only, never in the product.
#![allow(unsafe_code)]

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Duration;

use berth_storage::IoEngine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};

const FILE_LEN: u64 = 64 << 20;

/// A read request for the ring thread: raw buffer, length, offset, and where to answer.
struct Request {
    fd: i32,
    buf: *mut u8,
    len: u32,
    offset: u64,
    reply: mpsc::SyncSender<i32>,
}

// SAFETY: the pointer is only dereferenced by the kernel while the sender blocks on `reply`.
unsafe impl Send for Request {}

/// Design (a): one thread owns a ring and serves requests from a channel.
struct RingThread {
    tx: mpsc::SyncSender<Request>,
}

impl RingThread {
    fn start() -> RingThread {
        let (tx, rx) = mpsc::sync_channel::<Request>(64);
        std::thread::spawn(move || {
            let mut ring = IoUring::new(64).expect("ring");
            while let Ok(req) = rx.recv() {
                let entry = opcode::Read::new(types::Fd(req.fd), req.buf, req.len)
                    .offset(req.offset)
                    .build();
                // SAFETY: the requester blocks until it gets the reply, sent after the
                // completion is reaped, so the buffer outlives the read.
                unsafe { ring.submission().push(&entry) }.expect("push");
                ring.submit_and_wait(1).expect("submit");
                let result = ring.completion().next().map(|c| c.result()).unwrap_or(-5);
                let _ = req.reply.send(result);
            }
        });
        RingThread { tx }
    }

    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Request {
                fd: file.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: buf.len() as u32,
                offset,
                reply,
            })
            .expect("send");
        let n = answer.recv().expect("reply");
        assert_eq!(n as usize, buf.len());
    }
}

fn setup() -> (tempfile::TempDir, File) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    let data: Vec<u8> = (0..FILE_LEN).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write");
    let file = File::open(&path).expect("open");
    // Warm the page cache: these are cached-read numbers.
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..FILE_LEN).step_by(1 << 20) {
        file.read_exact_at(&mut buf, off).expect("warm");
    }
    (dir, file)
}

fn reads(c: &mut Criterion) {
    let (_dir, file) = setup();
    let ring_thread = RingThread::start();
    let uring = IoEngine::IoUring;
    assert!(
        IoEngine::select(berth_storage::IoEngineChoice::IoUring).is_ok(),
        "io_uring unavailable: this benchmark compares it"
    );
    let mut g = c.benchmark_group("io_read");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for size in [4usize << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];
        let slots = FILE_LEN / size as u64;
        let mut i = 0u64;
        let mut next = move || {
            i = (i + 7919) % slots;
            i * size as u64
        };
        g.bench_function(BenchmarkId::new("std_pread", size), |b| {
            b.iter(|| file.read_exact_at(&mut buf, next()).expect("read"))
        });
        g.bench_function(BenchmarkId::new("uring_thread_local", size), |b| {
            b.iter(|| uring.read_exact_at(&file, &mut buf, next()).expect("read"))
        });
        g.bench_function(BenchmarkId::new("uring_ring_thread", size), |b| {
            b.iter(|| ring_thread.read_exact_at(&file, &mut buf, next()))
        });
        black_box(&buf);
    }
    // Read-ahead: four 1 MiB chunks.
    let mut four = vec![0u8; 4 << 20];
    g.throughput(Throughput::Bytes(4 << 20));
    let offsets = |base: u64| -> Vec<u64> { (0..4).map(|k| base + k * (1 << 20)).collect() };
    let mut base = 0u64;
    let mut next_base = move || {
        base = (base + (4 << 20)) % FILE_LEN;
        base
    };
    for engine in IoEngine::ALL {
        g.bench_function(BenchmarkId::new("batch_4x1MiB", engine.as_str()), |b| {
            b.iter(|| {
                let offs = offsets(next_base());
                let mut bufs: Vec<&mut [u8]> = four.chunks_mut(1 << 20).collect();
                engine
                    .read_many_exact_at(&file, &mut bufs, &offs)
                    .expect("batch")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
