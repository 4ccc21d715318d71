//! `POST /api/environments/{id}/services/{service}/restart|stop|start` and
//! `POST /api/environments/{id}/down` (member): answered once the agents reported.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use stagely_protocol::operate::Action;

use super::actions::{self, ActionError, ActionOutcome};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::WebError;

impl From<ActionError> for WebError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::EnvironmentNotFound => WebError::NotFound("environment"),
            e @ (ActionError::InvalidService(_) | ActionError::UnknownAction(_)) => WebError::Status {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_service",
                message: e.to_string(),
            },
            ActionError::NoAgent(message) => WebError::Conflict {
                code: "no_agent",
                message,
            },
            e @ ActionError::Elsewhere { .. } => WebError::Conflict {
                code: "agent_elsewhere",
                message: e.to_string(),
            },
            e @ ActionError::Deploying { .. } => WebError::Conflict {
                code: "deployment_in_progress",
                message: e.to_string(),
            },
            ActionError::Failed(message) => WebError::Status {
                status: StatusCode::BAD_GATEWAY,
                code: "agent_failed",
                message,
            },
            ActionError::Timeout(message) => WebError::Status {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: "agent_timeout",
                message,
            },
            ActionError::Db(e) => e.into(),
        }
    }
}

async fn service_action(
    state: &AppState,
    who: &Principal,
    id: i64,
    service: &str,
    action: Action,
) -> Result<axum::Json<ActionOutcome>, WebError> {
    Ok(axum::Json(
        actions::run(state, who, id, action, Some(service)).await?,
    ))
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, service)): Path<(i64, String)>,
) -> Result<axum::Json<ActionOutcome>, WebError> {
    service_action(&state, &who, id, &service, Action::Restart).await
}

pub async fn stop(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, service)): Path<(i64, String)>,
) -> Result<axum::Json<ActionOutcome>, WebError> {
    service_action(&state, &who, id, &service, Action::Stop).await
}

pub async fn start(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, service)): Path<(i64, String)>,
) -> Result<axum::Json<ActionOutcome>, WebError> {
    service_action(&state, &who, id, &service, Action::Start).await
}

pub async fn down(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<axum::Json<ActionOutcome>, WebError> {
    Ok(axum::Json(
        actions::run(&state, &who, id, Action::Down, None).await?,
    ))
}
