//! SQL for releases.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{Release, ReleaseError};
use crate::db::{DbError, rfc3339};
use stagely_protocol::ReleaseService;

const SELECT: &str = "SELECT r.deployment_id, r.environment_id, r.agent_id, r.agent_name, r.commit_sha,
        r.compose_hash, r.services, r.created_at
     FROM releases r";

fn from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Release> {
    let deployment_id: i64 = r.get(0)?;
    let services: String = r.get(6)?;
    let services: Vec<ReleaseService> = serde_json::from_str(&services).map_err(|e| {
        crate::db::SqlError::column(
            6,
            format!("releases row {deployment_id}: services are not a JSON list: {e}"),
        )
    })?;
    Ok(Release {
        deployment_id,
        environment_id: r.get(1)?,
        agent_id: r.get(2)?,
        agent_name: r.get(3)?,
        commit: r.get(4)?,
        compose_hash: r.get(5)?,
        services,
        created_at: rfc3339(r.get(7)?),
    })
}

/// Record the release of a deployment that just succeeded (in the transaction that ends it).
/// `commit`: the one the agent reported, else the deployment's pinned one.
pub fn insert(
    tx: &Tx<'_>,
    deployment_id: i64,
    agent_id: i64,
    commit: Option<&str>,
    release: &stagely_protocol::Release,
    now: i64,
) -> Result<(), DbError> {
    let services = serde_json::to_string(&release.services).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "INSERT INTO releases (deployment_id, environment_id, agent_id, agent_name, commit_sha, compose_hash, services, created_at)
         SELECT d.id, d.environment_id, a.id, a.name, COALESCE(?3, d.commit_sha), ?4, ?5, ?6
         FROM deployments d JOIN agents a ON a.id = ?2 WHERE d.id = ?1",
        params![deployment_id, agent_id, commit, release.compose_hash, services, now],
    )?;
    Ok(())
}

/// The release of one deployment.
pub fn get(c: &Conn<'_>, deployment_id: i64) -> Result<Release, ReleaseError> {
    c.query_row(
        &format!("{SELECT} WHERE r.deployment_id = ?1"),
        [deployment_id],
        from_row,
    )
    .optional()?
    .ok_or(ReleaseError::NotFound)
}

/// The environment's last successful release: what should be running there.
pub fn latest(c: &Conn<'_>, environment_id: i64) -> Result<Option<Release>, DbError> {
    Ok(c.query_row(
        &format!("{SELECT} WHERE r.environment_id = ?1 ORDER BY r.deployment_id DESC LIMIT 1"),
        [environment_id],
        from_row,
    )
    .optional()?)
}
