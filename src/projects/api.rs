//! JSON API for projects and environments.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{Project, ProjectError, ProjectInput, ProjectPatch, store, validate_git_ref, validate_slug};
use crate::agents::store as agent_store;
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::users::Principal;
use crate::web::error::{Json, WebError};

impl From<ProjectError> for WebError {
    fn from(e: ProjectError) -> Self {
        match e {
            ProjectError::NotFound => WebError::NotFound("project"),
            ProjectError::EnvironmentNotFound => WebError::NotFound("environment"),
            ProjectError::Invalid { field, message } => WebError::invalid(field, message),
            e @ ProjectError::NameTaken(_) => WebError::Conflict {
                code: "name_taken",
                message: e.to_string(),
            },
            e @ ProjectError::EnvironmentTaken(_) => WebError::Conflict {
                code: "name_taken",
                message: e.to_string(),
            },
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

/// Create a project; shared by the API and the web form.
pub async fn create_project(
    state: &AppState,
    who: &Principal,
    input: ProjectInput,
) -> Result<Project, ProjectError> {
    let valid = input.validate()?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let id = store::insert(tx, &valid, now)?;
            audit::record(
                tx,
                now,
                &actor,
                "project.create",
                "project",
                Some(id),
                &valid.name,
            )?;
            store::get(tx, id)
        })
        .await
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(input): Json<ProjectInput>,
) -> Result<impl IntoResponse, WebError> {
    let project = create_project(&state, &who, input).await?;
    Ok((StatusCode::CREATED, axum::Json(project)))
}

/// Apply a partial update; shared by the API and the web form.
pub async fn update_project(
    state: &AppState,
    who: &Principal,
    id: i64,
    patch: ProjectPatch,
) -> Result<Project, ProjectError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let current = store::get(tx, id)?;
            let valid = patch.apply(&current).validate()?;
            let now = now_ms();
            store::update(tx, id, &valid, now)?;
            audit::record(
                tx,
                now,
                &actor,
                "project.update",
                "project",
                Some(id),
                &valid.name,
            )?;
            store::get(tx, id)
        })
        .await
}

pub async fn patch(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Json(patch): Json<ProjectPatch>,
) -> Result<axum::Json<Project>, WebError> {
    Ok(axum::Json(update_project(&state, &who, id, patch).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    let actor = who.actor.clone();
    let agents = state
        .db
        .write(move |tx| {
            let project = store::get(tx, id)?;
            let agents = agent_store::ids_for_project(tx, id)?;
            store::delete(tx, id)?;
            audit::record(
                tx,
                now_ms(),
                &actor,
                "project.delete",
                "project",
                Some(id),
                &project.name,
            )?;
            Ok::<_, ProjectError>(agents)
        })
        .await?;
    close_agents(&state, agents);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentInput {
    pub name: String,
    #[serde(default)]
    pub git_ref: Option<String>,
}

/// Add an environment to a project; shared by the API and the web form.
pub async fn create_environment(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: EnvironmentInput,
) -> Result<super::Environment, ProjectError> {
    let name = validate_slug("name", &input.name, 32)?;
    let git_ref = match input.git_ref.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(validate_git_ref("git_ref", r)?),
    };
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let id = store::insert_environment(tx, project_id, &name, git_ref.as_deref(), now)?;
            audit::record(
                tx,
                now,
                &actor,
                "environment.create",
                "environment",
                Some(id),
                &name,
            )?;
            store::get_environment(tx, id)
        })
        .await
}

pub async fn add_environment(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Json(input): Json<EnvironmentInput>,
) -> Result<impl IntoResponse, WebError> {
    let env = create_environment(&state, &who, project_id, input).await?;
    Ok((StatusCode::CREATED, axum::Json(env)))
}

pub async fn delete_environment(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    let actor = who.actor.clone();
    let agents = state
        .db
        .write(move |tx| {
            let env = store::get_environment(tx, id)?;
            let agents = agent_store::ids_for_environment(tx, id)?;
            store::delete_environment(tx, id)?;
            audit::record(
                tx,
                now_ms(),
                &actor,
                "environment.delete",
                "environment",
                Some(id),
                &env.name,
            )?;
            Ok::<_, ProjectError>(agents)
        })
        .await?;
    close_agents(&state, agents);
    Ok(StatusCode::NO_CONTENT)
}

/// Agents of a deleted project or environment lose their record: close their live sockets too.
fn close_agents(state: &AppState, agents: Vec<i64>) {
    for id in agents {
        state.hub.disconnect(id, 1008, stagely_protocol::CLOSE_REVOKED);
    }
}
