//! SQL for what runs in each environment (`environment_runtime`, one row per environment).

use std::collections::HashMap;

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::DriftReason;
use crate::db::DbError;

/// What a RUNTIME is checked against: the environment's compose project and names.
#[derive(Debug, Clone)]
pub struct Target {
    pub project_id: i64,
    pub project: String,
    pub environment: String,
    pub compose_project: String,
}

pub fn target(c: &Conn<'_>, environment_id: i64) -> Result<Option<Target>, DbError> {
    Ok(c.prepare_cached(
        "SELECT p.id, p.name, e.name, e.compose_project FROM environments e
         JOIN projects p ON p.id = e.project_id WHERE e.id = ?1",
    )?
    .query_row([environment_id], |r| {
        Ok(Target {
            project_id: r.get(0)?,
            project: r.get(1)?,
            environment: r.get(2)?,
            compose_project: r.get(3)?,
        })
    })
    .optional()?)
}

/// Whether a deployment of the environment is queued or running: compose is changing the
/// containers, so what runs is in flux (a renamed old container, a created new one).
pub fn deploying(c: &Conn<'_>, environment_id: i64) -> Result<bool, DbError> {
    Ok(c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM deployments WHERE environment_id = ?1 AND status IN ('queued', 'running'))",
    )?
    .query_row([environment_id], |r| r.get(0))?)
}

/// An environment's row as stored. `containers` stays the JSON text it was stored as (a report
/// is compared with it as text: the same containers always serialize the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub agent_id: Option<i64>,
    pub reported_at: i64,
    pub containers: String,
    pub truncated: bool,
    pub drift: Option<Vec<DriftReason>>,
    pub drift_since: Option<i64>,
}

fn drift_at(r: &crate::db::Row<'_>, i: usize) -> crate::db::SqlResult<Option<Vec<DriftReason>>> {
    let text: Option<String> = r.get(i)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            crate::db::SqlError::column(
                i,
                format!("environment_runtime: drift is not a JSON list of reasons: {e}"),
            )
        })
    })
    .transpose()
}

pub fn get(c: &Conn<'_>, environment_id: i64) -> Result<Option<Row>, DbError> {
    Ok(c.prepare_cached(
        "SELECT agent_id, reported_at, containers, truncated, drift, drift_since
         FROM environment_runtime WHERE environment_id = ?1",
    )?
    .query_row([environment_id], |r| {
        Ok(Row {
            agent_id: r.get(0)?,
            reported_at: r.get(1)?,
            containers: r.get(2)?,
            truncated: r.get(3)?,
            drift: drift_at(r, 4)?,
            drift_since: r.get(5)?,
        })
    })
    .optional()?)
}

pub fn upsert(tx: &Tx<'_>, environment_id: i64, row: &Row) -> Result<(), DbError> {
    let drift = row
        .drift
        .as_ref()
        .map(|d| serde_json::to_string(d).unwrap_or_else(|_| "[]".into()));
    tx.prepare_cached(
        "INSERT INTO environment_runtime (environment_id, agent_id, reported_at, containers, truncated, drift, drift_since)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (environment_id) DO UPDATE SET agent_id = excluded.agent_id,
             reported_at = excluded.reported_at, containers = excluded.containers,
             truncated = excluded.truncated, drift = excluded.drift, drift_since = excluded.drift_since",
    )?
    .execute(params![
        environment_id,
        row.agent_id,
        row.reported_at,
        row.containers,
        row.truncated,
        drift,
        row.drift_since
    ])?;
    Ok(())
}

/// Every environment with a stored runtime (for a recheck of all after missed events).
pub fn environments(c: &Conn<'_>) -> Result<Vec<i64>, DbError> {
    let mut stmt =
        c.prepare_cached("SELECT environment_id FROM environment_runtime ORDER BY environment_id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the dashboard shows per environment: when it was reported and its drift.
#[derive(Debug, Clone)]
pub struct Summary {
    pub reported_at: i64,
    pub drift: Option<Vec<DriftReason>>,
    pub drift_since: Option<i64>,
}

pub fn summaries(c: &Conn<'_>) -> Result<HashMap<i64, Summary>, DbError> {
    let mut stmt =
        c.prepare_cached("SELECT environment_id, reported_at, drift, drift_since FROM environment_runtime")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            Summary {
                reported_at: r.get(1)?,
                drift: drift_at(r, 2)?,
                drift_since: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
