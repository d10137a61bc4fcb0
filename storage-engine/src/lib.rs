//! berth's storage engine.
//!
//! The principal types are [`BlobStore`] (content-addressed blob files and the staging area
//! uploads stream into), [`UploadWriter`] (one upload session: hashes and checksums bytes as
//! they are written) and the [`MetadataStore`] trait (repositories, manifests, tags and their
//! history, references, upload sessions), implemented by [`SqliteMetadata`].
//!
//! Invariants:
//! - A blob file exists under `blobs/` only after its content was verified against its digest
//!   and made durable (fsync of the file, its checksum sidecar and its directory, then an
//!   atomic rename). A crash at any point leaves either no blob or a complete one.
//! - Every path is derived from a [`berth_oci::Digest`] or an upload id generated here, never
//!   from raw client text, so nothing is written outside the data directory.
//! - Nothing here knows HTTP. The registry crate maps these errors to protocol errors.
#![deny(missing_docs)]

mod blob;
mod caches;
mod chunks;
pub mod gc;
pub mod io;
pub mod locks;
pub mod meta;
pub mod retention;
mod upload;

pub use blob::{BlobFile, BlobStore, CheckedReader, ScrubReport, StorageError, VerifiedBlob};
pub use caches::SMALL_BLOB_MAX;
pub use chunks::{ChunkHasher, ChunkIndex, CHUNK_SIZE};
pub use io::{IoEngine, IoEngineChoice};
pub use meta::sqlite::SqliteMetadata;
pub use meta::{MetaError, MetadataStore};
pub use upload::{StreamError, UploadId, UploadWriter};
