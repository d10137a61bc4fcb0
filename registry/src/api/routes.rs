//! `/api/v1` routing and handlers. Paths are split by hand (repository names contain `/`):
//!
//! - `gc` — `GET` last report, `POST [?dry_run=true]` run now
//! - `repositories/<repo>/tags/<tag>` — `GET` state (digest, expiry, immutable)
//! - `repositories/<repo>/tags/<tag>/history` — `GET` events, newest first
//! - `repositories/<repo>/tags/<tag>/restore` — `POST {"digest"}`
//! - `repositories/<repo>/tags/<tag>/expiration` — `PUT {"expires_in_seconds"| "expires_at_unix_ms"}`, `DELETE`
//! - `{repositories/<repo>|namespaces/<ns>}/policy` — `GET`, `PUT` (whole policy)
//! - `{…}/quota` — `GET` limit + usage, `PUT {"quota_bytes": n|null}`
//! - `{…}/retention` — `GET`, `PUT {"retention": {…}|null}`; `{…}/retention/run` — `POST [?dry_run=true]`

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{Digest, RepoName, Tag};
use berth_storage::meta::{Policy, Retention, Scope};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::{now_ms, run_gc, run_retention};
use crate::error::{ErrorCode, OciError};
use crate::{blocking, header_str, json_response, query_param, Shared};

/// Largest JSON body accepted.
const API_BODY_MAX: usize = 64 << 10;
/// Most history events returned.
const HISTORY_MAX: usize = 1000;

pub(crate) async fn dispatch(State(reg): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let resp = handle(&reg, &parts, body)
        .await
        .unwrap_or_else(|e| e.into_response());
    reg.metrics.record_request(
        "api",
        crate::metrics::method_label(&parts.method),
        resp.status().as_u16(),
    );
    resp
}

enum Target {
    Gc,
    Tag {
        repo: RepoName,
        tag: Tag,
        action: String,
    },
    Scoped {
        scope: Scope,
        what: String,
    },
}

fn not_found() -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        "no such endpoint",
    )
}

fn parse_target(path: &str) -> Result<Target, OciError> {
    let rest = path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    if rest == "gc" {
        return Ok(Target::Gc);
    }
    const SCOPED: [&str; 4] = ["/retention/run", "/retention", "/policy", "/quota"];
    if let Some(ns_rest) = rest.strip_prefix("namespaces/") {
        for suffix in SCOPED {
            if let Some(ns) = ns_rest.strip_suffix(suffix) {
                // A namespace is one repository-name component.
                let name = RepoName::parse(ns)?;
                if name.as_str().contains('/') {
                    return Err(not_found());
                }
                return Ok(Target::Scoped {
                    scope: Scope::Namespace(ns.to_owned()),
                    what: suffix[1..].to_owned(),
                });
            }
        }
        return Err(not_found());
    }
    let repo_rest = rest.strip_prefix("repositories/").ok_or_else(not_found)?;
    if let Some(at) = repo_rest.rfind("/tags/") {
        let (repo, tail) = (&repo_rest[..at], &repo_rest[at + "/tags/".len()..]);
        let (tag, action) = tail.split_once('/').unwrap_or((tail, ""));
        if matches!(action, "" | "history" | "restore" | "expiration") {
            return Ok(Target::Tag {
                repo: RepoName::parse(repo)?,
                tag: Tag::parse(tag)?,
                action: action.to_owned(),
            });
        }
    }
    for suffix in SCOPED {
        if let Some(repo) = repo_rest.strip_suffix(suffix) {
            return Ok(Target::Scoped {
                scope: Scope::Repo(RepoName::parse(repo)?),
                what: suffix[1..].to_owned(),
            });
        }
    }
    Err(not_found())
}

/// Non-`GET` requests need the admin token.
fn authorize(reg: &Shared, req: &Parts) -> Result<(), OciError> {
    if req.method == Method::GET || req.method == Method::HEAD {
        return Ok(());
    }
    // Identity (issue 7): an administrator's login or API token, verified by
    // `auth::api::dispatch` before this handler, is as good as the admin token.
    if req
        .extensions
        .get::<crate::auth::Principal>()
        .is_some_and(|p| p.is_admin())
    {
        return Ok(());
    }
    let Some(expected) = reg.lifecycle.api.admin_token.as_deref() else {
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            "management API writes are disabled: set api.admin_token in the config file \
             (or BERTH_ADMIN_TOKEN) and send it as 'Authorization: Bearer <token>'",
        ));
    };
    let given = header_str(req, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(OciError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a valid 'Authorization: Bearer <api.admin_token>' header is required",
        )
        .with_header("www-authenticate", "Bearer realm=\"berth-admin\"".into()));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, OciError> {
    let bytes = Limited::new(body, API_BODY_MAX)
        .collect()
        .await
        .map_err(|e| bad_request(format!("reading body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

fn bad_request(msg: impl Into<String>) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, msg)
}

fn ok_json(v: serde_json::Value) -> Response {
    json_response(StatusCode::OK, v.to_string())
}

fn method_not_allowed(m: &Method) -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{m} is not supported on this endpoint"),
    )
}

fn dry_run(req: &Parts) -> bool {
    query_param(req, "dry_run").is_some_and(|v| v == "true" || v == "1")
}

async fn handle(reg: &Shared, req: &Parts, body: Body) -> Result<Response, OciError> {
    let target = parse_target(req.uri.path())?;
    authorize(reg, req)?;
    match target {
        Target::Gc => match req.method {
            Method::GET => {
                let last = reg.lifecycle.last_gc.lock().await.clone();
                Ok(ok_json(serde_json::json!({ "last_run": last })))
            }
            Method::POST => {
                let report = run_gc(reg, dry_run(req)).await?;
                Ok(ok_json(serde_json::to_value(report).unwrap_or_default()))
            }
            ref m => Err(method_not_allowed(m)),
        },
        Target::Tag { repo, tag, action } => tag_route(reg, req, body, repo, tag, &action).await,
        Target::Scoped { scope, what } => scoped_route(reg, req, body, scope, &what).await,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    digest: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpiryBody {
    expires_in_seconds: Option<u64>,
    expires_at_unix_ms: Option<i64>,
}

async fn tag_route(
    reg: &Shared,
    req: &Parts,
    body: Body,
    repo: RepoName,
    tag: Tag,
    action: &str,
) -> Result<Response, OciError> {
    let reg2 = reg.clone();
    let window_s = reg.lifecycle.gc.time_machine_seconds;
    match (action, &req.method) {
        ("", &Method::GET) => {
            let info = blocking(move || Ok(reg2.meta.tag_info(&repo, &tag)?)).await?;
            let info = info.ok_or_else(|| OciError::manifest_unknown("tag"))?;
            let expired = info.expires_ms.is_some_and(|e| e <= now_ms());
            let mut v = serde_json::to_value(&info).unwrap_or_default();
            v["expired"] = expired.into();
            Ok(ok_json(v))
        }
        ("history", &Method::GET) => {
            let events =
                blocking(move || Ok(reg2.meta.tag_history(&repo, &tag, HISTORY_MAX)?)).await?;
            Ok(ok_json(serde_json::json!({
                "time_machine_seconds": window_s,
                "restorable_since_unix_ms": now_ms() - (window_s as i64) * 1000,
                "history": events,
            })))
        }
        ("restore", &Method::POST) => {
            let b: RestoreBody = read_json(body).await?;
            let digest = Digest::parse(&b.digest)?;
            let d = digest.clone();
            let t = tag.clone();
            blocking(move || {
                let since = now_ms() - (window_s as i64) * 1000;
                Ok(reg2.meta.restore_tag(&repo, &t, &d, since)?)
            })
            .await?;
            Ok(ok_json(
                serde_json::json!({ "tag": tag.as_str(), "digest": digest.to_string() }),
            ))
        }
        ("expiration", &Method::PUT) => {
            let b: ExpiryBody = read_json(body).await?;
            let at = match (b.expires_in_seconds, b.expires_at_unix_ms) {
                (Some(s), None) => now_ms().saturating_add((s as i64).saturating_mul(1000)),
                (None, Some(at)) => at,
                _ => {
                    return Err(bad_request(
                        "give exactly one of expires_in_seconds, expires_at_unix_ms",
                    ))
                }
            };
            set_expiry(reg, repo, tag, Some(at)).await
        }
        ("expiration", &Method::DELETE) => set_expiry(reg, repo, tag, None).await,
        (_, m) => Err(method_not_allowed(m)),
    }
}

async fn set_expiry(
    reg: &Shared,
    repo: RepoName,
    tag: Tag,
    at: Option<i64>,
) -> Result<Response, OciError> {
    let reg2 = reg.clone();
    let t = tag.clone();
    let found = blocking(move || Ok(reg2.meta.set_tag_expiry(&repo, &t, at)?)).await?;
    if !found {
        return Err(OciError::manifest_unknown(tag.as_str()));
    }
    Ok(ok_json(
        serde_json::json!({ "tag": tag.as_str(), "expires_ms": at }),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    quota_bytes: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    retention: Option<Retention>,
}

async fn scoped_route(
    reg: &Shared,
    req: &Parts,
    body: Body,
    scope: Scope,
    what: &str,
) -> Result<Response, OciError> {
    if what == "retention/run" {
        if req.method != Method::POST {
            return Err(method_not_allowed(&req.method));
        }
        let (repo, ns) = match scope {
            Scope::Repo(r) => (Some(r), None),
            Scope::Namespace(ns) => (None, Some(ns)),
        };
        let reports = run_retention(reg, repo, ns, dry_run(req)).await?;
        return Ok(ok_json(
            serde_json::json!({ "dry_run": dry_run(req), "repositories": reports }),
        ));
    }
    let current = {
        let (reg2, s) = (reg.clone(), scope.clone());
        blocking(move || Ok(reg2.meta.policy(&s)?)).await?
    };
    let updated = match req.method {
        Method::GET => None,
        Method::PUT => {
            let mut p = current.clone();
            match what {
                "policy" => p = read_json::<Policy>(body).await?,
                "quota" => p.quota_bytes = read_json::<QuotaBody>(body).await?.quota_bytes,
                _ => p.retention = read_json::<RetentionBody>(body).await?.retention,
            }
            p.validate().map_err(bad_request)?;
            Some(p)
        }
        ref m => return Err(method_not_allowed(m)),
    };
    let (reg2, s) = (reg.clone(), scope.clone());
    let (policy, used) = blocking(move || {
        let policy = match updated {
            Some(p) => {
                reg2.meta.set_policy(&s, &p)?;
                p
            }
            None => current,
        };
        Ok((policy, reg2.meta.usage_bytes(&s)?))
    })
    .await?;
    let scope_v = match &scope {
        Scope::Repo(r) => serde_json::json!({ "repository": r.as_str() }),
        Scope::Namespace(ns) => serde_json::json!({ "namespace": ns }),
    };
    let mut v = match what {
        "quota" => serde_json::json!({ "quota_bytes": policy.quota_bytes, "used_bytes": used }),
        "retention" => serde_json::json!({ "retention": policy.retention }),
        _ => {
            let mut v = serde_json::to_value(&policy).unwrap_or_default();
            v["used_bytes"] = used.into();
            v
        }
    };
    v["scope"] = scope_v;
    Ok(ok_json(v))
}
