//! OIDC login: the authorization-code flow with discovery, PKCE and JWKS.
//!
//! - `GET /auth/oidc/login` reads `<issuer>/.well-known/openid-configuration` and redirects
//!   (302) to the provider's `authorization_endpoint` with `state`, `nonce` and a PKCE S256
//!   `code_challenge`. The pending login (state → nonce, verifier) is kept in memory, bounded
//!   by [`PENDING_MAX`] and expiring after [`PENDING_TTL`]; a node restart forgets it.
//! - `GET /auth/oidc/callback?code&state` takes the pending login by `state` (single use),
//!   exchanges the code at the `token_endpoint` (client_secret_basic + `code_verifier`),
//!   verifies the `id_token`'s signature against the provider's JWKS (asymmetric algorithms
//!   only: RS*/PS*/ES*/EdDSA; `HS*` and `none` are refused), its `iss`, `aud`, `exp` and the
//!   `nonce`, then maps the subject to a berth user.
//! - Mapping: the account is named after `preferred_username` (else the e-mail's local part,
//!   else `oidc-<hash of sub>`), lower-cased and checked by `validate_name`. The first login
//!   creates it with `external = "oidc:<sub>"` and no password; later logins must present the
//!   same `sub` — a name that belongs to a local, LDAP or other-subject account is refused
//!   (409), so a provider cannot take over an existing account.
//! - What the user gets: a fresh berth API token (`berth_…`, scopes `repo:read repo:write`,
//!   valid [`OIDC_TOKEN_TTL_DAYS`] days), shown once in the JSON answer and never stored in
//!   clear. It works as a docker password (`docker login HOST -u <user>`), as `Bearer` on
//!   `/api/v1`, and can be revoked with `DELETE /api/v1/tokens/<id>`.
//!
//! Outbound requests (discovery, token, JWKS) go through one [`ProviderClient`], built at
//! start: hyper over rustls (aws-lc-rs, the provider librqbit already brings, so there is one
//! crypto stack in the binary) trusting the system roots (`rustls-native-certs`, i.e.
//! /etc/ssl/certs) plus the optional `ca_file` bundle. Every provider URL — the configured
//! issuer and the endpoints its discovery names — must be `https://`; plain `http://` is
//! accepted only for a loopback host (127.0.0.0/8, `::1`, `localhost`), where nothing crosses
//! a network. `validate()` enforces this for the issuer and checks that `ca_file` exists and
//! holds at least one parsable certificate, so a bad setting stops the node at start rather
//! than at the first login. A certificate the roots do not vouch for fails the login with
//! 502 and rustls' reason (e.g. "invalid peer certificate: UnknownIssuer").

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_storage::meta::identity::{Account, AccountKind, ApiToken, NewAuditEvent};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use rustls_pki_types::CertificateDer;
use sha2::Digest as _;

use super::{now_ms, random_secret, token_hash, validate_name, API_TOKEN_PREFIX};
use crate::error::{ErrorCode, OciError};
use crate::tls::error_chain;
use crate::{blocking, json_response, Shared};

/// Pending logins kept at most (oldest dropped first beyond this).
const PENDING_MAX: usize = 1024;
/// How long a user has to finish logging in at the provider.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Timeout of each request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest provider response read (discovery, token, JWKS).
const PROVIDER_BODY_MAX: usize = 1 << 20;
/// Lifetime of the API token an OIDC login issues.
pub const OIDC_TOKEN_TTL_DAYS: i64 = 30;
/// Scopes of that token.
const OIDC_TOKEN_SCOPES: [&str; 2] = ["repo:read", "repo:write"];

/// `[auth.oidc]`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL: `https://`, or `http://` for a loopback host only (see the module doc);
    /// discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Client id registered with the provider.
    pub client_id: String,
    /// Client secret (env `BERTH_OIDC_CLIENT_SECRET` overrides).
    pub client_secret: String,
    /// This node's callback URL (`…/auth/oidc/callback`), registered with the provider.
    pub redirect_url: String,
    /// Extra trusted CA certificates (a PEM bundle) for the provider's TLS, on top of the
    /// system roots; for a provider behind a private CA. Default: system roots only.
    pub ca_file: Option<PathBuf>,
}

impl OidcConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() || self.client_id.is_empty() || self.redirect_url.is_empty() {
            return Err("auth.oidc needs issuer, client_id and redirect_url".into());
        }
        check_url("auth.oidc.issuer", &self.issuer)?;
        if let Some(path) = &self.ca_file {
            load_ca_file(path)?;
        }
        Ok(())
    }

    fn secret(&self) -> String {
        std::env::var("BERTH_OIDC_CLIENT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.client_secret.clone())
    }
}

/// Whether `host` (as in a URL authority, IPv6 possibly in brackets) is a loopback name.
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a provider URL: `https://`, or `http://` to a loopback host. `field` names the
/// setting (or the discovery field) in the message.
fn check_url(field: &str, url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{field}: {url:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{field}: {url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(format!(
            "{field} must be an https:// URL: plain http:// is allowed only for a loopback \
             host (127.0.0.0/8, ::1, localhost), got {url}"
        )),
        _ => Err(format!("{field} must be an https:// URL, got {url}")),
    }
}

/// Reads `auth.oidc.ca_file`: a PEM bundle with at least one certificate rustls accepts.
fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::tls::load_ca_file("auth.oidc.ca_file", path)
}

/// The client for requests to the provider: HTTPS with the system roots plus `ca_file`, and
/// plain HTTP (which [`check_url`] allows only on loopback). Built once at start.
pub(crate) struct ProviderClient {
    client: hyper_util::client::legacy::Client<crate::tls::HttpsConnector, Full<Bytes>>,
}

impl ProviderClient {
    /// Loads the roots and builds the client.
    pub(crate) fn new(cfg: &OidcConfig) -> Result<ProviderClient, String> {
        let ca_files: Vec<(&str, &Path)> = cfg
            .ca_file
            .iter()
            .map(|p| ("auth.oidc.ca_file", p.as_path()))
            .collect();
        let connector = crate::tls::https_connector("oidc", &ca_files)?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(ProviderClient { client })
    }
}

/// A login started at `/auth/oidc/login`, waiting for its callback.
struct Pending {
    nonce: String,
    verifier: String,
    started: Instant,
}

/// Pending logins by `state`.
#[derive(Default)]
pub(crate) struct PendingLogins(Mutex<HashMap<String, Pending>>);

impl PendingLogins {
    fn insert(&self, state: String, pending: Pending) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, p| p.started.elapsed() < PENDING_TTL);
        if map.len() >= PENDING_MAX {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(state, pending);
    }

    fn take(&self, state: &str) -> Option<Pending> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(state)
            .filter(|p| p.started.elapsed() < PENDING_TTL)
    }
}

/// The parts of the discovery document we use.
#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// What we read from the `id_token` (signature, `iss`, `aud`, `exp` checked by
/// jsonwebtoken).
#[derive(serde::Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
}

fn bad_gateway(msg: impl Into<String>) -> OciError {
    OciError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unsupported, msg)
}

fn refused(msg: impl Into<String>) -> OciError {
    OciError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, msg)
}

fn not_configured() -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unsupported,
        "OIDC login is not configured ([auth.oidc])",
    )
}

/// One request to the provider; the body of a 2xx answer.
async fn fetch(
    client: &ProviderClient,
    field: &str,
    method: http::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Bytes, OciError> {
    let uri = check_url(field, url).map_err(bad_gateway)?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| bad_gateway(format!("building provider request: {e}")))?;
    let resp = tokio::time::timeout(PROVIDER_TIMEOUT, client.client.request(req))
        .await
        .map_err(|_| bad_gateway(format!("{url}: provider timed out")))?
        .map_err(|e| bad_gateway(format!("{url}: {}", error_chain(&e))))?;
    let status = resp.status();
    let bytes = tokio::time::timeout(
        PROVIDER_TIMEOUT,
        Limited::new(resp.into_body(), PROVIDER_BODY_MAX).collect(),
    )
    .await
    .map_err(|_| bad_gateway(format!("{url}: provider timed out")))?
    .map_err(|e| bad_gateway(format!("{url}: reading body: {e}")))?
    .to_bytes();
    if !status.is_success() {
        // The provider's error body names an OAuth2 error code, never a secret of ours.
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        return Err(bad_gateway(format!("{url} answered {status}: {text}")));
    }
    Ok(bytes)
}

async fn discover(client: &ProviderClient, cfg: &OidcConfig) -> Result<Discovery, OciError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        cfg.issuer.trim_end_matches('/')
    );
    let bytes = fetch(
        client,
        "auth.oidc.issuer",
        http::Method::GET,
        &url,
        &[],
        Bytes::new(),
    )
    .await?;
    let d: Discovery = serde_json::from_slice(&bytes)
        .map_err(|e| bad_gateway(format!("discovery document: {e}")))?;
    if d.issuer.trim_end_matches('/') != cfg.issuer.trim_end_matches('/') {
        return Err(bad_gateway(format!(
            "discovery names issuer {}, configured {}",
            d.issuer, cfg.issuer
        )));
    }
    Ok(d)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `application/x-www-form-urlencoded` / query escaping.
fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn config_of(reg: &Shared) -> Result<(Arc<super::Auth>, OidcConfig), OciError> {
    let auth = reg.auth.clone().ok_or_else(not_configured)?;
    let cfg = auth.config.oidc.clone().ok_or_else(not_configured)?;
    if auth.oidc_client.is_none() {
        return Err(not_configured());
    }
    Ok((auth, cfg))
}

/// The provider client of an [`super::Auth`] that [`config_of`] accepted.
fn client_of(auth: &super::Auth) -> Result<&ProviderClient, OciError> {
    auth.oidc_client.as_ref().ok_or_else(not_configured)
}

/// `GET /auth/oidc/login`: redirect to the provider.
pub(crate) async fn login(State(reg): State<Shared>) -> Response {
    match login_inner(&reg).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn login_inner(reg: &Shared) -> Result<Response, OciError> {
    let (auth, cfg) = config_of(reg)?;
    let d = discover(client_of(&auth)?, &cfg).await?;
    let state = random_secret()?;
    let nonce = random_secret()?;
    let verifier = random_secret()?;
    let challenge = b64url(&sha2::Sha256::digest(verifier.as_bytes()));
    let sep = if d.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}\
         &code_challenge={}&code_challenge_method=S256",
        d.authorization_endpoint,
        form_escape(&cfg.client_id),
        form_escape(&cfg.redirect_url),
        form_escape("openid email profile"),
        form_escape(&state),
        form_escape(&nonce),
        form_escape(&challenge),
    );
    auth.oidc_pending.insert(
        state,
        Pending {
            nonce,
            verifier,
            started: Instant::now(),
        },
    );
    let mut resp = StatusCode::FOUND.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        "location",
        location
            .parse()
            .map_err(|_| bad_gateway("authorization_endpoint is not a valid header value"))?,
    );
    headers.insert("cache-control", http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `GET /auth/oidc/callback?code=…&state=…`: finish the login, answer with a new API token.
pub(crate) async fn callback(State(reg): State<Shared>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    match callback_inner(&reg, &parts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn callback_inner(reg: &Shared, parts: &http::request::Parts) -> Result<Response, OciError> {
    let (auth, cfg) = config_of(reg)?;
    if let Some(err) = crate::query_param(parts, "error") {
        return Err(refused(format!("the provider refused the login: {err}")));
    }
    let state = crate::query_param(parts, "state").ok_or_else(|| refused("no state"))?;
    let code = crate::query_param(parts, "code").ok_or_else(|| refused("no code"))?;
    let pending = auth
        .oidc_pending
        .take(&state)
        .ok_or_else(|| refused("unknown or expired login (state)"))?;
    let client = client_of(&auth)?;
    let d = discover(client, &cfg).await?;

    let form = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&client_id={}&code_verifier={}",
        form_escape(&code),
        form_escape(&cfg.redirect_url),
        form_escape(&cfg.client_id),
        form_escape(&pending.verifier),
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_escape(&cfg.client_id),
        form_escape(&cfg.secret())
    ));
    let body = fetch(
        client,
        "token_endpoint (discovery)",
        http::Method::POST,
        &d.token_endpoint,
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("accept", "application/json".into()),
            ("authorization", format!("Basic {basic}")),
        ],
        Bytes::from(form),
    )
    .await?;
    let token_resp: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad_gateway(format!("token response: {e}")))?;
    let id_token = token_resp["id_token"]
        .as_str()
        .ok_or_else(|| bad_gateway("token response has no id_token"))?
        .to_owned();

    let jwks_bytes = fetch(
        client,
        "jwks_uri (discovery)",
        http::Method::GET,
        &d.jwks_uri,
        &[],
        Bytes::new(),
    )
    .await?;
    let claims = verify_id_token(&id_token, &jwks_bytes, &d.issuer, &cfg.client_id)?;
    if claims.nonce.as_deref() != Some(pending.nonce.as_str()) {
        return Err(refused("id_token nonce does not match the login"));
    }

    let ip = super::client_ip(parts);
    let auth2 = auth.clone();
    let (name, secret, token) = blocking(move || issue_for(&auth2, &claims, &ip)).await?;
    let mut resp = json_response(
        StatusCode::OK,
        serde_json::json!({
            "user": name,
            "token": secret,
            "token_id": token.id,
            "scopes": token.scopes,
            "expires_ms": token.expires_ms,
            "usage": format!("docker login <this registry> -u {name} (password: the token)"),
        })
        .to_string(),
    );
    resp.headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Verifies an `id_token` against a JWKS: signature (asymmetric algorithms only), `iss`,
/// `aud`, `exp`.
fn verify_id_token(
    id_token: &str,
    jwks: &[u8],
    issuer: &str,
    client_id: &str,
) -> Result<IdClaims, OciError> {
    use jsonwebtoken::Algorithm as A;
    let header = jsonwebtoken::decode_header(id_token)
        .map_err(|e| refused(format!("id_token header: {e}")))?;
    if !matches!(
        header.alg,
        A::RS256
            | A::RS384
            | A::RS512
            | A::PS256
            | A::PS384
            | A::PS512
            | A::ES256
            | A::ES384
            | A::EdDSA
    ) {
        return Err(refused(format!(
            "id_token algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(jwks).map_err(|e| bad_gateway(format!("JWKS: {e}")))?;
    let jwk = match header.kid.as_deref() {
        Some(kid) => set.find(kid),
        // No kid: acceptable only if the set has exactly one key.
        None if set.keys.len() == 1 => set.keys.first(),
        None => None,
    }
    .ok_or_else(|| refused("no JWKS key matches the id_token"))?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|e| bad_gateway(format!("JWKS key: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 30;
    jsonwebtoken::decode::<IdClaims>(id_token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| refused(format!("id_token rejected: {e}")))
}

/// The berth account name for a subject (see the module doc).
fn account_name(claims: &IdClaims) -> String {
    let candidates = [
        claims.preferred_username.clone(),
        claims
            .email
            .as_deref()
            .and_then(|e| e.split('@').next())
            .map(str::to_owned),
    ];
    for c in candidates.into_iter().flatten() {
        let c = c.to_lowercase();
        if validate_name(&c).is_ok() {
            return c;
        }
    }
    let h = hex::encode(sha2::Sha256::digest(claims.sub.as_bytes()));
    format!("oidc-{}", &h[..16])
}

/// Finds or creates the subject's account and issues it an API token. Blocking.
fn issue_for(
    auth: &super::Auth,
    claims: &IdClaims,
    ip: &str,
) -> Result<(String, String, ApiToken), OciError> {
    let name = account_name(claims);
    let link = format!("oidc:{}", claims.sub);
    match auth.store.account(&name)? {
        Some(a) if a.kind == AccountKind::User && a.external.as_deref() == Some(link.as_str()) => {}
        Some(_) => {
            auth.audit(NewAuditEvent {
                actor: Some(name.clone()),
                action: "oidc_login_refused".into(),
                target: None,
                ip: Some(ip.into()),
                success: false,
                detail: Some("account exists and is not linked to this subject".into()),
            });
            return Err(OciError::new(
                StatusCode::CONFLICT,
                ErrorCode::Denied,
                format!("account {name} exists and is not linked to this OIDC subject"),
            ));
        }
        None => {
            auth.store.create_account(&Account {
                name: name.clone(),
                kind: AccountKind::User,
                email: claims.email.clone(),
                superuser: false,
                secret_hash: None,
                external: Some(link),
                failed_logins: 0,
                locked_until_ms: 0,
                created_ms: now_ms(),
            })?;
            auth.audit(NewAuditEvent {
                actor: Some(name.clone()),
                action: "oidc_user_create".into(),
                target: Some(name.clone()),
                ip: Some(ip.into()),
                success: true,
                detail: None,
            });
        }
    }
    let secret = format!("{API_TOKEN_PREFIX}{}", random_secret()?);
    let token = ApiToken {
        id: random_secret()?.chars().take(12).collect(),
        account: name.clone(),
        name: "oidc-login".into(),
        scopes: OIDC_TOKEN_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        created_ms: now_ms(),
        expires_ms: Some(now_ms().saturating_add(OIDC_TOKEN_TTL_DAYS * 86_400_000)),
    };
    auth.store.create_token(&token, &token_hash(&secret))?;
    auth.audit(NewAuditEvent {
        actor: Some(name.clone()),
        action: "oidc_login".into(),
        target: Some(token.id.clone()),
        ip: Some(ip.into()),
        success: true,
        detail: None,
    });
    Ok((name, secret, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_claims_and_fall_back_to_a_hash() {
        let c = |u: Option<&str>, e: Option<&str>| IdClaims {
            sub: "subject-1".into(),
            nonce: None,
            email: e.map(Into::into),
            preferred_username: u.map(Into::into),
        };
        assert_eq!(account_name(&c(Some("Dora"), None)), "dora");
        assert_eq!(
            account_name(&c(Some("not valid!"), Some("eve@x.org"))),
            "eve"
        );
        assert!(account_name(&c(None, None)).starts_with("oidc-"));
    }

    #[test]
    fn issuers_must_be_https_unless_loopback() {
        let mut cfg = OidcConfig {
            issuer: "https://id.example".into(),
            client_id: "berth".into(),
            client_secret: String::new(),
            redirect_url: "http://127.0.0.1:5000/auth/oidc/callback".into(),
            ca_file: None,
        };
        assert_eq!(cfg.validate(), Ok(()));
        for ok in [
            "http://127.0.0.1:9000",
            "http://127.8.9.10",
            "http://[::1]:9000/realms/x",
            "http://localhost:8080",
            "https://id.example/realms/berth",
        ] {
            cfg.issuer = ok.into();
            assert_eq!(cfg.validate(), Ok(()), "{ok}");
        }
        for bad in [
            "http://id.example",
            "http://10.0.0.1:9000",
            "http://localhost.example.org",
            "ftp://127.0.0.1",
            "id.example",
        ] {
            cfg.issuer = bad.into();
            let e = cfg.validate().err().unwrap_or_default();
            assert!(e.contains("auth.oidc.issuer"), "{bad}: {e}");
        }
        cfg.issuer = "http://id.example".into();
        assert!(cfg
            .validate()
            .is_err_and(|e| e.contains("https://") && e.contains("loopback")));
        cfg.issuer = "http://127.0.0.1:9000".into();
        cfg.client_id.clear();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn ca_file_must_exist_and_hold_certificates() {
        let dir = tempfile::TempDir::new().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cfg = OidcConfig {
            issuer: "https://id.example".into(),
            client_id: "berth".into(),
            client_secret: String::new(),
            redirect_url: "https://berth.example/auth/oidc/callback".into(),
            ca_file: Some(dir.path().join("missing.pem")),
        };
        assert!(cfg
            .validate()
            .is_err_and(|e| e.contains("auth.oidc.ca_file")));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        cfg.ca_file = Some(junk);
        assert!(cfg
            .validate()
            .is_err_and(|e| e.contains("auth.oidc.ca_file") && e.contains("no PEM")));
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        cfg.ca_file = Some(broken);
        assert!(cfg
            .validate()
            .is_err_and(|e| e.contains("auth.oidc.ca_file")));
    }

    #[test]
    fn symmetric_and_unsigned_id_tokens_are_refused() {
        // HS256 token signed with a key an attacker might guess (the client secret).
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "x", "iss": "i", "aud": "a", "exp": 9_999_999_999u64}),
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap_or_default();
        let e = verify_id_token(&token, br#"{"keys":[]}"#, "i", "a").err();
        assert!(e.is_some_and(|e| e.message.contains("not accepted")));
    }
}
