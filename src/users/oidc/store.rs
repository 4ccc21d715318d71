//! SQL for `oidc_identities` (V19): a person's bindings to `(issuer, subject)` pairs.

use crate::db::{Conn, OptionalExtension, Tx, params};

use crate::db::{DbError, rfc3339};

/// One binding, as `/users` shows it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: i64,
    pub user_id: i64,
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub created_at: String,
    pub last_sign_in_at: String,
}

const COLUMNS: &str = "id, user_id, provider, issuer, subject, email, created_at, last_sign_in_at";

fn from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Identity> {
    Ok(Identity {
        id: r.get(0)?,
        user_id: r.get(1)?,
        provider: r.get(2)?,
        issuer: r.get(3)?,
        subject: r.get(4)?,
        email: r.get(5)?,
        created_at: rfc3339(r.get(6)?),
        last_sign_in_at: rfc3339(r.get(7)?),
    })
}

/// The identity bound to this issuer's subject.
pub fn by_subject(c: &Conn<'_>, issuer: &str, subject: &str) -> Result<Option<Identity>, DbError> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM oidc_identities WHERE issuer = ?1 AND subject = ?2"),
        params![issuer, subject],
        from_row,
    )
    .optional()?)
}

/// Every identity, ordered by user then provider (for the Users page).
pub fn all(c: &Conn<'_>) -> Result<Vec<Identity>, DbError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {COLUMNS} FROM oidc_identities ORDER BY user_id, provider, id"
    ))?;
    Ok(stmt.query_map([], from_row)?.collect::<Result<_, _>>()?)
}

pub struct NewIdentity<'a> {
    pub user_id: i64,
    pub provider: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub email: Option<&'a str>,
}

pub fn insert(tx: &Tx<'_>, n: &NewIdentity<'_>, now: i64) -> Result<i64, DbError> {
    Ok(tx.query_row(
        "INSERT INTO oidc_identities (user_id, provider, issuer, subject, email, created_at, last_sign_in_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
        params![n.user_id, n.provider, n.issuer, n.subject, n.email, now],
        |r| r.get(0),
    )?)
}

/// A sign-in through this identity: the e-mail it now has, and when.
pub fn touch(tx: &Tx<'_>, id: i64, email: Option<&str>, now: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE oidc_identities SET email = ?2, last_sign_in_at = ?3 WHERE id = ?1",
        params![id, email, now],
    )?;
    Ok(())
}
