//! SQL for project roles (`project_members`, V17).

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{ProjectRole, Scope};
use crate::db::{DbError, Stored, rfc3339};

/// Who granted a project role: an admin, or an OIDC provider's group mapping.
pub const SOURCE_MANUAL: &str = "manual";

/// The source of the roles an OIDC provider's group mapping grants: `oidc:<provider name>`.
pub fn oidc_source(provider: &str) -> String {
    format!("oidc:{provider}")
}

/// One person's role on one project, as granted by one source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Membership {
    pub project_id: i64,
    pub user_id: i64,
    pub username: String,
    pub role: ProjectRole,
    /// `manual` or `oidc:<provider>`.
    pub source: String,
    pub granted_by: String,
    pub created_at: String,
}

const COLUMNS: &str = "m.project_id, m.user_id, u.username, m.role, m.source, m.granted_by, m.created_at";

fn from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Membership> {
    Ok(Membership {
        project_id: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        role: r.get::<_, Stored<ProjectRole>>(3)?.0,
        source: r.get(4)?,
        granted_by: r.get(5)?,
        created_at: rfc3339(r.get(6)?),
    })
}

/// The highest role any source grants `user_id` on `project_id`.
pub fn highest(c: &Conn<'_>, project_id: i64, user_id: i64) -> Result<Option<ProjectRole>, DbError> {
    let mut stmt =
        c.prepare_cached("SELECT role FROM project_members WHERE project_id = ?1 AND user_id = ?2")?;
    let roles = stmt
        .query_map(params![project_id, user_id], |r| {
            r.get::<_, Stored<ProjectRole>>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(roles.into_iter().map(|s| s.0).max())
}

/// Every grant on a project, by username then source.
pub fn for_project(c: &Conn<'_>, project_id: i64) -> Result<Vec<Membership>, DbError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM project_members m JOIN users u ON u.id = m.user_id \
         WHERE m.project_id = ?1 ORDER BY u.username, m.source"
    ))?;
    let rows = stmt.query_map([project_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every grant a person holds, by project then source.
pub fn for_user(c: &Conn<'_>, user_id: i64) -> Result<Vec<Membership>, DbError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM project_members m JOIN users u ON u.id = m.user_id \
         WHERE m.user_id = ?1 ORDER BY m.project_id, m.source"
    ))?;
    let rows = stmt.query_map([user_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The role `source` grants `user_id` on `project_id`, if any.
pub fn get(
    c: &Conn<'_>,
    project_id: i64,
    user_id: i64,
    source: &str,
) -> Result<Option<ProjectRole>, DbError> {
    Ok(c.query_row(
        "SELECT role FROM project_members WHERE project_id = ?1 AND user_id = ?2 AND source = ?3",
        params![project_id, user_id, source],
        |r| r.get::<_, Stored<ProjectRole>>(0),
    )
    .optional()?
    .map(|s| s.0))
}

/// Grant (or change) the role `source` gives `user_id` on `project_id`.
pub fn put(
    tx: &Tx<'_>,
    project_id: i64,
    user_id: i64,
    role: ProjectRole,
    source: &str,
    granted_by: &str,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO project_members (project_id, user_id, role, source, created_at, granted_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (project_id, user_id, source) DO UPDATE SET role = excluded.role, granted_by = excluded.granted_by",
        params![project_id, user_id, Stored(role), source, now, granted_by],
    )?;
    Ok(())
}

/// Remove the role `source` gives `user_id` on `project_id`; true when there was one.
pub fn delete(tx: &Tx<'_>, project_id: i64, user_id: i64, source: &str) -> Result<bool, DbError> {
    let n = tx.execute(
        "DELETE FROM project_members WHERE project_id = ?1 AND user_id = ?2 AND source = ?3",
        params![project_id, user_id, source],
    )?;
    Ok(n > 0)
}

/// Make `grants` exactly the roles `source` gives `user_id` (an OIDC sign-in rewrites what its
/// group mapping grants: a group left is a role lost). A project listed twice keeps its last role.
pub fn replace_source(
    tx: &Tx<'_>,
    user_id: i64,
    source: &str,
    grants: &[(i64, ProjectRole)],
    granted_by: &str,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM project_members WHERE user_id = ?1 AND source = ?2",
        params![user_id, source],
    )?;
    for (project_id, role) in grants {
        put(tx, *project_id, user_id, *role, source, granted_by, now)?;
    }
    Ok(())
}

/// The project the object `id` of kind `scope` belongs to; `None` when there is no such object.
/// One indexed lookup by primary key: the choke point runs it on every project-scoped request.
pub fn project_of(c: &Conn<'_>, scope: Scope, id: i64) -> Result<Option<i64>, DbError> {
    let sql = match scope {
        Scope::Project => "SELECT id FROM projects WHERE id = ?1",
        Scope::Environment => "SELECT project_id FROM environments WHERE id = ?1",
        Scope::Deployment => "SELECT project_id FROM deployments WHERE id = ?1",
        Scope::Secret => "SELECT project_id FROM secrets WHERE id = ?1",
        Scope::Notification => "SELECT project_id FROM notify_channels WHERE id = ?1",
    };
    let mut stmt = c.prepare_cached(sql)?;
    Ok(stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()?)
}

/// The highest role any source grants `user_id` on any project (what a person may mint a token
/// for beyond their global role).
pub fn highest_anywhere(c: &Conn<'_>, user_id: i64) -> Result<Option<ProjectRole>, DbError> {
    let mut stmt = c.prepare_cached("SELECT role FROM project_members WHERE user_id = ?1")?;
    let roles = stmt
        .query_map([user_id], |r| r.get::<_, Stored<ProjectRole>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(roles.into_iter().map(|s| s.0).max())
}
