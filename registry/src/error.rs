//! The one place where failures become OCI error responses.
//!
//! Every `/v2/` error body is the spec's `{"errors":[{"code","message","detail"}]}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::manifest::ManifestError;
use berth_oci::{DigestError, NameError};
use berth_storage::{MetaError, StorageError};

/// Error codes from the distribution spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    /// Not in the spec's table: an internal failure (disk, database). Clients retry on 5xx.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Internal => "INTERNAL_ERROR",
        }
    }
}

/// An error response in the OCI format.
#[derive(Debug)]
pub struct OciError {
    /// HTTP status.
    pub status: StatusCode,
    /// Spec error code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Optional structured detail.
    pub detail: Option<serde_json::Value>,
    /// Extra headers (e.g. `Range` on a 416).
    pub headers: Vec<(&'static str, String)>,
}

impl OciError {
    /// A new error.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> OciError {
        self.detail = Some(detail);
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: String) -> OciError {
        self.headers.push((name, value));
        self
    }

    /// 500 for failures that are ours, logged with their full chain.
    pub fn internal(err: &dyn std::error::Error) -> OciError {
        let mut chain = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; see the node's log",
        )
    }

    pub(crate) fn blob_unknown(digest: impl std::fmt::Display) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            "blob unknown to registry",
        )
        .with_detail(serde_json::json!({ "digest": digest.to_string() }))
    }

    pub(crate) fn manifest_unknown(reference: impl std::fmt::Display) -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            "manifest unknown",
        )
        .with_detail(serde_json::json!({ "reference": reference.to_string() }))
    }

    pub(crate) fn upload_unknown() -> OciError {
        OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadUnknown,
            "blob upload unknown to registry",
        )
    }

    pub(crate) fn digest_invalid(message: impl Into<String>) -> OciError {
        OciError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, message)
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = detail;
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        resp
    }
}

impl From<NameError> for OciError {
    fn from(e: NameError) -> OciError {
        match e {
            NameError::InvalidDigest(d) => d.into(),
            NameError::InvalidTag(_) => OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestInvalid,
                e.to_string(),
            ),
            NameError::InvalidRepo(_) => OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::NameInvalid,
                e.to_string(),
            ),
        }
    }
}

impl From<DigestError> for OciError {
    fn from(e: DigestError) -> OciError {
        let unsupported = matches!(e, DigestError::UnsupportedAlgorithm(_));
        let err = OciError::digest_invalid(e.to_string());
        if unsupported {
            OciError {
                code: ErrorCode::Unsupported,
                ..err
            }
        } else {
            err
        }
    }
}

impl From<ManifestError> for OciError {
    fn from(e: ManifestError) -> OciError {
        OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ManifestInvalid,
            e.to_string(),
        )
    }
}

impl From<MetaError> for OciError {
    fn from(e: MetaError) -> OciError {
        match e {
            MetaError::MissingReferences(missing) => OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ManifestBlobUnknown,
                "manifest references content that is not in the repository",
            )
            .with_detail(serde_json::json!({
                "missing": missing.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            })),
            // A spec code (clients know DENIED) with a machine-readable reason in `detail`.
            MetaError::TagImmutable(tag) => OciError::new(
                StatusCode::CONFLICT,
                ErrorCode::Denied,
                format!("tag {tag} is immutable: it cannot be moved or deleted"),
            )
            .with_detail(serde_json::json!({ "reason": "TAG_IMMUTABLE", "tag": tag })),
            MetaError::QuotaExceeded {
                scope,
                used,
                limit,
                needed,
            } => OciError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                format!(
                    "quota exceeded for {scope}: used {used} of {limit} bytes, blob needs {needed}"
                ),
            )
            .with_detail(serde_json::json!({
                "reason": "QUOTA_EXCEEDED", "scope": scope, "used": used,
                "limit": limit, "needed": needed
            })),
            MetaError::NotRestorable(msg) => {
                OciError::new(StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown, msg)
            }
            other => OciError::internal(&other),
        }
    }
}

impl From<StorageError> for OciError {
    fn from(e: StorageError) -> OciError {
        match e {
            StorageError::DigestMismatch { expected, actual } => {
                OciError::digest_invalid("provided digest did not match uploaded content")
                    .with_detail(serde_json::json!({
                        "expected": expected.to_string(), "actual": actual.to_string()
                    }))
            }
            StorageError::UploadUnknown(_) => OciError::upload_unknown(),
            other => OciError::internal(&other),
        }
    }
}

/// Derived images (issue 6). A layer that does not decode, or decodes to another diff_id than
/// its config declares, is **422 `MANIFEST_INVALID`**, with `detail.reason`:
/// - not 5xx: the stored blob hashes to the digest it was pushed under (checked at commit;
///   bit rot on disk is `berth scrub`'s job), so these are the bytes the pusher sent and the
///   failure is permanent. Clients retry 5xx with backoff, and operators are paged for them;
///   neither helps an image that was broken when pushed.
/// - not `BLOB_UNKNOWN`: the blob is known and still served as pushed; that code would invite
///   a pointless re-push of the same bytes.
/// - `MANIFEST_INVALID`: the spec's closest code: the image this manifest describes cannot
///   be turned into the requested variant. `detail.layer` (added by the caller) names the blob.
///
/// Limits the operator set (`expansion_ratio_max`, `tar_entries_max`) are 422 `UNSUPPORTED`;
/// failures to read, write or encode are ours: 500.
impl From<berth_transcoder::TranscodeError> for OciError {
    fn from(e: berth_transcoder::TranscodeError) -> OciError {
        use berth_transcoder::TranscodeError as T;
        let (code, reason) = match &e {
            T::Corrupt { .. } => (ErrorCode::ManifestInvalid, "LAYER_CORRUPT"),
            T::DiffIdMismatch { .. } => (ErrorCode::ManifestInvalid, "DIFF_ID_MISMATCH"),
            T::Image(_) => (ErrorCode::ManifestInvalid, "IMAGE_INVALID"),
            T::ExpansionLimit { .. } => (ErrorCode::Unsupported, "EXPANSION_LIMIT"),
            T::TooManyEntries(_) => (ErrorCode::Unsupported, "TOO_MANY_ENTRIES"),
            T::Input(_) | T::Output(_) | T::Encode(_) => return OciError::internal(&e),
        };
        OciError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
            .with_detail(serde_json::json!({ "reason": reason }))
    }
}
