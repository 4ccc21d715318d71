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

/// The principal a bearer token stands for, if it is a live token.
pub async fn authenticate(db: &Db, token: &str, now: i64) -> Result<Option<Principal>, DbError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = hash_token(token);
    let found = db
        .read(move |c| {
            let row = c
                .query_row(
                    "SELECT t.id, t.name, t.role, t.token_hash, t.user_id, u.username, IFNULL(u.disabled, 0)
                     FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
                    [&hash],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, bool>(6)?,
                        ))
                    },
                )
                .optional()?;
            Ok::<_, DbError>(row.filter(|row| ct_eq(&row.3, &hash) && !row.6))
        })
        .await?;
    let Some((id, name, role, _, user_id, username, _)) = found else {
        return Ok(None);
    };
    let Some(role) = Role::parse(&role) else {
        return Ok(None);
    };
    // Best effort: a failed bookkeeping write must not fail the request.
    let _ = db
        .write(move |tx| {
            tx.execute("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1 AND IFNULL(last_used_at, 0) < ?2 - 60000", params![id, now])?;
            Ok::<_, DbError>(())
        })
        .await;
    let actor = match username {
        Some(u) => format!("user:{u} (token {name})"),
        None => format!("token:{name}"),
    };
    Ok(Some(Principal { actor, role, user_id }))
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
