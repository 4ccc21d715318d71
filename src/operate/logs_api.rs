//! Container logs over HTTP: `GET /api/environments/{id}/services/{service}/logs?tail=N`
//! (member; JSON once the agent has sent the tail) and the followed log
//! `/ws/environments/{id}/services/{service}/logs?tail=N` (member; a browser WebSocket with the
//! same session, Origin and revocation rules as the deployment live socket), which sends HTML
//! fragments for the logs page (`logs_pages`), follows for at most
//! [`stagely_protocol::operate::MAX_FOLLOW_SECS`], says why it ended and closes. The agent is
//! sent LOGS_STOP when the viewer leaves or the appliance stops.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Serialize;

use super::logs::{self, Event, LogStream, LogsError};
use crate::app::AppState;
use crate::users::Principal;
use crate::web::error::{ErrorBody, ErrorDetail, request_id};
use stagely_protocol::operate::{ContainerLogLine, LogEnd, MAX_FOLLOW_SECS};

impl LogsError {
    pub fn status(&self) -> StatusCode {
        match self {
            LogsError::NotFound => StatusCode::NOT_FOUND,
            LogsError::InvalidTail(_) | LogsError::InvalidService => StatusCode::BAD_REQUEST,
            LogsError::NoAgent(_)
            | LogsError::Elsewhere { .. }
            | LogsError::NotOffered(_)
            | LogsError::Busy(_) => StatusCode::CONFLICT,
            LogsError::Agent(_) | LogsError::AgentGone => StatusCode::BAD_GATEWAY,
            LogsError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            LogsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            LogsError::NotFound => "not_found",
            LogsError::InvalidTail(_) | LogsError::InvalidService => "invalid_field",
            LogsError::NoAgent(_) => "agent_offline",
            LogsError::Elsewhere { .. } => "agent_elsewhere",
            LogsError::NotOffered(_) => "agent_too_old",
            LogsError::Busy(_) => "busy",
            LogsError::Agent(_) | LogsError::AgentGone => "agent_failed",
            LogsError::Timeout => "agent_timeout",
            LogsError::Internal(_) => "internal",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            LogsError::InvalidTail(_) => Some("tail".into()),
            LogsError::InvalidService => Some("service".into()),
            _ => None,
        }
    }

    /// What the caller may see (internal details go to the log with the request id).
    pub fn public_message(&self, request_id: &str) -> String {
        match self {
            LogsError::Internal(_) => format!("internal error (request id {request_id}); see the server log"),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for LogsError {
    fn into_response(self) -> Response {
        let id = request_id();
        if let LogsError::Internal(detail) = &self {
            tracing::error!(request_id = %id, error = %detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.public_message(&id),
                request_id: id,
                field: self.field(),
                last_seen: None,
            },
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// `GET …/logs`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContainerLog {
    pub environment_id: i64,
    pub service: String,
    #[schema(value_type = Vec<Object>)]
    pub lines: Vec<ContainerLogLine>,
    /// Lines the agent left out (a flood beyond its rate of 2,000 lines/s).
    pub dropped: u64,
}

pub async fn get(
    State(state): State<AppState>,
    Path((id, service)): Path<(i64, String)>,
    Query(query): Query<HashMap<String, String>>,
    axum::Extension(who): axum::Extension<Principal>,
) -> Result<axum::Json<ContainerLog>, LogsError> {
    let tail = logs::parse_tail(query.get("tail").map(String::as_str))?;
    let stream = logs::open(&state, &who, id, &service, tail, false).await?;
    let environment_id = stream.target.environment_id;
    let service = stream.target.service.clone();
    let (lines, dropped) = logs::collect(stream).await?;
    Ok(axum::Json(ContainerLog {
        environment_id,
        service,
        lines,
        dropped,
    }))
}

/// The followed log, for the logs page (htmx ws extension).
pub async fn socket(
    State(state): State<AppState>,
    Path((id, service)): Path<(i64, String)>,
    Query(query): Query<HashMap<String, String>>,
    axum::Extension(who): axum::Extension<Principal>,
    session: Option<axum::Extension<crate::web::session::Session>>,
    ws: WebSocketUpgrade,
) -> Result<Response, LogsError> {
    let tail = logs::parse_tail(query.get("tail").map(String::as_str))?;
    // Refused before upgrading (404, 400, 409) as a plain HTTP answer.
    let stream = logs::open(&state, &who, id, &service, tail, true).await?;
    let revoked = crate::web::session::socket_end(&state, &who, session.as_deref());
    let shutdown = state.shutdown.clone();
    Ok(crate::deploys::pages::small_buffers(ws, 4 * 1024 * 1024)
        .on_upgrade(move |socket| async move {
            let mut socket = socket;
            let said = tokio::select! {
                said = follow(stream, &mut socket) => said,
                () = revoked => None,
                () = shutdown.cancelled() => Some("The appliance is stopping: following ended.".to_owned()),
            };
            // The stream is dropped by now: the agent was sent LOGS_STOP if it still sent.
            if let Some(said) = said {
                let _ = socket.send(text(status_markup(&said, false))).await;
                let _ = socket.send(Message::Close(None)).await;
            }
        })
        .into_response())
}

fn text(m: Markup) -> Message {
    Message::Text(m.into_string().into())
}

/// Forward lines until the log ends or the viewer leaves; answers what to tell the viewer
/// (`None`: it left).
async fn follow(mut stream: LogStream, socket: &mut WebSocket) -> Option<String> {
    let started = status_markup(
        &format!("Following (at most {} minutes)…", MAX_FOLLOW_SECS / 60),
        true,
    );
    socket.send(text(started)).await.ok()?;
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Ok(Event::Lines { lines, dropped }) => {
                    let m = html! {
                        pre.log id="container-log" hx-swap-oob="beforeend" {
                            @for l in &lines { (super::logs_pages::line_markup(l)) }
                            @if dropped > 0 { span.muted { "… " (dropped) " lines dropped by the agent (more than 2,000 a second)\n" } }
                        }
                    };
                    socket.send(text(m)).await.ok()?;
                }
                Ok(Event::End(LogEnd::TimeLimit)) => {
                    return Some(format!("Following ended: the {}-minute limit was reached. Reload to follow again.", MAX_FOLLOW_SECS / 60));
                }
                Ok(Event::End(_)) => return Some("Following ended: the containers stopped logging.".into()),
                Err(LogsError::AgentGone) => return Some("Following ended: the agent disconnected.".into()),
                Err(e) => return Some(format!("Following ended: {e}")),
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The follow status line of the logs page, replaced by the socket.
pub fn status_markup(text: &str, live: bool) -> Markup {
    html! {
        p #follow-status hx-swap-oob="true" class=(if live { "live" } else { "muted" }) data-testid="follow-status" { (text) }
    }
}
