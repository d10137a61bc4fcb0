//! `berth transcode`: converts the images of a local OCI layout directory offline (no node,
//! no network), e.g. `berth transcode --to zstd IN_DIR OUT_DIR`. Every image manifest of
//! `index.json` is rewritten with its layers converted by `berth-transcoder` (diff_ids
//! verified in the same pass); a multi-platform index has each image child converted and is
//! rewritten with `image::rewrite_index` (platforms and annotations kept; children that are
//! not tar-layer images, e.g. attestations, are copied unchanged). OUT_DIR is a complete OCI
//! layout with the same ref names.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_oci::Digest;
use berth_transcoder::image::{self, LayerOut};
use berth_transcoder::{Compression, TranscoderConfig};
use serde_json::Value;

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

fn write_blob(out: &Path, bytes: &[u8]) -> Result<(Digest, u64)> {
    let digest = Digest::sha256_of(bytes);
    fs::write(blob_path(out, &digest), bytes).context("writing blob")?;
    Ok((digest, bytes.len() as u64))
}

fn digest_of(v: &Value) -> Result<Digest> {
    let s = v["digest"].as_str().context("descriptor without digest")?;
    Ok(Digest::parse(s)?)
}

/// Copies a blob unchanged.
fn copy_blob(input: &Path, output: &Path, digest: &Digest) -> Result<()> {
    fs::copy(blob_path(input, digest), blob_path(output, digest))
        .with_context(|| format!("copying {digest}"))?;
    Ok(())
}

/// Whether `m` is an image manifest whose layers are all tar layers.
fn tar_image(m: &Value) -> bool {
    m["layers"].as_array().is_some_and(|layers| {
        !layers.is_empty()
            && layers.iter().all(|l| {
                l["mediaType"]
                    .as_str()
                    .and_then(Compression::from_media_type)
                    .is_some()
            })
    })
}

/// Converts the manifest `digest` (an image, or an index of images); returns the new
/// manifest's digest, size and media type. Nested indexes are refused.
fn convert_manifest(
    input: &Path,
    output: &Path,
    digest: &Digest,
    to: Compression,
    config: &TranscoderConfig,
    nested: bool,
) -> Result<(Digest, u64, &'static str)> {
    let bytes = fs::read(blob_path(input, digest)).with_context(|| format!("reading {digest}"))?;
    let m: Value = serde_json::from_slice(&bytes)?;
    if let Some(children) = m["manifests"].as_array() {
        if nested {
            bail!("{digest}: nested indexes are not supported offline");
        }
        let mut derived = Vec::with_capacity(children.len());
        for child in children {
            let cd = digest_of(child)?;
            let child_bytes =
                fs::read(blob_path(input, &cd)).with_context(|| format!("reading {cd}"))?;
            let child_manifest: Value = serde_json::from_slice(&child_bytes)?;
            if tar_image(&child_manifest) {
                let (nd, size, _) = convert_manifest(input, output, &cd, to, config, true)?;
                derived.push(Some((nd, size)));
            } else {
                // Kept as it is: the manifest and every blob it names.
                let config_and_layers = child_manifest["config"]
                    .is_object()
                    .then_some(&child_manifest["config"]);
                for d in config_and_layers
                    .into_iter()
                    .chain(child_manifest["layers"].as_array().into_iter().flatten())
                {
                    copy_blob(input, output, &digest_of(d)?)?;
                }
                copy_blob(input, output, &cd)?;
                derived.push(None);
            }
        }
        let new_index = image::rewrite_index(&bytes, digest, to.name(), &derived)?;
        let (nd, size) = write_blob(output, &new_index)?;
        return Ok((nd, size, image::OCI_INDEX));
    }
    let (nd, size) = convert_image(input, output, digest, &bytes, &m, to, config)?;
    Ok((nd, size, image::OCI_MANIFEST))
}

/// Converts every image in `input` to `to`, writing a new layout at `output`.
pub fn run(input: &Path, output: &Path, to: Compression, config: &TranscoderConfig) -> Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let index: Value =
        serde_json::from_slice(&fs::read(input.join("index.json")).context("reading index.json")?)?;
    fs::create_dir_all(output.join("blobs/sha256"))?;
    fs::write(
        output.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let mut new_index = index.clone();
    let manifests = new_index["manifests"]
        .as_array_mut()
        .context("index.json has no manifests")?;
    for desc in manifests.iter_mut() {
        let digest = digest_of(desc)?;
        let (nd, size, media_type) = convert_manifest(input, output, &digest, to, config, false)?;
        desc["digest"] = Value::String(nd.to_string());
        desc["size"] = Value::from(size);
        desc["mediaType"] = Value::String(media_type.into());
    }
    fs::write(output.join("index.json"), serde_json::to_vec(&new_index)?)?;
    Ok(())
}

/// Converts one image manifest (`bytes`, parsed as `m`): config copied, layers converted.
fn convert_image(
    input: &Path,
    output: &Path,
    digest: &Digest,
    bytes: &[u8],
    m: &Value,
    to: Compression,
    config: &TranscoderConfig,
) -> Result<(Digest, u64)> {
    let Some(layers) = m["layers"].as_array() else {
        bail!("{digest} is neither an image manifest nor an index");
    };
    let config_digest = digest_of(&m["config"])?;
    let config_bytes = fs::read(blob_path(input, &config_digest))?;
    fs::write(blob_path(output, &config_digest), &config_bytes)?;
    let diff_ids = image::diff_ids(&config_bytes)?;
    if diff_ids.len() != layers.len() {
        bail!("{digest}: the config's diff_ids do not match the manifest's layers");
    }
    let mut out_layers = Vec::with_capacity(layers.len());
    for (l, diff_id) in layers.iter().zip(&diff_ids) {
        out_layers.push(convert_layer(input, output, l, diff_id, to, config)?);
    }
    let new_manifest = image::rewrite_manifest(bytes, digest, to.name(), None, &out_layers)?;
    write_blob(output, &new_manifest)
}

/// Converts one layer into `output` (temporary file, fsync, rename).
fn convert_layer(
    input: &Path,
    output: &Path,
    l: &Value,
    diff_id: &Digest,
    to: Compression,
    config: &TranscoderConfig,
) -> Result<LayerOut> {
    let ld = digest_of(l)?;
    let media_type = l["mediaType"].as_str().unwrap_or_default();
    let from = Compression::from_media_type(media_type)
        .with_context(|| format!("layer {ld} has media type {media_type:?}"))?;
    let src = blob_path(input, &ld);
    let len = fs::metadata(&src)?.len();
    let tmp = output
        .join("blobs/sha256")
        .join(format!(".tmp-{}", ld.hex()));
    let file = fs::File::create(&tmp)?;
    let reader = BufReader::with_capacity(1 << 20, fs::File::open(&src)?);
    let result = berth_transcoder::transcode(config, from, to, reader, len, Some(diff_id), file);
    let (done, file) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("converting layer {ld}"));
        }
    };
    file.sync_all()?;
    fs::rename(&tmp, blob_path(output, &done.digest))?;
    eprintln!("{ld} -> {} ({} -> {} bytes)", done.digest, len, done.size);
    Ok(LayerOut {
        media_type: to.oci_layer_media_type().into(),
        digest: done.digest,
        size: done.size,
    })
}
