//! JSON API for a project's members: `GET/PUT/DELETE /api/projects/{id}/members[/{user_id}]`.
//! Handlers translate HTTP to [`super::ops`] and back.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ops::{self, AccessError, Member};
use super::store::Membership;
use super::{ProjectAccess, ProjectRole};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{Json, WebError};

impl From<AccessError> for WebError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NotFound(what) => WebError::NotFound(what),
            AccessError::Invalid { field, message } => WebError::invalid(field, message),
            AccessError::Forbidden(why) => WebError::ForbiddenBecause(why.to_owned()),
            AccessError::Db(e) => e.into(),
        }
    }
}

/// One person's role on the project, as one source granted it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberInfo {
    pub user_id: i64,
    pub username: String,
    pub role: ProjectRole,
    /// `manual` (the members routes) or `oidc:<provider>` (a group mapping, rewritten at sign-in).
    pub source: String,
    pub granted_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// The person's role on the project from their global role and every grant together
    /// (absent in the answer to a `PUT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_role: Option<ProjectRole>,
}

impl From<Membership> for MemberInfo {
    fn from(m: Membership) -> Self {
        MemberInfo {
            user_id: m.user_id,
            username: m.username,
            role: m.role,
            source: m.source,
            granted_by: m.granted_by,
            created_at: m.created_at,
            effective_role: None,
        }
    }
}

impl From<Member> for MemberInfo {
    fn from(m: Member) -> Self {
        MemberInfo {
            effective_role: Some(m.effective_role),
            ..m.grant.into()
        }
    }
}

/// `GET /api/projects/{id}/members`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberList {
    pub project_id: i64,
    /// The caller's own role on the project.
    pub your_role: ProjectRole,
    pub members: Vec<MemberInfo>,
}

/// `PUT /api/projects/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MemberInput {
    /// `viewer`, `deployer` or `maintainer`.
    pub role: String,
}

pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<ProjectAccess>,
    Path(project_id): Path<i64>,
) -> Result<axum::Json<MemberList>, WebError> {
    let members = ops::list(&state, project_id).await?;
    Ok(axum::Json(MemberList {
        project_id,
        your_role: access.role,
        members: members.into_iter().map(MemberInfo::from).collect(),
    }))
}

pub async fn put(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((project_id, user_id)): Path<(i64, i64)>,
    Json(input): Json<MemberInput>,
) -> Result<axum::Json<MemberInfo>, WebError> {
    let m = ops::put(&state, &who, project_id, user_id, &input.role).await?;
    Ok(axum::Json(m.into()))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((project_id, user_id)): Path<(i64, i64)>,
) -> Result<StatusCode, WebError> {
    ops::delete(&state, &who, project_id, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
