//! SQL for lifecycle actions: the environment acted on and its agents.

use crate::db::{Conn, OptionalExtension, params};

use crate::db::DbError;

/// The environment an action is for.
#[derive(Debug, Clone)]
pub struct Target {
    pub environment_id: i64,
    pub project_id: i64,
    pub project: String,
    pub environment: String,
    pub compose_project: String,
}

pub fn target(c: &Conn<'_>, environment_id: i64) -> Result<Option<Target>, DbError> {
    Ok(c.prepare_cached(
        "SELECT e.id, p.id, p.name, e.name, e.compose_project FROM environments e
         JOIN projects p ON p.id = e.project_id WHERE e.id = ?1",
    )?
    .query_row([environment_id], |r| {
        Ok(Target {
            environment_id: r.get(0)?,
            project_id: r.get(1)?,
            project: r.get(2)?,
            environment: r.get(3)?,
            compose_project: r.get(4)?,
        })
    })
    .optional()?)
}

/// Every environment of a project, oldest first.
pub fn environments_of(c: &Conn<'_>, project_id: i64) -> Result<Vec<i64>, DbError> {
    let mut stmt = c.prepare_cached("SELECT id FROM environments WHERE project_id = ?1 ORDER BY id")?;
    Ok(stmt
        .query_map([project_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The deployment of the environment that is queued or running, if any (the oldest).
pub fn deployment_in_flight(c: &Conn<'_>, environment_id: i64) -> Result<Option<(i64, String)>, DbError> {
    Ok(c.prepare_cached(
        "SELECT id, status FROM deployments WHERE environment_id = ?1 AND status IN ('queued', 'running')
         ORDER BY id LIMIT 1",
    )?
    .query_row([environment_id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?)
}

/// A live (not revoked) agent of an environment.
#[derive(Debug, Clone)]
pub struct EnvAgent {
    pub id: i64,
    pub name: String,
    /// It connected at least once (a never-connected agent cannot have started anything).
    pub ever_connected: bool,
    /// It offered `operate` in its last HELLO.
    pub operates: bool,
}

pub fn agents(c: &Conn<'_>, environment_id: i64) -> Result<Vec<EnvAgent>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, last_heartbeat IS NOT NULL, capabilities FROM agents
         WHERE environment_id = ?1 AND revoked_at IS NULL ORDER BY id",
    )?;
    Ok(stmt
        .query_map(params![environment_id], |r| {
            let caps: Option<String> = r.get(3)?;
            Ok(EnvAgent {
                id: r.get(0)?,
                name: r.get(1)?,
                ever_connected: r.get(2)?,
                operates: caps
                    .unwrap_or_default()
                    .split(',')
                    .any(|c| c == stagely_protocol::operate::CAP_OPERATE),
            })
        })?
        .collect::<Result<_, _>>()?)
}
