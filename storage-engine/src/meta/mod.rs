//! The metadata store: everything about blobs except their bytes.
//!
//! [`MetadataStore`] is the seam a PostgreSQL backend will implement; [`sqlite`] is the
//! embedded default. Methods are synchronous (callers run them on a blocking thread) and each
//! one is a single transaction, so a crash never leaves half an operation behind.

pub mod identity;
pub mod identity_sqlite;
pub mod lifecycle;
pub mod sqlite;

use berth_oci::manifest::{Descriptor, ParsedManifest};
use berth_oci::{Digest, RepoName, Tag};

pub use lifecycle::{Collected, GcWindow, Policy, Retention, Scope, TagInfo, TagOptions};

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
    /// A push or delete would move an immutable tag.
    #[error("tag {0} is immutable")]
    TagImmutable(String),
    /// Linking a blob would exceed a byte quota.
    #[error("quota exceeded for {scope}: used {used} of {limit} bytes, this blob needs {needed}")]
    QuotaExceeded {
        /// `repository <name>` or `namespace <ns>`.
        scope: String,
        /// Bytes already used.
        used: u64,
        /// The quota.
        limit: u64,
        /// Size of the blob refused.
        needed: u64,
    },
    /// A restore names a manifest outside the tag's time-machine window (or gone).
    #[error("cannot restore: {0}")]
    NotRestorable(String),
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
    /// Expiry and immutability of the tag (from the image's labels).
    pub tag_options: TagOptions,
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
    /// `push`, `delete`, `restore`, `expire` or `retention`.
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

/// A repository's link to a blob, as [`MetadataStore::blob_use`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobUse {
    /// Not linked.
    Unlinked,
    /// Linked, `size` bytes, use recorded within the debounce interval: nothing to write.
    Fresh(u64),
    /// Linked, but the use must be recorded (call [`MetadataStore::touch_blob`]).
    Stale,
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

    // ---- Tag lifecycle and garbage collection (see `lifecycle` for the types). ----

    /// The size of `digest` if `repo` links it, after recording that the link was used now
    /// (blob HEAD/GET). Skips the write when the stored time is less than `debounce_ms` old.
    /// GC spares links used within its grace period, so a `Some` here protects a client's
    /// `HEAD` → manifest `PUT` window. One lookup serves both the use and the answer.
    fn touch_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        debounce_ms: i64,
    ) -> Result<Option<u64>, MetaError>;
    /// The read half of [`MetadataStore::touch_blob`], never writing: whether `repo` links
    /// `digest` and whether its recorded use is recent enough that `touch_blob` would skip
    /// its write. Lets a blob read answer from a read-only lookup in the common case.
    fn blob_use(
        &self,
        repo: &RepoName,
        digest: &Digest,
        debounce_ms: i64,
    ) -> Result<BlobUse, MetaError>;
    /// How many repositories link `digest`.
    fn blob_link_count(&self, digest: &Digest) -> Result<u64, MetaError>;
    /// Deletes (or with `dry_run` only lists) up to `limit` manifests that nothing keeps
    /// alive, re-computing liveness inside the deleting transaction.
    fn gc_manifests(
        &self,
        keep: &GcWindow,
        dry_run: bool,
        limit: usize,
    ) -> Result<Vec<Collected>, MetaError>;
    /// Removes (or lists) up to `limit` repository → blob links that no manifest references
    /// and that were neither linked nor used since `keep.grace_start_ms`.
    fn gc_blob_links(
        &self,
        keep: &GcWindow,
        dry_run: bool,
        limit: usize,
    ) -> Result<Vec<Collected>, MetaError>;
    /// Forgets tag history older than `before_ms`. Returns the rows removed.
    fn prune_tag_history(&self, before_ms: i64) -> Result<u64, MetaError>;

    /// A tag's state, ignoring expiry (`None` if the tag does not exist).
    fn tag_info(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagInfo>, MetaError>;
    /// Sets or clears a tag's expiry. Returns whether the tag exists.
    fn set_tag_expiry(
        &self,
        repo: &RepoName,
        tag: &Tag,
        expires_ms: Option<i64>,
    ) -> Result<bool, MetaError>;
    /// Deletes up to `limit` tags whose expiry is at or before `now_ms`, recording an
    /// `expire` event for each.
    fn expire_tags(&self, now_ms: i64, limit: usize) -> Result<Vec<(RepoName, String)>, MetaError>;
    /// Points `tag` back at `digest`, which must be the tag's target in an event at or
    /// after `window_start_ms` and still stored; records a `restore` event.
    fn restore_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        window_start_ms: i64,
    ) -> Result<(), MetaError>;

    /// The policy of a repository or namespace (default if none set).
    fn policy(&self, scope: &Scope) -> Result<Policy, MetaError>;
    /// Replaces the policy of a repository or namespace.
    fn set_policy(&self, scope: &Scope, policy: &Policy) -> Result<(), MetaError>;
    /// Bytes of blobs linked in the scope; a blob linked by several repositories of a
    /// namespace counts once.
    fn usage_bytes(&self, scope: &Scope) -> Result<u64, MetaError>;
    /// Tags of `repo` with their update times, newest first (at most `n`).
    fn tags_by_age(&self, repo: &RepoName, n: usize) -> Result<Vec<TagInfo>, MetaError>;
    /// Deletes `tag` if it still points at `digest` and is not immutable, recording a
    /// `retention` event. Returns whether it was deleted.
    fn prune_tag(&self, repo: &RepoName, tag: &str, digest: &Digest) -> Result<bool, MetaError>;
}
