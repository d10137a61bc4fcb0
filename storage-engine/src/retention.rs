//! Retention (auto-prune): which tags a repository's policy removes.
//!
//! The principal function is [`apply`]; the policy is the repository's own retention rules,
//! or else its namespace's. Pruned tags are recorded in tag history (`retention`), so they
//! stay restorable for the time-machine window and GC reclaims their content after it.

use berth_oci::RepoName;

use crate::meta::lifecycle::glob_match;
use crate::meta::{MetaError, MetadataStore, Retention, Scope};

/// Tags considered per repository and run (newest first); older ones wait for later runs.
pub const RETENTION_TAGS_MAX: usize = 10_000;

/// What a retention run did (or, dry, would do) to one repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// The repository.
    pub repo: String,
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// The rules applied (`None`: no policy, nothing pruned).
    pub policy: Option<Retention>,
    /// Tags pruned (or that would be).
    pub pruned: Vec<String>,
    /// Tags kept.
    pub kept: usize,
}

/// Applies the effective retention policy of `repo` at `now_ms`.
pub fn apply(
    meta: &dyn MetadataStore,
    repo: &RepoName,
    now_ms: i64,
    dry_run: bool,
) -> Result<RetentionReport, MetaError> {
    let repo_policy = meta.policy(&Scope::Repo(repo.clone()))?;
    let ns_policy = meta.policy(&Scope::Namespace(repo.namespace().to_owned()))?;
    let mut report = RetentionReport {
        repo: repo.to_string(),
        dry_run,
        policy: repo_policy
            .retention
            .clone()
            .or(ns_policy.retention.clone()),
        ..RetentionReport::default()
    };
    let Some(rules) = report.policy.clone() else {
        return Ok(report);
    };
    let tags = meta.tags_by_age(repo, RETENTION_TAGS_MAX)?;
    for (rank, tag) in tags.iter().enumerate() {
        let protected = tag.immutable
            || repo_policy.tag_is_immutable(&tag.name)
            || ns_policy.tag_is_immutable(&tag.name)
            || rules.keep_patterns.iter().any(|p| glob_match(p, &tag.name));
        let beyond_last = rules.keep_last.is_some_and(|n| rank >= n as usize);
        let too_old = rules.delete_older_than_seconds.is_some_and(|s| {
            now_ms.saturating_sub(tag.updated_ms) > (s as i64).saturating_mul(1000)
        });
        if protected || !(beyond_last || too_old) {
            report.kept += 1;
            continue;
        }
        if dry_run || meta.prune_tag(repo, &tag.name, &tag.digest)? {
            report.pruned.push(tag.name.clone());
        } else {
            report.kept += 1;
        }
    }
    Ok(report)
}
