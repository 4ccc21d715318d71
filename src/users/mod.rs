//! People and credentials: roles, the authenticated principal, local accounts (argon2id),
//! GitHub sign-in, web sessions, one-time setup and invitation links, API tokens.

//!
//! The rules and writes live in [`ops`]; [`store`] holds the SQL; [`pages`] (sign-in, account,
//! GitHub, people) only translates HTTP to `ops` calls and results to pages.

pub mod api;
pub mod limiter;
pub mod oidc;
pub mod ops;
pub mod pages;
pub mod password;
pub mod pending;
pub mod store;
pub mod tokens;
pub mod two_factor;

use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// A person who can sign in to the web UI.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    /// Shown only once `github_id` is bound: GitHub sign-in matches the id.
    pub github_login: Option<String>,
    /// GitHub's numeric user id: `None` for an account linked by login that has not signed in
    /// with GitHub since (it binds at that sign-in).
    pub github_id: Option<i64>,
    pub disabled: bool,
    pub created_at: String,
    pub has_password: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user not found")]
    NotFound,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("the username {0:?} is taken")]
    UsernameTaken(String),
    #[error("the GitHub login {0:?} is already linked to another user")]
    GithubTaken(String),
    /// A GitHub identity whose login is linked to an account bound to another GitHub id (the
    /// login was renamed and registered again by someone else).
    #[error(
        "the GitHub login {login:?} belongs to another GitHub account than the one linked to the Stagely \
         user; an admin must relink it"
    )]
    GithubIdMismatch { login: String },
    #[error("this would leave no enabled admin; make someone else admin first")]
    LastAdmin,
    #[error("this link is not valid: it was used already, has expired, or was never issued")]
    LinkInvalid,
    /// The one answer for an unknown user, a wrong password and a disabled account.
    #[error("Wrong username or password.")]
    SignInRefused,
    #[error("too many failed sign-in attempts; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Every password thread is busy and the queue is full (a flood of sign-ins).
    #[error("too many sign-ins at once; try again in a moment")]
    Busy,
    #[error("this account is disabled")]
    Disabled,
    /// A password change with a wrong current password (counted like a failed sign-in).
    #[error("the current password is wrong")]
    WrongPassword,
    /// A password change on an account that has none (it signs in with GitHub only).
    #[error(
        "this account has no password: it signs in with GitHub only. An admin can issue a password-reset \
         link to give it one"
    )]
    NoPassword,
    #[error(
        "a token cannot have a higher role than yours (a viewer who deploys or maintains a project may mint a member token)"
    )]
    RoleTooHigh,
    #[error("a token cannot mint tokens: create tokens from a signed-in browser or the CLI")]
    TokenCannotMint,
    #[error("token not found")]
    TokenNotFound,
    #[error("invitation not found")]
    InviteNotFound,
    /// A wrong, expired or replayed two-factor code, or an unknown recovery code.
    #[error("the code is wrong or was used already")]
    WrongCode,
    /// A two-factor step that does not fit the account's two-factor state (names which).
    #[error("{0}")]
    TwoFactorState(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for UserError {
    fn from(e: crate::db::SqlError) -> Self {
        UserError::Db(e.into())
    }
}

/// Usernames: 1 to 39 of letters, digits, `-`, `_`, `.` (GitHub logins fit).
pub fn validate_username(value: &str) -> Result<String, UserError> {
    let v = value.trim();
    let ok = !v.is_empty()
        && v.len() <= 39
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(UserError::Invalid {
            field: "username",
            message: "use 1 to 39 letters, digits, '-', '_' or '.', starting with a letter or digit".into(),
        });
    }
    Ok(v.to_owned())
}

pub const MIN_PASSWORD_CHARS: usize = 10;

pub fn validate_password(value: &str) -> Result<(), UserError> {
    let n = value.chars().count();
    if n < MIN_PASSWORD_CHARS || value.len() > 1024 {
        return Err(UserError::Invalid {
            field: "password",
            message: format!("use at least {MIN_PASSWORD_CHARS} characters (at most 1024 bytes)"),
        });
    }
    Ok(())
}

/// What a principal may do. Ordered: every role can do what the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Deploy, edit secrets and projects.
    Member,
    /// Everything, including people, agents and tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl crate::db::stored::StoredEnum for Role {
    const WHAT: &'static str = "role";
    fn from_stored(s: &str) -> Option<Self> {
        Role::parse(s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

/// Roles are read through `FromValue`: an unknown stored role is an error, never `viewer`.
impl crate::db::FromValue for Role {
    fn from_value(v: crate::db::Value<'_>) -> Result<Self, crate::db::sql::ConvError> {
        crate::db::stored::Stored::<Role>::from_value(v).map(|s| s.0)
    }
}

impl crate::db::ToValue for Role {
    fn to_value(&self) -> crate::db::Value<'_> {
        crate::db::Value::Text(self.as_str())
    }
}

/// Who is making a request, as established by the authorization choke point.
#[derive(Debug, Clone)]
pub struct Principal {
    /// For the audit log: `token:<name>` or `user:<username>`.
    pub actor: String,
    pub role: Role,
    pub user_id: Option<i64>,
    /// True when the caller authenticated with an API token (a token cannot mint tokens).
    pub via_token: bool,
    /// The token's own role when the caller authenticated with one: it caps what the owner's
    /// project roles give ([`crate::access::project_role`]). `role` is already the lower of the
    /// token's role and its owner's global one.
    pub token_role: Option<Role>,
}

impl Principal {
    /// The principal for admin CLI commands run on the server itself.
    pub fn cli() -> Principal {
        Principal {
            actor: "cli".into(),
            role: Role::Admin,
            user_id: None,
            via_token: false,
            token_role: None,
        }
    }
}

/// In-memory state of sign-in: the rate limiter, the password threads, GitHub logins in flight
/// and the revocation channel that closes a person's open WebSockets.
pub struct AuthState {
    pub limiter: limiter::LoginLimiter,
    pub passwords: password::HashPool,
    pub github: pages::github::PendingLogins,
    /// OpenID Connect sign-ins in flight, and each provider's discovery document and keys.
    pub oidc: pages::oidc::PendingLogins,
    pub oidc_discovery: oidc::client::Discovery,
    /// Second sign-in steps in flight (a correct password on an account with two-factor on).
    pub challenges: two_factor::Challenges,
    /// Wrong two-factor codes per account in a window (`auth.second_factor_*`): the same shape
    /// as the sign-in limiter, keyed by account only.
    pub second_factor: limiter::LoginLimiter,
    /// The id of a user whose sign-out, disable, demotion or ended sessions must close their
    /// open WebSockets ([`AuthState::until_revoked`]).
    revocations: tokio::sync::broadcast::Sender<i64>,
    /// Browser WebSockets open now (dashboards, live deployments), for `/metrics`.
    browser_sockets: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Counts one open browser WebSocket for as long as it lives ([`AuthState::browser_socket`]).
pub struct SocketCount(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl Drop for SocketCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl AuthState {
    /// Fails only when the password threads cannot be started.
    pub fn new(config: &crate::config::AuthConfig) -> std::io::Result<AuthState> {
        let threads = usize::try_from(config.password_hash_threads).unwrap_or(1);
        let queue = usize::try_from(config.password_hash_queue).unwrap_or(0);
        Ok(AuthState {
            limiter: limiter::LoginLimiter::new(
                config.login_window_secs,
                config.login_max_failures_per_ip,
                config.login_max_failures_per_account,
            ),
            passwords: password::HashPool::new(threads, queue)?,
            github: pages::github::PendingLogins::default(),
            oidc: pages::oidc::PendingLogins::default(),
            oidc_discovery: oidc::client::Discovery::default(),
            challenges: two_factor::Challenges::default(),
            // Keyed by account alone (the "address" slot holds `user:<id>`): a fixed window of
            // `second_factor_max_failures_per_account` wrong codes, then 429 until it passes.
            second_factor: limiter::LoginLimiter::new(
                config.second_factor_window_secs,
                config.second_factor_max_failures_per_account,
                u32::MAX,
            ),
            revocations: tokio::sync::broadcast::channel(256).0,
            browser_sockets: std::sync::Arc::default(),
        })
    }

    /// Close every open WebSocket of this user (the browser reconnects and is re-authorised).
    pub fn revoke(&self, user_id: i64) {
        // No receiver means no open socket: nothing to close.
        let _ = self.revocations.send(user_id);
    }

    /// Count a browser WebSocket as open until the returned value is dropped.
    pub fn browser_socket(&self) -> SocketCount {
        self.browser_sockets
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        SocketCount(std::sync::Arc::clone(&self.browser_sockets))
    }

    /// Browser WebSockets open now.
    pub fn browser_sockets(&self) -> i64 {
        self.browser_sockets.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A future that ends when `user_id`'s sockets must close: a socket task selects on it.
    /// `None` (a CLI token, no person) never ends. A lagging receiver ends too: closing a socket
    /// too often only costs a reconnect, missing a revocation would keep it streaming.
    pub fn until_revoked(&self, user_id: Option<i64>) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.revocations.subscribe();
        async move {
            let Some(user_id) = user_id else {
                return std::future::pending().await;
            };
            loop {
                match rx.recv().await {
                    Ok(id) if id != user_id => {}
                    Ok(_) | Err(_) => return,
                }
            }
        }
    }
}

/// How long the first-admin setup link printed at start stays valid.
pub const SETUP_LINK_TTL_MS: i64 = 60 * 60 * 1000;

/// How long a password-reset link an admin issues stays valid.
pub const RESET_LINK_TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub use ops::ensure_setup_link;
