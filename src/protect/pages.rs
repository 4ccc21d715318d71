//! An environment's protection on the project page: the "Protected" badge and, for admins,
//! the form (`POST /environments/{id}/protection`, the same rules as `PATCH
//! /api/environments/{id}`).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use crate::app::AppState;
use crate::projects::{Environment, EnvironmentPatch, ops, store};
use crate::users::{Principal, Role};
use crate::web::error::WebError;
use crate::web::layout::{self, PageError, Viewer, csrf_field};

/// The badge next to a protected environment's name.
pub fn badge(env: &Environment) -> Markup {
    html! {
        @if env.protected {
            " " span.badge data-testid=(format!("protected-{}", env.name))
                title=(format!("Only admins and {} may deploy it", super::describe(&env.deployers))) { "Protected" }
        }
        @if env.require_approval { " " span.badge title="A deploy waits for another person's approval" { "Approval" } }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct ProtectionForm {
    #[serde(default)]
    pub protected: Option<String>,
    #[serde(default)]
    pub require_approval: Option<String>,
    /// Comma-separated: roles, user ids, `user:<name>`, usernames.
    #[serde(default)]
    pub deployers: String,
}

/// The settings of an environment's protection (admins only; others see the summary).
pub fn form(v: &Viewer, env: &Environment) -> Markup {
    let listed: Vec<String> = env
        .deployers
        .iter()
        .map(|d| match d {
            super::Deployer::Role { role } => role.as_str().to_owned(),
            super::Deployer::User { username, .. } => format!("user:{username}"),
        })
        .collect();
    html! {
        @if env.protected {
            p.protection { small { "Protected: only admins and " (super::describe(&env.deployers)) " may deploy it"
                @if env.require_approval { ", and a deploy waits for another person's approval" } "." } }
        }
        @if v.can(Role::Admin) {
            details {
                summary { "Protection" }
                form.grid-form method="post" action=(format!("/environments/{}/protection", env.id)) {
                    (csrf_field(&v.csrf))
                    label { input type="checkbox" name="protected" checked[env.protected]; " Protected: only admins and the deployers below may deploy" }
                    label { "Deployers (roles deployer/maintainer, user:<name>)"
                        input type="text" name="deployers" value=(listed.join(", ")); }
                    label { input type="checkbox" name="require_approval" checked[env.require_approval]; " Require another person's approval" }
                    button type="submit" { "Save" }
                }
            }
        }
    }
}

/// `POST /environments/{id}/protection` (ADMIN).
pub async fn save(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(env_id): Path<i64>,
    Form(form): Form<ProtectionForm>,
) -> Result<Response, PageError> {
    let env = state
        .db
        .read(move |c| store::get_environment(c, env_id))
        .await
        .map_err(WebError::from)?;
    let deployers: Vec<serde_json::Value> = form
        .deployers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_or_else(|_| serde_json::Value::from(s), serde_json::Value::from)
        })
        .collect();
    let patch = EnvironmentPatch {
        protected: Some(serde_json::Value::Bool(form.protected.is_some())),
        require_approval: Some(serde_json::Value::Bool(form.require_approval.is_some())),
        deployers: Some(serde_json::Value::Array(deployers)),
        ..EnvironmentPatch::default()
    };
    ops::update_environment(&state, &who, env_id, patch)
        .await
        .map_err(WebError::from)?;
    Ok(layout::see_other(&format!(
        "/projects/{}?done=protection-saved#env-{}",
        env.project_id, env.name
    )))
}
