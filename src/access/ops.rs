//! The rules for a project's members: who may grant, change and remove project roles.
//!
//! - A global admin, or a maintainer of the project ([`super::project_role`] at least
//!   maintainer: a global member is one on every project), may grant any project role; there is
//!   nothing above maintainer, so nobody can be raised past what the granter holds.
//! - Nobody but an admin changes their own membership (no self-escalation, not through a token
//!   either: a token is its owner).
//! - Only `manual` grants are changed here; `oidc:<provider>` grants are shown but rewritten at
//!   each sign-in through that provider.
//! - A disabled person may be granted a role: it has no effect while they cannot sign in (their
//!   sessions and tokens are refused) and holds when an admin enables them again.

use crate::db::Conn;

use super::store::{self, Membership, SOURCE_MANUAL};
use super::{ProjectRole, project_role};
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms};
use crate::projects::ProjectError;
use crate::projects::store as project_store;
use crate::users::store as user_store;
use crate::users::{Principal, Role, UserError};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    Db(#[from] DbError),
}

const ALLOWED: &str = "must be one of viewer, deployer, maintainer";
const NOT_MAINTAINER: &str = "only an admin or a maintainer of this project may change its members";
const NOT_YOURSELF: &str =
    "you may not change your own membership of a project; ask another maintainer or an admin";

/// One grant as listed, with the person's effective role on the project (global baseline and
/// every grant together).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    #[serde(flatten)]
    pub grant: Membership,
    pub effective_role: ProjectRole,
    /// Only `manual` grants are changed through the members routes.
    pub editable: bool,
}

/// Parse a role as the API and the forms receive it.
pub fn parse_role(role: &str) -> Result<ProjectRole, AccessError> {
    ProjectRole::parse(role).ok_or_else(|| AccessError::Invalid {
        field: "role",
        message: format!("{ALLOWED} (got {role:?})"),
    })
}

fn project_name(c: &Conn<'_>, project_id: i64) -> Result<String, AccessError> {
    match project_store::get(c, project_id) {
        Ok(p) => Ok(p.name),
        Err(ProjectError::NotFound) => Err(AccessError::NotFound("project")),
        Err(ProjectError::Db(e)) => Err(e.into()),
        Err(e) => Err(AccessError::Db(DbError::Task(e.to_string()))),
    }
}

fn username(c: &Conn<'_>, user_id: i64) -> Result<String, AccessError> {
    match user_store::get(c, user_id) {
        Ok(u) => Ok(u.username),
        Err(UserError::NotFound) => Err(AccessError::NotFound("user")),
        Err(UserError::Db(e)) => Err(e.into()),
        Err(e) => Err(AccessError::Db(DbError::Task(e.to_string()))),
    }
}

/// Whether `who` may change the members of `project_id` (the page shows its forms by this).
pub fn may_manage(c: &Conn<'_>, who: &Principal, project_id: i64) -> Result<bool, DbError> {
    Ok(project_role(c, who, project_id)? >= ProjectRole::Maintainer)
}

fn check(c: &Conn<'_>, who: &Principal, project_id: i64, user_id: i64) -> Result<(), AccessError> {
    if !may_manage(c, who, project_id)? {
        return Err(AccessError::Forbidden(NOT_MAINTAINER));
    }
    if who.user_id == Some(user_id) && who.role < Role::Admin {
        return Err(AccessError::Forbidden(NOT_YOURSELF));
    }
    Ok(())
}

/// Every grant on a project, with each person's effective role.
pub fn list_in(c: &Conn<'_>, project_id: i64) -> Result<Vec<Member>, AccessError> {
    project_name(c, project_id)?;
    let grants = store::for_project(c, project_id)?;
    let mut out = Vec::with_capacity(grants.len());
    for grant in grants {
        let global = match user_store::get(c, grant.user_id) {
            Ok(u) => u.role,
            Err(_) => Role::Viewer,
        };
        let granted = store::highest(c, project_id, grant.user_id)?.unwrap_or(ProjectRole::Viewer);
        out.push(Member {
            effective_role: super::baseline(global).max(granted),
            editable: grant.source == SOURCE_MANUAL,
            grant,
        });
    }
    Ok(out)
}

pub async fn list(state: &AppState, project_id: i64) -> Result<Vec<Member>, AccessError> {
    state.db.lookup(move |c| list_in(c, project_id)).await
}

/// Grant (or change) `user_id`'s manual role on `project_id`.
pub fn put_in(
    tx: &crate::db::Tx<'_>,
    who: &Principal,
    project_id: i64,
    user_id: i64,
    role: &str,
    now: i64,
) -> Result<Membership, AccessError> {
    let role = parse_role(role)?;
    let project = project_name(tx, project_id)?;
    let username = username(tx, user_id)?;
    check(tx, who, project_id, user_id)?;
    store::put(tx, project_id, user_id, role, SOURCE_MANUAL, &who.actor, now)?;
    let detail = format!("{} on {project}", role.as_str());
    audit::record(
        tx,
        now,
        &audit::Entry::new(&who.actor, "project.member.put", "user", Some(user_id))
            .name(&username)
            .project(project_id)
            .detail(&detail),
    )?;
    store::for_project(tx, project_id)?
        .into_iter()
        .find(|m| m.user_id == user_id && m.source == SOURCE_MANUAL)
        .ok_or(AccessError::NotFound("membership"))
}

pub async fn put(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    user_id: i64,
    role: &str,
) -> Result<Membership, AccessError> {
    let (who, role) = (who.clone(), role.to_owned());
    state
        .db
        .write(move |tx| put_in(tx, &who, project_id, user_id, &role, now_ms()))
        .await
}

/// Grant a role to the person named `username` (the page's add form).
pub async fn put_by_name(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    username: &str,
    role: &str,
) -> Result<Membership, AccessError> {
    let (who, role, name) = (who.clone(), role.to_owned(), username.trim().to_owned());
    state
        .db
        .write(move |tx| {
            let Some((user, _)) = user_store::by_username(tx, &name)? else {
                return Err(AccessError::Invalid {
                    field: "username",
                    message: format!("no user is named {name:?}"),
                });
            };
            put_in(tx, &who, project_id, user.id, &role, now_ms())
        })
        .await
}

/// Remove `user_id`'s manual role on `project_id`; [`AccessError::NotFound`] when there is none.
pub fn delete_in(
    tx: &crate::db::Tx<'_>,
    who: &Principal,
    project_id: i64,
    user_id: i64,
    now: i64,
) -> Result<(), AccessError> {
    let project = project_name(tx, project_id)?;
    let username = username(tx, user_id)?;
    check(tx, who, project_id, user_id)?;
    if !store::delete(tx, project_id, user_id, SOURCE_MANUAL)? {
        return Err(AccessError::NotFound("membership"));
    }
    audit::record(
        tx,
        now,
        &audit::Entry::new(&who.actor, "project.member.delete", "user", Some(user_id))
            .name(&username)
            .project(project_id)
            .detail(&project),
    )?;
    Ok(())
}

pub async fn delete(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    user_id: i64,
) -> Result<(), AccessError> {
    let who = who.clone();
    state
        .db
        .write(move |tx| delete_in(tx, &who, project_id, user_id, now_ms()))
        .await
}

/// Every project role a person holds, with the project's name (for `/users` and `/account`).
pub fn roles_of(c: &Conn<'_>, user_id: i64) -> Result<Vec<(String, Membership)>, DbError> {
    let mut out = Vec::new();
    for m in store::for_user(c, user_id)? {
        if let Ok(p) = project_store::get(c, m.project_id) {
            out.push((p.name, m));
        }
    }
    Ok(out)
}
