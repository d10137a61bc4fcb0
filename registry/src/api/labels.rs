//! Tag lifecycle labels read from an image's config blob at manifest `PUT`:
//! `quay.expires-after=<n><s|m|h|d|w>` and `quay.immutable=true`.

use berth_oci::manifest::{ManifestKind, ParsedManifest};
use berth_oci::RepoName;
use berth_storage::meta::lifecycle::parse_expires_after;
use berth_storage::meta::TagOptions;

use crate::Shared;

/// Config blobs larger than this are not read for labels (image configs are a few KiB).
pub const CONFIG_READ_MAX: u64 = 1 << 20;

/// The options the image's labels give its tag. Anything unreadable or malformed means no
/// options: labels never make a push fail.
pub(crate) fn tag_options(reg: &Shared, repo: &RepoName, parsed: &ParsedManifest) -> TagOptions {
    let Some(config) = parsed
        .config
        .as_ref()
        .filter(|_| parsed.kind == ManifestKind::Image)
    else {
        return TagOptions::default();
    };
    if config.size > CONFIG_READ_MAX {
        return TagOptions::default();
    }
    // The manifest store re-checks that the config is in the repository; this read is
    // advisory.
    if !matches!(reg.meta.repo_blob(repo, &config.digest), Ok(Some(_))) {
        return TagOptions::default();
    }
    let Ok(Some(blob)) = reg.blobs.open_blob(&config.digest) else {
        return TagOptions::default();
    };
    if blob.len > CONFIG_READ_MAX {
        return TagOptions::default();
    }
    let mut bytes = Vec::with_capacity(blob.len as usize);
    if std::io::Read::read_to_end(
        &mut std::io::Read::take(&blob.file, CONFIG_READ_MAX),
        &mut bytes,
    )
    .is_err()
    {
        return TagOptions::default();
    }
    options_from_config(&bytes, now_ms())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads `.config.Labels` of an image config JSON.
pub fn options_from_config(config_json: &[u8], now_ms: i64) -> TagOptions {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(config_json) else {
        return TagOptions::default();
    };
    let labels = &v["config"]["Labels"];
    let expires_ms = labels["quay.expires-after"]
        .as_str()
        .and_then(parse_expires_after)
        .map(|ms| now_ms.saturating_add(ms));
    let immutable = labels["quay.immutable"]
        .as_str()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
    TagOptions {
        // An immutable tag never expires.
        expires_ms: if immutable { None } else { expires_ms },
        immutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_config() {
        let cases: [(&str, TagOptions); 5] = [
            (
                r#"{"config":{"Labels":{"quay.expires-after":"2h"}}}"#,
                TagOptions {
                    expires_ms: Some(1000 + 7_200_000),
                    immutable: false,
                },
            ),
            (
                r#"{"config":{"Labels":{"quay.immutable":"true","quay.expires-after":"2h"}}}"#,
                TagOptions {
                    expires_ms: None,
                    immutable: true,
                },
            ),
            (
                r#"{"config":{"Labels":{"quay.expires-after":"2x"}}}"#,
                TagOptions::default(),
            ),
            (r#"{"config":{}}"#, TagOptions::default()),
            ("not json", TagOptions::default()),
        ];
        for (json, want) in cases {
            assert_eq!(options_from_config(json.as_bytes(), 1000), want, "{json}");
        }
    }
}
