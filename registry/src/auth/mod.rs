//! Identity and access (issue 7): who is calling, and may they do this?
//!
//! The principal type is [`Auth`], configured by [`AuthConfig`] (`[auth]` in the node's
//! config file), built over an [`IdentityStore`]; [`crate::Registry::with_auth`] installs it.
//! With no `Auth` installed (`auth.enabled = false`, the default) every request is allowed,
//! exactly as before this module existed.
//!
//! - [`authorize_v2`] is the one hook on `/v2/`: it authenticates the request (Basic:
//!   password, robot token or API token; Bearer: a registry token from `/auth/token`),
//!   maps the route to a (repository, action) pair and decides before any storage access:
//!   no or bad credentials → `401 UNAUTHORIZED` with a `WWW-Authenticate: Bearer` challenge;
//!   authenticated but not allowed → `403 DENIED`. It leaves an [`Access`] in the request's
//!   extensions so the mount and catalog code can check other repositories.
//! - [`token`] issues and verifies the short-lived HS256 registry tokens (Docker token auth).
//! - [`api`] is the management API (`/api/v1`: users, organizations, teams, robots,
//!   permissions, tokens, audit); [`ldap`] and [`oidc`] are the external logins.
//!
//! Secrets: passwords are argon2id hashes; robot and API tokens are 256-bit random values
//! stored as SHA-256; comparisons of secrets are constant-time; no secret is logged or
//! written to the audit log.

pub mod api;
pub mod ldap;
pub mod oidc;
pub mod token;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use berth_oci::RepoName;
use berth_storage::meta::identity::{
    Account, AccountKind, IdentityError, IdentityStore, NewAuditEvent, RepoRole, TeamRole,
};
use sha2::Digest as _;

use crate::error::{ErrorCode, OciError};
use crate::route::V2Route;
use crate::{blocking, header_str, Registry, Shared};

/// Verified Basic credentials are cached this long, so a client sending Basic on every
/// request pays one argon2 verification (~20 ms) per minute, not per request.
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached logins.
const LOGIN_CACHE_MAX: usize = 1024;
/// Longest user name or password accepted (argon2 input bound).
const CREDENTIAL_LEN_MAX: usize = 1024;
/// Prefix of API tokens (lets a Basic password be recognised as a token).
pub const API_TOKEN_PREFIX: &str = "berth_";

/// `[auth]` in the node's config file.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Enforce authentication and authorization (default false: everything is open).
    pub enabled: bool,
    /// Token endpoint URL put in challenges (default `http://<Host>/auth/token`).
    pub realm: Option<String>,
    /// The `service` of issued tokens (default `berth`).
    pub service: String,
    /// Lifetime of registry tokens (default 300 s).
    pub token_ttl_seconds: u64,
    /// Failed logins in a row that lock an account (default 5; 0 disables lockout).
    pub lockout_threshold: u32,
    /// How long a lock lasts unless an administrator resets it (default 900 s).
    pub lockout_seconds: u64,
    /// Whether repositories created by a push are public (default false).
    pub new_repositories_public: bool,
    /// Audit events older than this are pruned (default 90 days).
    pub audit_retention_days: u64,
    /// First administrator created at start if no superuser exists; its password comes
    /// from `BERTH_BOOTSTRAP_PASSWORD` (never from the file).
    pub bootstrap_admin: Option<String>,
    /// LDAP login and team sync.
    pub ldap: Option<ldap::LdapConfig>,
    /// OIDC login.
    pub oidc: Option<oidc::OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            realm: None,
            service: "berth".into(),
            token_ttl_seconds: 300,
            lockout_threshold: 5,
            lockout_seconds: 900,
            new_repositories_public: false,
            audit_retention_days: 90,
            bootstrap_admin: None,
            ldap: None,
            oidc: None,
        }
    }
}

impl AuthConfig {
    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.token_ttl_seconds == 0 || self.token_ttl_seconds > 86_400 {
            return Err("auth.token_ttl_seconds must be between 1 and 86400".into());
        }
        if self.service.is_empty() {
            return Err("auth.service must not be empty".into());
        }
        if let Some(name) = &self.bootstrap_admin {
            validate_name(name).map_err(|e| format!("auth.bootstrap_admin: {e}"))?;
        }
        if let Some(l) = &self.ldap {
            l.validate()?;
        }
        if let Some(o) = &self.oidc {
            o.validate()?;
        }
        Ok(())
    }
}

/// Checks an account, organization or team name: `[a-z0-9][a-z0-9_-]{0,63}` (a valid
/// single repository-name component, so a user or organization name is a namespace).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1-64 of a-z 0-9 _ -, starting with a letter or digit"
        ))
    }
}

/// Who a request acts as, once authenticated.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Account name.
    pub name: String,
    /// User or robot.
    pub kind: AccountKind,
    /// May do everything.
    pub superuser: bool,
    /// Scopes when authenticated by an API token (`None`: a login, all scopes).
    pub scopes: Option<Vec<String>>,
}

impl Principal {
    fn from_account(a: &Account, scopes: Option<Vec<String>>) -> Principal {
        Principal {
            name: a.name.clone(),
            kind: a.kind,
            superuser: a.superuser,
            scopes,
        }
    }

    /// Whether an API token's scopes (if any) include `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == scope))
    }

    /// The highest repository role the token scopes allow.
    fn repo_scope_cap(&self) -> Option<RepoRole> {
        match &self.scopes {
            None => Some(RepoRole::Admin),
            Some(s) => [
                ("repo:admin", RepoRole::Admin),
                ("repo:write", RepoRole::Write),
                ("repo:read", RepoRole::Read),
            ]
            .into_iter()
            .find(|(name, _)| s.iter().any(|x| x == name))
            .map(|(_, r)| r),
        }
    }

    /// Superuser with (for API tokens) the `user:admin` scope.
    pub fn is_admin(&self) -> bool {
        self.superuser && self.has_scope("user:admin")
    }
}

/// What a `/v2/` request does to its repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read.
    Pull,
    /// Write.
    Push,
    /// Delete (needs write).
    Delete,
}

impl Action {
    /// The action's name in token scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn needs(self) -> RepoRole {
        match self {
            Action::Pull => RepoRole::Read,
            Action::Push | Action::Delete => RepoRole::Write,
        }
    }
}

/// Identity and access, installed into the registry when `auth.enabled`.
pub struct Auth {
    config: AuthConfig,
    store: Arc<dyn IdentityStore>,
    jwt_key: Vec<u8>,
    login_cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// OIDC logins waiting for their callback.
    oidc_pending: oidc::PendingLogins,
    /// The HTTP(S) client for the OIDC provider (when `[auth.oidc]` is set).
    oidc_client: Option<oidc::ProviderClient>,
}

/// Why a login failed (the client is told only "invalid credentials").
#[derive(Debug)]
pub enum LoginError {
    /// Unknown user or wrong secret.
    Invalid,
    /// Too many failures; locked until an administrator resets it or the lock expires.
    Locked,
    /// The store failed.
    Store(IdentityError),
}

impl From<IdentityError> for LoginError {
    fn from(e: IdentityError) -> Self {
        LoginError::Store(e)
    }
}

impl From<IdentityError> for OciError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Conflict(_) => {
                OciError::new(StatusCode::CONFLICT, ErrorCode::Denied, e.to_string())
            }
            IdentityError::NotFound(_) => {
                OciError::new(StatusCode::NOT_FOUND, ErrorCode::NameUnknown, e.to_string())
            }
            IdentityError::Invalid(_) => OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                e.to_string(),
            ),
            IdentityError::Database { .. } => OciError::internal(&e),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 hex of a token secret (how robot and API tokens are stored).
pub fn token_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// 32 random bytes, URL-safe base64.
pub fn random_secret() -> Result<String, OciError> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf)
        .map_err(|e| OciError::internal(&std::io::Error::other(e.to_string())))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// argon2id PHC hash of a password.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a password nobody has, verified for unknown users so that "no such user"
/// takes as long as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("berth-dummy-password").unwrap_or_default())
}

impl Auth {
    /// Opens the identity store in the metadata database at `db_path`, loads (or creates,
    /// mode 0600) the token signing key under `data_dir/auth/`, and bootstraps the first
    /// administrator from `auth.bootstrap_admin` + `BERTH_BOOTSTRAP_PASSWORD` if configured
    /// and no superuser exists yet.
    pub fn open(config: AuthConfig, data_dir: &Path, db_path: &Path) -> Result<Auth, String> {
        let store = berth_storage::meta::identity_sqlite::SqliteIdentity::open(db_path)
            .map_err(|e| e.to_string())?;
        let jwt_key = token::load_or_create_key(&data_dir.join("auth"))?;
        let oidc_client = config
            .oidc
            .as_ref()
            .map(oidc::ProviderClient::new)
            .transpose()?;
        let auth = Auth {
            config,
            store: Arc::new(store),
            jwt_key,
            login_cache: Mutex::new(HashMap::new()),
            oidc_pending: Default::default(),
            oidc_client,
        };
        if let Some(name) = auth.config.bootstrap_admin.clone() {
            match std::env::var("BERTH_BOOTSTRAP_PASSWORD") {
                Ok(pw) if !pw.is_empty() => {
                    if auth.store.count_superusers().map_err(|e| e.to_string())? == 0 {
                        bootstrap_admin(auth.store.as_ref(), &name, &pw)?;
                    }
                }
                _ => tracing::warn!(
                    "auth.bootstrap_admin is set but BERTH_BOOTSTRAP_PASSWORD is not"
                ),
            }
        }
        Ok(auth)
    }

    /// The identity store.
    pub fn store(&self) -> &Arc<dyn IdentityStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Records an audit event (errors are logged, never fatal). Call on a blocking thread.
    pub fn audit(&self, event: NewAuditEvent) {
        if let Err(e) = self.store.append_audit(&event, now_ms()) {
            tracing::error!(error = %e, action = %event.action, "could not record audit event");
        }
    }

    /// Verifies a user name and secret: a user's password (local argon2 or LDAP bind), a
    /// robot's token, or an API token (user name `$oauthtoken` or the token's account).
    /// Counts failures and locks the account at the threshold. Blocking.
    pub fn login(&self, username: &str, secret: &str, ip: &str) -> Result<Principal, LoginError> {
        if username.len() > CREDENTIAL_LEN_MAX || secret.len() > CREDENTIAL_LEN_MAX {
            return Err(LoginError::Invalid);
        }
        let result = self.login_inner(username, secret);
        let (success, action) = match &result {
            Ok(_) => (true, "login"),
            Err(LoginError::Locked) => (false, "login_locked"),
            Err(_) => (false, "login_failed"),
        };
        if !success && !matches!(result, Err(LoginError::Store(_))) {
            if let Ok(Some(a)) = self.store.account(username) {
                let lock_ms = (self.config.lockout_seconds as i64).saturating_mul(1000);
                if let Ok(n) = self.store.record_login_failure(
                    &a.name,
                    now_ms(),
                    self.config.lockout_threshold,
                    lock_ms,
                ) {
                    if self.config.lockout_threshold > 0 && n == self.config.lockout_threshold {
                        self.audit(NewAuditEvent {
                            actor: Some(a.name.clone()),
                            action: "account_locked".into(),
                            target: Some(a.name.clone()),
                            ip: Some(ip.into()),
                            success: true,
                            detail: Some(format!("{n} failed logins")),
                        });
                    }
                }
            }
        }
        self.audit(NewAuditEvent {
            actor: Some(username.to_owned()),
            action: action.into(),
            target: None,
            ip: Some(ip.into()),
            success,
            detail: None,
        });
        result
    }

    fn login_inner(&self, username: &str, secret: &str) -> Result<Principal, LoginError> {
        if secret.starts_with(API_TOKEN_PREFIX) {
            if let Some((token, account)) = self.api_token(secret)? {
                if username == "$oauthtoken" || username == account.name {
                    return Ok(Principal::from_account(&account, Some(token)));
                }
            }
        }
        let account = match self.store.account(username)? {
            Some(a) => a,
            None => {
                if let Some(ldap) = &self.config.ldap {
                    if let Some(a) = ldap::login_new_user(self, ldap, username, secret)? {
                        return Ok(Principal::from_account(&a, None));
                    }
                    return Err(LoginError::Invalid);
                }
                let _ = verify_password(secret, dummy_hash());
                return Err(LoginError::Invalid);
            }
        };
        if account.locked_until_ms > now_ms() {
            return Err(LoginError::Locked);
        }
        let ok = match (account.kind, account.external.as_deref()) {
            (AccountKind::Organization, _) => false,
            (AccountKind::Robot, _) => account
                .secret_hash
                .as_deref()
                .is_some_and(|h| constant_time_eq(h.as_bytes(), token_hash(secret).as_bytes())),
            (AccountKind::User, Some("ldap")) => match &self.config.ldap {
                Some(ldap) => ldap::login_existing_user(self, ldap, &account.name, secret)?,
                None => false,
            },
            (AccountKind::User, _) => match account.secret_hash.as_deref() {
                Some(h) => verify_password(secret, h),
                None => false,
            },
        };
        if !ok {
            return Err(LoginError::Invalid);
        }
        if account.failed_logins > 0 {
            self.store.reset_login_failures(&account.name)?;
        }
        Ok(Principal::from_account(&account, None))
    }

    /// Resolves an API token to its scopes and account (expired tokens resolve to nothing).
    pub fn api_token(&self, secret: &str) -> Result<Option<(Vec<String>, Account)>, IdentityError> {
        let Some(token) = self.store.token_by_hash(&token_hash(secret))? else {
            return Ok(None);
        };
        if token.expires_ms.is_some_and(|e| e <= now_ms()) {
            return Ok(None);
        }
        Ok(self
            .store
            .account(&token.account)?
            .map(|a| (token.scopes, a)))
    }

    /// Verifies `Authorization: Basic`, through a short cache of verified credentials.
    fn basic_login(&self, header_value: &str, ip: &str) -> Result<Principal, LoginError> {
        let key: [u8; 32] = sha2::Sha256::digest(header_value.as_bytes()).into();
        {
            let mut cache = self.login_cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&key) {
                Some((p, at)) if at.elapsed() < LOGIN_CACHE_TTL => return Ok(p.clone()),
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        let (user, secret) = decode_basic(header_value).ok_or(LoginError::Invalid)?;
        let principal = self.login(&user, &secret, ip)?;
        let mut cache = self.login_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= LOGIN_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < LOGIN_CACHE_TTL);
            if cache.len() >= LOGIN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    /// Deletes audit events older than `audit_retention_days` (0 keeps everything); returns
    /// how many went. Blocking.
    pub fn prune_audit(&self) -> Result<u64, IdentityError> {
        if self.config.audit_retention_days == 0 {
            return Ok(0);
        }
        let keep_ms = (self.config.audit_retention_days as i64).saturating_mul(86_400_000);
        let removed = self.store.prune_audit(now_ms().saturating_sub(keep_ms))?;
        if removed > 0 {
            self.audit(NewAuditEvent {
                actor: None,
                action: "audit_prune".into(),
                target: None,
                ip: None,
                success: true,
                detail: Some(format!(
                    "{removed} events older than {} days",
                    self.config.audit_retention_days
                )),
            });
        }
        Ok(removed)
    }

    /// Forgets cached logins (after a password change, lock reset, deletion).
    pub fn forget_cached_logins(&self) {
        self.login_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The highest role `principal` (or anonymous) has on `repo`. Blocking.
    pub fn role(
        &self,
        principal: Option<&Principal>,
        repo: &str,
    ) -> Result<Option<RepoRole>, IdentityError> {
        let public = self.store.visibility(repo)?.unwrap_or(false);
        let mut best = public.then_some(RepoRole::Read);
        let Some(p) = principal else { return Ok(best) };
        let ns = repo.split('/').next().unwrap_or(repo);
        // Superusers, a user's own namespace, and admin teams of the organization.
        let owns = p.superuser
            || (p.kind == AccountKind::User
                && (ns == p.name || self.org_role(&p.name, ns)? == Some(TeamRole::Admin)));
        let owned = owns.then_some(RepoRole::Admin);
        best = best.max(owned).max(self.store.granted_role(&p.name, repo)?);
        Ok(best.min(p.repo_scope_cap()))
    }

    /// The highest role of `account`'s teams in organization `org`.
    pub fn org_role(&self, account: &str, org: &str) -> Result<Option<TeamRole>, IdentityError> {
        Ok(self
            .store
            .teams_of(account)?
            .into_iter()
            .filter(|t| t.org == org)
            .map(|t| t.role)
            .max())
    }

    /// Whether `principal` may create repository `repo` by pushing to it: its own namespace,
    /// or creator / admin in the organization. Blocking.
    fn may_create(&self, p: &Principal, repo: &str) -> Result<bool, IdentityError> {
        if !p.has_scope("repo:write") && !p.has_scope("repo:admin") {
            return Ok(false);
        }
        let ns = repo.split('/').next().unwrap_or(repo);
        if p.superuser || (p.kind == AccountKind::User && ns == p.name) {
            return Ok(true);
        }
        Ok(p.kind == AccountKind::User && self.org_role(&p.name, ns)? >= Some(TeamRole::Creator))
    }
}

/// Creates (or promotes) a superuser with a password: `berth admin bootstrap` and
/// `auth.bootstrap_admin`.
pub fn bootstrap_admin(
    store: &dyn IdentityStore,
    name: &str,
    password: &str,
) -> Result<(), String> {
    validate_name(name)?;
    if password.len() < 8 {
        return Err("the administrator's password must be at least 8 characters".into());
    }
    let hash = hash_password(password)?;
    match store.account(name).map_err(|e| e.to_string())? {
        Some(a) if a.kind == AccountKind::User => {
            store
                .set_secret_hash(name, Some(&hash))
                .map_err(|e| e.to_string())?;
            store.set_superuser(name, true).map_err(|e| e.to_string())?;
        }
        Some(_) => return Err(format!("{name} exists and is not a user")),
        None => store
            .create_account(&Account {
                name: name.into(),
                kind: AccountKind::User,
                email: None,
                superuser: true,
                secret_hash: Some(hash),
                external: None,
                failed_logins: 0,
                locked_until_ms: 0,
                created_ms: now_ms(),
            })
            .map_err(|e| e.to_string())?,
    }
    store
        .append_audit(
            &NewAuditEvent {
                actor: None,
                action: "bootstrap_admin".into(),
                target: Some(name.into()),
                ip: None,
                success: true,
                detail: None,
            },
            now_ms(),
        )
        .map_err(|e| e.to_string())
}

fn decode_basic(header_value: &str) -> Option<(String, String)> {
    let b64 = header_value
        .strip_prefix("Basic ")
        .or_else(|| header_value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The client's address: the connection's peer (when the server records it).
pub(crate) fn client_ip(req: &Parts) -> String {
    req.extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "-".into())
}

/// How a request authenticated.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// No credentials.
    Anonymous,
    /// A login (Basic) or an API token.
    Account(Principal),
    /// A registry token: its subject (None: anonymous token) and its access claims.
    Token(Option<Principal>, Vec<token::AccessClaim>),
}

impl Caller {
    pub(crate) fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Anonymous => None,
            Caller::Account(p) => Some(p),
            Caller::Token(p, _) => p.as_ref(),
        }
    }
}

/// Authenticates a request's `Authorization` header. Blocking (argon2, database).
pub(crate) fn authenticate(auth: &Auth, req: &Parts) -> Result<Caller, OciError> {
    let Some(value) = header_str(req, "authorization") else {
        return Ok(Caller::Anonymous);
    };
    let ip = client_ip(req);
    if value.starts_with("Basic ") || value.starts_with("basic ") {
        return match auth.basic_login(value, &ip) {
            Ok(p) => Ok(Caller::Account(p)),
            Err(LoginError::Store(e)) => Err(e.into()),
            Err(_) => Err(unauthorized(auth, req, None, "invalid credentials")),
        };
    }
    if let Some(bearer) = value.strip_prefix("Bearer ").map(str::trim) {
        if bearer.starts_with(API_TOKEN_PREFIX) {
            return match auth.api_token(bearer)? {
                Some((scopes, a)) => Ok(Caller::Account(Principal::from_account(&a, Some(scopes)))),
                None => Err(unauthorized(auth, req, None, "invalid or expired token")),
            };
        }
        let claims = token::verify(auth, bearer)
            .ok_or_else(|| unauthorized(auth, req, None, "invalid or expired token"))?;
        let principal = match claims.sub.as_str() {
            "" => None,
            name => match auth.store.account(name)? {
                Some(a) => Some(Principal::from_account(&a, None)),
                None => {
                    return Err(unauthorized(
                        auth,
                        req,
                        None,
                        "token subject no longer exists",
                    ))
                }
            },
        };
        return Ok(Caller::Token(principal, claims.access));
    }
    Err(unauthorized(
        auth,
        req,
        None,
        "unsupported authorization scheme",
    ))
}

/// `401 UNAUTHORIZED` with the Docker token-auth challenge.
pub(crate) fn unauthorized(
    auth: &Auth,
    req: &Parts,
    scope: Option<&str>,
    message: &str,
) -> OciError {
    let realm = auth.config.realm.clone().unwrap_or_else(|| {
        let host = header_str(req, "host").unwrap_or("127.0.0.1");
        format!("http://{host}/auth/token")
    });
    let mut challenge = format!(
        "Bearer realm=\"{realm}\",service=\"{}\"",
        auth.config.service
    );
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    OciError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        message.to_owned(),
    )
    .with_header("www-authenticate", challenge)
}

fn denied(message: impl Into<String>) -> OciError {
    OciError::new(StatusCode::FORBIDDEN, ErrorCode::Denied, message)
}

/// The authorization decision of a `/v2/` request, left in its extensions for code that
/// must check further repositories (mount sources, catalog entries).
#[derive(Clone)]
pub(crate) struct Access {
    auth: Arc<Auth>,
    caller: Caller,
}

impl Access {
    /// Whether the caller may read `repo`. Blocking.
    pub(crate) fn may_read(&self, repo: &RepoName) -> bool {
        if let Caller::Token(_, claims) = &self.caller {
            if !token::claims_allow(claims, repo.as_str(), Action::Pull) {
                return false;
            }
        }
        matches!(
            self.auth.role(self.caller.principal(), repo.as_str()),
            Ok(Some(_))
        )
    }

    /// Whether the caller may read `repo` for a listing (catalog: no token scope needed).
    pub(crate) fn may_list(&self, repo: &str) -> bool {
        matches!(self.auth.role(self.caller.principal(), repo), Ok(Some(_)))
    }
}

impl Access {
    /// `None` (auth off) allows everything. Blocking.
    pub(crate) fn allows_read(access: &Option<Access>, repo: &RepoName) -> bool {
        access.as_ref().is_none_or(|a| a.may_read(repo))
    }

    /// For listings; `None` (auth off) allows everything. Blocking.
    pub(crate) fn allows_list(access: &Option<Access>, repo: &str) -> bool {
        access.as_ref().is_none_or(|a| a.may_list(repo))
    }
}

/// What to audit once the handler has answered.
pub(crate) struct PendingAudit {
    auth: Arc<Auth>,
    event: NewAuditEvent,
}

/// Records a pending audit event if the response succeeded.
pub(crate) async fn record(pending: Option<PendingAudit>, status: StatusCode) {
    if let Some(PendingAudit { auth, mut event }) = pending {
        if status.is_success() {
            event.success = true;
            let _ = tokio::task::spawn_blocking(move || auth.audit(event)).await;
        }
    }
}

fn route_target(route: &V2Route<'_>, method: &Method) -> Option<(String, Action)> {
    let action = match (route, method) {
        (V2Route::Base | V2Route::Catalog, _) => return None,
        (V2Route::Manifest { .. } | V2Route::Blob { .. }, &Method::DELETE) => Action::Delete,
        (V2Route::Manifest { .. }, &Method::PUT) => Action::Push,
        (V2Route::UploadStart { .. } | V2Route::Upload { .. }, _) => Action::Push,
        _ => Action::Pull,
    };
    let repo = match route {
        V2Route::Tags { repo }
        | V2Route::Referrers { repo, .. }
        | V2Route::Manifest { repo, .. }
        | V2Route::Blob { repo, .. }
        | V2Route::UploadStart { repo }
        | V2Route::Upload { repo, .. } => *repo,
        V2Route::Base | V2Route::Catalog => return None,
    };
    Some((repo.to_owned(), action))
}

/// The `/v2/` hook: authenticates and authorizes `req` for `route` before any storage
/// access. Returns the request (with an [`Access`] extension) and the audit event to record
/// if the handler succeeds. With auth off, returns the request untouched.
pub(crate) async fn authorize_v2(
    reg: &Shared,
    route: &V2Route<'_>,
    req: axum::extract::Request,
) -> Result<(axum::extract::Request, Option<PendingAudit>), OciError> {
    let Some(auth) = reg.auth.clone() else {
        return Ok((req, None));
    };
    let (mut parts, body) = req.into_parts();
    let target = route_target(route, &parts.method);
    let is_manifest = matches!(route, V2Route::Manifest { .. });
    let reference = match route {
        V2Route::Manifest { reference, .. } => Some(reference.to_string()),
        V2Route::Blob { digest, .. } => Some(digest.to_string()),
        _ => None,
    };
    let is_base = matches!(route, V2Route::Base);
    let reg2 = reg.clone();
    let (parts_back, caller, pending) = blocking(move || {
        let caller = authenticate(&auth, &parts)?;
        if is_base && caller.principal().is_none() && !matches!(caller, Caller::Token(..)) {
            return Err(unauthorized(&auth, &parts, None, "authentication required"));
        }
        let Some((repo, action)) = target else {
            return Ok((parts, caller, None));
        };
        check_repo(&reg2, &auth, &parts, &caller, &repo, action)?;
        let pending = match (action, is_manifest) {
            (Action::Push, true) | (Action::Delete, _) => Some(PendingAudit {
                auth: auth.clone(),
                event: NewAuditEvent {
                    actor: caller.principal().map(|p| p.name.clone()),
                    action: action.as_str().into(),
                    target: Some(match &reference {
                        Some(r) => format!("{repo}:{r}"),
                        None => repo.clone(),
                    }),
                    ip: Some(client_ip(&parts)),
                    success: false,
                    detail: None,
                },
            }),
            _ => None,
        };
        Ok((parts, caller, pending))
    })
    .await?;
    parts = parts_back;
    if let Some(auth) = reg.auth.clone() {
        parts.extensions.insert(Access { auth, caller });
    }
    Ok((axum::extract::Request::from_parts(parts, body), pending))
}

/// Decides (repository, action) for a caller. Blocking.
fn check_repo(
    reg: &Registry,
    auth: &Auth,
    parts: &Parts,
    caller: &Caller,
    repo: &str,
    action: Action,
) -> Result<(), OciError> {
    let principal = caller.principal();
    let scope = format!(
        "repository:{repo}:{}",
        if action == Action::Pull {
            "pull"
        } else {
            "pull,push"
        }
    );
    let mut allowed = auth.role(principal, repo)? >= Some(action.needs());
    if !allowed && action == Action::Push {
        if let Some(p) = principal {
            allowed = create_on_push(reg, auth, p, repo)?;
        }
    }
    if !allowed {
        return match principal {
            None => Err(unauthorized(
                auth,
                parts,
                Some(&scope),
                "authentication required",
            )),
            Some(p) => {
                auth.audit(NewAuditEvent {
                    actor: Some(p.name.clone()),
                    action: "access_denied".into(),
                    target: Some(repo.into()),
                    ip: Some(client_ip(parts)),
                    success: false,
                    detail: Some(action.as_str().into()),
                });
                Err(denied(format!(
                    "{} may not {} {repo}",
                    p.name,
                    action.as_str()
                )))
            }
        };
    }
    if let Caller::Token(_, claims) = caller {
        if !token::claims_allow(claims, repo, action) {
            // Allowed, but the token was not issued for it: ask for one that is.
            return Err(unauthorized(
                auth,
                parts,
                Some(&scope),
                "token does not cover this request",
            ));
        }
    }
    Ok(())
}

/// A push to a repository that does not exist yet creates it if the caller may create
/// repositories there; a creator (not admin) becomes the new repository's admin. Blocking.
fn create_on_push(
    reg: &Registry,
    auth: &Auth,
    p: &Principal,
    repo: &str,
) -> Result<bool, OciError> {
    let name = RepoName::parse(repo)?;
    let exists = reg.meta.repo_info(&name)?.is_some() || auth.store.visibility(repo)?.is_some();
    if exists || !auth.may_create(p, repo)? {
        return Ok(false);
    }
    auth.store
        .set_visibility(repo, auth.config.new_repositories_public)?;
    if auth.role(Some(p), repo)? < Some(RepoRole::Admin) {
        auth.store.set_permission(
            repo,
            &berth_storage::meta::identity::Subject::Account {
                name: p.name.clone(),
            },
            Some(RepoRole::Admin),
        )?;
    }
    auth.audit(NewAuditEvent {
        actor: Some(p.name.clone()),
        action: "repository_create".into(),
        target: Some(repo.into()),
        ip: None,
        success: true,
        detail: None,
    });
    Ok(true)
}

/// Guards the non-`/v2/` content routes (`/berth/v1/torrent/<repo>/blobs/<d>`,
/// `/berth/v1/squash/<repo>/<tag>`) with the same pull check.
pub(crate) async fn guard_extras(
    axum::extract::State(reg): axum::extract::State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let repo = if let Some(rest) = path.strip_prefix("/berth/v1/torrent/") {
        rest.rsplit_once("/blobs/").map(|(r, _)| r.to_owned())
    } else if let Some(rest) = path.strip_prefix("/berth/v1/squash/") {
        rest.rsplit_once('/').map(|(r, _)| r.to_owned())
    } else {
        return next.run(req).await;
    };
    let Some(auth) = reg.auth.clone() else {
        return next.run(req).await;
    };
    let Some(repo) = repo else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let reg2 = reg.clone();
    let checked = blocking(move || {
        let caller = authenticate(&auth, &parts)?;
        check_repo(&reg2, &auth, &parts, &caller, &repo, Action::Pull)?;
        Ok(parts)
    })
    .await;
    match checked {
        Ok(parts) => {
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// How often the audit log is pruned (events are kept `audit_retention_days`, so hourly is
/// plenty; the first run is at start).
const AUDIT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Prunes the audit log at start and then every [`AUDIT_PRUNE_INTERVAL`] until `stop` turns
/// true or its sender is dropped. Returns at once with auth off.
pub async fn run_audit_pruning(reg: Arc<Registry>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tracing::Instrument as _;
    let Some(auth) = reg.auth.clone() else { return };
    async move {
        let mut tick = tokio::time::interval(AUDIT_PRUNE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let auth = auth.clone();
                    match tokio::task::spawn_blocking(move || auth.prune_audit()).await {
                        Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "audit log pruned"),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "audit log pruning failed"),
                        Err(e) => tracing::error!(error = %e, "audit log pruning task failed"),
                    }
                }
            }
        }
    }
    .instrument(tracing::info_span!("audit_pruning"))
    .await
}

impl Registry {
    /// Installs identity and access control (`auth.enabled`).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }
}

/// Pages through the catalog keeping only repositories the caller may read. Bounded: at
/// most `CATALOG_ROUNDS_MAX` underlying pages per request (the `Link` header continues).
pub(crate) fn catalog_page(
    reg: &Registry,
    access: &Option<Access>,
    last: Option<&str>,
    n: usize,
) -> Result<berth_storage::meta::Page, OciError> {
    const CATALOG_ROUNDS_MAX: usize = 64;
    if access.is_none() {
        return Ok(reg.meta.catalog(last, n)?);
    }
    let mut cursor = last.map(str::to_owned);
    let mut items = Vec::new();
    for _ in 0..CATALOG_ROUNDS_MAX {
        let page = reg.meta.catalog(cursor.as_deref(), n)?;
        let mut rest = page.items.into_iter();
        for name in rest.by_ref() {
            cursor = Some(name.clone());
            if Access::allows_list(access, &name) {
                items.push(name);
                if items.len() == n {
                    break;
                }
            }
        }
        let more = page.more || rest.next().is_some();
        if items.len() == n || !more {
            return Ok(berth_storage::meta::Page { items, more });
        }
    }
    Ok(berth_storage::meta::Page { items, more: true })
}
