//! SQL for people: users, web sessions, one-time sign-up links (first-admin setup, invites) and
//! API tokens.
//!
//! Session ids and link tokens are 32 random bytes; only their SHA-256 hashes are stored.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::tokens::{ApiTokenInfo, TOKEN_PREFIX};
use super::{Role, User, UserError};
use crate::crypto::{ct_eq, hash_token, random_token};
use crate::db::stored::enum_at;
use crate::db::{DbError, rfc3339};

const USER_COLUMNS: &str = "id, username, display_name, role, github_login, disabled, created_at, \
     password_hash IS NOT NULL, github_id";

/// How many columns [`USER_COLUMNS`] names: a query's own columns follow them.
const USER_COLUMN_COUNT: usize = 9;

fn user_from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<User> {
    let id: i64 = r.get(0)?;
    Ok(User {
        id,
        username: r.get(1)?,
        display_name: r.get(2)?,
        role: enum_at(r, 3, "users", id)?,
        github_login: r.get(4)?,
        disabled: r.get(5)?,
        created_at: rfc3339(r.get(6)?),
        has_password: r.get(7)?,
        github_id: r.get(8)?,
    })
}

pub fn count(c: &Conn<'_>) -> Result<i64, DbError> {
    Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

pub fn list(c: &Conn<'_>) -> Result<Vec<User>, DbError> {
    let mut stmt = c.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"))?;
    Ok(stmt.query_map([], user_from_row)?.collect::<Result<_, _>>()?)
}

pub fn get(c: &Conn<'_>, id: i64) -> Result<User, UserError> {
    c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
        [id],
        user_from_row,
    )
    .optional()?
    .ok_or(UserError::NotFound)
}

/// A user and their password hash, by username (case-insensitive).
pub fn by_username(c: &Conn<'_>, username: &str) -> Result<Option<(User, Option<String>)>, DbError> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE lower(username) = lower(?1)"),
        [username],
        |r| Ok((user_from_row(r)?, r.get(USER_COLUMN_COUNT)?)),
    )
    .optional()?)
}

pub fn by_github_login(c: &Conn<'_>, login: &str) -> Result<Option<User>, DbError> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(github_login) = lower(?1)"),
        [login],
        user_from_row,
    )
    .optional()?)
}

/// The user bound to this numeric GitHub id.
pub fn by_github_id(c: &Conn<'_>, github_id: i64) -> Result<Option<User>, DbError> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE github_id = ?1"),
        [github_id],
        user_from_row,
    )
    .optional()?)
}

pub struct NewUser<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: Option<&'a str>,
    pub github_login: Option<&'a str>,
    pub github_id: Option<i64>,
    pub role: Role,
}

pub fn insert(tx: &Tx<'_>, u: &NewUser<'_>, now: i64) -> Result<i64, UserError> {
    if by_username(tx, u.username)?.is_some() {
        return Err(UserError::UsernameTaken(u.username.to_owned()));
    }
    tx.query_row(
        "INSERT INTO users (username, display_name, password_hash, github_login, role, created_at, github_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        params![
            u.username,
            u.display_name,
            u.password_hash,
            u.github_login,
            u.role,
            now,
            u.github_id
        ],
        |r| r.get(0),
    )
    .map_err(|e| {
        let e = DbError::from(e);
        if e.is_constraint() {
            UserError::UsernameTaken(u.username.to_owned())
        } else {
            UserError::Db(e)
        }
    })
}

/// Enabled admins other than `except`: an admin may not demote or disable the last one.
pub fn other_enabled_admins(c: &Conn<'_>, except: i64) -> Result<i64, DbError> {
    Ok(c.query_row(
        "SELECT count(*) FROM users WHERE role = ?2 AND disabled = 0 AND id != ?1",
        params![except, Role::Admin],
        |r| r.get(0),
    )?)
}

pub fn set_role(tx: &Tx<'_>, id: i64, role: Role) -> Result<(), UserError> {
    match tx.execute("UPDATE users SET role = ?2 WHERE id = ?1", params![id, role])? {
        0 => Err(UserError::NotFound),
        _ => Ok(()),
    }
}

pub fn set_disabled(tx: &Tx<'_>, id: i64, disabled: bool) -> Result<(), UserError> {
    match tx.execute(
        "UPDATE users SET disabled = ?2 WHERE id = ?1",
        params![id, disabled],
    )? {
        0 => Err(UserError::NotFound),
        _ => Ok(()),
    }
}

/// Link a GitHub login (lowercased) to a user, with the numeric id when it is known (the user
/// proved the identity at GitHub). Refused when another user holds the login or the id. An
/// admin's link (no id) to a *different* login drops the old id, so the new login binds its own
/// at its next sign-in; re-saving the same login keeps it.
pub fn link_github(tx: &Tx<'_>, id: i64, login: &str, github_id: Option<i64>) -> Result<(), UserError> {
    let login = login.to_ascii_lowercase();
    if let Some(other) = by_github_login(tx, &login)?
        && other.id != id
    {
        return Err(UserError::GithubTaken(login));
    }
    if let Some(gid) = github_id
        && let Some(other) = by_github_id(tx, gid)?
        && other.id != id
    {
        return Err(UserError::GithubTaken(login));
    }
    match github_id {
        Some(gid) => tx.execute(
            "UPDATE users SET github_login = ?2, github_id = ?3 WHERE id = ?1",
            params![id, login, gid],
        )?,
        None => tx.execute(
            "UPDATE users SET github_id = CASE WHEN github_login = ?2 THEN github_id END,
                              github_login = ?2
             WHERE id = ?1",
            params![id, login],
        )?,
    };
    Ok(())
}

/// Bind the numeric GitHub id to an account that had only a login.
pub fn bind_github_id(tx: &Tx<'_>, id: i64, github_id: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE users SET github_id = ?2 WHERE id = ?1",
        params![id, github_id],
    )?;
    Ok(())
}

/// The login shown for an account bound by id, after a rename at GitHub. Left as it was (answers
/// false) when another account holds that login.
pub fn rename_github_login(tx: &Tx<'_>, id: i64, login: &str) -> Result<bool, DbError> {
    let login = login.to_ascii_lowercase();
    if by_github_login(tx, &login)?.is_some_and(|other| other.id != id) {
        return Ok(false);
    }
    tx.execute(
        "UPDATE users SET github_login = ?2 WHERE id = ?1",
        params![id, login],
    )?;
    Ok(true)
}

pub fn unlink_github(tx: &Tx<'_>, id: i64) -> Result<(), UserError> {
    tx.execute(
        "UPDATE users SET github_login = NULL, github_id = NULL WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

// --- sessions ---------------------------------------------------------------------------------

/// A new session: returns the cookie value (shown to the browser only) and its CSRF token.
pub fn create_session(
    tx: &Tx<'_>,
    user_id: i64,
    now: i64,
    lifetime_ms: i64,
    via_password: bool,
) -> Result<(String, String), DbError> {
    let id = random_token("sess");
    let csrf = random_token("csrf");
    tx.execute(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at, via_password)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            hash_token(&id),
            user_id,
            csrf,
            now,
            now.saturating_add(lifetime_ms),
            via_password
        ],
    )?;
    // Sign-in is rare: a good moment to forget sessions that have run out.
    tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    Ok((id, csrf))
}

/// A live session: the user behind it (enabled) and the session's CSRF token.
pub struct SessionRow {
    pub id_hash: Vec<u8>,
    pub user: User,
    pub csrf: String,
    /// When the session ends by itself (ms since the epoch).
    pub expires_at: i64,
    /// Opened with a password (not GitHub or another provider).
    pub via_password: bool,
    /// The user has two-factor on.
    pub two_factor: bool,
}

pub fn session(c: &Conn<'_>, cookie_value: &str, now: i64) -> Result<Option<SessionRow>, DbError> {
    // Every page request runs this: the statement text is built once.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let user_columns: Vec<String> = USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect();
        format!(
            "SELECT {}, s.id_hash, s.csrf_token, s.expires_at, s.via_password,
                 EXISTS (SELECT 1 FROM two_factor t WHERE t.user_id = u.id AND t.enabled_at IS NOT NULL)
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND u.disabled = 0",
            user_columns.join(", ")
        )
    });
    let hash = hash_token(cookie_value);
    let row = c
        .prepare_cached(&SQL)?
        .query_row(params![hash, now], |r| {
            Ok(SessionRow {
                user: user_from_row(r)?,
                id_hash: r.get(USER_COLUMN_COUNT)?,
                csrf: r.get(USER_COLUMN_COUNT + 1)?,
                expires_at: r.get(USER_COLUMN_COUNT + 2)?,
                via_password: r.get(USER_COLUMN_COUNT + 3)?,
                two_factor: r.get(USER_COLUMN_COUNT + 4)?,
            })
        })
        .optional()?;
    Ok(row.filter(|s| ct_eq(&s.id_hash, &hash)))
}

pub fn delete_session(tx: &Tx<'_>, id_hash: &[u8]) -> Result<(), DbError> {
    tx.execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])?;
    Ok(())
}

/// End every session of a user; returns how many there were.
pub fn delete_user_sessions(tx: &Tx<'_>, user_id: i64) -> Result<usize, DbError> {
    Ok(tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?)
}

/// End every session of a user but `keep` (the one changing the password); returns how many.
pub fn delete_other_sessions(tx: &Tx<'_>, user_id: i64, keep: Option<&[u8]>) -> Result<usize, DbError> {
    Ok(tx.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND (id_hash != ?2 OR ?2 IS NULL)",
        params![user_id, keep],
    )?)
}

/// The stored password hash of a user (`None`: no password, a GitHub-only account).
pub fn password_hash(c: &Conn<'_>, id: i64) -> Result<Option<String>, UserError> {
    c.query_row("SELECT password_hash FROM users WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or(UserError::NotFound)
}

pub fn set_password_hash(tx: &Tx<'_>, id: i64, hash: &str) -> Result<(), UserError> {
    match tx.execute(
        "UPDATE users SET password_hash = ?2 WHERE id = ?1",
        params![id, hash],
    )? {
        0 => Err(UserError::NotFound),
        _ => Ok(()),
    }
}

pub fn session_counts(c: &Conn<'_>, now: i64) -> Result<Vec<(i64, i64)>, DbError> {
    let mut stmt =
        c.prepare("SELECT user_id, count(*) FROM sessions WHERE expires_at > ?1 GROUP BY user_id")?;
    Ok(stmt
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

// --- one-time links -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Setup,
    Invite,
}

impl LinkKind {
    fn as_str(self) -> &'static str {
        match self {
            LinkKind::Setup => "setup",
            LinkKind::Invite => "invite",
        }
    }
}

/// Create a one-time link token; returns (id, token). `created_by_user` is the inviting person,
/// if any (the acceptance rule checks their current role).
pub fn create_link(
    tx: &Tx<'_>,
    kind: LinkKind,
    role: Role,
    created_by: &str,
    created_by_user: Option<i64>,
    now: i64,
    expires_at: i64,
) -> Result<(i64, String), DbError> {
    let token = random_token(kind.as_str());
    let id = tx.query_row(
        "INSERT INTO signup_links (token_hash, kind, role, created_by, created_by_user, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        params![
            hash_token(&token),
            kind.as_str(),
            role,
            created_by,
            created_by_user,
            now,
            expires_at
        ],
        |r| r.get(0),
    )?;
    Ok((id, token))
}

/// A live (unused, unexpired) link of some kind, as stored.
#[derive(Debug, Clone, Copy)]
pub struct LinkRow {
    pub id: i64,
    pub role: Role,
    /// The inviter: their current role and whether they are disabled (`None`: no person).
    pub inviter: Option<(Role, bool)>,
}

/// The live (unused, unexpired) link of this kind whose token is `token`.
pub fn peek_link(c: &Conn<'_>, kind: LinkKind, token: &str, now: i64) -> Result<Option<LinkRow>, DbError> {
    let hash = hash_token(token);
    let row = c
        .query_row(
            "SELECT l.token_hash, l.role, l.id, u.role, u.disabled FROM signup_links l
             LEFT JOIN users u ON u.id = l.created_by_user
             WHERE l.token_hash = ?1 AND l.kind = ?2 AND l.used_at IS NULL AND l.expires_at > ?3",
            params![hash, kind.as_str(), now],
            |r| {
                let id: i64 = r.get(2)?;
                let inviter = match r.get::<_, Option<Role>>(3)? {
                    Some(role) => Some((role, r.get::<_, bool>(4)?)),
                    None => None,
                };
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    LinkRow {
                        id,
                        role: enum_at::<Role>(r, 1, "signup_links", id)?,
                        inviter,
                    },
                ))
            },
        )
        .optional()?;
    Ok(row.filter(|(h, _)| ct_eq(h, &hash)).map(|(_, link)| link))
}

/// Mark the live link `id` used (inside the transaction that creates the user); false when it
/// was used meanwhile.
pub fn consume_link(tx: &Tx<'_>, id: i64, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE signup_links SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL",
        params![id, now],
    )? == 1)
}

pub fn set_link_user(tx: &Tx<'_>, link_id: i64, user_id: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE signup_links SET used_by = ?2 WHERE id = ?1",
        params![link_id, user_id],
    )?;
    Ok(())
}

/// Unused setup links are replaced at each start; only the newest one printed works.
pub fn delete_setup_links(tx: &Tx<'_>) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM signup_links WHERE kind = 'setup' AND used_at IS NULL",
        [],
    )?;
    Ok(())
}

/// An open invitation as the Users page lists it.
#[derive(Debug, Clone)]
pub struct Invite {
    pub id: i64,
    pub role: Role,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: i64,
}

pub fn open_invites(c: &Conn<'_>, now: i64) -> Result<Vec<Invite>, DbError> {
    let mut stmt = c.prepare(
        "SELECT id, role, created_by, created_at, expires_at FROM signup_links
         WHERE kind = 'invite' AND used_at IS NULL AND expires_at > ?1 ORDER BY id DESC",
    )?;
    Ok(stmt
        .query_map([now], |r| {
            let id: i64 = r.get(0)?;
            Ok(Invite {
                id,
                role: enum_at(r, 1, "signup_links", id)?,
                created_by: r.get(2)?,
                created_at: rfc3339(r.get(3)?),
                expires_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Withdraw an open invitation (it expires now).
pub fn revoke_invite(tx: &Tx<'_>, id: i64, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE signup_links SET expires_at = ?2 WHERE id = ?1 AND kind = 'invite' AND used_at IS NULL",
        params![id, now],
    )? == 1)
}

// --- password-reset links ------------------------------------------------------------------------

/// Issue a reset link for `user_id`; older open links of that user stop working. Returns (id, token).
pub fn create_reset(
    tx: &Tx<'_>,
    user_id: i64,
    created_by: &str,
    now: i64,
    expires_at: i64,
) -> Result<(i64, String), DbError> {
    tx.execute(
        "UPDATE password_resets SET revoked_at = ?2 WHERE user_id = ?1 AND used_at IS NULL AND revoked_at IS NULL",
        params![user_id, now],
    )?;
    let token = random_token("reset");
    let id = tx.query_row(
        "INSERT INTO password_resets (token_hash, user_id, created_by, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![hash_token(&token), user_id, created_by, now, expires_at],
        |r| r.get(0),
    )?;
    Ok((id, token))
}

/// A live reset link: unused, unrevoked, unexpired, for an enabled user.
#[derive(Debug, Clone)]
pub struct ResetRow {
    pub id: i64,
    pub user: User,
}

pub fn live_reset(c: &Conn<'_>, token: &str, now: i64) -> Result<Option<ResetRow>, DbError> {
    let hash = hash_token(token);
    let user_columns: Vec<String> = USER_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect();
    let row = c
        .query_row(
            &format!(
                "SELECT {}, r.id, r.token_hash FROM password_resets r JOIN users u ON u.id = r.user_id
                 WHERE r.token_hash = ?1 AND r.used_at IS NULL AND r.revoked_at IS NULL
                   AND r.expires_at > ?2 AND u.disabled = 0",
                user_columns.join(", ")
            ),
            params![hash, now],
            |r| {
                Ok((
                    ResetRow {
                        user: user_from_row(r)?,
                        id: r.get(USER_COLUMN_COUNT)?,
                    },
                    r.get::<_, Vec<u8>>(USER_COLUMN_COUNT + 1)?,
                ))
            },
        )
        .optional()?;
    Ok(row.filter(|(_, h)| ct_eq(h, &hash)).map(|(row, _)| row))
}

/// Mark the live reset link `id` used; false when it was used or withdrawn meanwhile.
pub fn consume_reset(tx: &Tx<'_>, id: i64, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE password_resets SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL AND revoked_at IS NULL",
        params![id, now],
    )? == 1)
}

/// Withdraw an open reset link; false when there is no such open link.
pub fn revoke_reset(tx: &Tx<'_>, id: i64, now: i64) -> Result<Option<i64>, DbError> {
    Ok(tx
        .query_row(
            "UPDATE password_resets SET revoked_at = ?2
             WHERE id = ?1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?2
             RETURNING user_id",
            params![id, now],
            |r| r.get(0),
        )
        .optional()?)
}

/// An open reset link as the Users page lists it.
#[derive(Debug, Clone)]
pub struct OpenReset {
    pub id: i64,
    pub user_id: i64,
    pub username: String,
    pub created_by: String,
    pub expires_at: i64,
}

pub fn open_resets(c: &Conn<'_>, now: i64) -> Result<Vec<OpenReset>, DbError> {
    let mut stmt = c.prepare(
        "SELECT r.id, r.user_id, u.username, r.created_by, r.expires_at
         FROM password_resets r JOIN users u ON u.id = r.user_id
         WHERE r.used_at IS NULL AND r.revoked_at IS NULL AND r.expires_at > ?1 ORDER BY r.id DESC",
    )?;
    Ok(stmt
        .query_map([now], |r| {
            Ok(OpenReset {
                id: r.get(0)?,
                user_id: r.get(1)?,
                username: r.get(2)?,
                created_by: r.get(3)?,
                expires_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

// --- API tokens ---------------------------------------------------------------------------------

/// Create a token; the clear text is returned once and never stored.
pub fn insert_token(
    tx: &Tx<'_>,
    name: &str,
    role: Role,
    user_id: Option<i64>,
    now: i64,
) -> Result<(i64, String), DbError> {
    let token = random_token(TOKEN_PREFIX);
    let id = tx.query_row(
        "INSERT INTO api_tokens (name, token_hash, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
        params![name, hash_token(&token), user_id, role, now],
        |r| r.get(0),
    )?;
    Ok((id, token))
}

/// A live token's row, as far as authentication needs it.
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub hash: Vec<u8>,
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub disabled: bool,
    /// The owner's current role (`None`: a CLI token, no owner).
    pub owner_role: Option<Role>,
    pub last_used_at: Option<i64>,
}

/// The live token whose hash is `hash` (compared in constant time), if its user is enabled.
pub fn live_token(c: &Conn<'_>, hash: &[u8]) -> Result<Option<TokenRow>, DbError> {
    let row = c
        .prepare_cached(
            "SELECT t.id, t.name, t.role, t.token_hash, t.user_id, u.username, COALESCE(u.disabled, 0),
                    t.last_used_at, u.role
             FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
        )?
        .query_row([hash], |r| {
            let id: i64 = r.get(0)?;
            Ok(TokenRow {
                id,
                name: r.get(1)?,
                role: enum_at(r, 2, "api_tokens", id)?,
                hash: r.get(3)?,
                user_id: r.get(4)?,
                username: r.get(5)?,
                disabled: r.get(6)?,
                last_used_at: r.get(7)?,
                owner_role: r.get(8)?,
            })
        })
        .optional()?;
    Ok(row.filter(|row| ct_eq(&row.hash, hash) && !row.disabled))
}

pub fn touch_token(tx: &Tx<'_>, id: i64, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// Tokens of one user (`Some`), or every token (`None`).
pub fn list_tokens(c: &Conn<'_>, user_id: Option<i64>) -> Result<Vec<ApiTokenInfo>, DbError> {
    let mut stmt = c.prepare(
        "SELECT id, name, role, created_at, last_used_at, revoked_at IS NOT NULL FROM api_tokens
         WHERE (user_id = ?1 OR ?1 IS NULL) ORDER BY id",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        let id: i64 = r.get(0)?;
        Ok(ApiTokenInfo {
            id,
            name: r.get(1)?,
            role: enum_at(r, 2, "api_tokens", id)?,
            created_at: rfc3339(r.get(3)?),
            last_used_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
            revoked: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revoke a token; false when no such live token exists.
pub fn revoke_token(tx: &Tx<'_>, id: i64, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )? == 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_user_column_count_matches_the_list() {
        assert_eq!(super::USER_COLUMNS.split(", ").count(), super::USER_COLUMN_COUNT);
    }
}
