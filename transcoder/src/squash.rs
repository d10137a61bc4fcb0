//! Squashing: many layer tars merged into one tar with the same file tree.
//!
//! Two passes over the layers (each a streaming decode; nothing is spooled to disk):
//! 1. index every layer's paths, whiteouts (`.wh.<name>`), opaque markers (`.wh..wh..opq`)
//!    and hard links — names only, at most `tar_entries_max` entries in memory;
//! 2. emit, bottom layer first, every entry that no upper layer replaces, whites out or hides
//!    (an opaque directory, or a non-directory at an ancestor path), with its header, PAX
//!    records (xattrs, long names, times), owner and mode copied.
//!
//! Bottom-up order keeps a hard link after its target. When the target of a surviving hard
//! link is deleted by an upper layer, the first surviving link takes the target's content
//! and the other links point at it. Not handled (documented in docs/ARCHITECTURE.md): a
//! surviving hard link whose target lives in a *lower* layer and is deleted above, which
//! layer tools do not produce (they re-emit the target in the link's layer).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Decoder, TranscodeError, TranscoderConfig};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What a squash produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SquashStats {
    /// Entries written.
    pub entries_written: u64,
    /// Entries dropped (replaced, whited out, markers).
    pub entries_dropped: u64,
}

#[derive(Default)]
struct LayerIndex {
    /// path -> (is a directory, index of its last occurrence in this layer)
    entries: HashMap<Vec<u8>, (bool, usize)>,
    whiteouts: HashSet<Vec<u8>>,
    opaque: HashSet<Vec<u8>>,
    /// (link path, target path, link header) of hard links, in archive order.
    links: Vec<(Vec<u8>, Vec<u8>, tar::Header)>,
}

/// Strips `./`, leading and trailing `/` so that the same file has one spelling.
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix(b"./") {
            p = rest;
        } else if let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        } else {
            break;
        }
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        return Vec::new();
    }
    p.to_vec()
}

fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut v = parent.to_vec();
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

/// Proper ancestors of a path: `a/b/c` gives `a`, `a/b`.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(move |(i, _)| &path[..i])
}

enum Marker {
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
}

fn marker(path: &[u8]) -> Option<Marker> {
    let (parent, name) = split_parent(path);
    if name == OPAQUE_MARKER {
        Some(Marker::Opaque(parent.to_vec()))
    } else {
        name.strip_prefix(WHITEOUT_PREFIX)
            .map(|hidden| Marker::Whiteout(join(parent, hidden)))
    }
}

fn corrupt(source: io::Error) -> TranscodeError {
    TranscodeError::Corrupt {
        format: "tar",
        source,
    }
}

fn index_layer(
    layer: Decoder<'_>,
    budget: &mut usize,
    limit: usize,
) -> Result<LayerIndex, TranscodeError> {
    let mut idx = LayerIndex::default();
    let mut archive = tar::Archive::new(layer);
    let entries = archive.entries().map_err(corrupt)?;
    for (i, entry) in entries.enumerate() {
        let entry = entry.map_err(corrupt)?;
        *budget = budget
            .checked_sub(1)
            .ok_or(TranscodeError::TooManyEntries(limit))?;
        let path = normalize(&entry.path_bytes());
        match marker(&path) {
            Some(Marker::Whiteout(p)) => {
                idx.whiteouts.insert(p);
            }
            Some(Marker::Opaque(p)) => {
                idx.opaque.insert(p);
            }
            None => {
                let kind = entry.header().entry_type();
                if kind.is_hard_link() {
                    if let Some(target) = entry.link_name_bytes() {
                        let target = normalize(&target);
                        idx.links
                            .push((path.clone(), target, entry.header().clone()));
                    }
                }
                idx.entries.insert(path, (kind.is_dir(), i));
            }
        }
    }
    Ok(idx)
}

/// Whether an entry at `path` in layer `j` survives every layer above it.
fn visible(layers: &[LayerIndex], j: usize, path: &[u8]) -> bool {
    layers.iter().skip(j + 1).all(|upper| {
        !upper.entries.contains_key(path)
            && !upper.whiteouts.contains(path)
            && ancestors(path).all(|a| {
                !upper.whiteouts.contains(a)
                    && !upper.opaque.contains(a)
                    && upper.entries.get(a).is_none_or(|(is_dir, _)| *is_dir)
            })
    })
}

/// Per layer: hidden hard-link targets re-emitted under a surviving link's name, and the
/// rewritten targets of the other links.
#[derive(Default)]
struct LinkFixes {
    carrier_of: HashMap<Vec<u8>, (Vec<u8>, tar::Header)>,
    carriers: HashSet<Vec<u8>>,
}

fn link_fixes(layers: &[LayerIndex], j: usize) -> LinkFixes {
    let mut fixes = LinkFixes::default();
    for (link, target, header) in &layers[j].links {
        if !visible(layers, j, link) || !layers[j].entries.contains_key(target) {
            continue;
        }
        if visible(layers, j, target) || fixes.carrier_of.contains_key(target) {
            continue;
        }
        fixes
            .carrier_of
            .insert(target.clone(), (link.clone(), header.clone()));
        fixes.carriers.insert(link.clone());
    }
    fixes
}

/// Merges `count` layers (bottom first) into one uncompressed tar written to `out`.
/// `open(i)` returns a fresh decoder of layer `i`; each layer is opened twice.
pub fn squash<W: Write>(
    config: &TranscoderConfig,
    count: usize,
    open: &mut dyn FnMut(usize) -> Result<Decoder<'static>, TranscodeError>,
    out: W,
) -> Result<(SquashStats, W), TranscodeError> {
    let mut budget = config.tar_entries_max;
    let mut layers = Vec::with_capacity(count);
    for i in 0..count {
        layers.push(index_layer(open(i)?, &mut budget, config.tar_entries_max)?);
    }
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut stats = SquashStats::default();
    for j in 0..count {
        let fixes = link_fixes(&layers, j);
        let mut archive = tar::Archive::new(open(j)?);
        let entries = archive.entries().map_err(corrupt)?;
        for (i, entry) in entries.enumerate() {
            let entry = entry.map_err(corrupt)?;
            let path = normalize(&entry.path_bytes());
            let last = layers[j].entries.get(&path).is_some_and(|(_, at)| *at == i);
            if !last || marker(&path).is_some() {
                stats.entries_dropped += 1;
                continue;
            }
            if let Some((carrier, link_header)) = fixes.carrier_of.get(&path) {
                // Extractors apply a hard link's header to the shared inode, so the carrier
                // takes the link's mode, owner and time.
                emit(&mut builder, entry, carrier, None, Some(link_header))?;
                stats.entries_written += 1;
                continue;
            }
            if !visible(&layers, j, &path) || fixes.carriers.contains(&path) {
                stats.entries_dropped += 1;
                continue;
            }
            let retarget = if entry.header().entry_type().is_hard_link() {
                let target = entry.link_name_bytes().map(|t| normalize(&t));
                target.map(|t| fixes.carrier_of.get(&t).map_or(t, |(c, _)| c.clone()))
            } else {
                None
            };
            emit(&mut builder, entry, &path, retarget, None)?;
            stats.entries_written += 1;
        }
    }
    let out = builder.into_inner().map_err(TranscodeError::Output)?;
    Ok((stats, out))
}

/// Writes one entry under `path`: PAX records (minus path and link path, which the builder
/// writes), then the header with its mode, owner, times and type, then the data.
fn emit<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    mut entry: tar::Entry<'_, R>,
    path: &[u8],
    hard_link_target: Option<Vec<u8>>,
    metadata_from: Option<&tar::Header>,
) -> Result<(), TranscodeError> {
    let mut header = entry.header().clone();
    if let Some(from) = metadata_from {
        let copy = |h: &mut tar::Header| -> io::Result<()> {
            h.set_mode(from.mode()?);
            h.set_uid(from.uid()?);
            h.set_gid(from.gid()?);
            h.set_mtime(from.mtime()?);
            Ok(())
        };
        copy(&mut header).map_err(corrupt)?;
    }
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(corrupt)? {
        for ext in exts {
            let ext = ext.map_err(corrupt)?;
            let Ok(key) = ext.key() else { continue };
            if key != "path" && key != "linkpath" {
                pax.push((key.to_owned(), ext.value_bytes().to_vec()));
            }
        }
    }
    if !pax.is_empty() {
        builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(TranscodeError::Output)?;
    }
    let path = Path::new(OsStr::from_bytes(path));
    let kind = header.entry_type();
    if kind.is_hard_link() || kind.is_symlink() {
        let target = match hard_link_target {
            Some(t) => t,
            None => entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default(),
        };
        header.set_size(0);
        builder
            .append_link(&mut header, path, Path::new(OsStr::from_bytes(&target)))
            .map_err(TranscodeError::Output)?;
        return Ok(());
    }
    if kind.is_dir() || !kind.is_file() && !kind.is_contiguous() {
        header.set_size(0);
        builder
            .append_data(&mut header, path, io::empty())
            .map_err(TranscodeError::Output)?;
        return Ok(());
    }
    builder
        .append_data(&mut header, path, &mut entry)
        .map_err(TranscodeError::Output)
}
