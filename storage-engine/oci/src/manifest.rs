//! Parsing and structural validation of the manifest formats a registry stores: OCI image
//! manifest, OCI image index, Docker schema 2 manifest and Docker manifest list.
//!
//! Existence of what a manifest references is checked by the registry, not here: this module
//! only turns bytes into a [`ParsedManifest`] or explains why it cannot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::MANIFEST_REFERENCES_MAX;
use crate::media_type::{self, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::Digest;

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// The artifact type, for referrers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, in indexes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    /// External URLs (non-distributable layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// Whether a manifest lists blobs (an image) or other manifests (an index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema 2 manifest.
    Image,
    /// OCI image index or Docker manifest list.
    Index,
}

/// A manifest that is structurally valid.
#[derive(Clone, Debug)]
pub struct ParsedManifest {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// `artifactType`, or for an image without one, its config's media type (as the
    /// referrers API reports it).
    pub artifact_type: Option<String>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
    /// The config blob of an image manifest.
    pub config: Option<Descriptor>,
    /// Layer blobs of an image manifest.
    pub layers: Vec<Descriptor>,
    /// Child manifests of an index.
    pub manifests: Vec<Descriptor>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    /// A media type berth does not store as a manifest.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// The body's `mediaType` disagrees with the `Content-Type` it was pushed with.
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// The `mediaType` field.
        body: String,
        /// The request's `Content-Type`.
        header: String,
    },
    /// `schemaVersion` is not 2.
    #[error("schemaVersion must be 2, got {0:?}")]
    SchemaVersion(Option<i64>),
    /// A required field is missing.
    #[error("manifest of type {media_type} is missing {field}")]
    MissingField {
        /// The manifest's media type.
        media_type: String,
        /// The missing field.
        field: &'static str,
    },
    /// Too many descriptors.
    #[error("manifest references more than {MANIFEST_REFERENCES_MAX} descriptors")]
    TooManyReferences,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Parses `bytes` pushed with `content_type` (the request's `Content-Type`, if any).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(bytes)?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::MediaTypeMismatch {
                body: b.to_owned(),
                header: h.to_owned(),
            })
        }
        (Some(h), _) => h.to_owned(),
        (None, Some(b)) => b.to_owned(),
        // An OCI manifest may omit mediaType; infer it from the shape.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if !media_type::MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion(raw.schema_version));
    }
    let missing = |field| ManifestError::MissingField {
        media_type: media_type.clone(),
        field,
    };
    let kind = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => ManifestKind::Index,
        _ => ManifestKind::Image,
    };
    let (config, layers, manifests) = match kind {
        ManifestKind::Image => {
            let config = raw.config.ok_or_else(|| missing("config"))?;
            let layers = raw.layers.ok_or_else(|| missing("layers"))?;
            (Some(config), layers, Vec::new())
        }
        ManifestKind::Index => {
            let manifests = raw.manifests.ok_or_else(|| missing("manifests"))?;
            (None, Vec::new(), manifests)
        }
    };
    if media_type == DOCKER_MANIFEST && raw.media_type.is_none() {
        return Err(missing("mediaType"));
    }
    if layers.len() + manifests.len() > MANIFEST_REFERENCES_MAX {
        return Err(ManifestError::TooManyReferences);
    }
    let artifact_type = raw
        .artifact_type
        .or_else(|| config.as_ref().map(|c| c.media_type.clone()));
    Ok(ParsedManifest {
        media_type,
        kind,
        artifact_type,
        subject: raw.subject,
        config,
        layers,
        manifests,
        annotations: raw.annotations,
    })
}

impl ParsedManifest {
    /// Every blob this manifest needs present in its repository (config and distributable
    /// layers). Foreign / non-distributable layers are never uploaded, so they are skipped.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(
            self.layers
                .iter()
                .filter(|l| !media_type::is_non_distributable(&l.media_type)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{CFG}","size":2}},
            "layers":[]{extra}}}"#
        )
    }

    #[test]
    fn parses_image_and_reports_artifact_type() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let with = image(r#","artifactType":"application/x.sig""#);
        let m = parse(with.as_bytes(), None).expect("valid");
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
    }

    #[test]
    fn refuses_bad_manifests() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), None),
            (image(""), Some(OCI_INDEX)),
            (
                image("").replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                    .into(),
                None,
            ),
            (
                r#"{"schemaVersion":2,"manifests":[]}"#.into(),
                Some("text/plain"),
            ),
            (image("").replace(CFG, "sha256:zz"), None),
        ];
        for (body, ct) in cases {
            assert!(
                parse(body.as_bytes(), ct).is_err(),
                "{body} / {ct:?} should be refused"
            );
        }
    }

    #[test]
    fn index_without_media_type_is_inferred() {
        let m = parse(br#"{"schemaVersion":2,"manifests":[]}"#, None).expect("valid");
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.kind, ManifestKind::Index);
    }
}
