//! The metadata store: everything about blobs except their bytes.
//!
//! [`MetadataStore`] is the seam a PostgreSQL backend will implement; [`sqlite`] is the
//! embedded default. Methods are synchronous (callers run them on a blocking thread) and each
//! one is a single transaction, so a crash never leaves half an operation behind.

pub mod sqlite;

use berth_oci::manifest::{Descriptor, ParsedManifest};
use berth_oci::{Digest, RepoName, Tag};

/// What can go wrong in the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The database failed.
    #[error("metadata database: {context}: {source}")]
    Database {
        /// The operation.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A manifest references content the repository does not hold.
    #[error("manifest references unknown content: {}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    MissingReferences(Vec<Digest>),
    /// Stored data could not be decoded (a bug or tampering).
    #[error("metadata database holds an invalid value: {0}")]
    Corrupt(String),
}

/// A manifest as stored.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub content: bytes::Bytes,
}

/// A manifest to store, already parsed and digested.
pub struct NewManifest<'a> {
    /// The repository.
    pub repo: &'a RepoName,
    /// The digest of `content`.
    pub digest: &'a Digest,
    /// The parsed form.
    pub parsed: &'a ParsedManifest,
    /// The exact bytes.
    pub content: &'a [u8],
    /// The tag to point at it, if pushed by tag.
    pub tag: Option<&'a Tag>,
}

/// One entry of a tag's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TagEvent {
    /// The tag.
    pub tag: String,
    /// What it points at after the event (`None` once deleted).
    pub digest: Option<Digest>,
    /// What it pointed at before.
    pub previous: Option<Digest>,
    /// `push` or `delete`.
    pub action: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
}

/// One page of a sorted listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Up to `n` names after `last`, sorted.
    pub items: Vec<String>,
    /// Whether more names follow.
    pub more: bool,
}

/// A repository's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoInfo {
    /// The repository.
    pub name: RepoName,
    /// Its owner (a user or organization), if known.
    pub owner: Option<String>,
    /// Whether anonymous users may read it.
    pub public: bool,
}

/// Everything the registry needs from a metadata database.
pub trait MetadataStore: Send + Sync + 'static {
    /// Records that `repo` holds blob `digest` of `size` bytes (creating the repository).
    fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<(), MetaError>;
    /// The size of `digest` if `repo` holds it.
    fn repo_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, MetaError>;
    /// The size of `digest` if any repository holds it, with one such repository.
    fn any_repo_blob(&self, digest: &Digest) -> Result<Option<(RepoName, u64)>, MetaError>;
    /// Removes `digest` from `repo`. Returns whether it was there.
    fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError>;

    /// Stores a manifest (and moves its tag) after checking that everything it references is
    /// in the repository, all in one transaction.
    fn put_manifest(&self, manifest: NewManifest<'_>) -> Result<(), MetaError>;
    /// A manifest by digest.
    fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, MetaError>;
    /// The manifest a tag points at.
    fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<StoredManifest>, MetaError>;
    /// Deletes a manifest and every tag pointing at it. Returns whether it existed.
    fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool, MetaError>;
    /// Deletes a tag (the manifest stays). Returns whether it existed.
    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, MetaError>;

    /// Tags of a repository, `None` if the repository is unknown.
    fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Page>, MetaError>;
    /// Repository names.
    fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, MetaError>;
    /// Manifests in `repo` whose subject is `subject`, optionally filtered by artifact type.
    fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, MetaError>;
    /// A tag's history, newest first.
    fn tag_history(&self, repo: &RepoName, tag: &Tag, n: usize)
        -> Result<Vec<TagEvent>, MetaError>;
    /// A repository's settings.
    fn repo_info(&self, repo: &RepoName) -> Result<Option<RepoInfo>, MetaError>;

    /// Registers an upload session for `repo`.
    fn create_upload(&self, id: &str, repo: &RepoName) -> Result<(), MetaError>;
    /// The repository an upload session belongs to.
    fn upload_repo(&self, id: &str) -> Result<Option<RepoName>, MetaError>;
    /// Forgets an upload session.
    fn delete_upload(&self, id: &str) -> Result<(), MetaError>;
    /// All registered upload session ids.
    fn upload_ids(&self) -> Result<Vec<String>, MetaError>;
}
