//! Blob uploads: monolithic `POST`, sessions with streamed or chunked `PATCH`, the closing
//! `PUT`, status, cancel and cross-repository mounts.
//!
//! A session's bytes live in its staging file; its in-memory [`UploadWriter`] (hash state) is
//! a cache that can be evicted and rebuilt from the file, so sessions survive restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_oci::{Algorithm, Digest, RepoName};
use berth_storage::{StorageError, StreamError, UploadId, UploadWriter};
use futures_util::TryStreamExt;
use http_body::Body as _;

use crate::error::{ErrorCode, OciError};
use crate::{blocking, header_str, query_param, Shared};

type Slot = Arc<tokio::sync::Mutex<Option<UploadWriter>>>;

/// In-memory state of open upload sessions, bounded by `upload_sessions_max`.
pub(crate) struct Sessions {
    max: usize,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Sessions {
    pub(crate) fn new(max: usize) -> Sessions {
        Sessions {
            max,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, id: &UploadId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(id.as_str()) {
            return slot.clone();
        }
        if slots.len() >= self.max {
            // Evict idle sessions: their staging files stay, and they resume from disk.
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        let slot: Slot = Arc::default();
        slots.insert(id.as_str().to_owned(), slot.clone());
        slot
    }

    fn remove(&self, id: &UploadId) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.remove(id.as_str());
    }
}

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{}", id.as_str())
}

fn range_value(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

fn empty(status: StatusCode, headers: &[(&'static str, String)]) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("content-length", HeaderValue::from_static("0"));
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(*name, v);
        }
    }
    resp
}

fn session_response(status: StatusCode, repo: &RepoName, id: &UploadId, len: u64) -> Response {
    empty(
        status,
        &[
            ("location", upload_location(repo, id)),
            ("range", range_value(len)),
            ("docker-upload-uuid", id.as_str().to_owned()),
        ],
    )
}

fn created(repo: &RepoName, digest: &Digest) -> Response {
    empty(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{repo}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
        ],
    )
}

/// `POST /v2/<name>/blobs/uploads/`: mount, monolithic upload, or a new session.
pub(crate) async fn start(
    reg: &Shared,
    repo: RepoName,
    req: &Request,
    body: Body,
) -> Result<Response, OciError> {
    let started = Instant::now();
    if let Some(mount) = query_param(req, "mount") {
        // Identity: a mount only considers sources the caller may read (auth off: all).
        let access = req.extensions.get::<crate::auth::Access>().cloned();
        if let Some(resp) = try_mount(reg, &repo, &mount, query_param(req, "from"), access).await? {
            return Ok(resp);
        }
    }
    if let Some(digest) = query_param(req, "digest") {
        let digest = Digest::parse(&digest)?;
        let reg2 = reg.clone();
        let algorithm = digest.algorithm();
        let writer = blocking(move || Ok(UploadWriter::create(&reg2.blobs, algorithm)?)).await?;
        let (writer, streamed) = receive(reg, writer, body).await;
        if let Err(e) = streamed {
            let id = writer.id().clone();
            let reg2 = reg.clone();
            blocking(move || Ok(reg2.blobs.discard_upload(&id)?)).await?;
            return Err(e);
        }
        commit(reg, &repo, writer, &digest).await?;
        reg.metrics.record_upload(started.elapsed().as_secs_f64());
        return Ok(created(&repo, &digest));
    }
    let id = UploadId::generate();
    let reg2 = reg.clone();
    let (id2, repo2) = (id.clone(), repo.clone());
    let writer = blocking(move || {
        reg2.meta.create_upload(id2.as_str(), &repo2)?;
        Ok(UploadWriter::create_with_id(
            &reg2.blobs,
            id2,
            Algorithm::Sha256,
        )?)
    })
    .await?;
    *reg.uploads.slot(&id).lock().await = Some(writer);
    Ok(session_response(StatusCode::ACCEPTED, &repo, &id, 0))
}

/// Links an existing blob into `repo` if `from` (or, without `from`, any repository) holds it.
async fn try_mount(
    reg: &Shared,
    repo: &RepoName,
    mount: &str,
    from: Option<String>,
    access: Option<crate::auth::Access>,
) -> Result<Option<Response>, OciError> {
    // A mount that cannot be satisfied falls back to a normal upload session, per the spec.
    let Ok(digest) = Digest::parse(mount) else {
        return Ok(None);
    };
    let from = match from.map(|f| RepoName::parse(&f)) {
        Some(Ok(f)) => Some(f),
        Some(Err(_)) => return Ok(None),
        None => None,
    };
    let reg2 = reg.clone();
    let (repo2, d) = (repo.clone(), digest.clone());
    let mounted = blocking(move || {
        let size = match &from {
            Some(from) if !crate::auth::Access::allows_read(&access, from) => None,
            Some(from) => reg2.meta.repo_blob(from, &d)?,
            None => reg2
                .meta
                .any_repo_blob(&d)?
                .filter(|(source, _)| crate::auth::Access::allows_read(&access, source))
                .map(|(_, size)| size),
        };
        let Some(size) = size else { return Ok(false) };
        // GC protocol: hold the digest lock from the existence check through the link.
        let _digest_lock = reg2.blobs.lock_digest(&d);
        if reg2.blobs.stat(&d)? != Some(size) {
            return Ok(false);
        }
        reg2.meta.link_blob(&repo2, &d, size)?;
        Ok(true)
    })
    .await?;
    Ok(mounted.then(|| created(repo, &digest)))
}

/// Streams a request body into a writer, enforcing the size limit and counting bytes.
async fn receive(
    reg: &Shared,
    writer: UploadWriter,
    body: Body,
) -> (UploadWriter, Result<u64, OciError>) {
    if body.size_hint().exact() == Some(0) {
        return (writer, Ok(0));
    }
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    let (writer, result) = writer.write_stream(stream, reg.config.blob_size_max).await;
    let result = match result {
        Ok(n) => {
            reg.metrics.add_request_bytes(n);
            Ok(n)
        }
        Err(StreamError::Receive(e)) => Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            format!("upload body was interrupted: {e}"),
        )),
        Err(StreamError::TooLarge(max)) => Err(OciError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SizeInvalid,
            format!("blob exceeds the limit of {max} bytes"),
        )),
        Err(StreamError::Storage(e)) => Err(e.into()),
    };
    (writer, result)
}

/// Verifies and stores a finished upload, then links it into the repository.
async fn commit(
    reg: &Shared,
    repo: &RepoName,
    writer: UploadWriter,
    digest: &Digest,
) -> Result<u64, OciError> {
    let reg2 = reg.clone();
    let (repo2, d) = (repo.clone(), digest.clone());
    blocking(move || {
        // GC protocol: hold the digest lock from the dedup check / rename through the link.
        let _digest_lock = reg2.blobs.lock_digest(&d);
        let size = reg2.blobs.commit(writer, &d)?;
        reg2.meta.link_blob(&repo2, &d, size)?;
        Ok(size)
    })
    .await
}

/// Looks up a session of `repo` and locks its writer, resuming it from disk if needed.
async fn open_session(
    reg: &Shared,
    repo: &RepoName,
    raw_id: &str,
) -> Result<(UploadId, tokio::sync::OwnedMutexGuard<Option<UploadWriter>>), OciError> {
    let id = UploadId::parse(raw_id).ok_or_else(OciError::upload_unknown)?;
    let reg2 = reg.clone();
    let id2 = id.clone();
    let owner = blocking(move || Ok(reg2.meta.upload_repo(id2.as_str())?)).await?;
    if owner.as_ref() != Some(repo) {
        return Err(OciError::upload_unknown());
    }
    let mut guard = reg.uploads.slot(&id).lock_owned().await;
    if guard.is_none() {
        let reg2 = reg.clone();
        let id2 = id.clone();
        let resumed = blocking(
            move || match UploadWriter::resume(&reg2.blobs, id2.clone()) {
                Err(StorageError::UploadUnknown(_)) => {
                    reg2.meta.delete_upload(id2.as_str())?;
                    Err(OciError::upload_unknown())
                }
                other => Ok(other?),
            },
        )
        .await;
        match resumed {
            Ok(w) => *guard = Some(w),
            Err(e) => {
                reg.uploads.remove(&id);
                return Err(e);
            }
        }
    }
    Ok((id, guard))
}

/// Checks a chunk's `Content-Range` (`<start>-<end>`) against the session's length.
fn check_content_range(
    req: &Request,
    repo: &RepoName,
    id: &UploadId,
    len: u64,
) -> Result<(), OciError> {
    let Some(value) = header_str(req, "content-range") else {
        return Ok(());
    };
    let spec = value
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let spec = spec.split('/').next().unwrap_or(spec);
    let parsed = spec
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    let out_of_order = || {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("chunk range {value:?} does not continue the upload at offset {len}"),
        )
        .with_header("location", upload_location(repo, id))
        .with_header("range", range_value(len))
        .with_header("docker-upload-uuid", id.as_str().to_owned())
    };
    let (start, end) = parsed.ok_or_else(out_of_order)?;
    if start != len || end < start {
        return Err(out_of_order());
    }
    let content_length = header_str(req, "content-length").and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|cl| cl != end - start + 1) {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::SizeInvalid,
            format!("Content-Range {value:?} disagrees with Content-Length"),
        ));
    }
    Ok(())
}

/// `PATCH`: appends a streamed or chunked body to a session.
pub(crate) async fn patch(
    reg: &Shared,
    repo: RepoName,
    raw_id: &str,
    req: &Request,
    body: Body,
) -> Result<Response, OciError> {
    let (id, mut guard) = open_session(reg, &repo, raw_id).await?;
    let writer = guard.take().ok_or_else(OciError::upload_unknown)?;
    if let Err(e) = check_content_range(req, &repo, &id, writer.len()) {
        *guard = Some(writer);
        return Err(e);
    }
    let (writer, result) = receive(reg, writer, body).await;
    let len = writer.len();
    *guard = Some(writer);
    result?;
    Ok(session_response(StatusCode::ACCEPTED, &repo, &id, len))
}

/// `PUT ?digest=`: appends an optional last chunk, verifies and stores the blob.
pub(crate) async fn finish(
    reg: &Shared,
    repo: RepoName,
    raw_id: &str,
    req: &Request,
    body: Body,
) -> Result<Response, OciError> {
    let started = Instant::now();
    let (id, mut guard) = open_session(reg, &repo, raw_id).await?;
    let digest = match query_param(req, "digest") {
        Some(d) => Digest::parse(&d)?,
        None => return Err(OciError::digest_invalid("the closing PUT needs ?digest=")),
    };
    let writer = guard.take().ok_or_else(OciError::upload_unknown)?;
    if let Err(e) = check_content_range(req, &repo, &id, writer.len()) {
        *guard = Some(writer);
        return Err(e);
    }
    let (writer, result) = receive(reg, writer, body).await;
    if let Err(e) = result {
        *guard = Some(writer);
        return Err(e);
    }
    let committed = commit(reg, &repo, writer, &digest).await;
    // Whether it was stored or refused, the session is over: a refused upload's bytes were
    // discarded by the store.
    reg.uploads.remove(&id);
    let reg2 = reg.clone();
    let id2 = id.clone();
    blocking(move || Ok(reg2.meta.delete_upload(id2.as_str())?)).await?;
    committed?;
    reg.metrics.record_upload(started.elapsed().as_secs_f64());
    Ok(created(&repo, &digest))
}

/// `GET`: the session's progress.
pub(crate) async fn status(
    reg: &Shared,
    repo: RepoName,
    raw_id: &str,
) -> Result<Response, OciError> {
    let id = UploadId::parse(raw_id).ok_or_else(OciError::upload_unknown)?;
    let reg2 = reg.clone();
    let (id2, repo2) = (id.clone(), repo.clone());
    let known =
        blocking(move || Ok(reg2.meta.upload_repo(id2.as_str())?.as_ref() == Some(&repo2))).await?;
    if !known {
        return Err(OciError::upload_unknown());
    }
    // Waiting for the lock means no request is writing; a writer flushes after each request,
    // so an idle session's length is exact.
    let slot = reg.uploads.slot(&id);
    let guard = slot.lock().await;
    let len = match guard.as_ref() {
        Some(writer) => writer.len(),
        None => {
            let reg2 = reg.clone();
            let id2 = id.clone();
            blocking(move || Ok(reg2.blobs.staged_len(&id2)?))
                .await?
                .ok_or_else(OciError::upload_unknown)?
        }
    };
    Ok(session_response(StatusCode::NO_CONTENT, &repo, &id, len))
}

/// `DELETE`: cancels a session and discards its bytes.
pub(crate) async fn cancel(
    reg: &Shared,
    repo: RepoName,
    raw_id: &str,
) -> Result<Response, OciError> {
    let (id, mut guard) = open_session(reg, &repo, raw_id).await?;
    guard.take();
    reg.uploads.remove(&id);
    let reg2 = reg.clone();
    let id2 = id.clone();
    blocking(move || {
        reg2.blobs.discard_upload(&id2)?;
        reg2.meta.delete_upload(id2.as_str())?;
        Ok(())
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}
