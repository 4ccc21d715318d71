//! People and credentials: roles, the authenticated principal, local accounts (argon2id),
//! GitHub sign-in, web sessions, one-time setup and invitation links, API tokens.

pub mod account;
pub mod github;
pub mod limiter;
pub mod pages;
pub mod password;
pub mod people;
pub mod store;
pub mod tokens;

use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// A person who can sign in to the web UI.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub github_login: Option<String>,
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
    #[error("this would leave no enabled admin; make someone else admin first")]
    LastAdmin,
    #[error("this link is not valid: it was used already, has expired, or was never issued")]
    LinkInvalid,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for UserError {
    fn from(e: rusqlite::Error) -> Self {
        UserError::Db(e.into())
    }
}

impl From<UserError> for crate::web::error::WebError {
    fn from(e: UserError) -> Self {
        use crate::web::error::WebError;
        match e {
            UserError::NotFound => WebError::NotFound("user"),
            UserError::Invalid { field, message } => WebError::invalid(field, message),
            e @ (UserError::UsernameTaken(_) | UserError::GithubTaken(_)) => WebError::Conflict {
                code: "name_taken",
                message: e.to_string(),
            },
            e @ UserError::LastAdmin => WebError::Conflict {
                code: "last_admin",
                message: e.to_string(),
            },
            e @ UserError::LinkInvalid => WebError::Conflict {
                code: "link_invalid",
                message: e.to_string(),
            },
            UserError::Db(e) => e.into(),
        }
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

/// Who is making a request, as established by the authorization choke point.
#[derive(Debug, Clone)]
pub struct Principal {
    /// For the audit log: `token:<name>` or `user:<username>`.
    pub actor: String,
    pub role: Role,
    pub user_id: Option<i64>,
}

impl Principal {
    /// The principal for admin CLI commands run on the server itself.
    pub fn cli() -> Principal {
        Principal {
            actor: "cli".into(),
            role: Role::Admin,
            user_id: None,
        }
    }
}

/// In-memory state of sign-in: the rate limiter and GitHub logins in flight.
pub struct AuthState {
    pub limiter: limiter::LoginLimiter,
    pub github: github::PendingLogins,
}

impl AuthState {
    pub fn new(config: &crate::config::AuthConfig) -> AuthState {
        AuthState {
            limiter: limiter::LoginLimiter::new(
                config.login_window_secs,
                config.login_max_failures_per_ip,
                config.login_max_failures_per_account,
            ),
            github: github::PendingLogins::default(),
        }
    }
}

/// How long the first-admin setup link printed at start stays valid.
pub const SETUP_LINK_TTL_MS: i64 = 60 * 60 * 1000;

/// On a start with no users, issue a fresh one-time setup link (older unused ones stop working)
/// and return it; `None` once anyone exists.
pub fn ensure_setup_link(db: &crate::db::Db, public_url: &str, now: i64) -> Result<Option<String>, DbError> {
    db.write_blocking(|tx| {
        if store::count(tx)? > 0 {
            store::delete_setup_links(tx)?;
            return Ok(None);
        }
        store::delete_setup_links(tx)?;
        let (_, token) = store::create_link(
            tx,
            store::LinkKind::Setup,
            Role::Admin,
            "system",
            now,
            now + SETUP_LINK_TTL_MS,
        )?;
        Ok(Some(format!("{public_url}/setup?token={token}")))
    })
}
