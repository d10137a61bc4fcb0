//! Vocabulary of the tag lifecycle and garbage collection: policies (immutable tag patterns,
//! retention, quotas), tag state, the GC keep-window and what GC collected.
//!
//! Plain data, no database types: a PostgreSQL backend implements the same trait methods
//! over the same structs (policies are stored as JSON text in SQLite, `jsonb` there).

use berth_oci::{Digest, RepoName};

/// Tag patterns (and policy lists) are bounded so matching stays cheap.
pub const POLICY_PATTERNS_MAX: usize = 64;
/// Longest pattern accepted.
pub const PATTERN_LEN_MAX: usize = 128;

/// What a policy applies to: one repository, or every repository of a namespace (the first
/// path component of the name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One repository.
    Repo(RepoName),
    /// A namespace (organization or user).
    Namespace(String),
}

impl Scope {
    /// The key under which the policy is stored (`repo:<name>` or `namespace:<ns>`).
    pub fn key(&self) -> String {
        match self {
            Scope::Repo(r) => format!("repo:{r}"),
            Scope::Namespace(ns) => format!("namespace:{ns}"),
        }
    }

    /// How the scope is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Scope::Repo(r) => format!("repository {r}"),
            Scope::Namespace(ns) => format!("namespace {ns}"),
        }
    }
}

/// Auto-prune rules. A tag is pruned when it matches none of `keep_patterns`, is not
/// immutable, and either is beyond the `keep_last` newest tags or was last moved more than
/// `delete_older_than_seconds` ago.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Keep the N most recently pushed tags.
    pub keep_last: Option<u32>,
    /// Tags matching any of these globs (`*`, `?`) are always kept.
    pub keep_patterns: Vec<String>,
    /// Delete tags not moved for this long.
    pub delete_older_than_seconds: Option<u64>,
}

/// Settings of a repository or namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Tag name globs that cannot be moved or deleted once they exist.
    pub immutable_tags: Vec<String>,
    /// Auto-prune rules.
    pub retention: Option<Retention>,
    /// Byte quota of blobs linked in the scope.
    pub quota_bytes: Option<u64>,
}

impl Policy {
    /// Checks bounds and pattern syntax, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let keep = self
            .retention
            .as_ref()
            .map_or(&[][..], |r| &r.keep_patterns[..]);
        for (field, list) in [
            ("immutable_tags", &self.immutable_tags[..]),
            ("keep_patterns", keep),
        ] {
            if list.len() > POLICY_PATTERNS_MAX {
                return Err(format!("{field}: at most {POLICY_PATTERNS_MAX} patterns"));
            }
            if let Some(p) = list
                .iter()
                .find(|p| p.is_empty() || p.len() > PATTERN_LEN_MAX)
            {
                return Err(format!(
                    "{field}: pattern {p:?} must be 1..={PATTERN_LEN_MAX} chars"
                ));
            }
        }
        Ok(())
    }

    /// Whether `tag` matches one of the immutable patterns.
    pub fn tag_is_immutable(&self, tag: &str) -> bool {
        self.immutable_tags.iter().any(|p| glob_match(p, tag))
    }
}

/// Options a manifest push gives its tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagOptions {
    /// When the tag expires (ms since the epoch), from `quay.expires-after`.
    pub expires_ms: Option<i64>,
    /// Whether the tag is immutable, from `quay.immutable=true`.
    pub immutable: bool,
}

/// A tag's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TagInfo {
    /// The tag.
    pub name: String,
    /// The manifest it points at.
    pub digest: Digest,
    /// Last moved, ms since the epoch.
    pub updated_ms: i64,
    /// Expiry, ms since the epoch.
    pub expires_ms: Option<i64>,
    /// Set by the `quay.immutable` label.
    pub immutable: bool,
}

/// What GC must keep, as absolute times (ms since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcWindow {
    /// Now.
    pub now_ms: i64,
    /// Start of the grace period: links made or used after this are kept.
    pub grace_start_ms: i64,
    /// Start of the time-machine window: manifests a tag pointed at after this are kept.
    pub window_start_ms: i64,
}

/// One manifest or blob link that GC collected (or would collect).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Collected {
    /// The repository.
    pub repo: String,
    /// The manifest or blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Glob match with `*` (any run, including `/`) and `?` (one character). Iterative with
/// one backtrack point: linear in practice, no recursion.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Parses a `quay.expires-after` value: a positive integer and a unit `s`, `m`, `h`, `d` or
/// `w` (e.g. `2h`, `30s`). Returns milliseconds; `None` if malformed or beyond ten years.
pub fn parse_expires_after(value: &str) -> Option<i64> {
    const TEN_YEARS_MS: i64 = 10 * 365 * 86_400_000;
    let v = value.trim();
    let unit = v.chars().last()?;
    let n: i64 = v[..v.len() - unit.len_utf8()].parse().ok()?;
    let unit_ms: i64 = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let ms = n.checked_mul(unit_ms)?;
    (n > 0 && ms <= TEN_YEARS_MS).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_after_values() {
        let cases = [
            ("2h", Some(7_200_000)),
            ("30s", Some(30_000)),
            ("5m", Some(300_000)),
            ("1d", Some(86_400_000)),
            ("2w", Some(1_209_600_000)),
            (" 3s ", Some(3_000)),
            ("0s", None),
            ("-1h", None),
            ("h", None),
            ("10", None),
            ("2y", None),
            ("", None),
            ("99999999999999w", None),
            ("1é", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_expires_after(input), want, "{input:?}");
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("v*", "v1.2", true),
            ("v*", "latest", false),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("latest", "latest", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} {t}");
        }
    }
}
