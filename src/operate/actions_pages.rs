//! Page forms for lifecycle actions (CSRF-checked, member): restart / stop / start buttons in each
//! service row of the runtime table, and "Take down" per environment (a production-like one needs
//! its name typed, like the deploy form). The result comes back as a notice on the project page;
//! the runtime table updates live from the agent's RUNTIME.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;
use stagely_protocol::operate::Action;

use super::actions::{self, ActionError};
use super::actions_store;
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::projects::pages::is_production;
use crate::users::Principal;
use crate::web::error::WebError;
use crate::web::layout::{self, Nav, PageError, Viewer, csrf_field, no_store, page};

/// The restart / stop / start buttons of one service row (members only).
pub fn service_buttons(can_member: bool, csrf: &str, environment_id: i64, service: &str) -> Markup {
    html! {
        @if can_member {
            div.row-actions.service-actions {
                @for (action, label) in [("restart", "Restart"), ("stop", "Stop"), ("start", "Start")] {
                    form.inline method="post"
                        action=(format!("/environments/{environment_id}/services/{service}/{action}")) {
                        (csrf_field(csrf))
                        button.small.secondary.outline type="submit"
                            data-testid=(format!("{action}-{environment_id}-{service}")) { (label) }
                    }
                }
            }
        }
    }
}

/// "Take down" for one environment: `docker compose down` through its agents (members only).
pub fn take_down_form(v: &Viewer, environment_id: i64, environment: &str) -> Markup {
    html! {
        @if v.may(ProjectRole::Maintainer) {
            details.take-down {
                summary { "Take down " (environment) }
                form method="post" action=(format!("/environments/{environment_id}/down")) {
                    (csrf_field(&v.csrf))
                    p { small { "Stops and removes this environment's containers and networks on its target (volumes are kept). A deploy brings it back." } }
                    @if is_production(environment) {
                        label { "Type " code { (environment) } " to confirm"
                            input name="confirm" placeholder=(environment) required autocomplete="off"
                                aria-label="Environment name" data-testid=(format!("down-confirm-{environment_id}"));
                        }
                    }
                    button.small.contrast type="submit" data-testid=(format!("down-{environment_id}")) {
                        "Take down " (environment)
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct DownForm {
    #[serde(default)]
    confirm: String,
}

/// An action that failed or was refused, on a page of its own with the way back.
fn failure(v: &Viewer, project_id: Option<i64>, title: &str, err: &WebError) -> Response {
    let back = project_id.map_or_else(|| "/projects".to_owned(), |p| format!("/projects/{p}"));
    let body = html! {
        article {
            header { h2 { (title) } }
            p.notice.error role="alert" data-testid="action-error" { (err.public_message(&crate::web::error::request_id())) }
            a role="button" href=(back) { "Back to the project" }
        }
    };
    (err.status(), no_store(), page(v, title, Nav::Projects, body)).into_response()
}

async fn project_of(state: &AppState, environment_id: i64) -> Result<actions_store::Target, PageError> {
    state
        .db
        .read(move |c| actions_store::target(c, environment_id))
        .await?
        .ok_or_else(|| WebError::NotFound("environment").into())
}

/// `POST /environments/{id}/services/{service}/{action}` (member).
pub async fn service_action(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path((id, service, action)): Path<(i64, String, String)>,
) -> Result<Response, PageError> {
    let target = project_of(&state, id).await?;
    let title = format!(
        "{} {}",
        action.chars().take(16).collect::<String>(),
        service.chars().take(63).collect::<String>()
    );
    let action = match actions::service_action(&action) {
        Ok(a) => a,
        Err(e) => return Ok(failure(&v, Some(target.project_id), &title, &e.into())),
    };
    match actions::run(&state, &who, id, action, Some(&service)).await {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{}?done=action-done#env-{}",
            target.project_id, target.environment
        ))),
        Err(e) => Ok(failure(&v, Some(target.project_id), &title, &e.into())),
    }
}

/// `POST /environments/{id}/down` (member): a production-like environment needs its name typed.
pub async fn down(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<DownForm>,
) -> Result<Response, PageError> {
    let target = project_of(&state, id).await?;
    let title = format!("Take down {}", target.environment);
    if is_production(&target.environment) && form.confirm.trim() != target.environment {
        let err = WebError::Status {
            status: StatusCode::BAD_REQUEST,
            code: "confirmation_mismatch",
            message: format!(
                "The name did not match: type {:?} to take this production environment down. Nothing was sent.",
                target.environment
            ),
        };
        return Ok(failure(&v, Some(target.project_id), &title, &err));
    }
    match actions::run(&state, &who, id, Action::Down, None).await {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{}?done=environment-down#env-{}",
            target.project_id, target.environment
        ))),
        Err(e @ ActionError::EnvironmentNotFound) => Err(WebError::from(e).into()),
        Err(e) => Ok(failure(&v, Some(target.project_id), &title, &e.into())),
    }
}
