//! The OCI vocabulary shared by every berth crate.
//!
//! The principal types are [`Digest`], [`RepoName`], [`Tag`] and [`Reference`]: each can only
//! be obtained by parsing, so a function that takes one never re-validates it (parse, don't
//! validate). [`manifest::ParsedManifest`] reads the four manifest formats a registry stores
//! and lists what they reference.
//!
//! Invariants: this crate does no I/O and knows nothing of HTTP, storage or databases. A
//! `RepoName` can never contain `..`, a leading `/`, `%` or any byte outside the spec's
//! grammar, so joining one onto a path can never escape a directory.
#![deny(missing_docs)]

mod digest;
pub mod manifest;
mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag};

/// Well-known media types.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker schema 2 manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// The OCI empty descriptor's media type (artifacts with no config).
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

    /// Media types of layers that are never uploaded to a registry (foreign / non-distributable).
    pub fn is_non_distributable(media_type: &str) -> bool {
        media_type.contains(".foreign.") || media_type.contains(".nondistributable.")
    }

    /// Every manifest media type berth accepts on push.
    pub const MANIFEST_TYPES: [&str; 4] = [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];
}

/// Size limits that protect the node from clients.
pub mod limits {
    /// Largest manifest accepted or served, per the distribution spec's recommendation.
    pub const MANIFEST_SIZE_MAX: u64 = 4 << 20;
    /// Longest repository name (the spec lets registries cap it; 255 matches distribution).
    pub const REPO_NAME_LEN_MAX: usize = 255;
    /// Longest tag, per the spec's grammar.
    pub const TAG_LEN_MAX: usize = 128;
    /// Most descriptors a manifest may reference; bounds the work of validating one.
    pub const MANIFEST_REFERENCES_MAX: usize = 10_000;
}
