//! Crash safety: SIGKILL during concurrent uploads must leave only whole, correct blobs, and
//! every blob the node acknowledged must survive; a client vanishing mid-PATCH leaves a
//! session that reports exactly what arrived and can be resumed.
//!
//! An unacknowledged blob may legitimately 404 even though its file is on disk: the store
//! renames the blob into place before the repository link is written to SQLite (one writer,
//! `synchronous=FULL`), so a kill in between leaves an unreferenced but correct file. In
//! runs on the 2-core dev machine (2026-11) ~20 of the ~25 unacknowledged blobs ended that
//! way; the test accepts it and checks only that such files are whole.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{
    connect, fail, request, request_head, scrub, sha256_digest, sha256_hex, Node, Res, Rng,
};

/// Concurrent pushes in flight when the node is killed.
const BLOB_COUNT: usize = 50;
/// Kill once this many pushes were acknowledged (201)...
const ACKS_BEFORE_KILL: usize = 20;
/// ...or after this long, whichever comes first.
const KILL_WAIT_MAX: Duration = Duration::from_secs(30);
/// Largest blob: 8 MiB.
const BLOB_SIZE_MAX: usize = 8 << 20;
/// Chunk size of chunked (POST/PATCH/PUT) sessions.
const CHUNK_SIZE: usize = 512 << 10;
const REPO: &str = "e2e/crash";

/// A path from a `Location` header (which may also be an absolute URL).
fn location_path(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest
            .find('/')
            .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned()),
        None => location.to_owned(),
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// Opens an upload session; returns its location path.
fn start_session(addr: SocketAddr) -> Res<String> {
    let resp = request(
        addr,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/"),
        &[],
        b"",
    )?
    .expect_status(202, "POST upload session")?;
    Ok(location_path(resp.require_header("location")?))
}

/// `PATCH` of `chunk` at `offset`; checks the node's `Range` afterwards.
fn patch_chunk(addr: SocketAddr, location: &str, offset: usize, chunk: &[u8]) -> Res<String> {
    let range = format!("{offset}-{}", offset + chunk.len() - 1);
    let resp = request(
        addr,
        "PATCH",
        location,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        chunk,
    )?
    .expect_status(202, "PATCH chunk")?;
    let want = format!("0-{}", offset + chunk.len() - 1);
    if resp.header("range") != Some(want.as_str()) {
        return Err(fail(format!(
            "after PATCH want Range {want}: {}",
            resp.describe()
        )));
    }
    Ok(location_path(resp.require_header("location")?))
}

/// Closes a session with `PUT ?digest=`; fails unless 201 with the digest.
fn finish_session(addr: SocketAddr, location: &str, digest: &str) -> Res {
    let resp = request(addr, "PUT", &with_digest(location, digest), &[], b"")?
        .expect_status(201, "closing PUT")?;
    if resp.header("docker-content-digest") != Some(digest) {
        return Err(fail(format!("closing PUT: {}", resp.describe())));
    }
    Ok(())
}

fn push_chunked(addr: SocketAddr, data: &[u8], digest: &str) -> Res {
    let mut location = start_session(addr)?;
    for (i, chunk) in data.chunks(CHUNK_SIZE).enumerate() {
        location = patch_chunk(addr, &location, i * CHUNK_SIZE, chunk)?;
    }
    finish_session(addr, &location, digest)
}

fn push_monolithic(addr: SocketAddr, data: &[u8], digest: &str) -> Res {
    let resp = request(
        addr,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )?
    .expect_status(201, "monolithic POST")?;
    if resp.header("docker-content-digest") != Some(digest) {
        return Err(fail(format!("monolithic POST: {}", resp.describe())));
    }
    Ok(())
}

struct Job {
    data: Vec<u8>,
    digest: String,
    chunked: bool,
}

/// Sizes from 1 KiB to 8 MiB, log-uniform so most are small, plus a few at the maximum so
/// some uploads are surely in flight when the node dies.
fn make_jobs(rng: &mut Rng) -> Vec<Job> {
    (0..BLOB_COUNT)
        .map(|i| {
            let size = if i % 10 == 9 {
                BLOB_SIZE_MAX
            } else {
                let base = 1024usize << rng.below(13);
                (base + rng.below(base as u64) as usize).min(BLOB_SIZE_MAX)
            };
            let data = rng.bytes(size);
            Job {
                digest: sha256_digest(&data),
                data,
                chunked: i % 2 == 1,
            }
        })
        .collect()
}

/// What one push saw: acknowledged, or the error and whether the node was still alive.
struct Outcome {
    acked: bool,
    error_before_kill: Option<String>,
}

/// Runs every job on its own thread, SIGKILLs the node after enough acknowledgements, and
/// returns each push's outcome.
fn push_all_and_kill(node: &mut Node, jobs: &[Job]) -> Res<Vec<Outcome>> {
    let addr = node.addr;
    let acks = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let (acks, killed) = (&acks, &killed);
                s.spawn(move || {
                    let pushed = if job.chunked {
                        push_chunked(addr, &job.data, &job.digest)
                    } else {
                        push_monolithic(addr, &job.data, &job.digest)
                    };
                    match pushed {
                        Ok(()) => {
                            acks.fetch_add(1, Ordering::SeqCst);
                            Outcome {
                                acked: true,
                                error_before_kill: None,
                            }
                        }
                        Err(e) => Outcome {
                            acked: false,
                            // Read after the error: if the kill flag is still clear, the node
                            // failed this request while alive.
                            error_before_kill: (!killed.load(Ordering::SeqCst))
                                .then(|| e.to_string()),
                        },
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + KILL_WAIT_MAX;
        while acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        killed.store(true, Ordering::SeqCst);
        let killed_result = node.kill();
        let outcomes = handles
            .into_iter()
            .map(|h| h.join().map_err(|_| fail("a push thread panicked")))
            .collect::<Res<Vec<_>>>();
        killed_result.and(outcomes)
    })
}

/// Every file under `blobs/` is a whole blob named by its own digest (or its `.idx` chunk index).
fn assert_no_partial_blob_visible(data_dir: &Path) -> Res<usize> {
    let mut blobs = 0;
    for shard in std::fs::read_dir(data_dir.join("blobs/sha256"))? {
        let shard = shard?.path();
        for entry in std::fs::read_dir(&shard)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| fail(format!("odd file name {}", path.display())))?;
            let hex = name.strip_suffix(".idx").unwrap_or(name);
            let shard_name = shard.file_name().and_then(|n| n.to_str());
            assert!(
                hex.len() == 64
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && shard_name == Some(&hex[..2]),
                "unexpected file in the blob store: {}",
                path.display()
            );
            if name.ends_with(".idx") {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            assert_eq!(
                sha256_hex(&bytes),
                name,
                "blob file {} does not hash to its name ({} bytes): a partial blob is visible",
                path.display(),
                bytes.len()
            );
            blobs += 1;
        }
    }
    Ok(blobs)
}

#[test]
fn sigkill_during_concurrent_pushes_keeps_acknowledged_blobs_whole() -> Res {
    let tmp = TempDir::new()?;
    let data_dir = tmp.path().join("data");
    let mut node = Node::start(&data_dir)?;
    let mut rng = Rng::from_clock();
    let jobs = make_jobs(&mut rng);
    let outcomes = push_all_and_kill(&mut node, &jobs)?;
    let acked = outcomes.iter().filter(|o| o.acked).count();
    println!(
        "crash: {acked} of {BLOB_COUNT} pushes acknowledged before SIGKILL, {} bytes in total",
        jobs.iter().map(|j| j.data.len()).sum::<usize>()
    );
    for (job, outcome) in jobs.iter().zip(&outcomes) {
        if let Some(e) = &outcome.error_before_kill {
            return Err(fail(format!(
                "push of {} failed while the node was alive: {e}",
                job.digest
            )));
        }
    }
    assert!(acked > 0, "no push was acknowledged before the kill");

    let files = assert_no_partial_blob_visible(&data_dir)?;
    let node = Node::start(&data_dir)?;
    let mut present = 0;
    for (job, outcome) in jobs.iter().zip(&outcomes) {
        let resp = node.request("GET", &format!("/v2/{REPO}/blobs/{}", job.digest), &[], b"")?;
        match resp.status {
            200 => {
                present += 1;
                assert!(
                    sha256_digest(&resp.body) == job.digest && resp.body == job.data,
                    "blob {} comes back with other bytes ({} of {})",
                    job.digest,
                    resp.body.len(),
                    job.data.len()
                );
            }
            404 if !outcome.acked => {}
            _ => {
                return Err(fail(format!(
                    "blob {} (acknowledged: {}) after restart: {}",
                    job.digest,
                    outcome.acked,
                    resp.describe()
                )))
            }
        }
    }
    println!("crash: {files} blob files on disk, {present} blobs served after restart");

    let out = scrub(&data_dir, true)?;
    assert!(
        out.status.success(),
        "scrub --full after the crash failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The restarted node accepts the blobs that were lost, in both upload styles.
    for job in jobs.iter().filter(|j| j.data.len() < (1 << 20)).take(4) {
        if job.chunked {
            push_chunked(node.addr, &job.data, &job.digest)?;
        } else {
            push_monolithic(node.addr, &job.data, &job.digest)?;
        }
    }
    Ok(())
}

/// Polls the session's status until its `Range` is `want` (the node may still be
/// finishing the interrupted PATCH); any other final value is an error.
fn wait_for_range(addr: SocketAddr, location: &str, want: &str) -> Res {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp =
            request(addr, "GET", location, &[], b"")?.expect_status(204, "GET upload status")?;
        let range = resp.require_header("range")?.to_owned();
        if range == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "upload status reports Range {range}, want {want}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_vanishing_mid_patch_leaves_a_resumable_session() -> Res {
    let tmp = TempDir::new()?;
    let node = Node::start(&tmp.path().join("data"))?;
    let mut rng = Rng::from_clock();
    let data = rng.bytes((1 << 20) + 777);
    let digest = sha256_digest(&data);
    let sent = (300 << 10) + 123;
    let location = start_session(node.addr)?;

    // Announce the whole blob, send part of it, then vanish.
    let mut stream = connect(node.addr)?;
    let head = request_head(
        node.addr,
        "PATCH",
        &location,
        &[("Content-Type", "application/octet-stream")],
        data.len() as u64,
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&data[..sent])?;
    stream.flush()?;
    std::thread::sleep(Duration::from_millis(100));
    drop(stream);

    wait_for_range(node.addr, &location, &format!("0-{}", sent - 1))?;
    let location = patch_chunk(node.addr, &location, sent, &data[sent..])?;
    finish_session(node.addr, &location, &digest)?;
    let resp = node
        .request("GET", &format!("/v2/{REPO}/blobs/{digest}"), &[], b"")?
        .expect_status(200, "GET resumed blob")?;
    assert!(resp.body == data, "resumed blob differs");
    Ok(())
}
