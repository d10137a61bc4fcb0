//! Docker / OCI token authentication: `GET|POST /auth/token` issues short-lived HS256 JWTs
//! whose `access` claims list what the caller may do (the intersection of what it asked for
//! in `scope` and what its permissions allow, per the Docker token spec); `/v2/` verifies
//! them.
//!
//! HS256 with a 256-bit key generated into `<data_dir>/auth/token.key` (0600) on first
//! start: the node is both token issuer and verifier, so a symmetric key is enough and
//! nothing else needs the public half. Several nodes behind one database share the file.

use std::io::Write as _;
use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_oci::RepoName;
use http_body_util::{BodyExt, Limited};

use super::{client_ip, decode_basic, now_ms, Action, Auth, LoginError, Principal};
use crate::error::{ErrorCode, OciError};
use crate::{blocking, form_pairs, header_str, json_response, Shared};

/// Most scopes honoured in one token request.
const SCOPES_MAX: usize = 16;
/// Largest form body of `POST /auth/token`.
const FORM_BODY_MAX: usize = 16 << 10;
const ISSUER: &str = "berth";

/// One `access` entry of a registry token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessClaim {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name (or `catalog`).
    pub name: String,
    /// Granted actions: `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

/// The claims of a registry token.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Issuer (`berth`).
    pub iss: String,
    /// Account name; empty for an anonymous token.
    pub sub: String,
    /// The service (`auth.service`).
    pub aud: String,
    /// Expiry (Unix s).
    pub exp: u64,
    /// Not before (Unix s).
    pub nbf: u64,
    /// Issued at (Unix s).
    pub iat: u64,
    /// Unique id.
    pub jti: String,
    /// What the bearer may do.
    pub access: Vec<AccessClaim>,
}

/// Reads the signing key, creating it (32 random bytes, mode 0600) if absent.
pub(crate) fn load_or_create_key(dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir.join("token.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => return Err(format!("{} is shorter than 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("generating token key: {e}"))?;
    let tmp = dir.join("token.key.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(&key)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", path.display()))?;
    Ok(key)
}

/// Verifies a registry token's signature, issuer, audience and lifetime.
pub(crate) fn verify(auth: &Auth, token: &str) -> Option<Claims> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[auth.config.service.as_str()]);
    v.leeway = 5;
    jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&auth.jwt_key),
        &v,
    )
    .ok()
    .map(|d| d.claims)
}

/// Whether `claims` grant `action` on `repo` (`delete` also needs `delete` or `*`).
pub(crate) fn claims_allow(claims: &[AccessClaim], repo: &str, action: Action) -> bool {
    claims.iter().any(|c| {
        c.kind == "repository"
            && c.name == repo
            && c.actions.iter().any(|a| a == action.as_str() || a == "*")
    })
}

/// Parses `repository:<name>:<a,b>` / `registry:catalog:*`.
fn parse_scope(scope: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    Some((
        kind.to_owned(),
        name.to_owned(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// The access a caller gets for the requested scopes. Blocking.
fn grant(
    auth: &Auth,
    principal: Option<&Principal>,
    scopes: &[String],
) -> Result<Vec<AccessClaim>, OciError> {
    let mut out = Vec::new();
    for scope in scopes.iter().take(SCOPES_MAX) {
        let Some((kind, name, actions)) = parse_scope(scope) else {
            continue;
        };
        match kind.as_str() {
            "repository" => {
                if RepoName::parse(&name).is_err() {
                    continue;
                }
                let mut role = auth.role(principal, &name)?;
                let wants_push = actions.iter().any(|a| a == "push" || a == "*");
                if wants_push && role < Some(berth_storage::meta::identity::RepoRole::Write) {
                    // A push may create the repository; the /v2/ check decides for real.
                    if let Some(p) = principal {
                        if auth.store.visibility(&name)?.is_none() && auth.may_create(p, &name)? {
                            role = Some(berth_storage::meta::identity::RepoRole::Write);
                        }
                    }
                }
                let granted: Vec<String> = actions
                    .iter()
                    .filter(|a| match a.as_str() {
                        "pull" => role.is_some(),
                        "push" | "delete" => {
                            role >= Some(berth_storage::meta::identity::RepoRole::Write)
                        }
                        "*" => role >= Some(berth_storage::meta::identity::RepoRole::Admin),
                        _ => false,
                    })
                    .cloned()
                    .collect();
                out.push(AccessClaim {
                    kind,
                    name,
                    actions: granted,
                });
            }
            "registry" if name == "catalog" => out.push(AccessClaim {
                kind,
                name,
                actions: vec!["*".into()],
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// Signs a token for `principal` with `access`.
pub(crate) fn issue(
    auth: &Auth,
    principal: Option<&Principal>,
    access: Vec<AccessClaim>,
) -> Result<(String, u64), OciError> {
    let now = (now_ms() / 1000).max(0) as u64;
    let ttl = auth.config.token_ttl_seconds;
    let claims = Claims {
        iss: ISSUER.into(),
        sub: principal.map(|p| p.name.clone()).unwrap_or_default(),
        aud: auth.config.service.clone(),
        exp: now + ttl,
        nbf: now.saturating_sub(1),
        iat: now,
        jti: super::random_secret()?,
        access,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&auth.jwt_key),
    )
    .map_err(|e| OciError::internal(&e))?;
    Ok((token, ttl))
}

/// `GET /auth/token?service=&scope=…` (Basic credentials optional: none gives an
/// anonymous token) and `POST /auth/token` (OAuth2 form: `grant_type=password`).
pub(crate) async fn endpoint(State(reg): State<Shared>, req: Request) -> Response {
    match endpoint_inner(&reg, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn endpoint_inner(reg: &Shared, req: Request) -> Result<Response, OciError> {
    let Some(auth) = reg.auth.clone() else {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "authentication is not enabled",
        ));
    };
    let (parts, body) = req.into_parts();
    let mut params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_pairs(q).collect())
        .unwrap_or_default();
    let mut form_credentials = None;
    if parts.method == axum::http::Method::POST {
        let bytes = read_form(body).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let form: Vec<(String, String)> = form_pairs(&text).collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() == Some("password") {
            form_credentials = get("username").zip(get("password"));
        }
        for (k, v) in &form {
            if k == "scope" {
                // OAuth2 scopes are space-separated.
                params.extend(v.split(' ').map(|s| ("scope".to_owned(), s.to_owned())));
            }
        }
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let ip = client_ip(&parts);
    let basic = header_str(&parts, "authorization").and_then(decode_basic);
    let credentials = form_credentials.or(basic);
    let is_post = parts.method == axum::http::Method::POST;
    let auth2 = auth.clone();
    let (token, ttl) = blocking(move || {
        let principal = match credentials {
            None => None,
            Some((user, secret)) => match auth2.login(&user, &secret, &ip) {
                Ok(p) => Some(p),
                Err(LoginError::Store(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(OciError::new(
                        StatusCode::UNAUTHORIZED,
                        ErrorCode::Unauthorized,
                        "invalid credentials",
                    )
                    .with_header(
                        "www-authenticate",
                        format!("Basic realm=\"{}\"", auth2.config.service),
                    ))
                }
            },
        };
        let access = grant(&auth2, principal.as_ref(), &scopes)?;
        issue(&auth2, principal.as_ref(), access)
    })
    .await?;
    let issued_at = {
        let s = (now_ms() / 1000).max(0);
        format_rfc3339(s)
    };
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": issued_at,
        "token_type": "Bearer",
    });
    let _ = is_post;
    Ok(json_response(StatusCode::OK, body.to_string()))
}

async fn read_form(body: Body) -> Result<bytes::Bytes, OciError> {
    Limited::new(body, FORM_BODY_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("reading form: {e}"),
            )
        })
}

/// RFC 3339 UTC time of Unix seconds (civil-from-days, Howard Hinnant's algorithm).
fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Decodes a JWT's payload without verifying it (for tests and diagnostics only).
pub fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        assert_eq!(
            parse_scope("repository:acme/app:pull,push"),
            Some((
                "repository".into(),
                "acme/app".into(),
                vec!["pull".into(), "push".into()]
            ))
        );
        assert_eq!(
            parse_scope("repository(plugin):a/b:pull").map(|s| s.0),
            Some("repository".into())
        );
        assert_eq!(
            parse_scope("registry:catalog:*").map(|s| s.1),
            Some("catalog".into())
        );
        assert_eq!(parse_scope("garbage"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
