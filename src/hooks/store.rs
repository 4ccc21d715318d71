//! SQL for webhook secrets and the delivery log.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{Delivery, Outcome, Provider};
use crate::db::{DbError, Stored, enum_at, rfc3339};

/// The project's encrypted webhook secret, if it has one.
pub fn secret(c: &Conn<'_>, project_id: i64) -> Result<Option<Vec<u8>>, DbError> {
    Ok(
        c.prepare_cached("SELECT encrypted_secret FROM webhooks WHERE project_id = ?1")?
            .query_row([project_id], |r| r.get(0))
            .optional()?,
    )
}

/// When and by whom the secret was made.
pub fn created(c: &Conn<'_>, project_id: i64) -> Result<Option<(i64, String)>, DbError> {
    Ok(c.query_row(
        "SELECT created_at, created_by FROM webhooks WHERE project_id = ?1",
        [project_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// Create or replace the project's secret.
pub fn set_secret(
    tx: &Tx<'_>,
    project_id: i64,
    ciphertext: &[u8],
    by: &str,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO webhooks (project_id, encrypted_secret, created_at, created_by) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (project_id) DO UPDATE SET encrypted_secret = excluded.encrypted_secret,
             created_at = excluded.created_at, created_by = excluded.created_by",
        params![project_id, ciphertext, now, by],
    )?;
    Ok(())
}

/// Every webhook secret, for the vault's key rotation.
pub fn all_ciphertexts(c: &Conn<'_>) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
    let mut stmt = c.prepare("SELECT project_id, encrypted_secret FROM webhooks ORDER BY project_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_ciphertext(tx: &Tx<'_>, project_id: i64, ciphertext: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "UPDATE webhooks SET encrypted_secret = ?2 WHERE project_id = ?1",
        params![project_id, ciphertext],
    )?;
    Ok(())
}

/// A delivery to record.
pub struct NewDelivery<'a> {
    pub project_id: i64,
    pub provider: Provider,
    /// Only for a verified delivery: the unique index turns a redelivery into a conflict.
    pub delivery_id: Option<&'a str>,
    pub event: &'a str,
    pub result: Outcome,
    pub detail: &'a str,
}

/// Record a delivery and prune the project's log to the last `keep` rejected and the last
/// `keep` other deliveries (so a flood of bad signatures cannot push the verified delivery ids
/// out and open the door to a replay). `Ok(None)` when the delivery id was seen before.
pub fn insert_delivery(
    tx: &Tx<'_>,
    d: &NewDelivery<'_>,
    keep: u32,
    now: i64,
) -> Result<Option<i64>, DbError> {
    // A delivery id seen before conflicts with webhook_deliveries_once and inserts nothing.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries (project_id, provider, delivery_id, event, result, detail, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (project_id, provider, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                d.project_id,
                Stored(d.provider),
                d.delivery_id,
                d.event,
                Stored(d.result),
                d.detail,
                now
            ],
            |r| r.get::<_, i64>(0),
        )
        .optional()?;
    let Some(id) = inserted else {
        return Ok(None);
    };
    let rejected = d.result == Outcome::Rejected;
    tx.prepare_cached(
        "DELETE FROM webhook_deliveries WHERE project_id = ?1 AND (result = 'rejected') = ?2 AND id <= (
             SELECT id FROM webhook_deliveries WHERE project_id = ?1 AND (result = 'rejected') = ?2
             ORDER BY id DESC LIMIT 1 OFFSET ?3)",
    )?
    .execute(params![d.project_id, rejected, keep])?;
    Ok(Some(id))
}

/// Set a delivery's result once it has been handled.
pub fn finish_delivery(
    tx: &Tx<'_>,
    id: i64,
    result: Outcome,
    detail: &str,
    deployment_ids: &[i64],
) -> Result<(), DbError> {
    let ids = serde_json::to_string(deployment_ids).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "UPDATE webhook_deliveries SET result = ?2, detail = ?3, deployment_ids = ?4 WHERE id = ?1",
    )?
    .execute(params![id, Stored(result), detail, ids])?;
    Ok(())
}

/// Whether the project had a rejected delivery at or after `since` (besides `except`).
pub fn rejected_since(c: &Conn<'_>, project_id: i64, since: i64, except: i64) -> Result<bool, DbError> {
    Ok(c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM webhook_deliveries
         WHERE project_id = ?1 AND result = 'rejected' AND at >= ?2 AND id <> ?3)",
    )?
    .query_row(params![project_id, since, except], |r| r.get(0))?)
}

/// The project's latest deliveries, newest first.
pub fn recent(c: &Conn<'_>, project_id: i64, limit: i64) -> Result<Vec<Delivery>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, provider, delivery_id, event, result, detail, deployment_ids, at
         FROM webhook_deliveries WHERE project_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![project_id, limit], |r| {
        let id = r.get(0)?;
        let ids: String = r.get(6)?;
        Ok(Delivery {
            id,
            provider: enum_at(r, 1, "webhook_deliveries", id)?,
            delivery_id: r.get(2)?,
            event: r.get(3)?,
            result: enum_at(r, 4, "webhook_deliveries", id)?,
            detail: r.get(5)?,
            deployment_ids: serde_json::from_str(&ids).unwrap_or_default(),
            at: rfc3339(r.get(7)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
