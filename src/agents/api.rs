//! JSON API for agents: create (the token is shown once), list, revoke.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::{AgentError, AgentInfo, store};
use crate::app::AppState;
use crate::audit;
use crate::db::{now_ms, rfc3339};
use crate::users::Principal;
use crate::web::error::{Json, WebError};

impl From<AgentError> for WebError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound => WebError::NotFound("agent"),
            AgentError::EnvironmentNotFound => WebError::NotFound("environment"),
            AgentError::Invalid { field, message } => WebError::invalid(field, message),
            AgentError::Db(e) => e.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub name: String,
}

#[derive(Serialize)]
pub struct CreatedAgent {
    pub id: i64,
    pub name: String,
    pub environment_id: i64,
    /// Shown only in this response; only its hash is stored.
    pub token: String,
}

/// Create an agent for an environment; shared by the API and the agents page.
pub async fn create_agent(
    state: &AppState,
    who: &Principal,
    environment_id: i64,
    name: &str,
) -> Result<CreatedAgent, AgentError> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(AgentError::Invalid {
            field: "name",
            message: "must be 1 to 64 printable characters".into(),
        });
    }
    let actor = who.actor.clone();
    let (id, token) = state
        .db
        .write({
            let name = name.clone();
            move |tx| {
                let now = now_ms();
                let (id, token) = store::create(tx, environment_id, &name, now)?;
                audit::record(tx, now, &actor, "agent.create", "agent", Some(id), &name)?;
                Ok::<_, AgentError>((id, token))
            }
        })
        .await?;
    Ok(CreatedAgent {
        id,
        name,
        environment_id,
        token,
    })
}

pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(environment_id): Path<i64>,
    Json(input): Json<NewAgent>,
) -> Result<impl IntoResponse, WebError> {
    let created = create_agent(&state, &who, environment_id, &input.name).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Every agent, with live status from the hub where connected.
pub async fn list_agents(state: &AppState) -> Result<Vec<AgentInfo>, AgentError> {
    let mut agents = state.db.read(store::list).await?;
    for a in &mut agents {
        a.online = state.hub.is_online(a.id);
        if let Some(seen) = state.hub.last_seen(a.id) {
            a.last_heartbeat = Some(rfc3339(seen));
        }
    }
    Ok(agents)
}

pub async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<AgentInfo>>, WebError> {
    Ok(axum::Json(list_agents(&state).await?))
}

/// Revoke an agent and close its live connection at once.
pub async fn revoke_agent(state: &AppState, who: &Principal, id: i64) -> Result<(), AgentError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let agent = store::revoke(tx, id, now)?;
            audit::record(tx, now, &actor, "agent.revoke", "agent", Some(id), &agent.name)?;
            Ok::<_, AgentError>(())
        })
        .await?;
    state.hub.disconnect(id, 1008, stagely_protocol::CLOSE_REVOKED);
    Ok(())
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<StatusCode, WebError> {
    revoke_agent(&state, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
