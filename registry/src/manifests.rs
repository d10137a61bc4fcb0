//! Manifest `GET`/`HEAD`/`PUT`/`DELETE` by tag or digest.

use axum::body::Body;
use axum::http::request::Parts as Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_oci::limits::MANIFEST_SIZE_MAX;
use berth_oci::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use berth_oci::{manifest, Algorithm, Digest, Reference, RepoName};
use berth_storage::meta::{NewManifest, StoredManifest};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::error::{ErrorCode, OciError};
use crate::{blocking, header_str, metadata_read, Shared};

fn too_large() -> OciError {
    OciError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SizeInvalid,
        format!("manifest exceeds the limit of {MANIFEST_SIZE_MAX} bytes"),
    )
}

/// `GET` (with `with_body`) or `HEAD` of a manifest.
pub(crate) async fn get(
    reg: &Shared,
    repo: RepoName,
    reference: &str,
    req: &Request,
    with_body: bool,
) -> Result<Response, OciError> {
    let reference = Reference::parse(reference)?;
    // Pull-through: revalidate / fetch from the content source, if one is configured.
    if let Some(resp) = crate::source::manifest_get(reg, &repo, &reference, req, with_body).await? {
        return Ok(resp);
    }
    let accept = Accept::from_headers(req);
    let reg2 = reg.clone();
    let r = reference.clone();
    let stored = metadata_read(move || {
        let found = match &r {
            Reference::Tag(tag) => reg2.meta.manifest_by_tag(&repo, tag)?,
            Reference::Digest(d) => reg2.meta.manifest_by_digest(&repo, d)?,
        };
        match found {
            Some(m) if !accept.allows(&m.media_type) => negotiate(&reg2, &repo, m),
            other => Ok(other),
        }
    })?;
    let m = stored.ok_or_else(|| OciError::manifest_unknown(&reference))?;
    Ok(manifest_response(
        &m.digest,
        &m.media_type,
        &m.content,
        with_body,
    ))
}

/// A manifest `GET` (with `with_body`) or `HEAD` response: the exact stored bytes with their
/// media type, digest and ETag. Shared by stored, pulled-through and derived manifests.
pub(crate) fn manifest_response(
    digest: &Digest,
    media_type: &str,
    content: &Bytes,
    with_body: bool,
) -> Response {
    let mut resp = Response::new(if with_body {
        Body::from(content.clone())
    } else {
        Body::empty()
    });
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(media_type) {
        h.insert("content-type", v);
    }
    h.insert("content-length", HeaderValue::from(content.len() as u64));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert("etag", v);
    }
    resp
}

/// The media types a client accepts. An absent header, or one with a wildcard, accepts all.
struct Accept(Option<Vec<String>>);

impl Accept {
    fn from_headers(req: &Request) -> Accept {
        let mut types = Vec::new();
        for value in req.headers.get_all("accept") {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let media_type = item.split(';').next().unwrap_or("").trim();
                if media_type == "*/*" || media_type == "application/*" {
                    return Accept(None);
                }
                if !media_type.is_empty() {
                    types.push(media_type.to_owned());
                }
            }
        }
        Accept((!types.is_empty()).then_some(types))
    }

    fn allows(&self, media_type: &str) -> bool {
        match &self.0 {
            None => true,
            // Image manifests are served whatever the client says (as distribution does):
            // there is no other representation to offer.
            Some(types) => {
                types.iter().any(|t| t == media_type)
                    || !matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
            }
        }
    }
}

/// A client that does not accept indexes gets the `linux/amd64` image of a multi-platform
/// index (what distribution does for old clients), or `MANIFEST_UNKNOWN`.
fn negotiate(
    reg: &Shared,
    repo: &RepoName,
    index: StoredManifest,
) -> Result<Option<StoredManifest>, OciError> {
    let parsed = manifest::parse(&index.content, Some(&index.media_type))?;
    let default_platform = parsed.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.get("os").and_then(|v| v.as_str()) == Some("linux")
                && p.get("architecture").and_then(|v| v.as_str()) == Some("amd64")
        })
    });
    match default_platform {
        Some(child) => Ok(reg.meta.manifest_by_digest(repo, &child.digest)?),
        None => Ok(None),
    }
}

/// `PUT`: validates and stores a manifest, moving the tag if pushed by tag.
pub(crate) async fn put(
    reg: &Shared,
    repo: RepoName,
    reference: &str,
    req: &Request,
    body: Body,
) -> Result<Response, OciError> {
    let reference = Reference::parse(reference)?;
    let declared = header_str(req, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MANIFEST_SIZE_MAX) {
        return Err(too_large());
    }
    let content_type = header_str(req, "content-type").map(str::to_owned);
    let body = Limited::new(body, MANIFEST_SIZE_MAX as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::ManifestInvalid,
                    format!("reading manifest body: {e}"),
                )
            }
        })?
        .to_bytes();
    let reg2 = reg.clone();
    let repo2 = repo.clone();
    let (digest, subject) = blocking(move || {
        let parsed = manifest::parse(&body, content_type.as_deref())?;
        let algorithm = match &reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, &body);
        let tag = match &reference {
            Reference::Digest(d) if *d != digest => {
                return Err(OciError::digest_invalid(format!(
                    "manifest content has digest {digest}, not {d}"
                )))
            }
            Reference::Digest(_) => None,
            Reference::Tag(t) => Some(t),
        };
        // Tag lifecycle labels (`quay.expires-after`, `quay.immutable`) of the image config.
        let tag_options = match tag {
            Some(_) => crate::api::labels::tag_options(&reg2, &repo2, &parsed),
            None => Default::default(),
        };
        reg2.meta.put_manifest(NewManifest {
            repo: &repo2,
            digest: &digest,
            parsed: &parsed,
            content: &body,
            tag,
            tag_options,
        })?;
        Ok((digest, parsed.subject.map(|s| s.digest)))
    })
    .await?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::CREATED;
    let h = resp.headers_mut();
    h.insert("content-length", HeaderValue::from_static("0"));
    let headers = [
        ("location", Some(format!("/v2/{repo}/manifests/{digest}"))),
        ("docker-content-digest", Some(digest.to_string())),
        ("oci-subject", subject.map(|s| s.to_string())),
    ];
    for (name, value) in headers {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    Ok(resp)
}

/// `DELETE`: by digest removes the manifest and its tags; by tag removes only the tag.
pub(crate) async fn delete(
    reg: &Shared,
    repo: RepoName,
    reference: &str,
) -> Result<Response, OciError> {
    let reference = Reference::parse(reference)?;
    let reg2 = reg.clone();
    let r = reference.clone();
    let removed = blocking(move || {
        Ok(match &r {
            Reference::Digest(d) => reg2.meta.delete_manifest(&repo, d)?,
            Reference::Tag(t) => reg2.meta.delete_tag(&repo, t)?,
        })
    })
    .await?;
    if !removed {
        return Err(OciError::manifest_unknown(&reference));
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    Ok(resp)
}
