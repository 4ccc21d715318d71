//! API tokens: random, shown once, stored as a hash, revocable.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Principal, Role};
use crate::crypto::{ct_eq, hash_token, random_token};
use crate::db::{Db, DbError, rfc3339};

pub const TOKEN_PREFIX: &str = "stg";

#[derive(Debug, Serialize)]
pub struct ApiTokenInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked: bool,
}

/// Create a token; the clear text is returned once and never stored.
pub fn create(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    role: Role,
    user_id: Option<i64>,
    now: i64,
) -> Result<(i64, String), DbError> {
    let token = random_token(TOKEN_PREFIX);
    tx.execute(
        "INSERT INTO api_tokens (name, token_hash, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, hash_token(&token), user_id, role.as_str(), now],
    )?;
    Ok((tx.last_insert_rowid(), token))
}

/// A live token's row, as far as authentication needs it.
struct TokenRow {
    id: i64,
    name: String,
    role: String,
    hash: Vec<u8>,
    user_id: Option<i64>,
    username: Option<String>,
    disabled: bool,
    last_used_at: Option<i64>,
}

/// `last_used_at` is bookkeeping: written at most once a minute, so a busy API client costs a
/// read per request, not a write transaction.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The principal a bearer token stands for, if it is a live token.
pub async fn authenticate(db: &Db, token: &str, now: i64) -> Result<Option<Principal>, DbError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = hash_token(token);
    let found = db
        .lookup(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT t.id, t.name, t.role, t.token_hash, t.user_id, u.username, IFNULL(u.disabled, 0),
                            t.last_used_at
                     FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
                )?
                .query_row([&hash], |r| {
                    Ok(TokenRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        role: r.get(2)?,
                        hash: r.get(3)?,
                        user_id: r.get(4)?,
                        username: r.get(5)?,
                        disabled: r.get(6)?,
                        last_used_at: r.get(7)?,
                    })
                })
                .optional()?;
            Ok::<_, DbError>(row.filter(|row| ct_eq(&row.hash, &hash) && !row.disabled))
        })
        .await?;
    let Some(row) = found else { return Ok(None) };
    let Some(role) = Role::parse(&row.role) else {
        return Ok(None);
    };
    if row
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS)
    {
        let id = row.id;
        // Best effort: a failed bookkeeping write must not fail the request.
        let _ = db
            .write(move |tx| {
                tx.execute(
                    "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                    params![id, now],
                )?;
                Ok::<_, DbError>(())
            })
            .await;
    }
    let actor = match row.username {
        Some(u) => format!("user:{u} (token {})", row.name),
        None => format!("token:{}", row.name),
    };
    Ok(Some(Principal {
        actor,
        role,
        user_id: row.user_id,
    }))
}

pub fn list(c: &rusqlite::Connection, user_id: Option<i64>) -> Result<Vec<ApiTokenInfo>, DbError> {
    let mut stmt = c.prepare(
        "SELECT id, name, role, created_at, last_used_at, revoked_at IS NOT NULL FROM api_tokens
         WHERE (?1 IS NULL OR user_id = ?1) ORDER BY id",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok(ApiTokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            role: Role::parse(&r.get::<_, String>(2)?).unwrap_or(Role::Viewer),
            created_at: rfc3339(r.get(3)?),
            last_used_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
            revoked: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revoke a token; false when no such live token exists.
pub fn revoke(tx: &rusqlite::Transaction<'_>, id: i64, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )? == 1)
}
