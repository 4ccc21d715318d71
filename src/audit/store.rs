//! SQL for the audit log.

use crate::db::params;
use serde::Serialize;

use crate::db::{DbError, rfc3339};

/// One audit entry to record. `target_name` is the object's name as it was when the change was
/// made (it stays right after the object is renamed or deleted); `project_id` the project the
/// object belongs to (no foreign key: the history outlives the project), so the log can be
/// filtered by project.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<i64>,
    pub target_name: Option<&'a str>,
    pub project_id: Option<i64>,
    pub detail: &'a str,
}

impl<'a> Entry<'a> {
    pub fn new(actor: &'a str, action: &'a str, target_type: &'a str, target_id: Option<i64>) -> Self {
        Entry {
            actor,
            action,
            target_type,
            target_id,
            target_name: None,
            project_id: None,
            detail: "",
        }
    }

    /// The object's name as it is now.
    pub fn name(mut self, name: &'a str) -> Self {
        self.target_name = Some(name);
        self
    }

    /// The project the object belongs to.
    pub fn project(mut self, project_id: i64) -> Self {
        self.project_id = Some(project_id);
        self
    }

    pub fn detail(mut self, detail: &'a str) -> Self {
        self.detail = detail;
        self
    }
}

/// Record one change inside the caller's transaction, so the change and its record commit together.
/// A name or project the caller did not give is looked up from the object while it still exists
/// (a caller that deletes the object first gives both).
pub fn record(tx: &crate::db::Tx<'_>, now: i64, e: &Entry<'_>) -> Result<(), DbError> {
    let (found_name, found_project) = match (e.target_id, e.target_name.is_none() || e.project_id.is_none()) {
        (Some(id), true) => resolve(tx, e.target_type, id)?,
        _ => (None, None),
    };
    let name = e.target_name.map(str::to_owned).or(found_name);
    let project_id = e.project_id.or(found_project);
    tx.prepare_cached(
        "INSERT INTO audit_log (at, actor, action, target_type, target_id, target_name, project_id, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        now,
        e.actor,
        e.action,
        e.target_type,
        e.target_id,
        name,
        project_id,
        e.detail
    ])?;
    Ok(())
}

/// The name and project of an object as it is now, by its audit type (nothing for a type without
/// them or an object already gone).
fn resolve(
    tx: &crate::db::Conn<'_>,
    target_type: &str,
    id: i64,
) -> Result<(Option<String>, Option<i64>), DbError> {
    let sql = match target_type {
        "project" => "SELECT name, id FROM projects WHERE id = ?1",
        "environment" => {
            "SELECT p.name || '/' || e.name, e.project_id FROM environments e
                          JOIN projects p ON p.id = e.project_id WHERE e.id = ?1"
        }
        "agent" => {
            "SELECT a.name, e.project_id FROM agents a JOIN environments e ON e.id = a.environment_id
                    WHERE a.id = ?1"
        }
        "deployment" => {
            "SELECT p.name || '/' || e.name, d.project_id FROM deployments d
                         JOIN environments e ON e.id = d.environment_id JOIN projects p ON p.id = d.project_id
                         WHERE d.id = ?1"
        }
        "secret" => "SELECT key, project_id FROM secrets WHERE id = ?1",
        "notification" => "SELECT name, project_id FROM notify_channels WHERE id = ?1",
        "user" => "SELECT username, NULL FROM users WHERE id = ?1",
        "api_token" => "SELECT name, NULL FROM api_tokens WHERE id = ?1",
        _ => return Ok((None, None)),
    };
    let found = tx.prepare_cached(sql)?.query_row([id], |r| {
        Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<i64>>(1)?))
    });
    match found {
        Ok(found) => Ok(found),
        Err(crate::db::SqlError::NoRows) => Ok((None, None)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<i64>,
    /// The object's name when the change was made (entries before schema v16 have none).
    pub target_name: Option<String>,
    pub project_id: Option<i64>,
    pub detail: String,
}

/// Which entries to list: all, or those of one project and/or one actor (exact match; a bare
/// name also matches `user:<name>`, so `ada` finds what ada did in the browser).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub project_id: Option<i64>,
    pub actor: Option<String>,
}

/// Newest first, `limit` rows before `before_id` (for paging), matching `filter`.
pub fn list(
    c: &crate::db::Conn<'_>,
    filter: &Filter,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, at, actor, action, target_type, target_id, target_name, project_id, detail FROM audit_log
         WHERE (id < ?1 OR ?1 IS NULL) AND (project_id = ?2 OR ?2 IS NULL) AND (actor = ?3 OR actor = 'user:' || ?3 OR ?3 IS NULL)
         ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![before_id, filter.project_id, filter.actor, limit], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: rfc3339(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            target_type: r.get(4)?,
            target_id: r.get(5)?,
            target_name: r.get(6)?,
            project_id: r.get(7)?,
            detail: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
