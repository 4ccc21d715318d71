//! SQL for deployments, the secret versions they used, and their log lines.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{DeployError, DeployStatus, Deployment, LogLine, SecretVersion};
use crate::db::stored::enum_at;
use crate::db::{DbError, rfc3339};
use crate::secrets::store::SealedSecret;
use stagely_protocol::ServiceState;

pub struct NewDeployment<'a> {
    pub project_id: i64,
    pub environment_id: i64,
    pub git_ref: &'a str,
    /// Pinned from the start (a push webhook's sha); else the agent reports it.
    pub commit: Option<&'a str>,
    pub triggered_by: &'a str,
    /// A redeploy: the deployment whose release it restores.
    pub redeploy_of: Option<i64>,
    /// An automatic rollback: the failed deployment it answers.
    pub rollback_of: Option<i64>,
    /// The person behind it (the self-approval rule); `None` for a push, a CLI token, the server.
    pub triggered_by_user: Option<i64>,
    /// Recorded `awaiting_approval` instead of `waiting` (src/deploys/approval).
    pub awaiting_approval: bool,
}

/// Record a deployment as `waiting` (or `awaiting_approval`): no agent and no secret versions
/// yet, those are the ones of the moment it is dispatched ([`claim_next`]).
pub fn insert_waiting(tx: &Tx<'_>, d: &NewDeployment<'_>, now: i64) -> Result<i64, DbError> {
    Ok(tx.prepare_cached(
        "INSERT INTO deployments (project_id, environment_id, status, git_ref, commit_sha, triggered_by, created_at,
             redeploy_of, rollback_of, triggered_by_user)
         VALUES (?1, ?2, ?9, ?3, ?4, ?5, ?6, ?7, ?8, ?10) RETURNING id",
    )?
    .query_row(params![
        d.project_id,
        d.environment_id,
        d.git_ref,
        d.commit,
        d.triggered_by,
        now,
        d.redeploy_of,
        d.rollback_of,
        if d.awaiting_approval { "awaiting_approval" } else { "waiting" },
        d.triggered_by_user
    ], |r| r.get(0))?)
}

/// What [`claim_next`] took off an environment's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The newest waiting deployment, now `queued` for the agent.
    pub id: i64,
    pub project_id: i64,
    pub git_ref: String,
    pub commit: Option<String>,
    /// A redeploy: the deployment whose release it restores.
    pub redeploy_of: Option<i64>,
    /// The older waiting ones it replaced (now `superseded`).
    pub superseded: Vec<i64>,
}

/// When nothing of the environment is queued or running: take its newest waiting deployment,
/// mark every older waiting one `superseded` by it, and claim it as `queued` for `agent_id`.
/// `None` when something runs already or nothing waits. The caller records the secret versions
/// in the same transaction ([`record_secrets`]).
pub fn claim_next(
    tx: &Tx<'_>,
    environment_id: i64,
    agent_id: i64,
    now: i64,
) -> Result<Option<Claimed>, DbError> {
    let active: bool = tx
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM deployments WHERE environment_id = ?1 AND status IN ('queued', 'running'))",
        )?
        .query_row([environment_id], |r| r.get(0))?;
    if active {
        return Ok(None);
    }
    let newest = tx
        .prepare_cached(
            "SELECT id, project_id, git_ref, commit_sha, redeploy_of FROM deployments
             WHERE environment_id = ?1 AND status = 'waiting' ORDER BY id DESC LIMIT 1",
        )?
        .query_row([environment_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((id, project_id, git_ref, commit, redeploy_of)) = newest else {
        return Ok(None);
    };
    let superseded: Vec<i64> = tx
        .prepare_cached(
            "UPDATE deployments SET status = 'superseded', superseded_by = ?2, finished_at = ?3
             WHERE environment_id = ?1 AND status = 'waiting' AND id < ?2 RETURNING id",
        )?
        .query_map(params![environment_id, id, now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    tx.prepare_cached(
        "UPDATE deployments SET status = 'queued', agent_id = ?2, queued_at = ?3 WHERE id = ?1 AND status = 'waiting'",
    )?
    .execute(params![id, agent_id, now])?;
    Ok(Some(Claimed {
        id,
        project_id,
        git_ref,
        commit,
        redeploy_of,
        superseded,
    }))
}

/// The versions of the secrets a claimed deployment is sent (never the values).
pub fn record_secrets(tx: &Tx<'_>, deployment_id: i64, secrets: &[SealedSecret]) -> Result<(), DbError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO deployment_secrets (deployment_id, secret_id, key, scope, service, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for s in secrets {
        stmt.execute(params![
            deployment_id,
            s.id,
            s.key,
            s.scope.as_str(),
            s.service,
            s.version
        ])?;
    }
    Ok(())
}

/// Put a claimed deployment whose DEPLOY never reached its agent back on the queue (it waits
/// for the agent to come back); false when it is no longer `queued`.
pub fn unclaim(tx: &Tx<'_>, deployment_id: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE deployments SET status = 'waiting', agent_id = NULL, queued_at = NULL WHERE id = ?1 AND status = 'queued'",
        [deployment_id],
    )?;
    if n == 1 {
        tx.execute(
            "DELETE FROM deployment_secrets WHERE deployment_id = ?1",
            [deployment_id],
        )?;
    }
    Ok(n == 1)
}

/// Cancel a deployment that is still waiting; false when it no longer is.
pub fn cancel_waiting(tx: &Tx<'_>, deployment_id: i64, error: &str, now: i64) -> Result<bool, DbError> {
    let n = tx.execute(
        "UPDATE deployments SET status = 'cancelled', error = ?2, finished_at = ?3 WHERE id = ?1 AND status = 'waiting'",
        params![deployment_id, error, now],
    )?;
    Ok(n == 1)
}

/// Whether a deployment of the environment is waiting to be sent.
pub fn has_waiting(c: &Conn<'_>, environment_id: i64) -> Result<bool, DbError> {
    Ok(c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM deployments WHERE environment_id = ?1 AND status = 'waiting')",
    )?
    .query_row([environment_id], |r| r.get(0))?)
}

/// A waiting deployment: `(id, environment id, created ms)`.
pub type Waiting = (i64, i64, i64);

/// Every waiting deployment, oldest first.
pub fn waiting(c: &Conn<'_>) -> Result<Vec<Waiting>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, environment_id, COALESCE(approved_at, created_at) FROM deployments WHERE status = 'waiting' ORDER BY id",
    )?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?)
}

/// Of `ids` (an agent's HELLO list), those of this agent the appliance has cancelled.
pub fn cancelled_of(c: &Conn<'_>, agent_id: i64, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    let mut stmt =
        c.prepare_cached("SELECT status = 'cancelled' FROM deployments WHERE id = ?1 AND agent_id = ?2")?;
    let mut out = Vec::new();
    for id in ids {
        if stmt
            .query_row(params![id, agent_id], |r| r.get::<_, bool>(0))
            .optional()?
            == Some(true)
        {
            out.push(*id);
        }
    }
    Ok(out)
}

const SELECT: &str = "SELECT d.id, d.project_id, p.name, d.environment_id, e.name, d.agent_id, d.status, d.git_ref,
        d.commit_sha, d.error, d.services, d.triggered_by, d.created_at, d.finished_at, d.log_pruned_at,
        d.superseded_by, d.redeploy_of, d.rollback_of, r.deployment_id, r.agent_id, r.agent_name, r.commit_sha,
        r.compose_hash, r.services, r.created_at
     FROM deployments d JOIN projects p ON p.id = d.project_id JOIN environments e ON e.id = d.environment_id
     LEFT JOIN releases r ON r.deployment_id = d.id";

fn from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Deployment> {
    let id: i64 = r.get(0)?;
    let services: Option<String> = r.get(10)?;
    Ok(Deployment {
        id,
        project_id: r.get(1)?,
        project: r.get(2)?,
        environment_id: r.get(3)?,
        environment: r.get(4)?,
        agent_id: r.get(5)?,
        status: enum_at(r, 6, "deployments", id)?,
        git_ref: r.get(7)?,
        commit: r.get(8)?,
        error: r.get(9)?,
        // A services column that does not parse is an error naming the row, not an empty list.
        services: match services {
            None => Vec::new(),
            Some(s) => serde_json::from_str(&s).map_err(|e| {
                crate::db::SqlError::column(10, format!("deployments row {id}: services: {e}"))
            })?,
        },
        triggered_by: r.get(11)?,
        created_at: rfc3339(r.get(12)?),
        finished_at: r.get::<_, Option<i64>>(13)?.map(rfc3339),
        log_pruned_at: r.get::<_, Option<i64>>(14)?.map(rfc3339),
        superseded_by: r.get(15)?,
        redeploy_of: r.get(16)?,
        rollback_of: r.get(17)?,
        release: match r.get::<_, Option<i64>>(18)? {
            None => None,
            Some(_) => {
                let services: String = r.get(23)?;
                Some(crate::releases::Release {
                    deployment_id: id,
                    environment_id: r.get(3)?,
                    agent_id: r.get(19)?,
                    agent_name: r.get(20)?,
                    commit: r.get(21)?,
                    compose_hash: r.get(22)?,
                    services: serde_json::from_str(&services).map_err(|e| {
                        crate::db::SqlError::column(23, format!("releases row {id}: services: {e}"))
                    })?,
                    created_at: rfc3339(r.get(24)?),
                })
            }
        },
        secrets: Vec::new(),
        approval: None,
    })
}

pub fn get(c: &Conn<'_>, id: i64) -> Result<Deployment, DeployError> {
    let mut d = c
        .query_row(&format!("{SELECT} WHERE d.id = ?1"), [id], from_row)
        .optional()?
        .ok_or(DeployError::NotFound)?;
    let mut stmt = c.prepare_cached(
        "SELECT secret_id, key, scope, service, version FROM deployment_secrets WHERE deployment_id = ?1 ORDER BY rowid",
    )?;
    d.secrets = stmt
        .query_map([id], |r| {
            Ok(SecretVersion {
                secret_id: r.get(0)?,
                key: r.get(1)?,
                scope: r.get(2)?,
                service: r.get(3)?,
                version: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(d)
}

/// Newest first; optionally only one environment's.
pub fn list(c: &Conn<'_>, environment_id: Option<i64>, limit: i64) -> Result<Vec<Deployment>, DeployError> {
    let mut stmt = c.prepare_cached(&format!(
        "{SELECT} WHERE d.environment_id = ?1 OR ?1 IS NULL ORDER BY d.id DESC LIMIT ?2"
    ))?;
    Ok(stmt
        .query_map(params![environment_id, limit], from_row)?
        .collect::<Result<_, _>>()?)
}

/// One page of a project's history (newest first) and the cursors of its neighbours.
#[derive(Debug)]
pub struct HistoryPage {
    pub deployments: Vec<Deployment>,
    /// `before` for the next older page, when there is one.
    pub older: Option<i64>,
    /// The newer page: `Some(None)` is the first page, `Some(Some(id))` the page `before=id`.
    pub newer: Option<Option<i64>>,
}

/// The `limit` deployments of a project older than `before` (all, without it), newest first.
/// The newer page's cursor is the id just above that page, so Newer and Older walk the same
/// pages (ids only grow; a deployment made meanwhile only lengthens the first page's wait).
pub fn project_page(
    c: &Conn<'_>,
    project_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<HistoryPage, DeployError> {
    let limit = limit.max(1);
    let mut stmt = c.prepare_cached(&format!(
        "{SELECT} WHERE d.project_id = ?1 AND (d.id < ?2 OR ?2 IS NULL) ORDER BY d.id DESC LIMIT ?3"
    ))?;
    let mut deployments: Vec<Deployment> = stmt
        .query_map(params![project_id, before, limit + 1], from_row)?
        .collect::<Result<_, _>>()?;
    let older = if deployments.len() as i64 > limit {
        deployments.truncate(limit as usize);
        deployments.last().map(|d| d.id)
    } else {
        None
    };
    let newer = match before {
        None => None,
        Some(before) => {
            // The ids of the page above, oldest first; one more tells where it starts.
            let top = deployments.first().map_or(before - 1, |d| d.id);
            let mut stmt = c.prepare_cached(
                "SELECT id FROM deployments WHERE project_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let above: Vec<i64> = stmt
                .query_map(params![project_id, top, limit + 1], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            match above.len() as i64 {
                0 => None,
                n if n <= limit => Some(None),
                _ => Some(above.last().copied()),
            }
        }
    };
    Ok(HistoryPage {
        deployments,
        older,
        newer,
    })
}

const LATEST_IDS: &str =
    "SELECT (SELECT MAX(x.id) FROM deployments x WHERE x.environment_id = en.id) FROM environments en";

/// The newest deployment of every environment (for the dashboard).
pub fn latest_per_environment(c: &Conn<'_>) -> Result<Vec<Deployment>, DeployError> {
    // One index seek per environment (`deployments_environment` is (environment_id, id)): a
    // `GROUP BY environment_id` over deployments read the whole index, so the dashboard grew
    // with history (BENCHMARKS.md "History growth").
    let mut stmt = c.prepare_cached(&format!("{SELECT} WHERE d.id IN ({LATEST_IDS})"))?;
    Ok(stmt.query_map([], from_row)?.collect::<Result<_, _>>()?)
}

/// Log lines in order, after `after_seq`, at most `limit`.
pub fn logs(c: &Conn<'_>, deployment_id: i64, after_seq: i64, limit: i64) -> Result<Vec<LogLine>, DbError> {
    Ok(logs_page(c, deployment_id, after_seq, limit, usize::MAX)?.0)
}

/// Like [`logs`], but also stopping once the lines hold `max_bytes` (at least one line is
/// given); true when more lines may follow (the page is full).
pub fn logs_page(
    c: &Conn<'_>,
    deployment_id: i64,
    after_seq: i64,
    limit: i64,
    max_bytes: usize,
) -> Result<(Vec<LogLine>, bool), DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, stream, line, at FROM deployment_logs WHERE deployment_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![deployment_id, after_seq, limit])?;
    let mut lines = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        let line: String = r.get(2)?;
        if !lines.is_empty() && bytes + line.len() > max_bytes {
            return Ok((lines, true));
        }
        bytes += line.len();
        lines.push(LogLine {
            seq: r.get(0)?,
            stream: r.get(1)?,
            line,
            at: rfc3339(r.get(3)?),
        });
    }
    let full = i64::try_from(lines.len()).unwrap_or(i64::MAX) >= limit;
    Ok((lines, full))
}

/// How much of a deployment's log is stored: `(lines, bytes)`.
pub fn log_usage(c: &Conn<'_>, deployment_id: i64) -> Result<(u64, u64), DbError> {
    Ok(c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(octet_length(line)), 0) FROM deployment_logs WHERE deployment_id = ?1",
        [deployment_id],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        },
    )?)
}

/// Finished deployments of one environment whose logs its retention no longer keeps (see
/// [`prune_rules`]), oldest first, after `after_id` (a cursor: a pass reads each row once), at
/// most `limit`.
pub fn prunable(c: &Conn<'_>, rule: &PruneRule, after_id: i64, limit: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM deployments
         WHERE environment_id = ?1 AND id > ?2 AND id < ?3 AND created_at < ?4
           AND log_pruned_at IS NULL AND status IN ('success', 'failed', 'superseded', 'cancelled')
         ORDER BY id LIMIT ?5",
    )?;
    Ok(stmt
        .query_map(
            params![
                rule.environment_id,
                after_id,
                rule.below_id,
                rule.older_than,
                limit
            ],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?)
}

/// Retention as configured, for environments without overrides, as of `now` (ms).
#[derive(Debug, Clone, Copy)]
pub struct KeepDefaults {
    /// `deploys.log_keep_deployments` (0: the count keeps nothing).
    pub deployments: i64,
    /// `now` less `deploys.log_keep_days`: deployments created before it are old.
    pub older_than: i64,
    pub now: i64,
}

/// What one environment's retention allows to prune: finished deployments with an id below
/// `below_id` (older than its last N) created before `older_than`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneRule {
    pub environment_id: i64,
    pub below_id: i64,
    pub older_than: i64,
}

/// Each environment's rule: its own `log_keep_deployments` / `log_keep_days` where set, else the
/// defaults. Environments whose last N are all they have are left out (nothing to prune).
pub fn prune_rules(c: &Conn<'_>, keep: &KeepDefaults) -> Result<Vec<PruneRule>, DbError> {
    let mut envs =
        c.prepare_cached("SELECT id, log_keep_deployments, log_keep_days FROM environments ORDER BY id")?;
    let envs: Vec<(i64, Option<i64>, Option<i64>)> = envs
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut nth_newest = c.prepare_cached(
        "SELECT id FROM deployments WHERE environment_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
    )?;
    let mut rules = Vec::new();
    for (environment_id, keep_deployments, keep_days) in envs {
        let n = keep_deployments.unwrap_or(keep.deployments);
        let below_id = if n <= 0 {
            i64::MAX
        } else {
            match nth_newest
                .query_row(params![environment_id, n - 1], |r| r.get(0))
                .optional()?
            {
                Some(id) => id,
                None => continue,
            }
        };
        let older_than = keep_days.map_or(keep.older_than, |d| {
            keep.now.saturating_sub(d.saturating_mul(86_400_000))
        });
        rules.push(PruneRule {
            environment_id,
            below_id,
            older_than,
        });
    }
    Ok(rules)
}

/// Delete a deployment's log lines and mark it pruned; the number of lines deleted.
pub fn prune_log(tx: &Tx<'_>, deployment_id: i64, now: i64) -> Result<usize, DbError> {
    let n = tx
        .prepare_cached("DELETE FROM deployment_logs WHERE deployment_id = ?1")?
        .execute([deployment_id])?;
    tx.prepare_cached("UPDATE deployments SET log_pruned_at = ?2 WHERE id = ?1 AND log_pruned_at IS NULL")?
        .execute(params![deployment_id, now])?;
    Ok(n)
}

/// The highest stored seq of a deployment's log, if it has any line.
pub fn max_seq(c: &Conn<'_>, deployment_id: i64) -> Result<Option<i64>, DbError> {
    Ok(c.query_row(
        "SELECT MAX(seq) FROM deployment_logs WHERE deployment_id = ?1",
        [deployment_id],
        |r| r.get(0),
    )?)
}

/// One buffered log line on its way to the store (already masked).
#[derive(Debug, Clone)]
pub struct PendingLine {
    pub deployment_id: i64,
    pub seq: i64,
    pub stream: &'static str,
    pub line: String,
    pub at: i64,
}

/// Store lines (a resent line with a known seq is ignored) and mark their deployments running.
pub fn write_lines(tx: &Tx<'_>, lines: &[PendingLine]) -> Result<(), DbError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO deployment_logs (deployment_id, seq, stream, line, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
    )?;
    let mut running =
        tx.prepare_cached("UPDATE deployments SET status = 'running' WHERE id = ?1 AND status = 'queued'")?;
    let mut last = None;
    for l in lines {
        insert.execute(params![l.deployment_id, l.seq, l.stream, l.line, l.at])?;
        if last != Some(l.deployment_id) {
            running.execute([l.deployment_id])?;
            last = Some(l.deployment_id);
        }
    }
    Ok(())
}

/// The end of a deployment as reported (or decided by the server).
#[derive(Debug, Clone)]
pub struct Finish {
    pub deployment_id: i64,
    pub status: DeployStatus,
    pub error: Option<String>,
    pub services: Vec<ServiceState>,
    pub commit: Option<String>,
    pub at: i64,
    /// What a successful deployment put on the server (validated), and the agent that said so:
    /// recorded in the transaction that ends the deployment.
    pub release: Option<(i64, stagely_protocol::Release)>,
}

/// Finish a deployment that has not finished (a waiting one too: the reaper's); false when it
/// had already finished. A success with a release records the release too.
pub fn finish(tx: &Tx<'_>, f: &Finish) -> Result<bool, DbError> {
    let services = serde_json::to_string(&f.services).unwrap_or_else(|_| "[]".into());
    let n = tx.execute(
        "UPDATE deployments SET status = ?2, error = ?3, services = ?4, commit_sha = COALESCE(?5, commit_sha), finished_at = ?6
         WHERE id = ?1 AND status IN ('waiting', 'queued', 'running')",
        params![f.deployment_id, f.status.as_str(), f.error, services, f.commit, f.at],
    )?;
    if let (1, DeployStatus::Success, Some((agent_id, release))) = (n, f.status, &f.release) {
        crate::releases::store::insert(tx, f.deployment_id, *agent_id, f.commit.as_deref(), release, f.at)?;
    }
    Ok(n == 1)
}

/// A deployment sent to its agent and not yet finished: `(id, environment id, agent id, ms
/// when it was sent)`.
pub type Unfinished = (i64, i64, Option<i64>, i64);

pub fn unfinished(c: &Conn<'_>) -> Result<Vec<Unfinished>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, environment_id, agent_id, COALESCE(queued_at, created_at) FROM deployments WHERE status IN ('queued', 'running')",
    )?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?)
}

/// Who a deployment belongs to and whether it is still active: `(agent id, environment id, status)`.
pub fn owner(c: &Conn<'_>, deployment_id: i64) -> Result<Option<(Option<i64>, i64, DeployStatus)>, DbError> {
    Ok(c.query_row(
        "SELECT agent_id, environment_id, status FROM deployments WHERE id = ?1",
        [deployment_id],
        |r| Ok((r.get(0)?, r.get(1)?, enum_at(r, 2, "deployments", deployment_id)?)),
    )
    .optional()?)
}

/// The project and environment a deployment belongs to.
pub fn project_and_environment(c: &Conn<'_>, deployment_id: i64) -> Result<(i64, i64), DeployError> {
    c.query_row(
        "SELECT project_id, environment_id FROM deployments WHERE id = ?1",
        [deployment_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?
    .ok_or(DeployError::NotFound)
}

/// A deployment's error text, if any.
pub fn error_of(c: &Conn<'_>, deployment_id: i64) -> Result<Option<String>, DbError> {
    Ok(c.query_row(
        "SELECT error FROM deployments WHERE id = ?1",
        [deployment_id],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}

/// Mark an unfinished deployment's log as withheld: its error becomes `note`, and the note is
/// stored as the line at `seq` (stream `agent`). True the first time, false once already noted.
pub fn note_withheld(
    tx: &Tx<'_>,
    deployment_id: i64,
    seq: i64,
    note: &str,
    now: i64,
) -> Result<bool, DbError> {
    let changed = tx.execute(
        "UPDATE deployments SET error = ?2 WHERE id = ?1 AND status IN ('queued', 'running')
           AND (error IS NULL OR error != ?2)",
        params![deployment_id, note],
    )?;
    if changed == 1 {
        tx.execute(
            "INSERT INTO deployment_logs (deployment_id, seq, stream, line, at) VALUES (?1, ?2, 'agent', ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![deployment_id, seq, note, now],
        )?;
    }
    Ok(changed == 1)
}

/// Record a CANCEL for an agent another replica holds (`agent_commands`, V21).
pub fn queue_cancel(tx: &Tx<'_>, agent_id: i64, deployment_id: i64, now: i64) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO agent_commands (agent_id, deployment_id, kind, created_at) VALUES (?1, ?2, 'cancel', ?3)",
        params![agent_id, deployment_id, now],
    )?;
    Ok(())
}

/// An agent's pending commands, oldest first: `(command id, deployment id)`.
pub fn commands_for(c: &Conn<'_>, agent_id: i64) -> Result<Vec<(i64, i64)>, DbError> {
    let mut stmt =
        c.prepare_cached("SELECT id, deployment_id FROM agent_commands WHERE agent_id = ?1 ORDER BY id")?;
    Ok(stmt
        .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Agents with pending commands.
pub fn agents_with_commands(c: &Conn<'_>) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached("SELECT DISTINCT agent_id FROM agent_commands ORDER BY agent_id")?;
    Ok(stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?)
}

pub fn delete_commands(tx: &Tx<'_>, ids: &[i64]) -> Result<(), DbError> {
    let mut stmt = tx.prepare_cached("DELETE FROM agent_commands WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn an_unknown_stored_status_is_an_error_naming_the_row_not_failed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write_blocking(|tx| {
            // As a newer Stagely (or a hand edit) might leave it, past the constraints.
            tx.execute_batch(
                "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                 VALUES (1, 'p', 'main', 'compose.yaml', 'missing', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at) VALUES (1, 1, 'e', 0);
                 PRAGMA ignore_check_constraints = ON;
                 INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                 VALUES (41, 1, 1, 'paused', 'main', 'cli', 0);
                 PRAGMA ignore_check_constraints = OFF;",
            )?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        let err = db.read_blocking(|c| owner(c, 41)).unwrap_err().to_string();
        assert!(
            err.contains("deployments row 41") && err.contains("\"paused\""),
            "{err}"
        );
    }

    #[test]
    fn the_newest_deployment_of_each_environment_is_found_by_seeks_not_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                 VALUES (1, 'p', 'main', 'compose.yaml', 'missing', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at)
                 VALUES (1, 1, 'a', 0), (2, 1, 'b', 0), (3, 1, 'never-deployed', 0);
                 INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                 VALUES (1, 1, 1, 'success', 'main', 'cli', 0), (2, 1, 2, 'failed', 'main', 'cli', 0),
                        (3, 1, 1, 'failed', 'main', 'cli', 0), (4, 1, 2, 'success', 'main', 'cli', 0),
                        (5, 1, 1, 'success', 'main', 'cli', 0);",
            )?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        let mut latest: Vec<(i64, i64)> = db
            .read_blocking(latest_per_environment)
            .unwrap()
            .into_iter()
            .map(|d| (d.environment_id, d.id))
            .collect();
        latest.sort();
        assert_eq!(latest, vec![(1, 5), (2, 4)]);
        // How it reads: no full pass over deployments or its index, whatever the history.
        let plan: Vec<String> = db
            .read_blocking(|c| {
                let sql = format!("EXPLAIN QUERY PLAN {SELECT} WHERE d.id IN ({LATEST_IDS})");
                let mut stmt = c.prepare(&sql)?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(3))?;
                Ok::<_, DbError>(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING COVERING INDEX deployments_environment")),
            "{plan:?}"
        );
        // Only the environments are walked; deployments are reached by seeks alone.
        assert!(
            plan.iter()
                .all(|p| !p.starts_with("SCAN") || p.starts_with("SCAN en ")),
            "{plan:?}"
        );
    }
}
