//! Project and environment operations, shared by the JSON API and the pages: each validates its
//! input, writes through [`store`], and records its audit entry in the same transaction.

use super::{Environment, EnvironmentInput, Project, ProjectError, ProjectInput, ProjectPatch, store};
use crate::agents::{ops as agent_ops, store as agent_store};
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::users::Principal;

/// Create a project.
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

/// Apply a partial update; the result is validated as a whole.
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

/// Delete a project with its environments, secrets and agents; the agents' live connections
/// are closed.
pub async fn delete_project(state: &AppState, who: &Principal, id: i64) -> Result<(), ProjectError> {
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
    agent_ops::close_agents(state, agents);
    Ok(())
}

/// Add an environment to a project.
pub async fn create_environment(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: EnvironmentInput,
) -> Result<Environment, ProjectError> {
    let valid = input.validate()?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let id = store::insert_environment(tx, project_id, &valid.name, valid.git_ref.as_deref(), now)?;
            audit::record(
                tx,
                now,
                &actor,
                "environment.create",
                "environment",
                Some(id),
                &valid.name,
            )?;
            store::get_environment(tx, id)
        })
        .await
}

/// Delete an environment with its secrets and agents; the agents' live connections are closed.
pub async fn delete_environment(state: &AppState, who: &Principal, id: i64) -> Result<(), ProjectError> {
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
    agent_ops::close_agents(state, agents);
    Ok(())
}
