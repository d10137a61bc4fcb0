//! `GET /berth/v1/torrent/<repo>/blobs/<digest>`: a stored blob as a BitTorrent v1
//! metainfo file (`application/x-bittorrent`).
//!
//! The torrent is bencoded here, from the piece hashes computed while the blob was pushed
//! (`BlobStore::read_index`: SHA-1 per 1 MiB piece), so serving one never reads the blob.
//! It carries a web seed (BEP 19 `url-list`) pointing at the blob's `/v2/` URL on this node,
//! so any BitTorrent client can download it without a peer, and `announce` when a tracker is
//! configured. librqbit's `create_torrent` is not used: it writes one piece hash too many
//! when the size is a multiple of the piece length (FIELD-NOTES).
//!
//! Invariant: a repository that is not public (`repositories.public = 0`) gets no torrent
//! (404): its info-hash would let anyone on a tracker find and fetch it.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Digest, RepoName};
use berth_storage::CHUNK_SIZE;

use crate::error::OciError;
use crate::{blocking, Shared};

/// A blob's torrent, before encoding.
pub struct TorrentSpec<'a> {
    /// The file name inside the torrent (the digest's hex).
    pub name: &'a str,
    /// The blob's length in bytes.
    pub length: u64,
    /// Concatenated 20-byte SHA-1 piece hashes, pieces of [`CHUNK_SIZE`].
    pub pieces: &'a [[u8; 20]],
    /// Web seed URL (BEP 19).
    pub web_seed: Option<&'a str>,
    /// Tracker announce URL.
    pub announce: Option<&'a str>,
}

fn bstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn bint(out: &mut Vec<u8>, n: u64) {
    out.push(b'i');
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b'e');
}

/// Bencodes the `info` dictionary (keys sorted, as bencoding requires). Its SHA-1 is the
/// info-hash.
pub fn encode_info(spec: &TorrentSpec<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + spec.pieces.len() * 20);
    out.push(b'd');
    bstr(&mut out, b"length");
    bint(&mut out, spec.length);
    bstr(&mut out, b"name");
    bstr(&mut out, spec.name.as_bytes());
    bstr(&mut out, b"piece length");
    bint(&mut out, CHUNK_SIZE);
    bstr(&mut out, b"pieces");
    let flat: Vec<u8> = spec.pieces.iter().flatten().copied().collect();
    bstr(&mut out, &flat);
    out.push(b'e');
    out
}

/// Bencodes the whole metainfo file.
pub fn encode(spec: &TorrentSpec<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(b'd');
    if let Some(a) = spec.announce {
        bstr(&mut out, b"announce");
        bstr(&mut out, a.as_bytes());
    }
    bstr(&mut out, b"created by");
    bstr(&mut out, b"berth");
    bstr(&mut out, b"info");
    out.extend_from_slice(&encode_info(spec));
    if let Some(w) = spec.web_seed {
        bstr(&mut out, b"url-list");
        out.push(b'l');
        bstr(&mut out, w.as_bytes());
        out.push(b'e');
    }
    out.push(b'e');
    out
}

/// The handler.
pub(crate) async fn get(
    State(reg): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match serve(&reg, &path, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(reg: &Shared, path: &str, headers: &HeaderMap) -> Result<Response, OciError> {
    let not_found = || {
        OciError::new(
            StatusCode::NOT_FOUND,
            crate::error::ErrorCode::BlobUnknown,
            "no torrent for this blob",
        )
    };
    let (repo, digest) = path.rsplit_once("/blobs/").ok_or_else(not_found)?;
    let repo = RepoName::parse(repo)?;
    let digest = Digest::parse(digest)?;
    let (reg2, r, d) = (reg.clone(), repo.clone(), digest.clone());
    let found = blocking(move || {
        if r.as_str().is_empty() || reg2.meta.repo_blob(&r, &d)?.is_none() {
            return Ok(None);
        }
        if reg2.meta.repo_info(&r)?.is_some_and(|info| !info.public) {
            return Ok(None);
        }
        let Some(len) = reg2.blobs.stat(&d)? else {
            return Ok(None);
        };
        Ok(reg2.blobs.read_index(&d)?.map(|index| (len, index)))
    })
    .await?;
    let (length, index) = found.ok_or_else(not_found)?;
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()));
    let web_seed = host.map(|h| format!("http://{h}/v2/{repo}/blobs/{digest}"));
    let body = encode(&TorrentSpec {
        name: digest.hex(),
        length,
        pieces: &index.sha1s,
        web_seed: web_seed.as_deref(),
        announce: reg.mirror.announce.as_deref(),
    });
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-bittorrent"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencoding_is_canonical() {
        let pieces = [[0x61u8; 20], [0x62u8; 20]];
        let spec = TorrentSpec {
            name: "ab",
            length: CHUNK_SIZE + 1,
            pieces: &pieces,
            web_seed: Some("http://h/x"),
            announce: Some("http://t/announce"),
        };
        let got = encode(&spec);
        let want = format!(
            "d8:announce17:http://t/announce10:created by5:berth4:infod6:lengthi1048577e4:name2:ab12:piece lengthi1048576e6:pieces40:{}{}e8:url-listl10:http://h/xee",
            "a".repeat(20),
            "b".repeat(20)
        );
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
}
