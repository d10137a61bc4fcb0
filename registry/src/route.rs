//! Parses `/v2/...` paths. Repository names contain slashes, so the path is split from the
//! end, where the grammar is unambiguous (a reference, digest or upload id never has `/`).

/// The endpoint a `/v2/` path names. Borrowed parts are raw: handlers parse them into
/// `RepoName`, `Reference`, `Digest` or `UploadId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V2Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags {
        /// Repository.
        repo: &'a str,
    },
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        /// Repository.
        repo: &'a str,
        /// Tag or digest.
        reference: &'a str,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        /// Repository.
        repo: &'a str,
        /// Digest.
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart {
        /// Repository.
        repo: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload {
        /// Repository.
        repo: &'a str,
        /// Session id.
        id: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>`
    Referrers {
        /// Repository.
        repo: &'a str,
        /// Subject digest.
        digest: &'a str,
    },
}

impl V2Route<'_> {
    /// A low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            V2Route::Base => "base",
            V2Route::Catalog => "catalog",
            V2Route::Tags { .. } => "tags",
            V2Route::Manifest { .. } => "manifest",
            V2Route::Blob { .. } => "blob",
            V2Route::UploadStart { .. } | V2Route::Upload { .. } => "upload",
            V2Route::Referrers { .. } => "referrers",
        }
    }
}

/// Parses a request path. `None` means no `/v2/` endpoint has this shape.
pub fn parse(path: &str) -> Option<V2Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(V2Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(V2Route::Catalog);
    }
    if let Some(repo) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(V2Route::UploadStart { repo });
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return Some(V2Route::Tags { repo });
    }
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(repo) = head.strip_suffix("/blobs/uploads") {
        return Some(V2Route::Upload { repo, id: last });
    }
    let (repo, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(V2Route::Manifest {
            repo,
            reference: last,
        }),
        "blobs" => Some(V2Route::Blob { repo, digest: last }),
        "referrers" => Some(V2Route::Referrers { repo, digest: last }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_endpoint_shape() {
        let d = "sha256:abc";
        let cases = [
            ("/v2/", Some(V2Route::Base)),
            ("/v2", Some(V2Route::Base)),
            ("/v2/_catalog", Some(V2Route::Catalog)),
            ("/v2/a/b/tags/list", Some(V2Route::Tags { repo: "a/b" })),
            (
                "/v2/a/manifests/latest",
                Some(V2Route::Manifest {
                    repo: "a",
                    reference: "latest",
                }),
            ),
            (
                "/v2/x/manifests/y/manifests/v1",
                Some(V2Route::Manifest {
                    repo: "x/manifests/y",
                    reference: "v1",
                }),
            ),
            (
                "/v2/a/blobs/sha256:abc",
                Some(V2Route::Blob {
                    repo: "a",
                    digest: d,
                }),
            ),
            (
                "/v2/a/b/blobs/uploads/",
                Some(V2Route::UploadStart { repo: "a/b" }),
            ),
            (
                "/v2/a/blobs/uploads",
                Some(V2Route::UploadStart { repo: "a" }),
            ),
            (
                "/v2/a/blobs/uploads/u-1",
                Some(V2Route::Upload {
                    repo: "a",
                    id: "u-1",
                }),
            ),
            (
                "/v2/a/blobs/blobs/uploads/u",
                Some(V2Route::Upload {
                    repo: "a/blobs",
                    id: "u",
                }),
            ),
            (
                "/v2/a/referrers/sha256:abc",
                Some(V2Route::Referrers {
                    repo: "a",
                    digest: d,
                }),
            ),
            ("/v2/a/unknown/x", None),
            ("/v3/a/blobs/x", None),
            ("/v2x", None),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(path), expected, "{path}");
        }
    }
}
