//! OCI Distribution operations over [`Client`]: the only module that knows URL shapes,
//! status codes and headers of the protocol.
//!
//! Every download is verified while it streams: bytes are hashed frame by frame and compared
//! with the expected digest and length at the end; a body longer than expected is cut off
//! and counted as a digest mismatch, so a misbehaving server cannot make us read forever.

use crate::client::{location, next_data, read_small, Call, Client, ReqBody};
use crate::data::{Blob, Content, Digest, OCI_MANIFEST_MEDIA_TYPE};
use crate::error::{ErrorKind, ReqError};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Largest manifest accepted (same bound as common registries).
pub const MANIFEST_SIZE_MAX: usize = 4 << 20;
/// Most layers accepted in a pulled manifest.
pub const MANIFEST_LAYERS_MAX: usize = 1024;
/// Most pages followed in one listing walk.
pub const LIST_PAGES_MAX: usize = 10_000;

/// What `docker pull` sends as `Accept` for a manifest by tag.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How a blob is uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UploadMode {
    /// `POST /blobs/uploads/?digest=` with the body (falls back to PUT if the registry
    /// answers 202 with a session instead, as distribution 2.8 does).
    Monolithic,
    /// `POST` a session, then one `PUT ?digest=` with the body.
    Put,
    /// `POST`, one streamed `PATCH` (chunked transfer encoding), then an empty `PUT`.
    Stream,
    /// `POST`, `PATCH`es of `--chunk-size` with `Content-Range`, then an empty `PUT`.
    Chunked,
}

/// A descriptor as found in a manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    /// Content digest.
    pub digest: String,
    /// Content length.
    pub size: u64,
}

/// The parts of an image manifest a pull needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// Config descriptor.
    pub config: Descriptor,
    /// Layer descriptors.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// Scope for pulling from `repo`.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// Scope for pushing to `repo`.
pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// Scope for the catalog.
pub const CATALOG_SCOPE: &str = "registry:catalog:*";

fn octet_stream() -> (HeaderName, HeaderValue) {
    (
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    )
}

fn content_body(content: &Content, start: u64, end: u64, sized: bool) -> ReqBody {
    match content {
        Content::Gen(spec) => ReqBody::gen(*spec, start, end, sized),
        Content::Bytes(b) => {
            let s = (start as usize).min(b.len());
            let e = (end as usize).clamp(s, b.len());
            ReqBody::Mem {
                rest: b.slice(s..e),
                sized,
            }
        }
    }
}

fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

impl Client {
    /// `GET /v2/`: is this a registry, and can we talk to it?
    pub async fn ping(&self) -> Result<(), ReqError> {
        let call = Call {
            method: Method::GET,
            url: "/v2/",
            headers: &[],
            scope: "",
        };
        let resp = self.send(&call, &|| ReqBody::Empty).await?;
        let status = resp.status();
        crate::client::drain(resp, self.timeout()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(ReqError::status(status, "GET /v2/"))
        }
    }

    /// `HEAD` a blob: `Some(length)` if present, `None` on 404.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, ReqError> {
        let url = format!("/v2/{repo}/blobs/{digest}");
        let scope = pull_scope(repo);
        let call = Call {
            method: Method::HEAD,
            url: &url,
            headers: &[],
            scope: &scope,
        };
        let resp = self.send(&call, &|| ReqBody::Empty).await?;
        match resp.status() {
            StatusCode::OK => Ok(resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or(Some(0))),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(ReqError::status(s, "HEAD blob")),
        }
    }

    /// `GET` a blob, hashing it as it streams. Returns the bytes received.
    pub async fn get_blob(&self, repo: &str, digest: &Digest, size: u64) -> Result<u64, ReqError> {
        let url = format!("/v2/{repo}/blobs/{digest}");
        let scope = pull_scope(repo);
        let call = Call {
            method: Method::GET,
            url: &url,
            headers: &[],
            scope: &scope,
        };
        let resp = self.send(&call, &|| ReqBody::Empty).await?;
        if resp.status() != StatusCode::OK {
            let s = resp.status();
            crate::client::drain(resp, self.timeout()).await;
            return Err(ReqError::status(s, "GET blob"));
        }
        let mut body = resp.into_body();
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        while let Some(data) = next_data(&mut body, self.timeout()).await? {
            got += data.len() as u64;
            if got > size {
                return Err(ReqError::new(
                    ErrorKind::DigestMismatch,
                    format!("{digest}: body longer than {size} bytes"),
                ));
            }
            hasher.update(&data);
        }
        if got != size {
            return Err(ReqError::new(
                ErrorKind::DigestMismatch,
                format!("{digest}: got {got} of {size} bytes"),
            ));
        }
        let actual = Digest::of_sha256(hasher);
        if &actual != digest {
            return Err(ReqError::new(
                ErrorKind::DigestMismatch,
                format!("expected {digest}, got {actual}"),
            ));
        }
        Ok(got)
    }

    /// `GET` a manifest by tag or digest with docker's `Accept`; verifies it against
    /// `Docker-Content-Digest` (when sent) and against `expected` (when known).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Bytes, ReqError> {
        let url = format!("/v2/{repo}/manifests/{reference}");
        let scope = pull_scope(repo);
        let headers = [(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))];
        let call = Call {
            method: Method::GET,
            url: &url,
            headers: &headers,
            scope: &scope,
        };
        let resp = self.send(&call, &|| ReqBody::Empty).await?;
        if resp.status() != StatusCode::OK {
            let s = resp.status();
            crate::client::drain(resp, self.timeout()).await;
            return Err(ReqError::status(s, "GET manifest"));
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(Digest::parse);
        let body = read_small(resp, MANIFEST_SIZE_MAX, self.timeout()).await?;
        let actual = Digest::of_bytes(&body);
        for want in header_digest.iter().chain(expected) {
            if want != &actual {
                return Err(ReqError::new(
                    ErrorKind::DigestMismatch,
                    format!("manifest {repo}:{reference}: expected {want}, got {actual}"),
                ));
            }
        }
        Ok(body)
    }

    /// `PUT` a manifest under `reference`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Bytes,
    ) -> Result<(), ReqError> {
        let url = format!("/v2/{repo}/manifests/{reference}");
        let scope = push_scope(repo);
        let headers = [(
            CONTENT_TYPE,
            HeaderValue::from_static(OCI_MANIFEST_MEDIA_TYPE),
        )];
        let call = Call {
            method: Method::PUT,
            url: &url,
            headers: &headers,
            scope: &scope,
        };
        let resp = self
            .send(&call, &|| ReqBody::Full(Some(manifest.clone())))
            .await?;
        let s = resp.status();
        crate::client::drain(resp, self.timeout()).await;
        if s.is_success() {
            Ok(())
        } else {
            Err(ReqError::status(s, "PUT manifest"))
        }
    }

    /// Uploads a blob with `mode`.
    pub async fn push_blob(
        &self,
        repo: &str,
        blob: &Blob,
        mode: UploadMode,
        chunk_size: u64,
    ) -> Result<(), ReqError> {
        let scope = push_scope(repo);
        let start = format!("/v2/{repo}/blobs/uploads/");
        let len = blob.content.len();
        let digest = blob.digest.as_str();
        let session = if mode == UploadMode::Monolithic {
            let url = with_query(&start, "digest", digest);
            let (status, loc) = self
                .upload_step(&scope, Method::POST, &url, &[octet_stream()], &|| {
                    content_body(&blob.content, 0, len, true)
                })
                .await?;
            if status == StatusCode::CREATED {
                return Ok(());
            }
            loc
        } else {
            self.upload_step(&scope, Method::POST, &start, &[], &|| ReqBody::Empty)
                .await?
                .1
        };
        let mut loc = session;
        let final_body_len = match mode {
            UploadMode::Monolithic | UploadMode::Put => len,
            UploadMode::Stream => {
                let (_, l) = self
                    .upload_step(&scope, Method::PATCH, &loc, &[octet_stream()], &|| {
                        content_body(&blob.content, 0, len, false)
                    })
                    .await?;
                loc = l;
                0
            }
            UploadMode::Chunked => {
                let chunk = chunk_size.max(1);
                let mut off = 0;
                while off < len {
                    let end = (off + chunk).min(len);
                    let range = HeaderValue::from_str(&format!("{}-{}", off, end - 1))
                        .map_err(|e| ReqError::protocol(e.to_string()))?;
                    let headers = [octet_stream(), (CONTENT_RANGE, range)];
                    let (_, l) = self
                        .upload_step(&scope, Method::PATCH, &loc, &headers, &|| {
                            content_body(&blob.content, off, end, true)
                        })
                        .await?;
                    loc = l;
                    off = end;
                }
                0
            }
        };
        let url = with_query(&loc, "digest", digest);
        let (status, _) = self
            .upload_step(&scope, Method::PUT, &url, &[octet_stream()], &|| {
                if final_body_len == 0 {
                    ReqBody::Empty
                } else {
                    content_body(&blob.content, 0, len, true)
                }
            })
            .await?;
        if status == StatusCode::CREATED {
            Ok(())
        } else {
            Err(ReqError::status(status, "PUT blob upload"))
        }
    }

    /// One upload request; success is 201 (done) or 202 (session continues at `Location`).
    async fn upload_step(
        &self,
        scope: &str,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &(dyn Fn() -> ReqBody + Sync),
    ) -> Result<(StatusCode, String), ReqError> {
        let what = format!("{method} upload");
        let call = Call {
            method,
            url,
            headers,
            scope,
        };
        let resp = self.send(&call, body).await?;
        let status = resp.status();
        let loc = location(resp.headers());
        crate::client::drain(resp, self.timeout()).await;
        match status {
            StatusCode::CREATED => Ok((status, loc.unwrap_or_default())),
            StatusCode::ACCEPTED | StatusCode::NO_CONTENT => Ok((status, loc?)),
            s => Err(ReqError::status(s, &what)),
        }
    }

    /// One listing page: the JSON body, the next page's URL from `Link` (if any), and the
    /// body's length.
    pub async fn list_page(
        &self,
        url: &str,
        scope: &str,
    ) -> Result<(serde_json::Value, Option<String>, u64), ReqError> {
        let call = Call {
            method: Method::GET,
            url,
            headers: &[],
            scope,
        };
        let resp = self.send(&call, &|| ReqBody::Empty).await?;
        if resp.status() != StatusCode::OK {
            let s = resp.status();
            crate::client::drain(resp, self.timeout()).await;
            return Err(ReqError::status(s, "GET listing"));
        }
        let next = resp
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_next_link);
        let body = read_small(resp, MANIFEST_SIZE_MAX, self.timeout()).await?;
        let v = serde_json::from_slice(&body)
            .map_err(|e| ReqError::protocol(format!("listing JSON: {e}")))?;
        Ok((v, next, body.len() as u64))
    }
}

/// Extracts the `rel="next"` target of a `Link` header.
pub fn parse_next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("rel=\"next\"")
                || p.trim().eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| url.to_owned())
    })
}

/// Parses a manifest body, bounding its layer count.
pub fn parse_manifest(body: &[u8]) -> Result<Manifest, ReqError> {
    let m: Manifest = serde_json::from_slice(body)
        .map_err(|e| ReqError::protocol(format!("manifest JSON: {e}")))?;
    if m.layers.len() > MANIFEST_LAYERS_MAX {
        return Err(ReqError::protocol(format!(
            "manifest has {} layers (max {MANIFEST_LAYERS_MAX})",
            m.layers.len()
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header() {
        assert_eq!(
            parse_next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#),
            Some("/v2/_catalog?last=b&n=2".into())
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(parse_next_link("garbage"), None);
    }

    #[test]
    fn query_join() {
        assert_eq!(with_query("/u/1", "digest", "d"), "/u/1?digest=d");
        assert_eq!(
            with_query("/u/1?_state=x", "digest", "d"),
            "/u/1?_state=x&digest=d"
        );
    }
}
