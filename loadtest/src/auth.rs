//! Registry authentication: HTTP Basic and the Docker bearer-token flow.
//!
//! On a `401` with `WWW-Authenticate: Bearer realm=..,service=..,scope=..` the client asks
//! the realm for a token (with Basic credentials when it has them), caches it under the scope
//! the harness itself computed for the request (so the next request needs no round trip),
//! and retries. Tokens are cached until their `expires_in`; an expired one simply triggers
//! the flow again. The cache is bounded by [`TOKEN_CACHE_MAX`].
//!
//! Concurrent workers that hit a cold scope at the same moment each fetch a token; that
//! happens once per scope at start-up, so no single-flight machinery is warranted.

use http::HeaderValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most scopes whose tokens are kept; past it the cache is cleared (scopes are per repo,
/// and a run touches a bounded number of repos).
pub const TOKEN_CACHE_MAX: usize = 1024;
/// Token lifetime when the token server does not say (the Docker spec's default).
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(60);
/// Refresh this long before a token's stated expiry, so a request in flight does not race it.
const TOKEN_EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// Username and password for Basic auth and for token requests.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password (never logged or written to reports).
    pub password: String,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=..,service=..,scope=..`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter, passed through.
        service: Option<String>,
        /// `scope` parameter, passed through.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value. Unknown schemes give `None`.
pub fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k=v, k="quoted, with commas"` → pairs. Malformed trailing input is dropped.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), val.trim().to_owned()));
    }
}

/// Standard base64 with padding (RFC 4648), for the Basic header.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Token {
    header: HeaderValue,
    expires: Instant,
}

/// Per-target authentication state, shared by all workers.
pub struct Auth {
    basic: Option<HeaderValue>,
    creds: Option<Credentials>,
    /// False until a bearer challenge is seen: the hot path then skips the lock entirely.
    bearer_active: AtomicBool,
    tokens: Mutex<HashMap<String, Token>>,
}

impl Auth {
    /// Auth with optional Basic credentials.
    pub fn new(creds: Option<Credentials>) -> Auth {
        let basic = creds.as_ref().and_then(|c| {
            let raw = format!("{}:{}", c.user, c.password);
            HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes()))).ok()
        });
        Auth {
            basic,
            creds,
            bearer_active: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The `Authorization` value to send for `scope`: a live cached token, else Basic
    /// (sent pre-emptively when credentials exist: it saves a round trip on Basic
    /// registries and token registries ignore it), else nothing.
    pub fn header_for(&self, scope: &str) -> Option<HeaderValue> {
        if self.bearer_active.load(Ordering::Relaxed) {
            // A poisoned lock only means another worker panicked mid-insert; the map is
            // still a valid cache.
            let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = tokens.get(scope) {
                if Instant::now() < t.expires {
                    return Some(t.header.clone());
                }
            }
        }
        self.basic.clone()
    }

    /// Basic credentials for a token request.
    pub fn basic_header(&self) -> Option<HeaderValue> {
        self.basic.clone()
    }

    /// True when Basic credentials are configured.
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// Caches a bearer token for `scope`.
    pub fn store_token(&self, scope: &str, token: &str, ttl: Duration) -> Option<()> {
        let header = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        let ttl = ttl
            .saturating_sub(TOKEN_EXPIRY_SLACK)
            .max(Duration::from_secs(1));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= TOKEN_CACHE_MAX && !tokens.contains_key(scope) {
            tokens.clear();
        }
        tokens.insert(
            scope.to_owned(),
            Token {
                header,
                expires: Instant::now() + ttl,
            },
        );
        self.bearer_active.store(true, Ordering::Relaxed);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
    }

    #[test]
    fn parses_unquoted_and_basic() {
        assert_eq!(
            parse_challenge("Bearer realm=http://a/t, service=x"),
            Some(Challenge::Bearer {
                realm: "http://a/t".into(),
                service: Some("x".into()),
                scope: None
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn token_cache_by_scope() {
        let a = Auth::new(None);
        assert!(a.header_for("repository:x:pull").is_none());
        a.store_token("repository:x:pull", "tok", Duration::from_secs(300));
        assert_eq!(
            a.header_for("repository:x:pull"),
            Some(HeaderValue::from_static("Bearer tok"))
        );
        assert!(a.header_for("repository:y:pull").is_none());
    }
}
