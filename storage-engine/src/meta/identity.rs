//! Identity and access data (issue 7, the Quay model): accounts (users, organizations and
//! robot accounts), teams with roles, repository permissions and visibility, API tokens and
//! the audit log.
//!
//! [`IdentityStore`] is the seam a PostgreSQL backend implements; [`super::identity_sqlite`]
//! is the embedded default, in its own tables of the metadata database file. Like
//! [`super::MetadataStore`], methods are synchronous (callers run them on a blocking thread)
//! and each is one transaction.
//!
//! Invariants:
//! - No secret is stored in the clear: passwords are argon2 PHC strings, robot and API
//!   tokens are stored as the SHA-256 of a 256-bit random token (a slow hash adds nothing to
//!   a secret with that much entropy). The store never sees a clear-text secret.
//! - Names are validated by the caller (the registry's `auth` module) before they get here;
//!   a robot's name is always `<org>+<name>` and belongs to an organization account.
//! - Deleting an account deletes its team memberships, permissions and tokens in the same
//!   transaction, so a recreated account of the same name inherits nothing.

/// What can go wrong in the identity store.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The database failed.
    #[error("identity database: {context}: {source}")]
    Database {
        /// The operation.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The thing to create exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// A named account, team or token does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request breaks a rule of the model (e.g. a robot permission outside its org).
    #[error("{0}")]
    Invalid(String),
}

/// The three kinds of account; they share one namespace of names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// A person (local, LDAP or OIDC).
    User,
    /// An organization: owns repositories and teams, cannot log in.
    Organization,
    /// A robot account `<org>+<name>`, logs in with a generated token.
    Robot,
}

impl AccountKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::User => "user",
            AccountKind::Organization => "organization",
            AccountKind::Robot => "robot",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<AccountKind> {
        match s {
            "user" => Some(AccountKind::User),
            "organization" => Some(AccountKind::Organization),
            "robot" => Some(AccountKind::Robot),
            _ => None,
        }
    }
}

/// An account as stored.
#[derive(Clone, Debug)]
pub struct Account {
    /// Unique name (`alice`, `acme`, `acme+ci`).
    pub name: String,
    /// User, organization or robot.
    pub kind: AccountKind,
    /// Contact address, if any.
    pub email: Option<String>,
    /// May do everything, including the whole management API.
    pub superuser: bool,
    /// argon2 PHC string (users) or SHA-256 hex of the token (robots); `None`: cannot log in
    /// with a secret (organizations, external users).
    pub secret_hash: Option<String>,
    /// Where the account comes from: `None` local, `ldap`, `oidc:<issuer>#<subject>`.
    pub external: Option<String>,
    /// Failed logins since the last success or reset.
    pub failed_logins: u32,
    /// Logins are refused until this time (Unix ms); 0 when not locked.
    pub locked_until_ms: i64,
    /// Creation time (Unix ms).
    pub created_ms: i64,
}

/// A team's role in its organization.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    /// Gets only the repository permissions granted to the team.
    Member,
    /// May also create repositories in the organization (and administers those it creates).
    Creator,
    /// Administers the organization and all its repositories.
    Admin,
}

impl TeamRole {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Member => "member",
            TeamRole::Creator => "creator",
            TeamRole::Admin => "admin",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<TeamRole> {
        match s {
            "member" => Some(TeamRole::Member),
            "creator" => Some(TeamRole::Creator),
            "admin" => Some(TeamRole::Admin),
            _ => None,
        }
    }
}

/// A permission on one repository; ordered read < write < admin.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RepoRole {
    /// Pull.
    Read,
    /// Pull, push, delete.
    Write,
    /// Also change permissions and visibility.
    Admin,
}

impl RepoRole {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoRole::Read => "read",
            RepoRole::Write => "write",
            RepoRole::Admin => "admin",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<RepoRole> {
        match s {
            "read" => Some(RepoRole::Read),
            "write" => Some(RepoRole::Write),
            "admin" => Some(RepoRole::Admin),
            _ => None,
        }
    }
}

/// A team of an organization.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Team {
    /// The organization.
    pub org: String,
    /// The team's name, unique in the organization.
    pub name: String,
    /// Its role in the organization.
    pub role: TeamRole,
    /// LDAP group DN whose members the LDAP sync makes the team's members, if any.
    pub ldap_group: Option<String>,
}

/// Who a repository permission is granted to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Subject {
    /// A user or robot account.
    Account {
        /// Its name.
        name: String,
    },
    /// A team.
    Team {
        /// The organization.
        org: String,
        /// The team.
        name: String,
    },
}

/// One repository permission.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Grant {
    /// The repository.
    pub repo: String,
    /// Who.
    pub subject: Subject,
    /// What.
    pub role: RepoRole,
}

/// An API (OAuth2-style application) token, without its secret.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApiToken {
    /// Public id (shown in listings, used to revoke).
    pub id: String,
    /// The account it acts as.
    pub account: String,
    /// A label chosen by its creator.
    pub name: String,
    /// Scopes: `repo:read`, `repo:write`, `repo:admin`, `org:admin`, `user:admin`.
    pub scopes: Vec<String>,
    /// Creation time (Unix ms).
    pub created_ms: i64,
    /// Expiry (Unix ms), if any.
    pub expires_ms: Option<i64>,
}

/// An audit event to record.
#[derive(Clone, Debug, Default)]
pub struct NewAuditEvent {
    /// Who (account name; `None`: anonymous or unknown).
    pub actor: Option<String>,
    /// What, e.g. `login`, `login_failed`, `push`, `delete`, `permission_set`.
    pub action: String,
    /// On what (repository, account, team, token id).
    pub target: Option<String>,
    /// From where (client address).
    pub ip: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// Free-form detail (never a secret).
    pub detail: Option<String>,
}

/// A recorded audit event.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEvent {
    /// Increasing id (for paging).
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who.
    pub actor: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// From where.
    pub ip: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// Detail.
    pub detail: Option<String>,
}

/// A filter over the audit log; newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target, or targets under it (`acme` matches `acme/app`).
    pub target: Option<String>,
    /// Only events with an id below this (paging).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

/// Result alias.
pub type IdResult<T> = Result<T, IdentityError>;

/// Everything the registry needs from an identity database.
pub trait IdentityStore: Send + Sync + 'static {
    /// Creates an account; `Conflict` if the name is taken.
    fn create_account(&self, account: &Account) -> IdResult<()>;
    /// Reads an account.
    fn account(&self, name: &str) -> IdResult<Option<Account>>;
    /// Lists accounts by name, optionally of one kind, at most `limit`.
    fn list_accounts(&self, kind: Option<AccountKind>, limit: usize) -> IdResult<Vec<Account>>;
    /// Deletes an account with its memberships, permissions, tokens (and, for an
    /// organization, its teams and robots). False if it did not exist.
    fn delete_account(&self, name: &str) -> IdResult<bool>;
    /// Replaces an account's secret hash. False if it does not exist.
    fn set_secret_hash(&self, name: &str, hash: Option<&str>) -> IdResult<bool>;
    /// Sets or clears superuser. False if the account does not exist.
    fn set_superuser(&self, name: &str, superuser: bool) -> IdResult<bool>;
    /// Counts a failed login; once `threshold` is reached the account is locked until
    /// `now_ms + lock_ms`. Returns the failure count.
    fn record_login_failure(
        &self,
        name: &str,
        now_ms: i64,
        threshold: u32,
        lock_ms: i64,
    ) -> IdResult<u32>;
    /// Clears failures and any lock (a successful login, or an administrator's reset).
    fn reset_login_failures(&self, name: &str) -> IdResult<bool>;
    /// Number of superusers.
    fn count_superusers(&self) -> IdResult<u64>;

    /// Creates a team; `Conflict` if it exists, `NotFound` if the org does not.
    fn create_team(&self, team: &Team) -> IdResult<()>;
    /// Reads a team.
    fn team(&self, org: &str, name: &str) -> IdResult<Option<Team>>;
    /// An organization's teams.
    fn teams(&self, org: &str) -> IdResult<Vec<Team>>;
    /// All teams with an LDAP group.
    fn ldap_teams(&self) -> IdResult<Vec<Team>>;
    /// Updates a team's role and LDAP group.
    fn update_team(&self, team: &Team) -> IdResult<bool>;
    /// Deletes a team with its memberships and permissions.
    fn delete_team(&self, org: &str, name: &str) -> IdResult<bool>;
    /// Adds an account to a team (`source`: `local` or `ldap`). Idempotent.
    fn add_team_member(&self, org: &str, team: &str, account: &str, source: &str) -> IdResult<()>;
    /// Removes an account from a team.
    fn remove_team_member(&self, org: &str, team: &str, account: &str) -> IdResult<bool>;
    /// A team's members.
    fn team_members(&self, org: &str, team: &str) -> IdResult<Vec<String>>;
    /// Makes the members of `source` in a team exactly `members` (existing accounts only);
    /// members from other sources are kept. Returns (added, removed).
    fn sync_team_members(
        &self,
        org: &str,
        team: &str,
        source: &str,
        members: &[String],
    ) -> IdResult<(u64, u64)>;
    /// The teams an account belongs to.
    fn teams_of(&self, account: &str) -> IdResult<Vec<Team>>;

    /// Sets (`Some`) or removes (`None`) a repository permission.
    fn set_permission(
        &self,
        repo: &str,
        subject: &Subject,
        role: Option<RepoRole>,
    ) -> IdResult<bool>;
    /// A repository's permissions.
    fn permissions(&self, repo: &str) -> IdResult<Vec<Grant>>;
    /// The highest role an account holds on a repository, directly or through a team.
    fn granted_role(&self, account: &str, repo: &str) -> IdResult<Option<RepoRole>>;
    /// A repository's visibility (`None`: never set).
    fn visibility(&self, repo: &str) -> IdResult<Option<bool>>;
    /// Sets a repository's visibility.
    fn set_visibility(&self, repo: &str, public: bool) -> IdResult<()>;

    /// Stores a new API token under the SHA-256 hex of its secret.
    fn create_token(&self, token: &ApiToken, secret_hash: &str) -> IdResult<()>;
    /// Finds the token whose secret hashes to `secret_hash`.
    fn token_by_hash(&self, secret_hash: &str) -> IdResult<Option<ApiToken>>;
    /// An account's tokens.
    fn tokens(&self, account: &str) -> IdResult<Vec<ApiToken>>;
    /// Revokes a token of an account.
    fn delete_token(&self, account: &str, id: &str) -> IdResult<bool>;

    /// Appends to the audit log.
    fn append_audit(&self, event: &NewAuditEvent, at_ms: i64) -> IdResult<()>;
    /// Reads the audit log, newest first.
    fn audit(&self, query: &AuditQuery) -> IdResult<Vec<AuditEvent>>;
    /// Deletes events older than `before_ms`; returns how many.
    fn prune_audit(&self, before_ms: i64) -> IdResult<u64>;
}
