//! JSON API for projects and environments: handlers translate HTTP to [`super::ops`] and back.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::{
    Environment, EnvironmentInput, EnvironmentPatch, Project, ProjectError, ProjectInput, ProjectPatch, ops,
    store,
};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{Json, WebError};

impl From<ProjectError> for WebError {
    fn from(e: ProjectError) -> Self {
        match e {
            ProjectError::NotFound => WebError::NotFound("project"),
            ProjectError::EnvironmentNotFound => WebError::NotFound("environment"),
            ProjectError::Invalid { field, message } => WebError::invalid(field, message),
            e @ (ProjectError::NameTaken(_) | ProjectError::EnvironmentTaken(_)) => WebError::NameTaken {
                field: "name".into(),
                message: e.to_string(),
            },
            e @ ProjectError::StackRunning { .. } => WebError::Conflict {
                code: "stack_running",
                message: e.to_string(),
            },
            ProjectError::Forbidden(why) => WebError::ForbiddenBecause(why),
            ProjectError::Db(e) => e.into(),
        }
    }
}

pub async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<Project>>, WebError> {
    Ok(axum::Json(state.db.read(store::list).await?))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Project>, WebError> {
    Ok(axum::Json(state.db.read(move |c| store::get(c, id)).await?))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(input): Json<ProjectInput>,
) -> Result<(StatusCode, axum::Json<Project>), WebError> {
    let project = ops::create_project(&state, &who, input).await?;
    Ok((StatusCode::CREATED, axum::Json(project)))
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Json(patch): Json<ProjectPatch>,
) -> Result<axum::Json<Project>, WebError> {
    Ok(axum::Json(ops::update_project(&state, &who, id, patch).await?))
}

/// `DELETE /api/projects/{id}` (`?stack_removed=true`, `?force=true`): its stacks are taken
/// down through their agents first (src/operate/delete.rs).
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Query(q): Query<crate::operate::delete::DeleteOptions>,
) -> Result<StatusCode, WebError> {
    crate::operate::delete::delete_project(&state, &who, id, q).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_environment(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Json(input): Json<EnvironmentInput>,
) -> Result<(StatusCode, axum::Json<Environment>), WebError> {
    let env = ops::create_environment(&state, &who, project_id, input).await?;
    Ok((StatusCode::CREATED, axum::Json(env)))
}

pub async fn patch_environment(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Json(patch): Json<EnvironmentPatch>,
) -> Result<axum::Json<Environment>, WebError> {
    Ok(axum::Json(
        ops::update_environment(&state, &who, id, patch).await?,
    ))
}

pub async fn get_environment(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Environment>, WebError> {
    Ok(axum::Json(
        state.db.read(move |c| store::get_environment(c, id)).await?,
    ))
}

pub async fn delete_environment(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Query(q): Query<crate::operate::delete::DeleteOptions>,
) -> Result<StatusCode, WebError> {
    crate::operate::delete::delete_environment(&state, &who, id, q).await?;
    Ok(StatusCode::NO_CONTENT)
}
