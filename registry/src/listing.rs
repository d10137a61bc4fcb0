//! Listings: tags, catalog and referrers.

use axum::http::request::Parts as Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_oci::media_type::OCI_INDEX;
use berth_oci::{Digest, RepoName};
use berth_storage::meta::Page;

use crate::error::{ErrorCode, OciError};
use crate::{blocking, json_response, query_param, Shared};

/// Reads `n` and `last`; `n` is clamped to the configured page size.
fn page_params(reg: &Shared, req: &Request) -> Result<(usize, Option<String>), OciError> {
    let n = match query_param(req, "n") {
        None => reg.config.page_size_max,
        Some(raw) => raw.parse::<usize>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("pagination parameter n={raw:?} is not a number"),
            )
        })?,
    };
    Ok((n.min(reg.config.page_size_max), query_param(req, "last")))
}

fn with_next_link(mut resp: Response, path: &str, n: usize, page: &Page) -> Response {
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
}

/// `GET /v2/<name>/tags/list`
pub(crate) async fn tags(
    reg: &Shared,
    repo: RepoName,
    req: &Request,
) -> Result<Response, OciError> {
    let (n, last) = page_params(reg, req)?;
    let reg2 = reg.clone();
    let repo2 = repo.clone();
    let page = blocking(move || Ok(reg2.meta.list_tags(&repo2, last.as_deref(), n)?)).await?;
    let page = page.ok_or_else(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(serde_json::json!({ "name": repo.as_str() }))
    })?;
    let body = serde_json::json!({ "name": repo.as_str(), "tags": page.items }).to_string();
    let path = format!("/v2/{repo}/tags/list");
    Ok(with_next_link(
        json_response(StatusCode::OK, body),
        &path,
        n,
        &page,
    ))
}

/// `GET /v2/_catalog`
pub(crate) async fn catalog(reg: &Shared, req: &Request) -> Result<Response, OciError> {
    let (n, last) = page_params(reg, req)?;
    let reg2 = reg.clone();
    // Identity: only repositories the caller may read (auth off: all).
    let access = req.extensions.get::<crate::auth::Access>().cloned();
    let page =
        blocking(move || crate::auth::catalog_page(&reg2, &access, last.as_deref(), n)).await?;
    let body = serde_json::json!({ "repositories": page.items }).to_string();
    Ok(with_next_link(
        json_response(StatusCode::OK, body),
        "/v2/_catalog",
        n,
        &page,
    ))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`
pub(crate) async fn referrers(
    reg: &Shared,
    repo: RepoName,
    digest: &str,
    req: &Request,
) -> Result<Response, OciError> {
    let subject = Digest::parse(digest)?;
    let artifact_type = query_param(req, "artifactType").filter(|a| !a.is_empty());
    let reg2 = reg.clone();
    let filter = artifact_type.clone();
    let manifests =
        blocking(move || Ok(reg2.meta.referrers(&repo, &subject, filter.as_deref())?)).await?;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    })
    .to_string();
    let mut resp = json_response(StatusCode::OK, body);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(OCI_INDEX));
    if artifact_type.is_some() {
        h.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
