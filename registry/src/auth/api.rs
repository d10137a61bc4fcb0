//! The identity part of the management API under `/api/v1` (documented in
//! `openapi.json`, served at `GET /api/v1/openapi.json`). Other `/api/v1` paths go on to
//! the lifecycle API ([`crate::api`]) with the caller's [`Principal`] in the request's
//! extensions, so its admin check also accepts an administrator's login or API token.
//!
//! Authentication: `Authorization: Basic` (login) or `Bearer berth_…` (API token, whose
//! scopes limit it). Authorization: superusers everything; organization admins their
//! organization's teams, members, robots and repository permissions; repository admins
//! that repository's permissions and visibility; everyone their own tokens and password.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::RepoName;
use berth_storage::meta::identity::{
    Account, AccountKind, ApiToken, AuditQuery, NewAuditEvent, RepoRole, Subject, Team, TeamRole,
};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::{
    authenticate, client_ip, hash_password, now_ms, random_secret, token_hash, validate_name, Auth,
    Caller, Principal, API_TOKEN_PREFIX,
};
use crate::error::{ErrorCode, OciError};
use crate::{blocking, json_response, query_param, Shared};

/// The OpenAPI document of the whole `/api/v1` identity surface.
pub const OPENAPI: &str = include_str!("openapi.json");
const BODY_MAX: usize = 64 << 10;
const LIST_MAX: usize = 1000;
const API_SCOPES: [&str; 5] = [
    "repo:read",
    "repo:write",
    "repo:admin",
    "org:admin",
    "user:admin",
];
const IDENTITY_PREFIXES: [&str; 9] = [
    "user",
    "users",
    "organizations",
    "permissions",
    "visibility",
    "tokens",
    "audit",
    "ldap",
    "openapi.json",
];

/// `/api/v1/*`: identity paths here, the rest to the lifecycle API.
pub(crate) async fn dispatch(State(reg): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/api/v1/").unwrap_or("");
    let first = rest.split('/').next().unwrap_or("");
    if !IDENTITY_PREFIXES.contains(&first) {
        return lifecycle(reg, req).await;
    }
    let (parts, body) = req.into_parts();
    let resp = handle(&reg, &parts, rest, body)
        .await
        .unwrap_or_else(|e| e.into_response());
    reg.metrics.record_request(
        "api",
        crate::metrics::method_label(&parts.method),
        resp.status().as_u16(),
    );
    resp
}

/// Hands a request to the lifecycle API, authenticating it first when auth is on: a bad
/// credential is refused here, a good one is passed on as a [`Principal`] extension.
async fn lifecycle(reg: Shared, req: Request) -> Response {
    let Some(auth) = reg.auth.clone() else {
        return crate::api::dispatch(State(reg), req).await;
    };
    let (mut parts, body) = req.into_parts();
    let is_admin_token = crate::header_str(&parts, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.starts_with(API_TOKEN_PREFIX) && t.split('.').count() != 3);
    if !is_admin_token {
        let checked = blocking(move || {
            let caller = authenticate(&auth, &parts)?;
            Ok((parts, caller))
        })
        .await;
        match checked {
            Ok((p, caller)) => {
                parts = p;
                let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
                match caller.principal() {
                    Some(principal) => {
                        parts.extensions.insert(principal.clone());
                    }
                    // With auth on, lifecycle reads (tag history of private repositories)
                    // need a login too.
                    None if is_read => {
                        return super::unauthorized(
                            reg.auth.as_deref().unwrap_or_else(|| unreachable!()),
                            &parts,
                            None,
                            "authentication required",
                        )
                        .into_response()
                    }
                    None => {}
                }
                if is_read && !caller.principal().is_some_and(|p| p.is_admin()) {
                    return forbidden(
                        "lifecycle API reads need an administrator while auth is enabled",
                    )
                    .into_response();
                }
            }
            Err(e) => return e.into_response(),
        }
    }
    crate::api::dispatch(State(reg), Request::from_parts(parts, body)).await
}

fn forbidden(msg: impl Into<String>) -> OciError {
    OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, msg)
}

fn not_found() -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        "no such endpoint",
    )
}

fn bad_request(msg: impl Into<String>) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, msg)
}

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, OciError> {
    let bytes = Limited::new(body, BODY_MAX)
        .collect()
        .await
        .map_err(|e| bad_request(format!("reading body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

fn ok_json(value: serde_json::Value) -> Response {
    json_response(StatusCode::OK, value.to_string())
}

fn account_json(a: &Account) -> serde_json::Value {
    serde_json::json!({
        "name": a.name, "kind": a.kind, "email": a.email, "superuser": a.superuser,
        "external": a.external, "failed_logins": a.failed_logins,
        "locked": a.locked_until_ms > now_ms(), "created_ms": a.created_ms,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: Option<String>,
    email: Option<String>,
    #[serde(default)]
    superuser: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamBody {
    name: Option<String>,
    role: TeamRole,
    ldap_group: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: RepoRole,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityBody {
    public: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<String>,
    expires_in_seconds: Option<u64>,
}

/// A caller who must be logged in.
struct Ctx {
    auth: std::sync::Arc<Auth>,
    who: Principal,
    ip: String,
}

impl Ctx {
    fn audit(&self, action: &str, target: impl Into<String>, detail: Option<String>) {
        self.auth.audit(NewAuditEvent {
            actor: Some(self.who.name.clone()),
            action: action.into(),
            target: Some(target.into()),
            ip: Some(self.ip.clone()),
            success: true,
            detail,
        });
    }

    fn require_superuser(&self) -> Result<(), OciError> {
        if self.who.is_admin() {
            Ok(())
        } else {
            Err(forbidden("an administrator (user:admin) is required"))
        }
    }

    /// Superuser, or admin-team member of `org`, with the `org:admin` scope.
    fn require_org_admin(&self, org: &str) -> Result<(), OciError> {
        if self.who.is_admin() {
            return Ok(());
        }
        if self.who.kind == AccountKind::User
            && self.who.has_scope("org:admin")
            && self.auth.org_role(&self.who.name, org)? == Some(TeamRole::Admin)
        {
            return Ok(());
        }
        Err(forbidden(format!(
            "{} is not an administrator of {org}",
            self.who.name
        )))
    }

    fn require_repo_admin(&self, repo: &str) -> Result<(), OciError> {
        if self.auth.role(Some(&self.who), repo)? == Some(RepoRole::Admin) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "{} is not an administrator of {repo}",
                self.who.name
            )))
        }
    }

    fn org(&self, org: &str) -> Result<Account, OciError> {
        match self.auth.store.account(org)? {
            Some(a) if a.kind == AccountKind::Organization => Ok(a),
            _ => Err(OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!("organization {org} not found"),
            )),
        }
    }
}

async fn handle(reg: &Shared, parts: &Parts, rest: &str, body: Body) -> Result<Response, OciError> {
    if rest == "openapi.json" {
        let mut r = json_response(StatusCode::OK, OPENAPI);
        r.headers_mut().insert(
            "cache-control",
            axum::http::HeaderValue::from_static("no-cache"),
        );
        return Ok(r);
    }
    let Some(auth) = reg.auth.clone() else {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "authentication is not enabled (auth.enabled = false)",
        ));
    };
    let segs: Vec<String> = rest
        .split('/')
        // Path segments: `+` is literal (robot names), unlike in query strings.
        .map(|s| crate::percent_decode(&s.replace('+', "%2B")))
        .collect();
    let method = parts.method.clone();
    // Bodies are read before going to a blocking thread.
    let json: Option<serde_json::Value> = if method == Method::POST || method == Method::PUT {
        let b = Limited::new(body, BODY_MAX)
            .collect()
            .await
            .map_err(|e| bad_request(format!("reading body: {e}")))?
            .to_bytes();
        if b.is_empty() {
            None
        } else {
            Some(
                serde_json::from_slice(&b)
                    .map_err(|e| bad_request(format!("invalid JSON body: {e}")))?,
            )
        }
    } else {
        None
    };
    let query = |k: &str| query_param(parts, k);
    let audit_q = AuditQuery {
        actor: query("actor"),
        action: query("action"),
        target: query("target"),
        before_id: query("before").and_then(|v| v.parse().ok()),
        limit: query("n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100)
            .min(LIST_MAX),
    };
    let parts2 = parts.clone();
    let reg2 = reg.clone();
    blocking(move || {
        let caller = authenticate(&auth, &parts2)?;
        let who = match caller {
            Caller::Account(p) => p,
            _ => {
                return Err(super::unauthorized(
                    &auth,
                    &parts2,
                    None,
                    "log in (Basic) or send an API token (Bearer berth_…)",
                ))
            }
        };
        let ctx = Ctx {
            auth: auth.clone(),
            who,
            ip: client_ip(&parts2),
        };
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        route(&reg2, &ctx, &method, &segs, json, audit_q)
    })
    .await
}

fn body<T: DeserializeOwned>(json: Option<serde_json::Value>) -> Result<T, OciError> {
    serde_json::from_value(json.unwrap_or(serde_json::Value::Null))
        .map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

fn new_account(name: &str, kind: AccountKind) -> Account {
    Account {
        name: name.into(),
        kind,
        email: None,
        superuser: false,
        secret_hash: None,
        external: None,
        failed_logins: 0,
        locked_until_ms: 0,
        created_ms: now_ms(),
    }
}

/// Splits `<repo>/accounts/<name>` or `<repo>/teams/<team>` (repository names contain `/`).
fn split_subject(joined: &str) -> (&str, Option<(&str, &str)>) {
    for kind in ["/accounts/", "/teams/"] {
        if let Some(at) = joined.rfind(kind) {
            return (
                &joined[..at],
                Some((&kind[1..kind.len() - 1], &joined[at + kind.len()..])),
            );
        }
    }
    (joined, None)
}

fn route(
    reg: &Shared,
    ctx: &Ctx,
    method: &Method,
    segs: &[&str],
    json: Option<serde_json::Value>,
    audit_q: AuditQuery,
) -> Result<Response, OciError> {
    let store = ctx.auth.store.clone();
    match (method, segs) {
        (&Method::GET, ["user"]) => {
            let a = store.account(&ctx.who.name)?.ok_or_else(not_found)?;
            let mut v = account_json(&a);
            v["teams"] = serde_json::to_value(store.teams_of(&a.name)?).unwrap_or_default();
            v["scopes"] = serde_json::to_value(&ctx.who.scopes).unwrap_or_default();
            Ok(ok_json(v))
        }
        (&Method::GET, ["users"]) => {
            ctx.require_superuser()?;
            let users: Vec<_> = store
                .list_accounts(Some(AccountKind::User), LIST_MAX)?
                .iter()
                .map(account_json)
                .collect();
            Ok(ok_json(serde_json::json!({ "users": users })))
        }
        (&Method::POST, ["users"]) => {
            ctx.require_superuser()?;
            let u: NewUser = body(json)?;
            validate_name(&u.name).map_err(bad_request)?;
            let mut a = new_account(&u.name, AccountKind::User);
            a.email = u.email;
            a.superuser = u.superuser;
            if let Some(pw) = &u.password {
                check_password(pw)?;
                a.secret_hash = Some(
                    hash_password(pw).map_err(|e| OciError::internal(&std::io::Error::other(e)))?,
                );
            }
            store.create_account(&a)?;
            ctx.audit(
                "user_create",
                &u.name,
                u.superuser.then(|| "superuser".into()),
            );
            Ok(json_response(
                StatusCode::CREATED,
                account_json(&a).to_string(),
            ))
        }
        (&Method::GET, ["users", name]) => {
            if *name != ctx.who.name {
                ctx.require_superuser()?;
            }
            let a = store
                .account(name)?
                .filter(|a| a.kind == AccountKind::User)
                .ok_or_else(not_found)?;
            Ok(ok_json(account_json(&a)))
        }
        (&Method::DELETE, ["users", name]) => {
            ctx.require_superuser()?;
            if *name == ctx.who.name {
                return Err(bad_request("you cannot delete yourself"));
            }
            if !store.delete_account(name)? {
                return Err(not_found());
            }
            ctx.auth.forget_cached_logins();
            ctx.audit("user_delete", *name, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::PUT, ["users", name, "password"]) => {
            if *name != ctx.who.name || ctx.who.scopes.is_some() {
                ctx.require_superuser()?;
            }
            let b: PasswordBody = body(json)?;
            check_password(&b.password)?;
            let h = hash_password(&b.password)
                .map_err(|e| OciError::internal(&std::io::Error::other(e)))?;
            if !store.set_secret_hash(name, Some(&h))? {
                return Err(not_found());
            }
            ctx.auth.forget_cached_logins();
            ctx.audit("password_change", *name, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::POST, ["users", name, "unlock"]) => {
            ctx.require_superuser()?;
            if !store.reset_login_failures(name)? {
                return Err(not_found());
            }
            ctx.audit("account_unlock", *name, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["organizations"]) => {
            let orgs: Vec<_> = store
                .list_accounts(Some(AccountKind::Organization), LIST_MAX)?
                .into_iter()
                .filter(|o| {
                    ctx.who.is_admin()
                        || ctx
                            .auth
                            .org_role(&ctx.who.name, &o.name)
                            .ok()
                            .flatten()
                            .is_some()
                })
                .map(|o| o.name)
                .collect();
            Ok(ok_json(serde_json::json!({ "organizations": orgs })))
        }
        (&Method::POST, ["organizations"]) => {
            if ctx.who.kind != AccountKind::User || !ctx.who.has_scope("org:admin") {
                return Err(forbidden(
                    "creating an organization needs a user login or the org:admin scope",
                ));
            }
            let b: NameBody = body(json)?;
            validate_name(&b.name).map_err(bad_request)?;
            store.create_account(&new_account(&b.name, AccountKind::Organization))?;
            store.create_team(&Team {
                org: b.name.clone(),
                name: "owners".into(),
                role: TeamRole::Admin,
                ldap_group: None,
            })?;
            store.add_team_member(&b.name, "owners", &ctx.who.name, "local")?;
            ctx.audit("organization_create", &b.name, None);
            Ok(json_response(
                StatusCode::CREATED,
                serde_json::json!({ "name": b.name }).to_string(),
            ))
        }
        (&Method::GET, ["organizations", org]) => {
            ctx.org(org)?;
            if !ctx.who.is_admin() && ctx.auth.org_role(&ctx.who.name, org)?.is_none() {
                return Err(forbidden("not a member"));
            }
            Ok(ok_json(
                serde_json::json!({ "name": org, "teams": store.teams(org)? }),
            ))
        }
        (&Method::DELETE, ["organizations", org]) => {
            ctx.org(org)?;
            ctx.require_org_admin(org)?;
            store.delete_account(org)?;
            ctx.audit("organization_delete", *org, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["organizations", org, "teams"]) => {
            ctx.org(org)?;
            if !ctx.who.is_admin() && ctx.auth.org_role(&ctx.who.name, org)?.is_none() {
                return Err(forbidden("not a member"));
            }
            Ok(ok_json(serde_json::json!({ "teams": store.teams(org)? })))
        }
        (&Method::POST, ["organizations", org, "teams"])
        | (&Method::PUT, ["organizations", org, "teams", _]) => {
            ctx.org(org)?;
            ctx.require_org_admin(org)?;
            let b: TeamBody = body(json)?;
            let name = match segs.get(3) {
                Some(n) => n.to_string(),
                None => b
                    .name
                    .clone()
                    .ok_or_else(|| bad_request("name is required"))?,
            };
            validate_name(&name).map_err(bad_request)?;
            let team = Team {
                org: org.to_string(),
                name: name.clone(),
                role: b.role,
                ldap_group: b.ldap_group,
            };
            let created = if *method == Method::POST {
                store.create_team(&team)?;
                true
            } else if store.update_team(&team)? {
                false
            } else {
                store.create_team(&team)?;
                true
            };
            ctx.audit(
                if created {
                    "team_create"
                } else {
                    "team_update"
                },
                format!("{org}/{name}"),
                Some(format!("role={}", team.role.as_str())),
            );
            Ok(json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                serde_json::to_string(&team).unwrap_or_default(),
            ))
        }
        (&Method::DELETE, ["organizations", org, "teams", team]) => {
            ctx.require_org_admin(org)?;
            if !store.delete_team(org, team)? {
                return Err(not_found());
            }
            ctx.audit("team_delete", format!("{org}/{team}"), None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["organizations", org, "teams", team, "members"]) => {
            if !ctx.who.is_admin() && ctx.auth.org_role(&ctx.who.name, org)?.is_none() {
                return Err(forbidden("not a member"));
            }
            Ok(ok_json(
                serde_json::json!({ "members": store.team_members(org, team)? }),
            ))
        }
        (&Method::PUT, ["organizations", org, "teams", team, "members", member]) => {
            ctx.require_org_admin(org)?;
            store.add_team_member(org, team, member, "local")?;
            ctx.audit(
                "team_member_add",
                format!("{org}/{team}"),
                Some(member.to_string()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::DELETE, ["organizations", org, "teams", team, "members", member]) => {
            ctx.require_org_admin(org)?;
            if !store.remove_team_member(org, team, member)? {
                return Err(not_found());
            }
            ctx.audit(
                "team_member_remove",
                format!("{org}/{team}"),
                Some(member.to_string()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["organizations", org, "robots"]) => {
            ctx.require_org_admin(org)?;
            let prefix = format!("{org}+");
            let robots: Vec<_> = store
                .list_accounts(Some(AccountKind::Robot), LIST_MAX)?
                .into_iter()
                .filter(|r| r.name.starts_with(&prefix))
                .map(|r| r.name)
                .collect();
            Ok(ok_json(serde_json::json!({ "robots": robots })))
        }
        (&Method::POST, ["organizations", org, "robots"]) => {
            ctx.org(org)?;
            ctx.require_org_admin(org)?;
            let b: NameBody = body(json)?;
            validate_name(&b.name).map_err(bad_request)?;
            let full = format!("{org}+{}", b.name);
            let secret = random_secret()?;
            let mut a = new_account(&full, AccountKind::Robot);
            a.secret_hash = Some(token_hash(&secret));
            store.create_account(&a)?;
            ctx.audit("robot_create", &full, None);
            Ok(json_response(
                StatusCode::CREATED,
                serde_json::json!({ "name": full, "token": secret }).to_string(),
            ))
        }
        (&Method::POST, ["organizations", org, "robots", name, "regenerate"]) => {
            ctx.require_org_admin(org)?;
            let full = format!("{org}+{name}");
            let secret = random_secret()?;
            match store.account(&full)? {
                Some(a) if a.kind == AccountKind::Robot => {
                    store.set_secret_hash(&full, Some(&token_hash(&secret)))?;
                }
                _ => return Err(not_found()),
            }
            ctx.auth.forget_cached_logins();
            ctx.audit("robot_token_regenerate", &full, None);
            Ok(ok_json(
                serde_json::json!({ "name": full, "token": secret }),
            ))
        }
        (&Method::DELETE, ["organizations", org, "robots", name]) => {
            ctx.require_org_admin(org)?;
            let full = format!("{org}+{name}");
            if !store.delete_account(&full)? {
                return Err(not_found());
            }
            ctx.auth.forget_cached_logins();
            ctx.audit("robot_delete", &full, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (_, ["permissions", ..]) | (_, ["visibility", ..]) => {
            repo_routes(reg, ctx, method, segs, json)
        }
        (&Method::GET, ["tokens"]) => Ok(ok_json(
            serde_json::json!({ "tokens": store.tokens(&ctx.who.name)? }),
        )),
        (&Method::POST, ["tokens"]) => {
            let b: NewToken = body(json)?;
            if b.scopes.is_empty() || b.scopes.iter().any(|s| !API_SCOPES.contains(&s.as_str())) {
                return Err(bad_request(format!(
                    "scopes must be a non-empty subset of {API_SCOPES:?}"
                )));
            }
            if b.scopes.iter().any(|s| !ctx.who.has_scope(s)) {
                return Err(forbidden(
                    "a token cannot have scopes its creator's token lacks",
                ));
            }
            let secret = format!("{API_TOKEN_PREFIX}{}", random_secret()?);
            let t = ApiToken {
                id: random_secret()?.chars().take(12).collect(),
                account: ctx.who.name.clone(),
                name: b.name,
                scopes: b.scopes,
                created_ms: now_ms(),
                expires_ms: b
                    .expires_in_seconds
                    .map(|s| now_ms().saturating_add((s.min(10 * 365 * 86_400) as i64) * 1000)),
            };
            store.create_token(&t, &token_hash(&secret))?;
            ctx.audit("token_create", &t.id, Some(t.scopes.join(" ")));
            let mut v = serde_json::to_value(&t).unwrap_or_default();
            v["token"] = secret.into();
            Ok(json_response(StatusCode::CREATED, v.to_string()))
        }
        (&Method::DELETE, ["tokens", id]) => {
            if !store.delete_token(&ctx.who.name, id)? {
                return Err(not_found());
            }
            ctx.audit("token_revoke", *id, None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (&Method::GET, ["audit"]) => {
            let mut q = audit_q;
            if !ctx.who.is_admin() {
                // Organization admins see their organization's events only.
                let org = q
                    .target
                    .as_deref()
                    .map(|t| t.split(['/', ':', '+']).next().unwrap_or("").to_owned())
                    .ok_or_else(|| {
                        forbidden("non-administrators must filter by target=<their organization>")
                    })?;
                ctx.require_org_admin(&org)?;
                q.target = Some(org);
            }
            Ok(ok_json(serde_json::json!({ "events": store.audit(&q)? })))
        }
        (&Method::POST, ["ldap", "sync"]) => {
            ctx.require_superuser()?;
            let report = super::ldap::sync_all(&ctx.auth)
                .map_err(|e| OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unsupported, e))?;
            ctx.audit("ldap_sync", "ldap", Some(format!("{report:?}")));
            Ok(ok_json(serde_json::to_value(report).unwrap_or_default()))
        }
        _ => Err(not_found()),
    }
}

fn repo_routes(
    _reg: &Shared,
    ctx: &Ctx,
    method: &Method,
    segs: &[&str],
    json: Option<serde_json::Value>,
) -> Result<Response, OciError> {
    let store = ctx.auth.store.clone();
    let joined = segs[1..].join("/");
    let (repo, subject) = split_subject(&joined);
    let repo = RepoName::parse(repo)?;
    let repo = repo.as_str();
    ctx.require_repo_admin(repo)?;
    match (segs[0], method, subject) {
        ("visibility", &Method::GET, None) => Ok(ok_json(
            serde_json::json!({ "repository": repo, "public": store.visibility(repo)?.unwrap_or(false) }),
        )),
        ("visibility", &Method::PUT, None) => {
            let b: VisibilityBody = body(json)?;
            store.set_visibility(repo, b.public)?;
            ctx.audit("visibility_set", repo, Some(format!("public={}", b.public)));
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("permissions", &Method::GET, None) => Ok(ok_json(
            serde_json::json!({ "repository": repo, "permissions": store.permissions(repo)? }),
        )),
        ("permissions", &Method::PUT | &Method::DELETE, Some((kind, name))) => {
            let subject = match kind {
                "teams" => Subject::Team {
                    org: repo.split('/').next().unwrap_or(repo).to_owned(),
                    name: name.to_owned(),
                },
                _ => Subject::Account {
                    name: name.to_owned(),
                },
            };
            let role = if *method == Method::PUT {
                Some(body::<RoleBody>(json)?.role)
            } else {
                None
            };
            let changed = store.set_permission(repo, &subject, role)?;
            if role.is_none() && !changed {
                return Err(not_found());
            }
            ctx.audit(
                "permission_set",
                repo,
                Some(format!(
                    "{kind}/{name}={}",
                    role.map_or("none", |r| r.as_str())
                )),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(not_found()),
    }
}

fn check_password(pw: &str) -> Result<(), OciError> {
    if pw.len() < 8 || pw.len() > 1024 {
        return Err(bad_request("passwords must be 8 to 1024 characters"));
    }
    Ok(())
}

// Keeps `read_json` available for handlers that stream bodies later.
#[allow(dead_code)]
async fn _read<T: DeserializeOwned>(b: Body) -> Result<T, OciError> {
    read_json(b).await
}
