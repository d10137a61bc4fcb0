use std::fmt;

use crate::limits::{REPO_NAME_LEN_MAX, TAG_LEN_MAX};
use crate::{Digest, DigestError};

/// Why a repository name, tag or reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The repository name is outside the spec's grammar.
    #[error("invalid repository name {0:?}: must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)* and be at most {REPO_NAME_LEN_MAX} characters")]
    InvalidRepo(String),
    /// The tag is outside the spec's grammar.
    #[error("invalid tag {0:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag(String),
    /// The reference looked like a digest but was not a valid one.
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
}

fn echo(s: &str) -> String {
    s.chars().take(140).collect()
}

/// A repository name such as `library/alpine`, valid per the distribution spec.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// Parses a repository name.
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() || s.len() > REPO_NAME_LEN_MAX || !s.split('/').all(is_path_component) {
            return Err(NameError::InvalidRepo(echo(s)));
        }
        Ok(RepoName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component: the namespace (organization or user) that owns the repository.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < b.len() {
        if alnum(b[i]) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let sep_len = match b[i] {
            b'.' => 1,
            b'_' if b.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => b[i..].iter().take_while(|&&x| x == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        expect_alnum = true;
    }
    !expect_alnum
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A tag such as `latest`, valid per the distribution spec.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parses a tag.
    pub fn parse(s: &str) -> Result<Tag, NameError> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b[1.min(b.len())..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || s.len() > TAG_LEN_MAX {
            return Err(NameError::InvalidTag(echo(s)));
        }
        Ok(Tag(s.to_owned()))
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable content digest.
    Digest(Digest),
}

impl Reference {
    /// Parses a reference: anything containing `:` must be a digest, otherwise a tag.
    pub fn parse(s: &str) -> Result<Reference, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_name_grammar() {
        let good = [
            "a",
            "library/alpine",
            "a-b/c.d/e__f",
            "a--b",
            "x0/y_1",
            "my.org/team/app",
        ];
        for name in good {
            assert!(RepoName::parse(name).is_ok(), "{name} should be valid");
        }
        let long = "a".repeat(REPO_NAME_LEN_MAX + 1);
        let bad = [
            "",
            "A",
            "/abs",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "a/..",
            ".a",
            "a.",
            "a___b",
            "a%2e%2e",
            "a/%2E%2E/b",
            "a\\b",
            "a b",
            "a_-b",
            "a/.hidden",
            &long,
        ];
        for name in bad {
            assert!(RepoName::parse(name).is_err(), "{name:?} should be invalid");
        }
    }

    #[test]
    fn tag_grammar() {
        for tag in ["latest", "v1.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(Tag::parse(tag).is_ok(), "{tag}");
        }
        for tag in ["", ".x", "-x", "a/b", "a:b", "..", &"t".repeat(129)] {
            assert!(Tag::parse(tag).is_err(), "{tag:?}");
        }
    }

    #[test]
    fn reference_is_tag_or_digest() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse("sha256:abc"),
            Err(NameError::InvalidDigest(_))
        ));
    }
}
