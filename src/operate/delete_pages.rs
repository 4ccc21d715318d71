//! Page forms for deleting a project or an environment (admin, CSRF-checked): the name typed to
//! confirm, and a "force" checkbox for when an agent is offline (its stack would be left
//! running). The stacks are taken down through their agents first ([`super::delete`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::actions_store;
use super::delete::{self, DeleteOptions};
use crate::app::AppState;
use crate::users::{Principal, Role};
use crate::web::error::WebError;
use crate::web::layout::{self, Nav, PageError, Viewer, csrf_field, no_store, page};

fn delete_form(v: &Viewer, action: &str, what: &str, name: &str, testid: &str) -> Markup {
    html! {
        @if v.can(Role::Admin) {
            details.danger {
                summary { "Delete " (what) " " (name) }
                form method="post" action=(action) {
                    (csrf_field(&v.csrf))
                    p { small { "Its stacks are taken down through their agents first (containers and networks removed, volumes kept); then its records, secrets and agents are deleted. This cannot be undone." } }
                    label { "Type " code { (name) } " to confirm"
                        input name="confirm" placeholder=(name) required autocomplete="off"
                            aria-label=(format!("{what} name")) data-testid=(format!("{testid}-confirm"));
                    }
                    label {
                        input type="checkbox" name="force" value="true" data-testid=(format!("{testid}-force"));
                        " Force: delete even if an agent is offline (its stack would be left running)"
                    }
                    button.small.contrast type="submit" data-testid=(testid) { "Delete " (what) " " (name) }
                }
            }
        }
    }
}

/// "Delete project" (admin), for the project's settings.
pub fn project_delete_form(v: &Viewer, project_id: i64, name: &str) -> Markup {
    delete_form(
        v,
        &format!("/projects/{project_id}/delete"),
        "project",
        name,
        "delete-project",
    )
}

/// "Delete environment" (admin), for each environment's card.
pub fn environment_delete_form(v: &Viewer, environment_id: i64, name: &str) -> Markup {
    delete_form(
        v,
        &format!("/environments/{environment_id}/delete"),
        "environment",
        name,
        &format!("delete-environment-{environment_id}"),
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    force: Option<String>,
}

impl DeleteForm {
    fn options(&self) -> DeleteOptions {
        DeleteOptions {
            stack_removed: false,
            force: self.force.as_deref() == Some("true"),
        }
    }
}

fn failure(v: &Viewer, back: &str, title: &str, err: &WebError) -> Response {
    let body = html! {
        article {
            header { h2 { (title) } }
            p.notice.error role="alert" data-testid="delete-error" { (err.public_message(&crate::web::error::request_id())) }
            p { "Nothing was deleted." }
            a role="button" href=(back) { "Back" }
        }
    };
    (err.status(), no_store(), page(v, title, Nav::Projects, body)).into_response()
}

fn mismatch(name: &str) -> WebError {
    WebError::Status {
        status: StatusCode::BAD_REQUEST,
        code: "confirmation_mismatch",
        message: format!("The name did not match: type {name:?} to confirm."),
    }
}

/// `POST /projects/{id}/delete` (admin).
pub async fn delete_project(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, PageError> {
    let project = state.db.read(move |c| crate::projects::store::get(c, id)).await?;
    let back = format!("/projects/{id}#settings");
    let title = format!("Delete project {}", project.name);
    if form.confirm.trim() != project.name {
        return Ok(failure(&v, &back, &title, &mismatch(&project.name)));
    }
    match delete::delete_project(&state, &who, id, form.options()).await {
        Ok(()) => Ok(layout::see_other("/projects?done=project-deleted")),
        Err(e) => Ok(failure(&v, &back, &title, &e.into())),
    }
}

/// `POST /environments/{id}/delete` (admin).
pub async fn delete_environment(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<DeleteForm>,
) -> Result<Response, PageError> {
    let target = state
        .db
        .read(move |c| actions_store::target(c, id))
        .await?
        .ok_or(WebError::NotFound("environment"))?;
    let back = format!("/projects/{}#env-{}", target.project_id, target.environment);
    let title = format!("Delete environment {}", target.environment);
    if form.confirm.trim() != target.environment {
        return Ok(failure(&v, &back, &title, &mismatch(&target.environment)));
    }
    match delete::delete_environment(&state, &who, id, form.options()).await {
        Ok(()) => Ok(layout::see_other(&format!(
            "/projects/{}?done=environment-deleted",
            target.project_id
        ))),
        Err(e) => Ok(failure(&v, &back, &title, &e.into())),
    }
}
