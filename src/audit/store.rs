//! SQL for the audit log.

use rusqlite::params;
use serde::Serialize;

use crate::db::{DbError, rfc3339};

/// Record one change inside the caller's transaction, so the change and its record commit together.
pub fn record(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: Option<i64>,
    detail: &str,
) -> Result<(), DbError> {
    tx.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target_type, target_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![now, actor, action, target_type, target_id, detail])?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<i64>,
    pub detail: String,
}

/// Newest first, `limit` rows before `before_id` (for paging).
pub fn list(
    c: &rusqlite::Connection,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let mut stmt = c.prepare(
        "SELECT id, at, actor, action, target_type, target_id, detail FROM audit_log
         WHERE ?1 IS NULL OR id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before_id, limit], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: rfc3339(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            target_type: r.get(4)?,
            target_id: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
