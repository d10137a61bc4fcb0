//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/..`) generated from Rust,
//! so skopeo and podman have an image to push without any image from outside.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{fail, gzip, sha256_digest, tar, Res, Rng};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One generated layer: what is in it, and both of its digests.
pub struct Layer {
    /// The gzip blob as pushed.
    pub blob: Vec<u8>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// One generated single-platform image.
pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Layer>,
}

impl Image {
    /// The manifest's descriptor, with a platform for use in an index.
    pub fn descriptor(&self, arch: Option<&str>) -> Value {
        let mut d = json!({
            "mediaType": OCI_MANIFEST,
            "digest": self.manifest_digest,
            "size": self.manifest.len(),
        });
        if let Some(arch) = arch {
            d["platform"] = json!({"architecture": arch, "os": "linux"});
        }
        d
    }
}

/// An OCI image layout directory being written.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// Creates `dir` with its `oci-layout` marker and blob directory.
    pub fn create(dir: &Path) -> Res<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Stores a blob; returns its digest.
    pub fn put(&self, bytes: &[u8]) -> Res<String> {
        let digest = sha256_digest(bytes);
        std::fs::write(self.blob_path(&digest)?, bytes)?;
        Ok(digest)
    }

    fn blob_path(&self, digest: &str) -> Res<PathBuf> {
        blob_path(&self.dir, digest)
    }

    /// Generates an image for `arch` with `layer_count` gzip layers of random files (one of
    /// them `big_size` bytes) and stores all its blobs.
    pub fn build_image(
        &self,
        rng: &mut Rng,
        arch: &str,
        layer_count: usize,
        big_size: usize,
    ) -> Res<Image> {
        self.build_labeled_image(rng, arch, layer_count, big_size, json!({}))
    }

    /// Like [`Layout::build_image`], with `labels` in the config's `config.Labels`.
    pub fn build_labeled_image(
        &self,
        rng: &mut Rng,
        arch: &str,
        layer_count: usize,
        big_size: usize,
        labels: Value,
    ) -> Res<Image> {
        let mut layers = Vec::new();
        for i in 0..layer_count {
            let files = [
                (
                    format!("e2e/{arch}/layer{i}.txt"),
                    format!("layer {i} for {arch}, token {}\n", rng.next_u64()).into_bytes(),
                ),
                (format!("e2e/{arch}/random{i}.bin"), rng.bytes(big_size)),
            ];
            let refs: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            let plain = tar(&refs);
            let blob = gzip(&plain)?;
            let digest = self.put(&blob)?;
            layers.push(Layer {
                blob,
                digest,
                diff_id: sha256_digest(&plain),
            });
        }
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["E2E=1"], "Labels": labels},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        }))?;
        let config_digest = self.put(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(|l| json!({
                "mediaType": OCI_LAYER_GZIP,
                "digest": l.digest,
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))?;
        let manifest_digest = self.put(&manifest)?;
        Ok(Image {
            manifest,
            manifest_digest,
            config_digest,
            layers,
        })
    }

    /// Writes `index.json` naming `descriptor` as `tag`.
    pub fn tag(&self, descriptor: &Value, tag: &str) -> Res {
        let mut descriptor = descriptor.clone();
        descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor],
        });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// Path of blob `digest` in the layout at `dir`.
pub fn blob_path(dir: &Path, digest: &str) -> Res<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| fail(format!("not a sha256 digest: {digest}")))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// Reads blob `digest` from the layout at `dir`.
pub fn read_blob(dir: &Path, digest: &str) -> Res<Vec<u8>> {
    let path = blob_path(dir, digest)?;
    std::fs::read(&path).map_err(|e| fail(format!("reading {}: {e}", path.display())))
}

/// The descriptor `index.json` of the layout at `dir` gives for `tag`.
pub fn tagged_descriptor(dir: &Path, tag: &str) -> Res<Value> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .ok_or_else(|| fail(format!("{} has no tag {tag}: {index}", dir.display())))
}

/// A JSON field that must be a string.
pub fn str_field<'a>(v: &'a Value, field: &str) -> Res<&'a str> {
    v[field]
        .as_str()
        .ok_or_else(|| fail(format!("{field} missing in {v}")))
}
