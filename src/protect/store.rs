//! SQL for environment protection: the flags on `environments` and `environment_deployers`.

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{Deployer, DeployerRef};
use crate::access::ProjectRole;
use crate::db::DbError;

/// An environment's deployers, in the order they were given, people with their current names.
pub fn deployers_of(c: &Conn<'_>, environment_id: i64) -> Result<Vec<Deployer>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT d.role, d.user_id, u.username FROM environment_deployers d
         LEFT JOIN users u ON u.id = d.user_id WHERE d.environment_id = ?1 ORDER BY d.id",
    )?;
    let rows = stmt.query_map([environment_id], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        match row? {
            (Some(role), None, _) => {
                let role = ProjectRole::parse(&role)
                    .ok_or_else(|| DbError::Task(format!("environment_deployers: unknown role {role:?}")))?;
                out.push(Deployer::Role { role });
            }
            (None, Some(user_id), Some(username)) => out.push(Deployer::User { user_id, username }),
            _ => {}
        }
    }
    Ok(out)
}

/// Replace an environment's protection: its two flags and its whole deployers list.
pub fn set(tx: &Tx<'_>, environment_id: i64, protection: &super::Protection) -> Result<(), DbError> {
    let (protected, require_approval, deployers) = (
        protection.protected,
        protection.require_approval,
        &protection.deployers,
    );
    tx.execute(
        "UPDATE environments SET protected = ?2, require_approval = ?3 WHERE id = ?1",
        params![environment_id, protected, require_approval],
    )?;
    tx.execute(
        "DELETE FROM environment_deployers WHERE environment_id = ?1",
        [environment_id],
    )?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO environment_deployers (environment_id, kind, role, user_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for d in deployers {
        match d.as_ref() {
            DeployerRef::Role(r) => stmt.execute(params![environment_id, "role", r.as_str(), None::<i64>])?,
            DeployerRef::User(id) => stmt.execute(params![environment_id, "user", None::<&str>, id])?,
        };
    }
    Ok(())
}

pub fn username(c: &Conn<'_>, user_id: i64) -> Result<Option<String>, DbError> {
    Ok(c.prepare_cached("SELECT username FROM users WHERE id = ?1")?
        .query_row([user_id], |r| r.get(0))
        .optional()?)
}

pub fn user_id(c: &Conn<'_>, username: &str) -> Result<Option<i64>, DbError> {
    Ok(c.prepare_cached("SELECT id FROM users WHERE username = ?1")?
        .query_row([username], |r| r.get(0))
        .optional()?)
}
