//! SQL for projects and environments.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{Environment, Project, ProjectError, PushTriggers, Retention, ValidProject};
use crate::db::{DbError, Stored, StoredEnum, enum_at, rfc3339};
use stagely_protocol::PullPolicy;

impl StoredEnum for PullPolicy {
    const WHAT: &'static str = "pull policy";
    fn from_stored(s: &str) -> Option<Self> {
        PullPolicy::parse(s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

const PROJECT_COLUMNS: &str = "id, name, repo_url, git_ref, compose_path, pull, created_at, updated_at";

fn project_from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Project> {
    let id = r.get(0)?;
    Ok(Project {
        id,
        name: r.get(1)?,
        repo_url: r.get(2)?,
        git_ref: r.get(3)?,
        compose_path: r.get(4)?,
        // An unknown policy is an error naming the row: never silently `always`.
        pull: enum_at(r, 5, "projects", id)?,
        created_at: rfc3339(r.get(6)?),
        updated_at: rfc3339(r.get(7)?),
        environments: Vec::new(),
    })
}

fn environments_of(c: &Conn<'_>, project_id: i64) -> Result<Vec<Environment>, DbError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE project_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([project_id], environment_from_row)?;
    let mut envs: Vec<Environment> = rows.collect::<Result<_, _>>()?;
    for env in &mut envs {
        env.deployers = crate::protect::store::deployers_of(c, env.id)?;
    }
    Ok(envs)
}

const ENVIRONMENT_COLUMNS: &str = "id, project_id, name, git_ref, compose_project, log_keep_deployments, log_keep_days, \
     deploy_on_push, deploy_on_tag, auto_rollback, protected, require_approval";

fn environment_from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<Environment> {
    Ok(Environment {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        git_ref: r.get(3)?,
        compose_project: r.get(4)?,
        log_keep_deployments: r.get(5)?,
        log_keep_days: r.get(6)?,
        deploy_on_push: r.get(7)?,
        deploy_on_tag: r.get(8)?,
        auto_rollback: r.get(9)?,
        protected: r.get(10)?,
        require_approval: r.get(11)?,
        deployers: Vec::new(),
    })
}

pub fn get(c: &Conn<'_>, id: i64) -> Result<Project, ProjectError> {
    let mut project = c
        .prepare_cached(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"))?
        .query_row([id], project_from_row)
        .optional()?
        .ok_or(ProjectError::NotFound)?;
    project.environments = environments_of(c, id)?;
    Ok(project)
}

pub fn list(c: &Conn<'_>) -> Result<Vec<Project>, ProjectError> {
    let mut stmt = c.prepare(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name"))?;
    let mut projects: Vec<Project> = stmt.query_map([], project_from_row)?.collect::<Result<_, _>>()?;
    for p in &mut projects {
        p.environments = environments_of(c, p.id)?;
    }
    Ok(projects)
}

pub fn insert(tx: &Tx<'_>, p: &ValidProject, now: i64) -> Result<i64, ProjectError> {
    tx.query_row(
        "INSERT INTO projects (name, repo_url, git_ref, compose_path, pull, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
        params![p.name, p.repo_url, p.git_ref, p.compose_path, Stored(p.pull), now],
        |r| r.get(0),
    )
    .map_err(|e| name_taken(e, &p.name))
}

pub fn update(tx: &Tx<'_>, id: i64, p: &ValidProject, now: i64) -> Result<(), ProjectError> {
    let n = tx
        .execute(
            "UPDATE projects SET name = ?2, repo_url = ?3, git_ref = ?4, compose_path = ?5, pull = ?6, updated_at = ?7
             WHERE id = ?1",
            params![id, p.name, p.repo_url, p.git_ref, p.compose_path, Stored(p.pull), now],
        )
        .map_err(|e| name_taken(e, &p.name))?;
    if n == 0 {
        return Err(ProjectError::NotFound);
    }
    Ok(())
}

pub fn delete(tx: &Tx<'_>, id: i64) -> Result<(), ProjectError> {
    match tx.execute("DELETE FROM projects WHERE id = ?1", [id])? {
        0 => Err(ProjectError::NotFound),
        _ => Ok(()),
    }
}

fn name_taken(e: crate::db::SqlError, name: &str) -> ProjectError {
    let e = DbError::from(e);
    if e.is_constraint() {
        ProjectError::NameTaken(name.to_owned())
    } else {
        ProjectError::Db(e)
    }
}

pub fn insert_environment(
    tx: &Tx<'_>,
    project_id: i64,
    name: &str,
    git_ref: Option<&str>,
    now: i64,
) -> Result<i64, ProjectError> {
    let project_name: String = tx
        .query_row("SELECT name FROM projects WHERE id = ?1", [project_id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or(ProjectError::NotFound)?;
    let id: i64 = tx.query_row(
        "INSERT INTO environments (project_id, name, git_ref, created_at) VALUES (?1, ?2, ?3, ?4) RETURNING id",
        params![project_id, name, git_ref, now],
        |r| r.get(0),
    )
    .map_err(|e| {
        let e = DbError::from(e);
        if e.is_constraint() {
            ProjectError::EnvironmentTaken(name.to_owned())
        } else {
            ProjectError::Db(e)
        }
    })?;
    let compose_project = free_compose_project(tx, &format!("{project_name}-{name}"), id)?;
    tx.execute(
        "UPDATE environments SET compose_project = ?1 WHERE id = ?2",
        params![compose_project, id],
    )?;
    Ok(id)
}

/// The compose project name for a new environment: `<project>-<environment>` as the names are
/// now, or, when another environment already runs under that (`a-b`/`c` and `a`/`b-c`), the same
/// with the environment's id appended until it is free. The unique index makes a collision
/// impossible whatever this picks; names never change afterwards, so a rename orphans nothing.
fn free_compose_project(tx: &Tx<'_>, base: &str, id: i64) -> Result<String, DbError> {
    let mut candidate = base.to_owned();
    loop {
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM environments WHERE compose_project = ?1)",
            [&candidate],
            |r| r.get(0),
        )?;
        if !taken {
            return Ok(candidate);
        }
        candidate = format!("{candidate}-{id}");
    }
}

pub fn get_environment(c: &Conn<'_>, id: i64) -> Result<Environment, ProjectError> {
    c.prepare_cached(&format!(
        "SELECT {ENVIRONMENT_COLUMNS} FROM environments WHERE id = ?1"
    ))?
    .query_row([id], environment_from_row)
    .optional()?
    .ok_or(ProjectError::EnvironmentNotFound)
    .and_then(|mut env| {
        env.deployers = crate::protect::store::deployers_of(c, env.id)?;
        Ok(env)
    })
}

/// Set an environment's log retention overrides (`None` = the configured default).
pub fn set_retention(tx: &Tx<'_>, id: i64, r: Retention) -> Result<(), ProjectError> {
    match tx.execute(
        "UPDATE environments SET log_keep_deployments = ?2, log_keep_days = ?3 WHERE id = ?1",
        params![id, r.keep_deployments, r.keep_days],
    )? {
        0 => Err(ProjectError::EnvironmentNotFound),
        _ => Ok(()),
    }
}

/// Set when push webhooks deploy an environment.
pub fn set_triggers(tx: &Tx<'_>, id: i64, t: &PushTriggers) -> Result<(), ProjectError> {
    match tx.execute(
        "UPDATE environments SET deploy_on_push = ?2, deploy_on_tag = ?3 WHERE id = ?1",
        params![id, t.on_push, t.on_tag],
    )? {
        0 => Err(ProjectError::EnvironmentNotFound),
        _ => Ok(()),
    }
}

/// Set whether a failed deployment of the environment rolls back automatically.
pub fn set_auto_rollback(tx: &Tx<'_>, id: i64, on: bool) -> Result<(), ProjectError> {
    match tx.execute(
        "UPDATE environments SET auto_rollback = ?2 WHERE id = ?1",
        params![id, on],
    )? {
        0 => Err(ProjectError::EnvironmentNotFound),
        _ => Ok(()),
    }
}

/// The environments of `project_id` (or only `environment_id`) whose stack may be running on a
/// target: a deployment of theirs succeeded. Answers the first such with its latest success.
pub fn stack_in_use(
    c: &Conn<'_>,
    project_id: Option<i64>,
    environment_id: Option<i64>,
) -> Result<Option<(String, String, i64)>, DbError> {
    Ok(c.query_row(
        "SELECT e.name, e.compose_project, max(d.id) FROM environments e
         JOIN deployments d ON d.environment_id = e.id AND d.status = 'success'
         WHERE (e.project_id = ?1 OR ?1 IS NULL) AND (e.id = ?2 OR ?2 IS NULL)
         GROUP BY e.id ORDER BY e.id LIMIT 1",
        params![project_id, environment_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?)
}

pub fn delete_environment(tx: &Tx<'_>, id: i64) -> Result<(), ProjectError> {
    match tx.execute("DELETE FROM environments WHERE id = ?1", [id])? {
        0 => Err(ProjectError::EnvironmentNotFound),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn an_unknown_stored_pull_policy_is_an_error_naming_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        db.write_blocking(|tx| {
            let valid = ValidProject {
                name: "shop".into(),
                repo_url: None,
                git_ref: "main".into(),
                compose_path: "/srv/shop.yml".into(),
                pull: PullPolicy::Missing,
            };
            let id = insert(tx, &valid, 0)?;
            assert_eq!(get(tx, id)?.pull, PullPolicy::Missing);
            // A value this binary does not know (a newer Stagely, a hand edit): the CHECK
            // constraint is bypassed the way such a row would get there.
            tx.execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE projects SET pull = 'sometimes' WHERE id = 1;
                 PRAGMA ignore_check_constraints = OFF;",
            )?;
            Ok::<_, ProjectError>(())
        })
        .unwrap();
        for err in [
            db.read_blocking(|c| get(c, 1)).unwrap_err().to_string(),
            db.read_blocking(list).unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("projects row 1")
                    && err.contains("\"sometimes\"")
                    && err.contains("pull policy"),
                "{err}"
            );
        }
    }
}
