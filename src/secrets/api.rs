//! JSON API for secrets. Values are write-only: no response ever carries one.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{SecretError, SecretInfo, SecretInput, store, validate_key, validate_scope, validate_value};
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
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

/// Validate, encrypt and store a new secret; shared by the API and the web form.
pub async fn create_secret(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: SecretInput,
) -> Result<SecretInfo, SecretError> {
    let key = input.key.trim().to_owned();
    validate_key(&key)?;
    validate_value(&input.value)?;
    let (scope, service) = validate_scope(&input.scope, input.service.as_deref())?;
    let ciphertext = state.vault.encrypt(&input.value)?;
    let environment = input
        .environment
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM projects WHERE id = ?1)",
                [project_id],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(SecretError::ProjectNotFound);
            }
            let environment_id = match &environment {
                Some(name) => Some(store::environment_id(tx, project_id, name)?),
                None => None,
            };
            let now = now_ms();
            let new = store::NewSecret {
                project_id,
                environment_id,
                key: &key,
                scope,
                service: service.as_deref(),
                ciphertext,
                actor: &actor,
            };
            let id = store::insert(tx, &new, now)?;
            audit::record(
                tx,
                now,
                &actor,
                "secret.create",
                "secret",
                Some(id),
                &describe(&key, service.as_deref(), environment.as_deref()),
            )?;
            store::get(tx, id)
        })
        .await
}

/// `KEY`, `KEY (service web)`, `KEY (staging)`: what the audit log says about a secret.
fn describe(key: &str, service: Option<&str>, environment: Option<&str>) -> String {
    match (service, environment) {
        (None, None) => key.to_owned(),
        (Some(s), None) => format!("{key} (service {s})"),
        (None, Some(e)) => format!("{key} ({e})"),
        (Some(s), Some(e)) => format!("{key} (service {s}, {e})"),
    }
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Json(input): Json<SecretInput>,
) -> Result<impl IntoResponse, WebError> {
    let info = create_secret(&state, &who, project_id, input).await?;
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

/// A new value for an existing secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewValue {
    pub value: String,
}

impl Drop for NewValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

/// Replace a secret's value (its version goes up by one); shared by the API and the web form.
pub async fn update_secret(
    state: &AppState,
    who: &Principal,
    id: i64,
    new: NewValue,
) -> Result<SecretInfo, SecretError> {
    validate_value(&new.value)?;
    let ciphertext = state.vault.encrypt(&new.value)?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let before = store::get(tx, id)?;
            let now = now_ms();
            store::update_value(tx, id, &ciphertext, &actor, now)?;
            let what = describe(
                &before.key,
                before.service.as_deref(),
                before.environment.as_deref(),
            );
            audit::record(tx, now, &actor, "secret.update", "secret", Some(id), &what)?;
            store::get(tx, id)
        })
        .await
}

pub async fn update(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Json(new): Json<NewValue>,
) -> Result<axum::Json<SecretInfo>, WebError> {
    Ok(axum::Json(update_secret(&state, &who, id, new).await?))
}

pub async fn delete_secret(state: &AppState, who: &Principal, id: i64) -> Result<(), SecretError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let before = store::get(tx, id)?;
            store::delete(tx, id)?;
            let what = describe(
                &before.key,
                before.service.as_deref(),
                before.environment.as_deref(),
            );
            audit::record(tx, now_ms(), &actor, "secret.delete", "secret", Some(id), &what)
                .map_err(SecretError::from)
        })
        .await
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    delete_secret(&state, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
