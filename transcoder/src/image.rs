//! Image metadata for derived images: rewriting manifests and configs, and the framing of a
//! `docker load` archive. Pure functions over bytes.

use berth_oci::Digest;
use serde_json::{json, Map, Value};

use crate::TranscodeError;

/// OCI manifest media type (derived images are always OCI manifests).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type (derived indexes are always OCI indexes).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker config media type, which an OCI manifest's config is renamed from.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Annotation naming the manifest a derived image was made from.
pub const ANNOTATION_SOURCE: &str = "io.berth.derived.from";
/// Annotation naming the transform (`zstd`, `gzip`, `squash`).
pub const ANNOTATION_TRANSFORM: &str = "io.berth.derived.transform";

/// A layer of a derived manifest.
#[derive(Clone, Debug)]
pub struct LayerOut {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

fn bad(msg: impl Into<String>) -> TranscodeError {
    TranscodeError::Image(msg.into())
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, TranscodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(format!("{what} is not a JSON object"))),
        Err(e) => Err(bad(format!("{what}: {e}"))),
    }
}

/// The `rootfs.diff_ids` of an image config.
pub fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, TranscodeError> {
    let cfg = object(config, "image config")?;
    let ids = cfg
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or_else(|| bad("image config has no rootfs.diff_ids"))?;
    ids.iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| Digest::parse(s).ok())
                .ok_or_else(|| bad("rootfs.diff_ids holds an invalid digest"))
        })
        .collect()
}

/// An OCI manifest like `source` (a Docker schema 2 or OCI image manifest) but with `layers`
/// (layer annotations kept when the count is unchanged), an optional new config and the
/// derivation annotations.
pub fn rewrite_manifest(
    source: &[u8],
    source_digest: &Digest,
    transform: &str,
    config: Option<(&Digest, u64)>,
    layers: &[LayerOut],
) -> Result<Vec<u8>, TranscodeError> {
    let mut m = object(source, "manifest")?;
    let old_layers = m
        .get("layers")
        .and_then(|l| l.as_array())
        .cloned()
        .unwrap_or_default();
    let keep_annotations = old_layers.len() == layers.len();
    let new_layers: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut d =
                json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size});
            if let (true, Some(a)) = (
                keep_annotations,
                old_layers.get(i).and_then(|o| o.get("annotations")),
            ) {
                d["annotations"] = a.clone();
            }
            d
        })
        .collect();
    let cfg = m
        .get_mut("config")
        .and_then(|c| c.as_object_mut())
        .ok_or_else(|| bad("manifest has no config"))?;
    if cfg.get("mediaType").and_then(|t| t.as_str()) == Some(DOCKER_CONFIG) {
        cfg.insert("mediaType".into(), json!(OCI_CONFIG));
    }
    if let Some((digest, size)) = config {
        cfg.insert("digest".into(), json!(digest.to_string()));
        cfg.insert("size".into(), json!(size));
    }
    m.insert("schemaVersion".into(), json!(2));
    m.insert("mediaType".into(), json!(OCI_MANIFEST));
    m.insert("layers".into(), Value::Array(new_layers));
    let ann = m
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("manifest annotations are not an object"))?;
    ann.insert(ANNOTATION_SOURCE.into(), json!(source_digest.to_string()));
    ann.insert(ANNOTATION_TRANSFORM.into(), json!(transform));
    serde_json::to_vec(&Value::Object(m)).map_err(|e| bad(e.to_string()))
}

/// An OCI index like `source` (an OCI index or Docker manifest list) in which child `i` is
/// replaced by `children[i]` (`Some((digest, size))` of its derived OCI manifest) or kept
/// as it is (`None`). Platforms and annotations of every child, and the index's own
/// annotations, are kept; the derivation annotations are added.
pub fn rewrite_index(
    source: &[u8],
    source_digest: &Digest,
    transform: &str,
    children: &[Option<(Digest, u64)>],
) -> Result<Vec<u8>, TranscodeError> {
    let mut m = object(source, "index")?;
    let manifests = m
        .get_mut("manifests")
        .and_then(|l| l.as_array_mut())
        .ok_or_else(|| bad("index has no manifests"))?;
    if manifests.len() != children.len() {
        return Err(bad(format!(
            "index has {} children, {} derived",
            manifests.len(),
            children.len()
        )));
    }
    for (desc, new) in manifests.iter_mut().zip(children) {
        let Some((digest, size)) = new else { continue };
        let d = desc
            .as_object_mut()
            .ok_or_else(|| bad("index child is not an object"))?;
        d.insert("mediaType".into(), json!(OCI_MANIFEST));
        d.insert("digest".into(), json!(digest.to_string()));
        d.insert("size".into(), json!(size));
    }
    m.insert("schemaVersion".into(), json!(2));
    m.insert("mediaType".into(), json!(OCI_INDEX));
    let ann = m
        .entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("index annotations are not an object"))?;
    ann.insert(ANNOTATION_SOURCE.into(), json!(source_digest.to_string()));
    ann.insert(ANNOTATION_TRANSFORM.into(), json!(transform));
    serde_json::to_vec(&Value::Object(m)).map_err(|e| bad(e.to_string()))
}

/// The config of a squashed image: one diff_id, and a history whose only non-empty entry is
/// the squash (the number of non-empty history entries must equal the layer count).
pub fn squash_config(
    config: &[u8],
    diff_id: &Digest,
    source_digest: &Digest,
) -> Result<Vec<u8>, TranscodeError> {
    let mut cfg = object(config, "image config")?;
    cfg.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": [diff_id.to_string()]}),
    );
    let mut history: Vec<Value> = cfg
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    for h in history.iter_mut() {
        if let Some(o) = h.as_object_mut() {
            o.insert("empty_layer".into(), json!(true));
        }
    }
    history.push(json!({
        "created_by": format!("berth squash of {source_digest}"),
        "comment": "squashed by berth"
    }));
    cfg.insert("history".into(), Value::Array(history));
    serde_json::to_vec(&Value::Object(cfg)).map_err(|e| bad(e.to_string()))
}

fn tar_file_header(name: &str, size: u64) -> Result<[u8; 512], TranscodeError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(|e| bad(e.to_string()))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

fn pad(len: u64) -> usize {
    ((512 - len % 512) % 512) as usize
}

/// The framing of a `docker load` archive holding one config and one layer blob: `head` is
/// written, then the layer's `layer_size` bytes, then `tail`. The layer keeps its compression
/// (docker and podman detect it). Paths follow `docker save`'s OCI-era layout
/// (`blobs/sha256/<hex>`).
pub fn docker_archive(
    config: &[u8],
    config_digest: &Digest,
    layer_digest: &Digest,
    layer_size: u64,
    repo_tag: &str,
) -> Result<(Vec<u8>, Vec<u8>), TranscodeError> {
    let config_path = format!("blobs/sha256/{}", config_digest.hex());
    let layer_path = format!("blobs/sha256/{}", layer_digest.hex());
    let mut head = Vec::with_capacity(2048 + config.len());
    head.extend_from_slice(&tar_file_header(&config_path, config.len() as u64)?);
    head.extend_from_slice(config);
    head.resize(head.len() + pad(config.len() as u64), 0);
    head.extend_from_slice(&tar_file_header(&layer_path, layer_size)?);
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_path,
        "RepoTags": [repo_tag],
        "Layers": [layer_path],
    }]))
    .map_err(|e| bad(e.to_string()))?;
    let mut tail = vec![0u8; pad(layer_size)];
    tail.extend_from_slice(&tar_file_header("manifest.json", manifest.len() as u64)?);
    tail.extend_from_slice(&manifest);
    tail.resize(tail.len() + pad(manifest.len() as u64), 0);
    tail.resize(tail.len() + 1024, 0);
    Ok((head, tail))
}
