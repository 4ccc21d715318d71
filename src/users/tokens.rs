//! API tokens: random, shown once, stored as a hash, revocable. Creating and revoking are
//! [`super::ops`] operations (the token rules live there); the SQL is in [`super::store`].

use serde::Serialize;

use super::{Principal, Role, store};
use crate::crypto::hash_token;
use crate::db::{Db, DbError};

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

/// `last_used_at` is bookkeeping: written at most once a minute, so a busy API client costs a
/// read per request, not a write transaction.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The principal a bearer token stands for, if it is a live token.
pub async fn authenticate(db: &Db, token: &str, now: i64) -> Result<Option<Principal>, DbError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = hash_token(token);
    let found = db.lookup(move |c| store::live_token(c, &hash)).await?;
    let Some(row) = found else { return Ok(None) };
    if row
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS)
    {
        let id = row.id;
        // Bookkeeping only: a failed `last_used_at` write must not fail the request it
        // authenticates, so it is logged and dropped.
        if let Err(e) = db.write(move |tx| store::touch_token(tx, id, now)).await {
            tracing::warn!(token_id = id, error = %e, "cannot record when the token was last used");
        }
    }
    let actor = match row.username {
        Some(u) => format!("user:{u} (token {})", row.name),
        None => format!("token:{}", row.name),
    };
    // A token acts with the lower of its own role and its owner's current one; a CLI token
    // (no owner) keeps its own.
    let role = row.owner_role.map_or(row.role, |owner| owner.min(row.role));
    Ok(Some(Principal {
        actor,
        role,
        user_id: row.user_id,
        via_token: true,
        token_role: Some(row.role),
    }))
}
