//! Blob reads (`GET`/`HEAD` with `Range`) and deletes.
//!
//! Every byte served is checked first: reads are whole 1 MiB chunks of the blob's chunk
//! index, each compared with its stored crc32 (at ~49 GiB/s that costs ~2% of a read). The
//! first chunk is checked before any header is sent, so a corrupt blob gets an error
//! response; a later corrupt chunk ends the body with an error, so the client sees a broken
//! transfer, never bad bytes. Either way the blob is quarantined, and the next push of the
//! same digest stores a good copy.

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_oci::{Digest, RepoName};
use berth_storage::{StorageError, VerifiedBlob, CHUNK_SIZE};
use bytes::{Bytes, BytesMut};

use crate::error::{ErrorCode, OciError};
use crate::{blocking, header_str, metadata_read, Shared};
use berth_storage::meta::BlobUse;

/// Ranges up to this size are read in the same blocking call that opens the blob and sent as
/// one frame: one thread hop per small GET instead of two.
const INLINE_READ_MAX: u64 = 256 << 10;
/// Blobs up to this size are read whole on the async worker when their link needs no write
/// (see `get`), from the store's small-blob cache when they were read lately.
const INLINE_OPEN_MAX: u64 = berth_storage::SMALL_BLOB_MAX as u64;
/// Chunks read ahead of the socket per download: bounds memory to 4 MiB a transfer (1 MiB
/// reads; FIELD-NOTES measured large reads ~40% faster than 64 KiB ones file → socket).
const READ_AHEAD_CHUNKS: usize = 3;

enum Content {
    Inline(Bytes),
    /// The first covering chunk's part of the range, already read and checked; the blocking
    /// reader continues at `next_chunk` up to byte `end`.
    Stream {
        blob: VerifiedBlob,
        first: Bytes,
        next_chunk: u64,
        end: u64,
    },
}

struct Found {
    total: u64,
    range: Option<(u64, u64)>,
    content: Option<Content>,
}

/// `GET` (with `with_body`) or `HEAD` of a blob.
pub(crate) async fn get(
    reg: &Shared,
    repo: RepoName,
    digest: &str,
    req: &Request,
    with_body: bool,
) -> Result<Response, OciError> {
    let digest = Digest::parse(digest)?;
    let range_header = header_str(req, "range").map(str::to_owned);
    let answer = |reg: &Shared, d: &Digest, found: Result<Option<Found>, Failure>| match found {
        Err(Failure::Corrupt(e)) => {
            reg.note_corrupt(d);
            Err(OciError::internal(&e))
        }
        Err(Failure::Oci(e)) => Err(e),
        Ok(found) => Ok(found),
    };
    let debounce_ms = reg.lifecycle.touch_debounce_ms();
    let link = metadata_read(|| Ok(reg.meta.blob_use(&repo, &digest, debounce_ms)?))?;
    let miss_repo = repo.clone(); // for the pull-through hook below
    let found = match link {
        // Small, linked and recently used (nothing to record): open, read and check it on
        // this worker. A page-cache read of ≤ 64 KiB costs less than the hop to a blocking
        // thread (docs/benchmarks.md); a cold read blocks this worker for one disk read,
        // as nginx without aio does.
        BlobUse::Fresh(size) if size <= INLINE_OPEN_MAX => answer(
            reg,
            &digest,
            read_small_linked(reg, &repo, &digest, range_header.as_deref(), with_body),
        )?,
        _ => {
            let reg2 = reg.clone();
            let d = digest.clone();
            blocking(move || {
                let found = open(&reg2, &repo, &d, range_header.as_deref(), with_body);
                answer(&reg2, &d, found)
            })
            .await?
        }
    };
    let Some(found) = found else {
        // BLOB_UNKNOWN unless a content source (pull-through) is configured.
        return crate::source::blob_miss(reg, miss_repo, digest, req, with_body).await;
    };
    let (status, start, len) = match found.range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, found.total),
    };
    let body = match found.content {
        None => Body::empty(),
        Some(Content::Inline(bytes)) => Body::from(bytes),
        Some(Content::Stream {
            blob,
            first,
            next_chunk,
            end,
        }) => {
            let zero_copy = req.extensions.get::<crate::zerocopy::ZeroCopy>().is_some();
            stream_chunks(reg.clone(), blob, first, next_chunk, end, zero_copy)
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("content-length", HeaderValue::from(len));
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            h.insert("etag", etag);
        }
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + len - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", found.total)) {
            h.insert("content-range", v);
        }
    }
    Ok(resp)
}

/// Why `open` failed: a corrupt blob is handled apart (quarantined) from other errors.
enum Failure {
    Corrupt(StorageError),
    Oci(OciError),
}

impl<E: Into<OciError>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Oci(e.into())
    }
}

fn checked(result: Result<Bytes, StorageError>) -> Result<Bytes, Failure> {
    result.map_err(|e| match e {
        StorageError::Corrupt { .. } => Failure::Corrupt(e),
        other => Failure::Oci(other.into()),
    })
}

fn open(
    reg: &Shared,
    repo: &RepoName,
    digest: &Digest,
    range_header: Option<&str>,
    with_body: bool,
) -> Result<Option<Found>, Failure> {
    // GC protocol: the lookup refreshes the link's last-used time, so a 200 here means the
    // link stays for at least the grace period (a client's HEAD → manifest PUT).
    let linked = reg
        .meta
        .touch_blob(repo, digest, reg.lifecycle.touch_debounce_ms())?;
    if linked.is_none() {
        // Some clients fetch manifests through the blob endpoint (e.g. children of an index).
        let Some(m) = reg.meta.manifest_by_digest(repo, digest)? else {
            return Ok(None);
        };
        let total = m.content.len() as u64;
        let range = parse_range(range_header, total)?;
        let content = with_body.then(|| {
            let (s, e) = range.unwrap_or((0, total.saturating_sub(1)));
            Content::Inline(if total == 0 {
                Bytes::new()
            } else {
                m.content.slice(s as usize..=e as usize)
            })
        });
        return Ok(Some(Found {
            total,
            range,
            content,
        }));
    }
    read_linked(reg, repo, digest, range_header, with_body)
}

/// The store's answer for a blob `repo` links: a missing file (lost, or quarantined) is
/// `None`, logged loudly; a corrupt one is set apart for quarantine.
fn linked<T>(
    found: Result<Option<T>, StorageError>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<T>, Failure> {
    match found {
        Ok(Some(found)) => Ok(Some(found)),
        Ok(None) => {
            tracing::error!(%digest, repo = repo.as_str(), "blob is linked but its file is missing");
            Ok(None)
        }
        Err(e @ StorageError::Corrupt { .. }) => Err(Failure::Corrupt(e)),
        Err(e) => Err(e.into()),
    }
}

/// A small blob `repo` links, whole (checked when read from disk, or from the store's
/// small-blob cache), answered with the requested range of it. A HEAD reads it too: a small
/// read that also warms the cache for the GET that usually follows.
fn read_small_linked(
    reg: &Shared,
    repo: &RepoName,
    digest: &Digest,
    range_header: Option<&str>,
    with_body: bool,
) -> Result<Option<Found>, Failure> {
    let Some(bytes) = linked(reg.blobs.read_small(digest), repo, digest)? else {
        return Ok(None);
    };
    let total = bytes.len() as u64;
    let range = parse_range(range_header, total)?;
    let content = match range {
        Some((start, end)) => bytes.slice(start as usize..=end as usize),
        None => bytes,
    };
    Ok(Some(Found {
        total,
        range,
        content: with_body.then_some(Content::Inline(content)),
    }))
}

/// Opens a blob `repo` links and reads what the request needs of it (the first covering
/// chunk, checked, before any header is sent).
fn read_linked(
    reg: &Shared,
    repo: &RepoName,
    digest: &Digest,
    range_header: Option<&str>,
    with_body: bool,
) -> Result<Option<Found>, Failure> {
    let Some(blob) = linked(reg.blobs.open_verified(digest), repo, digest)? else {
        return Ok(None);
    };
    let total = blob.len;
    let range = parse_range(range_header, total)?;
    let found = |content| {
        Ok(Some(Found {
            total,
            range,
            content,
        }))
    };
    let Some((start, end)) = range.or((total > 0).then(|| (0, total - 1))) else {
        return found(with_body.then(|| Content::Inline(Bytes::new())));
    };
    if !with_body {
        return found(None);
    }
    // Read and check the first covering chunk before any header is sent.
    let first_chunk = start / CHUNK_SIZE;
    let chunk = checked(read_checked(&blob, first_chunk))?;
    let chunk_start = first_chunk * CHUNK_SIZE;
    let first_end = (end + 1).min(chunk_start + chunk.len() as u64);
    let first = chunk.slice((start - chunk_start) as usize..(first_end - chunk_start) as usize);
    let wanted = end + 1 - start;
    let content = if first_end == end + 1 {
        Content::Inline(first)
    } else if wanted <= INLINE_READ_MAX {
        // A small range straddling a chunk boundary.
        let second = checked(read_checked(&blob, first_chunk + 1))?;
        let mut joined = BytesMut::with_capacity(wanted as usize);
        joined.extend_from_slice(&first);
        joined.extend_from_slice(&second[..(end + 1 - first_end) as usize]);
        Content::Inline(joined.freeze())
    } else {
        Content::Stream {
            blob,
            first,
            next_chunk: first_chunk + 1,
            end,
        }
    };
    found(Some(content))
}

/// Reads one whole chunk of a blob, checked against its crc32, into a buffer of its own.
fn read_checked(blob: &VerifiedBlob, chunk: u64) -> Result<Bytes, StorageError> {
    // Sized to the chunk: zeroing a whole MiB for a 4 KiB blob cut small GETs to a quarter.
    let mut buf = BytesMut::new();
    let n = read_checked_into(blob, chunk, &mut buf)?;
    buf.truncate(n);
    Ok(buf.freeze())
}

/// Streams the rest of a range through a bounded queue filled by a blocking reader; every
/// chunk is checked before it is queued. With `zero_copy` (plain HTTP through the node's
/// server loop) a checked chunk is queued as a file region that the connection sends with
/// `sendfile(2)` (`zerocopy.rs`): the reader's one reusable buffer is only for the crc check,
/// and the bytes on the wire go page cache → socket.
fn stream_chunks(
    reg: Shared,
    blob: VerifiedBlob,
    first: Bytes,
    next_chunk: u64,
    end: u64,
    zero_copy: bool,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(READ_AHEAD_CHUNKS);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(first)).is_err() {
            return;
        }
        let region_file = match zero_copy.then(|| blob.file.try_clone()).transpose() {
            Ok(file) => file.map(std::sync::Arc::new),
            Err(e) => {
                tracing::warn!(digest = %blob.digest(), error = %e, "no zero-copy for this transfer");
                None
            }
        };
        let mut scratch = BytesMut::new();
        for chunk in next_chunk..=end / CHUNK_SIZE {
            let chunk_start = chunk * CHUNK_SIZE;
            let keep = (end + 1 - chunk_start).min(blob.chunk_len(chunk) as u64) as usize;
            let read = match &region_file {
                // Checked in the scratch buffer, sent from the file (or, when every
                // zero-copy slot is taken, copied out of the scratch buffer).
                Some(file) => read_checked_into(&blob, chunk, &mut scratch).map(|_| {
                    crate::zerocopy::file_region(file, chunk_start, keep)
                        .unwrap_or_else(|| Bytes::copy_from_slice(&scratch[..keep]))
                }),
                None => read_checked(&blob, chunk).map(|bytes| bytes.slice(..keep)),
            };
            let item = match read {
                Ok(bytes) => Ok(bytes),
                Err(e) => {
                    tracing::error!(digest = %blob.digest(), error = %e, "read failed mid-transfer");
                    if matches!(e, StorageError::Corrupt { .. }) {
                        reg.note_corrupt(blob.digest());
                    }
                    Err(std::io::Error::other(e.to_string()))
                }
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return; // the client went away, or the transfer was ended with an error
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

/// Reads and checks one chunk into `scratch` (reused across chunks: no allocation, no
/// zeroing, no page faults per chunk); returns its length.
fn read_checked_into(
    blob: &VerifiedBlob,
    chunk: u64,
    scratch: &mut BytesMut,
) -> Result<usize, StorageError> {
    let len = blob.chunk_len(chunk);
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    blob.read_chunk(chunk, &mut scratch[..len])
}

/// Parses a single `bytes=` range against a blob of `total` bytes. Multi-range requests are
/// answered with the whole blob (RFC 9110 lets a server ignore `Range`).
fn parse_range(header: Option<&str>, total: u64) -> Result<Option<(u64, u64)>, OciError> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable = || {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            format!("range {spec:?} cannot be satisfied by a blob of {total} bytes"),
        )
        .with_header("content-range", format!("bytes */{total}"))
    };
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| unsatisfiable());
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, false) => (num(a)?, num(b)?.min(total.saturating_sub(1))),
        (false, true) => (num(a)?, total.saturating_sub(1)),
        (true, false) => {
            let suffix = num(b)?;
            if suffix == 0 {
                return Err(unsatisfiable());
            }
            (total.saturating_sub(suffix), total.saturating_sub(1))
        }
        (true, true) => return Err(unsatisfiable()),
    };
    if total == 0 || start >= total || start > end {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

/// `DELETE` of a blob: unlinks it from the repository (garbage collection reclaims bytes).
pub(crate) async fn delete(
    reg: &Shared,
    repo: RepoName,
    digest: &str,
) -> Result<Response, OciError> {
    let digest = Digest::parse(digest)?;
    let reg2 = reg.clone();
    let d = digest.clone();
    let removed = blocking(move || Ok(reg2.meta.unlink_blob(&repo, &d)?)).await?;
    if !removed {
        return Err(OciError::blob_unknown(&digest));
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        let ok = [
            ("bytes=0-9", Some((0, 9))),
            ("bytes=5-", Some((5, 99))),
            ("bytes=-10", Some((90, 99))),
            ("bytes=90-500", Some((90, 99))),
            ("bytes=0-1,5-6", None),
        ];
        for (h, want) in ok {
            assert_eq!(parse_range(Some(h), 100).ok().flatten(), want, "{h}");
        }
        for h in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=x-y",
            "bytes=-",
        ] {
            assert!(parse_range(Some(h), 100).is_err(), "{h}");
        }
        assert_eq!(parse_range(None, 100).ok().flatten(), None);
    }
}
