//! `berth transcode`: converts the images of a local OCI layout directory offline (no node,
//! no network), e.g. `berth transcode --to zstd IN_DIR OUT_DIR`. Every image manifest of
//! `index.json` is rewritten with its layers converted by `berth-transcoder` (diff_ids
//! verified in the same pass); OUT_DIR is a complete OCI layout with the same ref names.

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
        let bytes =
            fs::read(blob_path(input, &digest)).with_context(|| format!("reading {digest}"))?;
        let m: Value = serde_json::from_slice(&bytes)?;
        let Some(layers) = m["layers"].as_array() else {
            bail!("{digest} is not an image manifest (indexes are not supported offline yet)");
        };
        let config_digest = digest_of(&m["config"])?;
        let config_bytes = fs::read(blob_path(input, &config_digest))?;
        fs::write(blob_path(output, &config_digest), &config_bytes)?;
        let diff_ids = image::diff_ids(&config_bytes)?;
        let mut out_layers = Vec::with_capacity(layers.len());
        for (l, diff_id) in layers.iter().zip(&diff_ids) {
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
            let result =
                berth_transcoder::transcode(config, from, to, reader, len, Some(diff_id), file);
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
            out_layers.push(LayerOut {
                media_type: to.oci_layer_media_type().into(),
                digest: done.digest,
                size: done.size,
            });
        }
        let new_manifest = image::rewrite_manifest(&bytes, &digest, to.name(), None, &out_layers)?;
        let (nd, size) = write_blob(output, &new_manifest)?;
        desc["digest"] = Value::String(nd.to_string());
        desc["size"] = Value::from(size);
        desc["mediaType"] = Value::String(image::OCI_MANIFEST.into());
    }
    fs::write(output.join("index.json"), serde_json::to_vec(&new_index)?)?;
    Ok(())
}
