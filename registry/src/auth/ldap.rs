//! LDAP login (bind and search) and team membership synced from LDAP groups.
//!
//! Login: bind as the service account (or anonymously), search `user_base` with
//! `user_filter` (`{username}` replaced by the RFC 4515-escaped name) for exactly one entry,
//! then bind as that entry's DN with the given password. A first successful login creates a
//! local user with `external = "ldap"` (no password stored). Teams whose `ldap_group` names a
//! group DN get that group's members (attribute `group_member_attribute`, DNs) as members
//! with source `ldap`, at each login of the user and on `POST /api/v1/ldap/sync`.
//!
//! ldap3 is async only here (no `sync` feature); these functions run on blocking threads
//! and drive it with the runtime's `block_on`.

use std::time::Duration;

use berth_storage::meta::identity::{Account, AccountKind, IdentityError};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::{now_ms, validate_name, Auth, LoginError};

/// Most members read from one group.
const GROUP_MEMBERS_MAX: usize = 10_000;
/// Connect / operation timeout.
const LDAP_TIMEOUT: Duration = Duration::from_secs(10);

/// `[auth.ldap]`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:port`.
    pub url: String,
    /// Service account DN for searches (empty: anonymous search).
    pub bind_dn: String,
    /// Its password (env `BERTH_LDAP_BIND_PASSWORD` preferred).
    pub bind_password: String,
    /// Where users live, e.g. `ou=people,dc=example,dc=org`.
    pub user_base: String,
    /// Search filter; `{username}` is replaced (default `(uid={username})`).
    pub user_filter: String,
    /// Attribute holding the user name (default `uid`).
    pub username_attribute: String,
    /// Group attribute listing member DNs (default `member`).
    pub group_member_attribute: String,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            url: String::new(),
            bind_dn: String::new(),
            bind_password: String::new(),
            user_base: String::new(),
            user_filter: "(uid={username})".into(),
            username_attribute: "uid".into(),
            group_member_attribute: "member".into(),
        }
    }
}

impl LdapConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("ldap://") && !self.url.starts_with("ldaps://") {
            return Err("auth.ldap.url must start with ldap:// or ldaps://".into());
        }
        if self.user_base.is_empty() {
            return Err("auth.ldap.user_base must be set".into());
        }
        if !self.user_filter.contains("{username}") {
            return Err("auth.ldap.user_filter must contain {username}".into());
        }
        Ok(())
    }
}

fn ldap_err(e: ldap3::LdapError) -> LoginError {
    tracing::warn!(error = %e, "LDAP operation failed");
    LoginError::Invalid
}

/// RFC 4515 escaping of a filter value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

async fn connect(cfg: &LdapConfig) -> Result<ldap3::Ldap, ldap3::LdapError> {
    let settings = LdapConnSettings::new().set_conn_timeout(LDAP_TIMEOUT);
    let (conn, ldap) = LdapConnAsync::with_settings(settings, &cfg.url).await?;
    ldap3::drive!(conn);
    Ok(ldap)
}

async fn service_bind(cfg: &LdapConfig, ldap: &mut ldap3::Ldap) -> Result<(), ldap3::LdapError> {
    if !cfg.bind_dn.is_empty() {
        let pw =
            std::env::var("BERTH_LDAP_BIND_PASSWORD").unwrap_or_else(|_| cfg.bind_password.clone());
        ldap.simple_bind(&cfg.bind_dn, &pw).await?.success()?;
    }
    Ok(())
}

/// Finds the user's DN and checks the password by binding as it. `Ok(None)`: wrong
/// password or no such user.
async fn bind_user(
    cfg: &LdapConfig,
    username: &str,
    password: &str,
) -> Result<Option<String>, ldap3::LdapError> {
    if password.is_empty() {
        // An empty password is an unauthenticated bind that "succeeds": never accept it.
        return Ok(None);
    }
    let mut ldap = connect(cfg).await?;
    service_bind(cfg, &mut ldap).await?;
    let filter = cfg.user_filter.replace("{username}", &escape(username));
    let (entries, _) = ldap
        .with_timeout(LDAP_TIMEOUT)
        .search(&cfg.user_base, Scope::Subtree, &filter, vec!["1.1"])
        .await?
        .success()?;
    if entries.len() != 1 {
        return Ok(None);
    }
    let dn = SearchEntry::construct(
        entries
            .into_iter()
            .next()
            .ok_or(ldap3::LdapError::EndOfStream)?,
    )
    .dn;
    let ok = ldap.simple_bind(&dn, password).await?.success().is_ok();
    let _ = ldap.unbind().await;
    Ok(ok.then_some(dn))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// Login of a user not yet known locally: on success creates the account. Blocking.
pub(crate) fn login_new_user(
    auth: &Auth,
    cfg: &LdapConfig,
    username: &str,
    password: &str,
) -> Result<Option<Account>, LoginError> {
    if validate_name(username).is_err() {
        return Ok(None);
    }
    let Some(dn) = block_on(bind_user(cfg, username, password)).map_err(ldap_err)? else {
        return Ok(None);
    };
    let account = Account {
        name: username.to_owned(),
        kind: AccountKind::User,
        email: None,
        superuser: false,
        secret_hash: None,
        external: Some("ldap".into()),
        failed_logins: 0,
        locked_until_ms: 0,
        created_ms: now_ms(),
    };
    match auth.store.create_account(&account) {
        Ok(()) | Err(IdentityError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    sync_user_teams(auth, cfg, username, &dn)?;
    Ok(Some(account))
}

/// Login of a known LDAP user. Blocking.
pub(crate) fn login_existing_user(
    auth: &Auth,
    cfg: &LdapConfig,
    username: &str,
    password: &str,
) -> Result<bool, LoginError> {
    match block_on(bind_user(cfg, username, password)).map_err(ldap_err)? {
        Some(dn) => {
            sync_user_teams(auth, cfg, username, &dn)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

async fn group_members(
    cfg: &LdapConfig,
    ldap: &mut ldap3::Ldap,
    group_dn: &str,
) -> Result<Vec<String>, ldap3::LdapError> {
    let attr = cfg.group_member_attribute.as_str();
    let (entries, _) = ldap
        .with_timeout(LDAP_TIMEOUT)
        .search(group_dn, Scope::Base, "(objectClass=*)", vec![attr])
        .await?
        .success()?;
    let mut out = Vec::new();
    for e in entries {
        let e = SearchEntry::construct(e);
        if let Some(values) = e.attrs.get(attr) {
            out.extend(
                values
                    .iter()
                    .take(GROUP_MEMBERS_MAX)
                    .map(|v| v.to_ascii_lowercase()),
            );
        }
    }
    Ok(out)
}

/// Puts `username` into exactly the LDAP-synced teams whose group lists `dn`. Blocking.
fn sync_user_teams(
    auth: &Auth,
    cfg: &LdapConfig,
    username: &str,
    dn: &str,
) -> Result<(), LoginError> {
    let teams = auth.store.ldap_teams()?;
    if teams.is_empty() {
        return Ok(());
    }
    let dn = dn.to_ascii_lowercase();
    let memberships: Vec<(usize, bool)> = block_on(async {
        let mut ldap = connect(cfg).await?;
        service_bind(cfg, &mut ldap).await?;
        let mut out = Vec::new();
        for (i, t) in teams.iter().enumerate() {
            let group = t.ldap_group.as_deref().unwrap_or_default();
            out.push((i, group_members(cfg, &mut ldap, group).await?.contains(&dn)));
        }
        let _ = ldap.unbind().await;
        Ok::<_, ldap3::LdapError>(out)
    })
    .map_err(ldap_err)?;
    for (i, member) in memberships {
        let t = &teams[i];
        if member {
            auth.store
                .add_team_member(&t.org, &t.name, username, "ldap")?;
        } else {
            let current = auth.store.team_members(&t.org, &t.name)?;
            if current.iter().any(|m| m == username) {
                // Only remove memberships LDAP gave: a full resync with the others kept.
                let mut ldap_members = current;
                ldap_members.retain(|m| m != username);
                auth.store
                    .sync_team_members(&t.org, &t.name, "ldap", &ldap_members)?;
            }
        }
    }
    Ok(())
}

/// Report of a full sync.
#[derive(Debug, Default, serde::Serialize)]
pub struct SyncReport {
    /// Teams synced.
    pub teams: u64,
    /// Memberships added.
    pub added: u64,
    /// Memberships removed.
    pub removed: u64,
}

/// Syncs every LDAP team from its group: members are the group's member DNs whose entries'
/// user-name attribute names an existing local user. Blocking.
pub fn sync_all(auth: &Auth) -> Result<SyncReport, String> {
    let Some(cfg) = auth.config.ldap.clone() else {
        return Err("LDAP is not configured".into());
    };
    let teams = auth.store.ldap_teams().map_err(|e| e.to_string())?;
    let resolved: Vec<Vec<String>> = block_on(async {
        let mut ldap = connect(&cfg).await?;
        service_bind(&cfg, &mut ldap).await?;
        let mut all = Vec::new();
        for t in &teams {
            let mut names = Vec::new();
            for dn in
                group_members(&cfg, &mut ldap, t.ldap_group.as_deref().unwrap_or_default()).await?
            {
                let entries = match ldap
                    .with_timeout(LDAP_TIMEOUT)
                    .search(
                        &dn,
                        Scope::Base,
                        "(objectClass=*)",
                        vec![cfg.username_attribute.as_str()],
                    )
                    .await?
                    .success()
                {
                    Ok((entries, _)) => entries,
                    Err(_) => Vec::new(),
                };
                for e in entries {
                    let e = SearchEntry::construct(e);
                    if let Some(v) = e.attrs.get(&cfg.username_attribute).and_then(|v| v.first()) {
                        names.push(v.clone());
                    }
                }
            }
            all.push(names);
        }
        let _ = ldap.unbind().await;
        Ok::<_, ldap3::LdapError>(all)
    })
    .map_err(|e| format!("LDAP: {e}"))?;
    let mut report = SyncReport::default();
    for (t, names) in teams.iter().zip(resolved) {
        let (a, r) = auth
            .store
            .sync_team_members(&t.org, &t.name, "ldap", &names)
            .map_err(|e| e.to_string())?;
        report.teams += 1;
        report.added += a;
        report.removed += r;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(super::escape("a*)(uid=*"), "a\\2a\\29\\28uid=\\2a");
    }
}
