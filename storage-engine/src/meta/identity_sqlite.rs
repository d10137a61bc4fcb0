//! [`IdentityStore`] on SQLite: its own `auth_*` tables in the metadata database file, over
//! its own connection (identity writes are rare and small; one connection serialises them
//! without touching the metadata store's writer).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::identity::*;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS auth_accounts (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    email TEXT,
    superuser INTEGER NOT NULL DEFAULT 0,
    secret_hash TEXT,
    external TEXT,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_teams (
    org TEXT NOT NULL REFERENCES auth_accounts(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    ldap_group TEXT,
    PRIMARY KEY (org, name)
);
CREATE TABLE IF NOT EXISTS auth_team_members (
    org TEXT NOT NULL,
    team TEXT NOT NULL,
    account TEXT NOT NULL REFERENCES auth_accounts(name) ON DELETE CASCADE,
    source TEXT NOT NULL,
    PRIMARY KEY (org, team, account),
    FOREIGN KEY (org, team) REFERENCES auth_teams(org, name) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS auth_team_members_by_account ON auth_team_members(account);
CREATE TABLE IF NOT EXISTS auth_repo_permissions (
    repo TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (repo, subject_kind, subject)
);
CREATE INDEX IF NOT EXISTS auth_repo_permissions_by_subject ON auth_repo_permissions(subject);
CREATE TABLE IF NOT EXISTS auth_repo_visibility (
    repo TEXT PRIMARY KEY,
    public INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_api_tokens (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL REFERENCES auth_accounts(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE TABLE IF NOT EXISTS auth_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT,
    action TEXT NOT NULL,
    target TEXT,
    ip TEXT,
    success INTEGER NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS auth_audit_by_time ON auth_audit(at_ms);
";

const ACCOUNT_COLUMNS: &str = "name, kind, email, superuser, secret_hash, external, \
                               failed_logins, locked_until_ms, created_ms";

/// The SQLite identity store.
pub struct SqliteIdentity {
    conn: Mutex<Connection>,
}

fn db_err(context: &'static str) -> impl Fn(rusqlite::Error) -> IdentityError {
    move |e| IdentityError::Database {
        context,
        source: Box::new(e),
    }
}

fn corrupt(what: &str) -> IdentityError {
    IdentityError::Database {
        context: "decoding a stored value",
        source: format!("invalid {what}").into(),
    }
}

fn team_key(org: &str, team: &str) -> String {
    format!("{org}/{team}")
}

impl SqliteIdentity {
    /// Opens (creating the tables if needed) the identity tables in the database at `path`.
    pub fn open(path: &Path) -> IdResult<SqliteIdentity> {
        let conn = Connection::open(path).map_err(db_err("opening database"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;
             PRAGMA foreign_keys=ON;",
        )
        .map_err(db_err("configuring database"))?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("creating identity schema"))?;
        Ok(SqliteIdentity {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> IdResult<T> {
        // A poisoned lock means a panic mid-call; SQLite rolled the transaction back.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(db_err(context))?;
        let out = f(&tx).map_err(db_err(context))?;
        tx.commit().map_err(db_err(context))?;
        Ok(out)
    }
}

fn account_from_row(r: &Row<'_>) -> rusqlite::Result<(Account, String)> {
    let kind: String = r.get(1)?;
    Ok((
        Account {
            name: r.get(0)?,
            kind: AccountKind::User,
            email: r.get(2)?,
            superuser: r.get(3)?,
            secret_hash: r.get(4)?,
            external: r.get(5)?,
            failed_logins: r.get(6)?,
            locked_until_ms: r.get(7)?,
            created_ms: r.get(8)?,
        },
        kind,
    ))
}

fn finish_account((mut a, kind): (Account, String)) -> IdResult<Account> {
    a.kind = AccountKind::parse(&kind).ok_or_else(|| corrupt("account kind"))?;
    Ok(a)
}

fn team_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, Option<String>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn finish_team(
    (org, name, role, ldap_group): (String, String, String, Option<String>),
) -> IdResult<Team> {
    Ok(Team {
        org,
        name,
        role: TeamRole::parse(&role).ok_or_else(|| corrupt("team role"))?,
        ldap_group,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<ApiToken> {
    let scopes: String = r.get(3)?;
    Ok(ApiToken {
        id: r.get(0)?,
        account: r.get(1)?,
        name: r.get(2)?,
        scopes: scopes
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_ms: r.get(4)?,
        expires_ms: r.get(5)?,
    })
}

impl IdentityStore for SqliteIdentity {
    fn create_account(&self, a: &Account) -> IdResult<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(db_err("creating account"))?;
        let inserted = tx.execute(
            "INSERT INTO auth_accounts (name, kind, email, superuser, secret_hash, external, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![a.name, a.kind.as_str(), a.email, a.superuser, a.secret_hash, a.external, a.created_ms],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(IdentityError::Conflict(format!("account {}", a.name)))
            }
            Err(e) => return Err(db_err("creating account")(e)),
        }
        tx.commit().map_err(db_err("creating account"))
    }

    fn account(&self, name: &str) -> IdResult<Option<Account>> {
        let row = self.with("reading account", |tx| {
            tx.query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE name = ?1"),
                [name],
                account_from_row,
            )
            .optional()
        })?;
        row.map(finish_account).transpose()
    }

    fn list_accounts(&self, kind: Option<AccountKind>, limit: usize) -> IdResult<Vec<Account>> {
        let rows = self.with("listing accounts", |tx| {
            let mut s = tx.prepare(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE ?1 IS NULL OR kind = ?1
                 ORDER BY name LIMIT ?2"
            ))?;
            let rows = s.query_map(
                params![kind.map(|k| k.as_str()), limit as i64],
                account_from_row,
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(finish_account).collect()
    }

    fn delete_account(&self, name: &str) -> IdResult<bool> {
        self.with("deleting account", |tx| {
            // Robots of an organization go with it.
            let robots: Vec<String> = {
                let mut s = tx.prepare(
                    "SELECT name FROM auth_accounts WHERE kind = 'robot'
                     AND substr(name, 1, length(?1) + 1) = ?1 || '+'",
                )?;
                let r = s.query_map([name], |r| r.get(0))?;
                r.collect::<rusqlite::Result<_>>()?
            };
            for subject in robots.iter().map(String::as_str).chain([name]) {
                tx.execute(
                    "DELETE FROM auth_repo_permissions WHERE subject_kind = 'account' AND subject = ?1",
                    [subject],
                )?;
            }
            tx.execute(
                "DELETE FROM auth_repo_permissions WHERE subject_kind = 'team'
                 AND substr(subject, 1, length(?1) + 1) = ?1 || '/'",
                [name],
            )?;
            for robot in &robots {
                tx.execute("DELETE FROM auth_accounts WHERE name = ?1", [robot])?;
            }
            Ok(tx.execute("DELETE FROM auth_accounts WHERE name = ?1", [name])? > 0)
        })
    }

    fn set_secret_hash(&self, name: &str, hash: Option<&str>) -> IdResult<bool> {
        self.with("setting secret", |tx| {
            Ok(tx.execute(
                "UPDATE auth_accounts SET secret_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )? > 0)
        })
    }

    fn set_superuser(&self, name: &str, superuser: bool) -> IdResult<bool> {
        self.with("setting superuser", |tx| {
            Ok(tx.execute(
                "UPDATE auth_accounts SET superuser = ?2 WHERE name = ?1",
                params![name, superuser],
            )? > 0)
        })
    }

    fn record_login_failure(
        &self,
        name: &str,
        now_ms: i64,
        threshold: u32,
        lock_ms: i64,
    ) -> IdResult<u32> {
        self.with("recording login failure", |tx| {
            tx.execute(
                "UPDATE auth_accounts SET failed_logins = failed_logins + 1 WHERE name = ?1",
                [name],
            )?;
            let n: Option<u32> = tx
                .query_row(
                    "SELECT failed_logins FROM auth_accounts WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            let n = n.unwrap_or(0);
            if threshold > 0 && n >= threshold {
                tx.execute(
                    "UPDATE auth_accounts SET locked_until_ms = ?2 WHERE name = ?1",
                    params![name, now_ms.saturating_add(lock_ms)],
                )?;
            }
            Ok(n)
        })
    }

    fn reset_login_failures(&self, name: &str) -> IdResult<bool> {
        self.with("resetting login failures", |tx| {
            Ok(tx.execute(
                "UPDATE auth_accounts SET failed_logins = 0, locked_until_ms = 0 WHERE name = ?1",
                [name],
            )? > 0)
        })
    }

    fn count_superusers(&self) -> IdResult<u64> {
        self.with("counting superusers", |tx| {
            tx.query_row(
                "SELECT count(*) FROM auth_accounts WHERE superuser = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
        })
    }

    fn create_team(&self, t: &Team) -> IdResult<()> {
        let org = self.account(&t.org)?;
        if org.map(|a| a.kind) != Some(AccountKind::Organization) {
            return Err(IdentityError::NotFound(format!("organization {}", t.org)));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match conn.execute(
            "INSERT INTO auth_teams (org, name, role, ldap_group) VALUES (?1, ?2, ?3, ?4)",
            params![t.org, t.name, t.role.as_str(), t.ldap_group],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(IdentityError::Conflict(format!(
                "team {}",
                team_key(&t.org, &t.name)
            ))),
            Err(e) => {
                let _ = &mut conn;
                Err(db_err("creating team")(e))
            }
        }
    }

    fn team(&self, org: &str, name: &str) -> IdResult<Option<Team>> {
        let row = self.with("reading team", |tx| {
            tx.query_row(
                "SELECT org, name, role, ldap_group FROM auth_teams WHERE org = ?1 AND name = ?2",
                [org, name],
                team_from_row,
            )
            .optional()
        })?;
        row.map(finish_team).transpose()
    }

    fn teams(&self, org: &str) -> IdResult<Vec<Team>> {
        let rows = self.with("listing teams", |tx| {
            let mut s = tx.prepare(
                "SELECT org, name, role, ldap_group FROM auth_teams WHERE org = ?1 ORDER BY name",
            )?;
            let r = s.query_map([org], team_from_row)?;
            r.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(finish_team).collect()
    }

    fn ldap_teams(&self) -> IdResult<Vec<Team>> {
        let rows = self.with("listing LDAP teams", |tx| {
            let mut s = tx.prepare(
                "SELECT org, name, role, ldap_group FROM auth_teams WHERE ldap_group IS NOT NULL
                 ORDER BY org, name",
            )?;
            let r = s.query_map([], team_from_row)?;
            r.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(finish_team).collect()
    }

    fn update_team(&self, t: &Team) -> IdResult<bool> {
        self.with("updating team", |tx| {
            Ok(tx.execute(
                "UPDATE auth_teams SET role = ?3, ldap_group = ?4 WHERE org = ?1 AND name = ?2",
                params![t.org, t.name, t.role.as_str(), t.ldap_group],
            )? > 0)
        })
    }

    fn delete_team(&self, org: &str, name: &str) -> IdResult<bool> {
        self.with("deleting team", |tx| {
            tx.execute(
                "DELETE FROM auth_repo_permissions WHERE subject_kind = 'team' AND subject = ?1",
                [team_key(org, name)],
            )?;
            Ok(tx.execute(
                "DELETE FROM auth_teams WHERE org = ?1 AND name = ?2",
                [org, name],
            )? > 0)
        })
    }

    fn add_team_member(&self, org: &str, team: &str, account: &str, source: &str) -> IdResult<()> {
        if self.team(org, team)?.is_none() {
            return Err(IdentityError::NotFound(format!(
                "team {}",
                team_key(org, team)
            )));
        }
        match self.account(account)? {
            None => return Err(IdentityError::NotFound(format!("account {account}"))),
            Some(a) if a.kind == AccountKind::Organization => {
                return Err(IdentityError::Invalid(
                    "an organization cannot be a team member".into(),
                ))
            }
            Some(a) if a.kind == AccountKind::Robot && !a.name.starts_with(&format!("{org}+")) => {
                return Err(IdentityError::Invalid(
                    "a robot can only join teams of its own organization".into(),
                ))
            }
            Some(_) => {}
        }
        self.with("adding team member", |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO auth_team_members (org, team, account, source)
                 VALUES (?1, ?2, ?3, ?4)",
                [org, team, account, source],
            )
            .map(|_| ())
        })
    }

    fn remove_team_member(&self, org: &str, team: &str, account: &str) -> IdResult<bool> {
        self.with("removing team member", |tx| {
            Ok(tx.execute(
                "DELETE FROM auth_team_members WHERE org = ?1 AND team = ?2 AND account = ?3",
                [org, team, account],
            )? > 0)
        })
    }

    fn team_members(&self, org: &str, team: &str) -> IdResult<Vec<String>> {
        self.with("listing team members", |tx| {
            let mut s = tx.prepare(
                "SELECT account FROM auth_team_members WHERE org = ?1 AND team = ?2 ORDER BY account",
            )?;
            let r = s.query_map([org, team], |r| r.get(0))?;
            r.collect()
        })
    }

    fn sync_team_members(
        &self,
        org: &str,
        team: &str,
        source: &str,
        members: &[String],
    ) -> IdResult<(u64, u64)> {
        self.with("syncing team members", |tx| {
            let current: Vec<String> = {
                let mut s = tx.prepare(
                    "SELECT account FROM auth_team_members
                     WHERE org = ?1 AND team = ?2 AND source = ?3",
                )?;
                let r = s.query_map([org, team, source], |r| r.get(0))?;
                r.collect::<rusqlite::Result<_>>()?
            };
            let mut removed = 0;
            for gone in current.iter().filter(|c| !members.contains(c)) {
                removed += tx.execute(
                    "DELETE FROM auth_team_members WHERE org = ?1 AND team = ?2 AND account = ?3",
                    [org, team, gone.as_str()],
                )? as u64;
            }
            let mut added = 0;
            for m in members.iter().filter(|m| !current.contains(m)) {
                added += tx.execute(
                    "INSERT OR IGNORE INTO auth_team_members (org, team, account, source)
                     SELECT ?1, ?2, name, ?4 FROM auth_accounts WHERE name = ?3 AND kind = 'user'",
                    [org, team, m.as_str(), source],
                )? as u64;
            }
            Ok((added, removed))
        })
    }

    fn teams_of(&self, account: &str) -> IdResult<Vec<Team>> {
        let rows = self.with("listing an account's teams", |tx| {
            let mut s = tx.prepare(
                "SELECT t.org, t.name, t.role, t.ldap_group FROM auth_team_members m
                 JOIN auth_teams t ON t.org = m.org AND t.name = m.team
                 WHERE m.account = ?1 ORDER BY t.org, t.name",
            )?;
            let r = s.query_map([account], team_from_row)?;
            r.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(finish_team).collect()
    }

    fn set_permission(
        &self,
        repo: &str,
        subject: &Subject,
        role: Option<RepoRole>,
    ) -> IdResult<bool> {
        let (kind, key) = match subject {
            Subject::Account { name } => {
                match self.account(name)? {
                    None => return Err(IdentityError::NotFound(format!("account {name}"))),
                    Some(a) if a.kind == AccountKind::Organization => {
                        return Err(IdentityError::Invalid(
                            "permissions go to users, robots and teams, not organizations".into(),
                        ))
                    }
                    Some(a) if a.kind == AccountKind::Robot => {
                        let ns = repo.split('/').next().unwrap_or("");
                        if !a.name.starts_with(&format!("{ns}+")) {
                            return Err(IdentityError::Invalid(
                                "a robot can only hold permissions on its organization's repositories"
                                    .into(),
                            ));
                        }
                    }
                    Some(_) => {}
                }
                ("account", name.clone())
            }
            Subject::Team { org, name } => {
                if self.team(org, name)?.is_none() {
                    return Err(IdentityError::NotFound(format!(
                        "team {}",
                        team_key(org, name)
                    )));
                }
                ("team", team_key(org, name))
            }
        };
        self.with("setting permission", |tx| match role {
            Some(role) => tx
                .execute(
                    "INSERT INTO auth_repo_permissions (repo, subject_kind, subject, role)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (repo, subject_kind, subject) DO UPDATE SET role = excluded.role",
                    [repo, kind, key.as_str(), role.as_str()],
                )
                .map(|n| n > 0),
            None => tx
                .execute(
                    "DELETE FROM auth_repo_permissions
                     WHERE repo = ?1 AND subject_kind = ?2 AND subject = ?3",
                    [repo, kind, key.as_str()],
                )
                .map(|n| n > 0),
        })
    }

    fn permissions(&self, repo: &str) -> IdResult<Vec<Grant>> {
        let rows = self.with("listing permissions", |tx| {
            let mut s = tx.prepare(
                "SELECT subject_kind, subject, role FROM auth_repo_permissions WHERE repo = ?1
                 ORDER BY subject_kind, subject",
            )?;
            let r = s.query_map([repo], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            r.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(kind, subject, role)| {
                let subject = match kind.as_str() {
                    "team" => {
                        let (org, name) =
                            subject.split_once('/').ok_or_else(|| corrupt("team key"))?;
                        Subject::Team {
                            org: org.to_owned(),
                            name: name.to_owned(),
                        }
                    }
                    _ => Subject::Account { name: subject },
                };
                Ok(Grant {
                    repo: repo.to_owned(),
                    subject,
                    role: RepoRole::parse(&role).ok_or_else(|| corrupt("repository role"))?,
                })
            })
            .collect()
    }

    fn granted_role(&self, account: &str, repo: &str) -> IdResult<Option<RepoRole>> {
        let roles: Vec<String> = self.with("reading permissions", |tx| {
            let mut s = tx.prepare_cached(
                "SELECT role FROM auth_repo_permissions WHERE repo = ?1 AND (
                    (subject_kind = 'account' AND subject = ?2) OR
                    (subject_kind = 'team' AND subject IN
                        (SELECT org || '/' || team FROM auth_team_members WHERE account = ?2)))",
            )?;
            let r = s.query_map([repo, account], |r| r.get(0))?;
            r.collect()
        })?;
        Ok(roles.iter().filter_map(|r| RepoRole::parse(r)).max())
    }

    fn visibility(&self, repo: &str) -> IdResult<Option<bool>> {
        self.with("reading visibility", |tx| {
            tx.query_row(
                "SELECT public FROM auth_repo_visibility WHERE repo = ?1",
                [repo],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn set_visibility(&self, repo: &str, public: bool) -> IdResult<()> {
        self.with("setting visibility", |tx| {
            tx.execute(
                "INSERT INTO auth_repo_visibility (repo, public) VALUES (?1, ?2)
                 ON CONFLICT (repo) DO UPDATE SET public = excluded.public",
                params![repo, public],
            )
            .map(|_| ())
        })
    }

    fn create_token(&self, t: &ApiToken, secret_hash: &str) -> IdResult<()> {
        self.with("creating token", |tx| {
            tx.execute(
                "INSERT INTO auth_api_tokens (id, account, name, scopes, secret_hash, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.id, t.account, t.name, t.scopes.join(" "), secret_hash, t.created_ms, t.expires_ms],
            )
            .map(|_| ())
        })
    }

    fn token_by_hash(&self, secret_hash: &str) -> IdResult<Option<ApiToken>> {
        self.with("reading token", |tx| {
            tx.query_row(
                "SELECT id, account, name, scopes, created_ms, expires_ms FROM auth_api_tokens
                 WHERE secret_hash = ?1",
                [secret_hash],
                token_from_row,
            )
            .optional()
        })
    }

    fn tokens(&self, account: &str) -> IdResult<Vec<ApiToken>> {
        self.with("listing tokens", |tx| {
            let mut s = tx.prepare(
                "SELECT id, account, name, scopes, created_ms, expires_ms FROM auth_api_tokens
                 WHERE account = ?1 ORDER BY created_ms",
            )?;
            let r = s.query_map([account], token_from_row)?;
            r.collect()
        })
    }

    fn delete_token(&self, account: &str, id: &str) -> IdResult<bool> {
        self.with("deleting token", |tx| {
            Ok(tx.execute(
                "DELETE FROM auth_api_tokens WHERE account = ?1 AND id = ?2",
                [account, id],
            )? > 0)
        })
    }

    fn append_audit(&self, e: &NewAuditEvent, at_ms: i64) -> IdResult<()> {
        self.with("appending audit event", |tx| {
            tx.execute(
                "INSERT INTO auth_audit (at_ms, actor, action, target, ip, success, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![at_ms, e.actor, e.action, e.target, e.ip, e.success, e.detail],
            )
            .map(|_| ())
        })
    }

    fn audit(&self, q: &AuditQuery) -> IdResult<Vec<AuditEvent>> {
        self.with("reading audit log", |tx| {
            let mut s = tx.prepare(
                "SELECT id, at_ms, actor, action, target, ip, success, detail FROM auth_audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR target = ?3 OR substr(target, 1, length(?3) + 1) = ?3 || '/')
                   AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let r = s.query_map(
                params![q.actor, q.action, q.target, q.before_id, q.limit as i64],
                |r| {
                    Ok(AuditEvent {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        ip: r.get(5)?,
                        success: r.get(6)?,
                        detail: r.get(7)?,
                    })
                },
            )?;
            r.collect()
        })
    }

    fn prune_audit(&self, before_ms: i64) -> IdResult<u64> {
        self.with("pruning audit log", |tx| {
            tx.execute("DELETE FROM auth_audit WHERE at_ms < ?1", [before_ms])
                .map(|n| n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, kind: AccountKind) -> Account {
        Account {
            name: name.into(),
            kind,
            email: None,
            superuser: false,
            secret_hash: None,
            external: None,
            failed_logins: 0,
            locked_until_ms: 0,
            created_ms: 1,
        }
    }

    #[test]
    fn teams_permissions_and_cascades() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let s = SqliteIdentity::open(&dir.path().join("m.sqlite"))?;
        s.create_account(&account("acme", AccountKind::Organization))?;
        s.create_account(&account("alice", AccountKind::User))?;
        s.create_account(&account("acme+ci", AccountKind::Robot))?;
        assert!(matches!(
            s.create_account(&account("alice", AccountKind::User)),
            Err(IdentityError::Conflict(_))
        ));
        s.create_team(&Team {
            org: "acme".into(),
            name: "dev".into(),
            role: TeamRole::Member,
            ldap_group: None,
        })?;
        s.add_team_member("acme", "dev", "alice", "local")?;
        s.set_permission(
            "acme/app",
            &Subject::Team {
                org: "acme".into(),
                name: "dev".into(),
            },
            Some(RepoRole::Write),
        )?;
        s.set_permission(
            "acme/app",
            &Subject::Account {
                name: "alice".into(),
            },
            Some(RepoRole::Read),
        )?;
        assert_eq!(s.granted_role("alice", "acme/app")?, Some(RepoRole::Write));
        assert_eq!(s.granted_role("alice", "acme/other")?, None);
        // A robot cannot hold permissions outside its organization.
        assert!(s
            .set_permission(
                "other/app",
                &Subject::Account {
                    name: "acme+ci".into()
                },
                Some(RepoRole::Read)
            )
            .is_err());
        s.set_permission(
            "acme/app",
            &Subject::Account {
                name: "acme+ci".into(),
            },
            Some(RepoRole::Read),
        )?;
        assert!(s.delete_account("acme")?);
        assert!(s.account("acme+ci")?.is_none());
        assert_eq!(s.granted_role("alice", "acme/app")?, Some(RepoRole::Read));
        assert!(s.teams_of("alice")?.is_empty());
        // Lockout counting.
        assert_eq!(s.record_login_failure("alice", 1000, 2, 500)?, 1);
        assert_eq!(s.record_login_failure("alice", 1000, 2, 500)?, 2);
        assert_eq!(s.account("alice")?.map(|a| a.locked_until_ms), Some(1500));
        s.reset_login_failures("alice")?;
        assert_eq!(s.account("alice")?.map(|a| a.failed_logins), Some(0));
        Ok(())
    }
}
