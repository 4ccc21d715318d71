//! SQL of two-factor: `two_factor` (the encrypted TOTP secret, enabled or pending, the last
//! accepted step) and `recovery_codes` (SHA-256 hashes, each usable once).

use crate::db::{Conn, OptionalExtension, Tx, params};

use crate::db::DbError;

/// A person's two-factor row.
#[derive(Debug, Clone)]
pub struct TwoFactorRow {
    pub secret_encrypted: Vec<u8>,
    /// `None`: enrolment pending.
    pub enabled_at: Option<i64>,
}

pub fn get(c: &Conn<'_>, user_id: i64) -> Result<Option<TwoFactorRow>, DbError> {
    Ok(c.query_row(
        "SELECT secret_encrypted, enabled_at FROM two_factor WHERE user_id = ?1",
        [user_id],
        |r| {
            Ok(TwoFactorRow {
                secret_encrypted: r.get(0)?,
                enabled_at: r.get(1)?,
            })
        },
    )
    .optional()?)
}

pub fn is_enabled(c: &Conn<'_>, user_id: i64) -> Result<bool, DbError> {
    Ok(get(c, user_id)?.is_some_and(|r| r.enabled_at.is_some()))
}

/// Users with two-factor on (for the Users page).
pub fn enabled_users(c: &Conn<'_>) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare("SELECT user_id FROM two_factor WHERE enabled_at IS NOT NULL")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A new pending enrolment (replacing a pending one; never an enabled one).
pub fn put_pending(tx: &Tx<'_>, user_id: i64, secret_encrypted: &[u8], now: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "INSERT INTO two_factor (user_id, secret_encrypted, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(user_id) DO UPDATE SET secret_encrypted = excluded.secret_encrypted,
             created_at = excluded.created_at, last_step = NULL
         WHERE two_factor.enabled_at IS NULL",
        params![user_id, secret_encrypted, now],
    )?;
    Ok(n == 1)
}

/// Accept time step `step` for `user_id`: true unless a step at or after it was accepted
/// already (a replayed code).
pub fn accept_step(tx: &Tx<'_>, user_id: i64, step: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE two_factor SET last_step = ?2 WHERE user_id = ?1 AND (last_step IS NULL OR last_step < ?2)",
        params![user_id, step],
    )?;
    Ok(n == 1)
}

pub fn enable(tx: &Tx<'_>, user_id: i64, now: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE two_factor SET enabled_at = ?2 WHERE user_id = ?1 AND enabled_at IS NULL",
        params![user_id, now],
    )?;
    Ok(n == 1)
}

/// Remove a person's two-factor (secret and recovery codes); true when there was one.
pub fn delete(tx: &Tx<'_>, user_id: i64) -> Result<bool, DbError> {
    tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
    Ok(tx.execute("DELETE FROM two_factor WHERE user_id = ?1", [user_id])? > 0)
}

/// Replace a person's recovery codes by these hashes.
pub fn replace_recovery_codes(
    tx: &Tx<'_>,
    user_id: i64,
    hashes: &[Vec<u8>],
    now: i64,
) -> Result<(), DbError> {
    tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
    let mut stmt =
        tx.prepare("INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES (?1, ?2, ?3)")?;
    for h in hashes {
        stmt.execute(params![user_id, h, now])?;
    }
    Ok(())
}

/// Spend a recovery code: true when it was one of the person's unused codes.
pub fn use_recovery_code(tx: &Tx<'_>, user_id: i64, hash: &[u8], now: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE recovery_codes SET used_at = ?3
         WHERE id = (SELECT id FROM recovery_codes WHERE user_id = ?1 AND code_hash = ?2 AND used_at IS NULL LIMIT 1)",
        params![user_id, hash, now],
    )?;
    Ok(n == 1)
}

pub fn unused_recovery_codes(c: &Conn<'_>, user_id: i64) -> Result<i64, DbError> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = ?1 AND used_at IS NULL",
        [user_id],
        |r| r.get(0),
    )?)
}

/// Every encrypted secret, for `stagely rotate-key`.
pub fn all_ciphertexts(c: &Conn<'_>) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
    let mut stmt = c.prepare("SELECT user_id, secret_encrypted FROM two_factor")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_ciphertext(tx: &Tx<'_>, user_id: i64, ciphertext: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "UPDATE two_factor SET secret_encrypted = ?2 WHERE user_id = ?1",
        params![user_id, ciphertext],
    )?;
    Ok(())
}
