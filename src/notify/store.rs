//! SQL for notification channels and their outbox. Targets and signing secrets go in and come
//! out only as age ciphertext.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{ChannelInfo, Delivery, DeliveryStatus, Kind, NotifyError};
use crate::db::{DbError, Stored, enum_at, rfc3339};

pub fn project_name(c: &Conn<'_>, project_id: i64) -> Result<Option<String>, DbError> {
    Ok(c.prepare_cached("SELECT name FROM projects WHERE id = ?1")?
        .query_row([project_id], |r| r.get(0))
        .optional()?)
}

pub struct NewChannel<'a> {
    pub project_id: i64,
    pub kind: Kind,
    pub name: &'a str,
    pub events: &'a [String],
    pub offline_minutes: f64,
    pub target_hint: &'a str,
    pub encrypted_target: Vec<u8>,
    pub encrypted_signing: Option<Vec<u8>>,
    pub actor: &'a str,
}

/// Insert a channel; `Ok(None)` when its name is taken in the project.
pub fn insert_channel(tx: &Tx<'_>, ch: &NewChannel<'_>, now: i64) -> Result<Option<i64>, DbError> {
    let done = tx
        .prepare_cached(
            "INSERT INTO notify_channels (project_id, kind, name, events, offline_minutes, target_hint,
                 encrypted_target, encrypted_signing, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (project_id, name) DO NOTHING RETURNING id",
        )?
        .query_row(
            params![
                ch.project_id,
                Stored(ch.kind),
                ch.name,
                ch.events.join(","),
                ch.offline_minutes,
                ch.target_hint,
                ch.encrypted_target,
                ch.encrypted_signing,
                ch.actor,
                now
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(done)
}

const CHANNEL_SELECT: &str = "SELECT id, project_id, kind, name, events, offline_minutes, target_hint,
    created_by, created_at FROM notify_channels";

fn channel_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<ChannelInfo> {
    let id: i64 = r.get(0)?;
    let events: String = r.get(4)?;
    Ok(ChannelInfo {
        id,
        project_id: r.get(1)?,
        kind: enum_at(r, 2, "notify_channels", id)?,
        name: r.get(3)?,
        events: events
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect(),
        offline_minutes: r.get(5)?,
        target: r.get(6)?,
        created_by: r.get(7)?,
        created_at: rfc3339(r.get(8)?),
    })
}

pub fn get_channel(c: &Conn<'_>, id: i64) -> Result<ChannelInfo, NotifyError> {
    c.prepare_cached(&format!("{CHANNEL_SELECT} WHERE id = ?1"))?
        .query_row([id], channel_row)
        .optional()?
        .ok_or(NotifyError::NotFound)
}

pub fn list_channels(c: &Conn<'_>, project_id: i64) -> Result<Vec<ChannelInfo>, DbError> {
    let mut stmt = c.prepare_cached(&format!("{CHANNEL_SELECT} WHERE project_id = ?1 ORDER BY id"))?;
    let rows = stmt.query_map([project_id], channel_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn delete_channel(tx: &Tx<'_>, id: i64) -> Result<(), DbError> {
    tx.prepare_cached("DELETE FROM notify_channels WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// The channels of a project that want `event` and existed at `at` (a channel added later is
/// not told about what happened before it).
pub fn channels_wanting(c: &Conn<'_>, project_id: i64, event: &str, at: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM notify_channels
         WHERE project_id = ?1 AND ',' || events || ',' LIKE '%,' || ?2 || ',%' AND created_at <= ?3
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![project_id, event, at], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An agent watched by a channel that wants `agent.offline`.
#[derive(Debug, Clone)]
pub struct Watched {
    pub channel_id: i64,
    pub project_id: i64,
    pub project: String,
    pub offline_minutes: f64,
    pub channel_created_at: i64,
    pub agent_id: i64,
    pub agent: String,
    pub environment: String,
    pub last_heartbeat: Option<i64>,
    /// The database says offline (set when the connection ended, or at start).
    pub offline: bool,
}

/// Offline: no live lease as of `now` (issue 17: a dead replica's agents too).
pub fn watched_agents(c: &Conn<'_>, now: i64) -> Result<Vec<Watched>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT n.id, p.id, p.name, n.offline_minutes, n.created_at, a.id, a.name, e.name, a.last_heartbeat,
                (a.online = 0 OR COALESCE(a.lease_until, 0) <= ?1)
         FROM notify_channels n
         JOIN projects p ON p.id = n.project_id
         JOIN environments e ON e.project_id = p.id
         JOIN agents a ON a.environment_id = e.id AND a.revoked_at IS NULL
         WHERE ',' || n.events || ',' LIKE '%,agent.offline,%'
         ORDER BY n.id, a.id",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(Watched {
            channel_id: r.get(0)?,
            project_id: r.get(1)?,
            project: r.get(2)?,
            offline_minutes: r.get(3)?,
            channel_created_at: r.get(4)?,
            agent_id: r.get(5)?,
            agent: r.get(6)?,
            environment: r.get(7)?,
            last_heartbeat: r.get(8)?,
            offline: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Enqueue one delivery; false when this (channel, event, subject) was enqueued before.
pub fn enqueue(
    tx: &Tx<'_>,
    channel_id: i64,
    event: &str,
    subject: &str,
    payload: &str,
    now: i64,
) -> Result<Option<i64>, DbError> {
    Ok(tx
        .prepare_cached(
            "INSERT INTO notify_outbox (channel_id, event, subject, payload, status, attempts,
                 next_attempt_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?5)
             ON CONFLICT (channel_id, event, subject) DO NOTHING RETURNING id",
        )?
        .query_row(params![channel_id, event, subject, payload, now], |r| r.get(0))
        .optional()?)
}

/// A pending delivery whose time has come, with what is needed to send it.
pub struct Due {
    pub id: i64,
    pub channel_id: i64,
    pub kind: Kind,
    pub event: String,
    pub payload: String,
    pub attempts: i64,
    pub encrypted_target: Vec<u8>,
    pub encrypted_signing: Option<Vec<u8>>,
}

pub fn due(c: &Conn<'_>, now: i64, limit: i64) -> Result<Vec<Due>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT o.id, o.channel_id, n.kind, o.event, o.payload, o.attempts, n.encrypted_target, n.encrypted_signing
         FROM notify_outbox o JOIN notify_channels n ON n.id = o.channel_id
         WHERE o.status = 'pending' AND o.next_attempt_at <= ?1
         ORDER BY o.next_attempt_at, o.id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit], |r| {
        let channel_id: i64 = r.get(1)?;
        Ok(Due {
            id: r.get(0)?,
            channel_id,
            kind: enum_at(r, 2, "notify_channels", channel_id)?,
            event: r.get(3)?,
            payload: r.get(4)?,
            attempts: r.get(5)?,
            encrypted_target: r.get(6)?,
            encrypted_signing: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the next pending delivery is due, if any.
pub fn next_due(c: &Conn<'_>) -> Result<Option<i64>, DbError> {
    Ok(
        c.prepare_cached("SELECT MIN(next_attempt_at) FROM notify_outbox WHERE status = 'pending'")?
            .query_row([], |r| r.get(0))?,
    )
}

/// Record an attempt's outcome: `next` is when to retry (`None`: no retry, the row is final).
pub fn record_attempt(
    tx: &Tx<'_>,
    id: i64,
    status: DeliveryStatus,
    error: Option<&str>,
    next: Option<i64>,
    now: i64,
) -> Result<(), DbError> {
    tx.prepare_cached(
        "UPDATE notify_outbox SET status = ?2, attempts = attempts + 1, last_error = ?3,
             next_attempt_at = COALESCE(?4, next_attempt_at), updated_at = ?5
         WHERE id = ?1",
    )?
    .execute(params![id, Stored(status), error, next, now])?;
    Ok(())
}

pub fn deliveries(c: &Conn<'_>, channel_id: i64, limit: i64) -> Result<Vec<Delivery>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, channel_id, event, subject, status, attempts, last_error, created_at, updated_at, next_attempt_at
         FROM notify_outbox WHERE channel_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![channel_id, limit], |r| {
        let id: i64 = r.get(0)?;
        let status: DeliveryStatus = enum_at(r, 4, "notify_outbox", id)?;
        let next: i64 = r.get(9)?;
        Ok(Delivery {
            id,
            channel_id: r.get(1)?,
            event: r.get(2)?,
            subject: r.get(3)?,
            status,
            attempts: r.get(5)?,
            last_error: r.get(6)?,
            created_at: rfc3339(r.get(7)?),
            updated_at: rfc3339(r.get(8)?),
            next_attempt_at: (status == DeliveryStatus::Pending).then(|| rfc3339(next)),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deployments that finished at or after `since` (ms), for catching up on missed hub events.
pub fn finished_since(c: &Conn<'_>, since: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM deployments WHERE finished_at >= ?1 AND status IN ('success', 'failed') ORDER BY id",
    )?;
    let rows = stmt.query_map([since], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A finished deployment's facts for a notice.
pub struct Finished {
    pub project_id: i64,
    pub project: String,
    pub environment_id: i64,
    pub environment: String,
    pub status: String,
    pub commit: Option<String>,
    pub error: Option<String>,
    pub finished_at: i64,
}

pub fn finished_deployment(c: &Conn<'_>, id: i64) -> Result<Option<Finished>, DbError> {
    Ok(c.prepare_cached(
        "SELECT d.project_id, p.name, d.environment_id, e.name, d.status, d.commit_sha, d.error, d.finished_at
         FROM deployments d JOIN projects p ON p.id = d.project_id JOIN environments e ON e.id = d.environment_id
         WHERE d.id = ?1 AND d.finished_at IS NOT NULL",
    )?
    .query_row([id], |r| {
        Ok(Finished {
            project_id: r.get(0)?,
            project: r.get(1)?,
            environment_id: r.get(2)?,
            environment: r.get(3)?,
            status: r.get(4)?,
            commit: r.get(5)?,
            error: r.get(6)?,
            finished_at: r.get(7)?,
        })
    })
    .optional()?)
}

/// A channel's id, encrypted target and encrypted signing secret.
pub type Ciphertexts = (i64, Vec<u8>, Option<Vec<u8>>);

/// Every channel's ciphertexts (key rotation).
pub fn all_ciphertexts(c: &Conn<'_>) -> Result<Vec<Ciphertexts>, DbError> {
    let mut stmt =
        c.prepare("SELECT id, encrypted_target, encrypted_signing FROM notify_channels ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_ciphertexts(tx: &Tx<'_>, id: i64, target: &[u8], signing: Option<&[u8]>) -> Result<(), DbError> {
    tx.execute(
        "UPDATE notify_channels SET encrypted_target = ?2, encrypted_signing = ?3 WHERE id = ?1",
        params![id, target, signing],
    )?;
    Ok(())
}
