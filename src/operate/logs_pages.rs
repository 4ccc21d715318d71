//! The logs page of one service: `GET /environments/{id}/services/{service}/logs?tail=N`
//! (member). Without JavaScript it shows the last lines (fetched from the agent as the page is
//! made, never stored); "Follow" opens the WebSocket (`logs_api::socket`, htmx ws extension as
//! the deployment page) that appends new lines and says when following ended.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::logs::{self, LogsError};
use super::logs_api::status_markup;
use crate::app::AppState;
use crate::web::error::WebError;
use crate::web::layout::{Nav, PageError, Viewer, no_store, page};
use stagely_protocol::operate::{ContainerLogLine, MAX_FOLLOW_SECS, MAX_LOG_TAIL};

/// The link to a service's logs from the runtime table (members only).
pub fn service_link(can_member: bool, environment_id: i64, service: &str) -> Markup {
    html! {
        @if can_member && stagely_protocol::operate::is_service_name(service) {
            " " a.small href=(format!("/environments/{environment_id}/services/{service}/logs"))
                data-testid=(format!("logs-{environment_id}-{service}")) { "logs" }
        }
    }
}

/// One line as the page shows it: its time (short), its container, its text (escaped).
pub fn line_markup(l: &ContainerLogLine) -> Markup {
    let at = l.at.as_deref().map(|a| a.get(11..19).unwrap_or(a));
    html! {
        span.line {
            @if let Some(at) = at { span.seq title=(l.at.as_deref().unwrap_or("")) { (at) } " " }
            @if !l.container.is_empty() { span.muted { (l.container) } " " }
            (l.line) "\n"
        }
    }
}

fn to_page_error(e: LogsError) -> PageError {
    PageError(match e {
        LogsError::NotFound => WebError::NotFound("environment"),
        LogsError::InvalidTail(m) => WebError::invalid("tail", m),
        LogsError::InvalidService => WebError::invalid("service", LogsError::InvalidService.to_string()),
        LogsError::Internal(m) => WebError::Internal(m),
        other => WebError::Conflict {
            code: "logs",
            message: other.to_string(),
        },
    })
}

pub async fn logs_page(
    State(state): State<AppState>,
    v: Viewer,
    Path((id, service)): Path<(i64, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let tail = logs::parse_tail(query.get("tail").map(String::as_str)).map_err(to_page_error)?;
    let following = query.get("follow").is_some_and(|f| f == "1");
    let target = logs::target(&state, id, &service).await.map_err(to_page_error)?;
    // Not following: the lines now (an agent problem is said on the page, not as an error page).
    let (lines, problem) = if following {
        (Vec::new(), None)
    } else {
        match logs::open(&state, &v.who, id, &service, tail, false).await {
            Ok(stream) => match logs::collect(stream).await {
                Ok((lines, dropped)) => (
                    lines,
                    (dropped > 0).then(|| {
                        format!("{dropped} lines were dropped by the agent (more than 2,000 a second).")
                    }),
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            },
            Err(e @ (LogsError::NotFound | LogsError::InvalidService | LogsError::Internal(_))) => {
                return Err(to_page_error(e));
            }
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    };
    let base = format!("/environments/{id}/services/{}/logs", target.service);
    let body = html! {
        div.page-head {
            h1 { "Logs of " code { (target.service) } }
        }
        p.muted {
            a href=(format!("/projects/{}", target.project_id)) { (target.project) } " · " (target.environment)
            " · the last " (tail) " lines (at most " (MAX_LOG_TAIL) "), masked; never stored."
        }
        p {
            @if following {
                a.button.small href=(format!("{base}?tail={tail}")) data-testid="logs-unfollow" { "Stop following" }
            } @else {
                a.button.small href=(format!("{base}?tail={tail}&follow=1")) data-testid="logs-follow" { "Follow" }
                " "
                a.small href=(format!("{base}?tail={tail}")) { "Reload" }
            }
        }
        @if let Some(problem) = &problem {
            p.error role="alert" data-testid="logs-problem" { (problem) }
        }
        @if following {
            div hx-ext="ws" ws-connect=(format!("/ws/environments/{id}/services/{}/logs?tail={tail}", target.service)) {
                (status_markup(&format!("Connecting… (following stops after {} minutes)", MAX_FOLLOW_SECS / 60), true))
                pre.log id="container-log" data-testid="container-log" {}
            }
        } @else {
            pre.log id="container-log" data-testid="container-log" {
                @for l in &lines { (line_markup(l)) }
            }
            @if lines.is_empty() && problem.is_none() { p.muted { "No lines." } }
        }
        p.muted { small { "As JSON: " a href=(format!("/api/environments/{id}/services/{}/logs?tail={tail}", target.service)) { "/api/environments/" (id) "/services/" (target.service) "/logs" } } }
    };
    let title = format!("Logs of {}", target.service);
    Ok((no_store(), page(&v, &title, Nav::Projects, body)).into_response())
}
