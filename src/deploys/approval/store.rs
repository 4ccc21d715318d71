//! SQL for approvals: who triggered a deployment, approving, rejecting and expiring it.

use crate::db::{Conn, OptionalExtension, Tx, params};

use crate::db::DbError;

/// What the approval rules need of a deployment.
#[derive(Debug, Clone)]
pub struct Pending {
    pub status: String,
    pub created_at: i64,
    pub triggered_by: String,
    pub triggered_by_user: Option<i64>,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
}

pub fn pending(c: &Conn<'_>, deployment_id: i64) -> Result<Option<Pending>, DbError> {
    Ok(c.prepare_cached(
        "SELECT status, created_at, triggered_by, triggered_by_user, approved_by, approved_at
             FROM deployments WHERE id = ?1",
    )?
    .query_row([deployment_id], |r| {
        Ok(Pending {
            status: r.get(0)?,
            created_at: r.get(1)?,
            triggered_by: r.get(2)?,
            triggered_by_user: r.get(3)?,
            approved_by: r.get(4)?,
            approved_at: r.get(5)?,
        })
    })
    .optional()?)
}

/// Record the person behind a new deployment (for the self-approval rule).
pub fn set_triggered_by_user(tx: &Tx<'_>, deployment_id: i64, user_id: Option<i64>) -> Result<(), DbError> {
    tx.execute(
        "UPDATE deployments SET triggered_by_user = ?2 WHERE id = ?1",
        params![deployment_id, user_id],
    )?;
    Ok(())
}

/// `awaiting_approval` → `waiting`, naming the approver; false when it no longer awaits.
pub fn approve(
    tx: &Tx<'_>,
    deployment_id: i64,
    by: &str,
    by_user: Option<i64>,
    now: i64,
) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE deployments SET status = 'waiting', approved_by = ?2, approved_by_user = ?3, approved_at = ?4
         WHERE id = ?1 AND status = 'awaiting_approval'",
        params![deployment_id, by, by_user, now],
    )? == 1)
}

/// `awaiting_approval` → `status` (`cancelled` or `expired`) with `error`; false when it no
/// longer awaits.
pub fn end(tx: &Tx<'_>, deployment_id: i64, status: &str, error: &str, now: i64) -> Result<bool, DbError> {
    Ok(tx.execute(
        "UPDATE deployments SET status = ?2, error = ?3, finished_at = ?4
         WHERE id = ?1 AND status = 'awaiting_approval'",
        params![deployment_id, status, error, now],
    )? == 1)
}

/// The deployments that have awaited approval since before `created_before`:
/// `(id, environment id, project id)`.
pub fn overdue(c: &Conn<'_>, created_before: i64) -> Result<Vec<(i64, i64, i64)>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, environment_id, project_id FROM deployments
         WHERE status = 'awaiting_approval' AND created_at < ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([created_before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many deployments of each environment await approval: `(environment id, count)`.
pub fn awaiting_per_environment(c: &Conn<'_>) -> Result<Vec<(i64, i64)>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT environment_id, count(*) FROM deployments WHERE status = 'awaiting_approval' GROUP BY environment_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
