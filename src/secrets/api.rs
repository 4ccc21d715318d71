//! JSON API for secrets. Values are write-only: no response ever carries one. Handlers translate
//! HTTP to [`super::ops`] and back.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{NewValue, SecretError, SecretInfo, SecretInput, ops, store};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{Json, WebError};

impl From<SecretError> for WebError {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::NotFound => WebError::NotFound("secret"),
            SecretError::ProjectNotFound => WebError::NotFound("project"),
            SecretError::Invalid { field, message } => WebError::invalid(field, message),
            e @ SecretError::Exists(_) => WebError::Conflict {
                code: "secret_exists",
                message: e.to_string(),
            },
            SecretError::Vault(e) => e.into(),
            SecretError::Db(e) => e.into(),
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Json(input): Json<SecretInput>,
) -> Result<(StatusCode, axum::Json<SecretInfo>), WebError> {
    let info = ops::create_secret(&state, &who, project_id, input).await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

pub async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<i64>,
) -> Result<axum::Json<Vec<SecretInfo>>, WebError> {
    Ok(axum::Json(
        state.db.read(move |c| store::list(c, project_id)).await?,
    ))
}

pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Json(new): Json<NewValue>,
) -> Result<axum::Json<SecretInfo>, WebError> {
    Ok(axum::Json(ops::update_secret(&state, &who, id, new).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    ops::delete_secret(&state, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/secrets/{id}/versions`: the kept versions, newest first, also of a deleted secret
/// while a release still holds them. Never a value.
pub async fn versions(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Vec<store::VersionInfo>>, WebError> {
    Ok(axum::Json(ops::versions(&state, id).await?))
}
