//! The secrets part of a project page: add, replace the value of, and delete secrets per
//! environment and scope. Values are write-only: no page ever contains one, not even the value
//! just typed into a form that came back with an error.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::ops::{create_secret, delete_secret, update_secret};
use super::{NewValue, SecretInfo, SecretInput, store};
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::db::now_ms;
use crate::projects::Project;
use crate::projects::pages::{Forms, with_errors};
use crate::users::Principal;
use crate::web::layout::{
    self, FormErrors, PageError, Viewer, ago, csrf_field, field_error, form_banner, invalid,
};
use stagely_protocol::Scope;

/// The add-secret form as submitted. `value` is wiped on drop and never rendered back.
#[derive(Default, Clone, Deserialize, zeroize::ZeroizeOnDrop)]
pub struct SecretForm {
    #[serde(default)]
    #[zeroize(skip)]
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    #[zeroize(skip)]
    pub scope: String,
    #[serde(default)]
    #[zeroize(skip)]
    pub service: String,
    #[serde(default)]
    #[zeroize(skip)]
    pub environment: String,
}

const MASK: &str = "••••••••";

pub fn secrets_section(
    v: &Viewer,
    project: &Project,
    secrets: &[SecretInfo],
    versions: &std::collections::HashMap<i64, Vec<store::VersionInfo>>,
    failed: Option<&(SecretForm, FormErrors)>,
) -> Markup {
    let now = now_ms();
    let editable = v.may(ProjectRole::Maintainer);
    let empty = (SecretForm::default(), FormErrors::default());
    let (form, errors) = failed.unwrap_or(&empty);
    let scope = if form.scope.is_empty() {
        "global"
    } else {
        form.scope.as_str()
    };
    html! {
        section id="secrets" {
            h2 { "Secrets" }
            p.muted {
                "Values are encrypted at rest and never shown again. Environment-specific secrets win over "
                "project-wide ones; service secrets reach only their compose service."
            }
            @if secrets.is_empty() {
                p.empty { "No secrets yet." }
            } @else {
                figure {
                    table {
                        thead { tr { th { "Key" } th { "Value" } th { "Environment" } th { "Scope" } th { "Version" } th { "Updated" } @if editable { th {} } } }
                        tbody {
                            @for s in secrets {
                                tr {
                                    td { code { (s.key) } }
                                    td { span.masked { (MASK) } }
                                    td { (s.environment.as_deref().unwrap_or("all")) }
                                    td { @match &s.service { Some(svc) => { "service " code { (svc) } }, None => "global" } }
                                    td {
                                        "v" (s.version)
                                        @if let Some(history) = versions.get(&s.id).filter(|h| h.len() > 1) {
                                            details.versions {
                                                summary { small { (history.len()) " versions kept" } }
                                                ul {
                                                    @for h in history {
                                                        li { small {
                                                            "v" (h.version) " by " (h.created_by) ", " (ago(&h.created_at, now))
                                                            @if h.current { " (current)" }
                                                        } }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                    td { (s.updated_by) br; small.muted { (ago(&s.updated_at, now)) } }
                                    @if editable {
                                        td {
                                            details.inline-edit {
                                                summary { "Replace value" }
                                                form method="post" action=(format!("/secrets/{}", s.id)) {
                                                    (csrf_field(&v.csrf))
                                                    textarea name="value" rows="2" placeholder="new value" aria-label=(format!("New value for {}", s.key)) {}
                                                    button.small type="submit" { "Save new value" }
                                                }
                                            }
                                            form method="post" action=(format!("/secrets/{}/delete", s.id)) {
                                                (csrf_field(&v.csrf))
                                                button.small.secondary.outline type="submit" { "Delete" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if editable {
                article id="new-secret" {
                    header { h3 { "Add a secret" } }
                    (form_banner(errors))
                    form method="post" action=(format!("/projects/{}/secrets", project.id)) {
                        (csrf_field(&v.csrf))
                        div.grid {
                            label { "Key"
                                input name="key" value=(form.key) required placeholder="DATABASE_URL"
                                    pattern="[A-Za-z_][A-Za-z0-9_]*" aria-invalid=[invalid(errors, "key")];
                                (field_error(errors, "key"))
                            }
                            label { "Environment"
                                select name="environment" aria-invalid=[invalid(errors, "environment")] {
                                    option value="" selected[form.environment.is_empty()] { "all environments" }
                                    @for e in &project.environments {
                                        option value=(e.name) selected[form.environment == e.name] { (e.name) }
                                    }
                                }
                                (field_error(errors, "environment"))
                            }
                        }
                        div.grid {
                            label { "Scope"
                                select name="scope" aria-invalid=[invalid(errors, "scope")] {
                                    option value="global" selected[scope == "global"] { "global (every service)" }
                                    option value="service" selected[scope == "service"] { "one service" }
                                }
                                (field_error(errors, "scope"))
                            }
                            label { "Service " span.muted { "(for scope “one service”)" }
                                input name="service" value=(form.service) placeholder="web" aria-invalid=[invalid(errors, "service")];
                                (field_error(errors, "service"))
                            }
                        }
                        label { "Value"
                            textarea name="value" rows="3" aria-invalid=[invalid(errors, "value")]
                                placeholder="stored encrypted; never shown again" {}
                            @if !errors.is_empty() { small.muted { "For your safety the value was not kept: enter it again." } }
                            (field_error(errors, "value"))
                        }
                        button type="submit" { "Add secret" }
                    }
                }
            }
        }
    }
}

/// The warnings of a secret just stored (shown once, on the page the form's POST answers with).
pub fn warnings(warnings: &[String]) -> Markup {
    html! {
        @for w in warnings {
            p.notice.warn role="status" data-testid="secret-warning" { "Stored, but check: " (w) }
        }
    }
}

/// A stored secret that came with warnings: the project page with them, instead of the redirect.
async fn stored_with_warnings(
    state: &AppState,
    v: &Viewer,
    project_id: i64,
    done: &str,
    info: SecretInfo,
) -> Result<Response, PageError> {
    let forms = Forms {
        secret_warnings: info.warnings,
        ..Forms::default()
    };
    let tab = crate::projects::pages::Tab::Secrets;
    let markup = crate::projects::pages::render_project(state, v, project_id, tab, forms, Some(done)).await?;
    Ok((layout::no_store(), markup).into_response())
}

const SECRET_FIELDS: &[&str] = &["key", "value", "scope", "service", "environment"];

pub async fn create(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Form(form): Form<SecretForm>,
) -> Result<Response, PageError> {
    let input = SecretInput {
        key: form.key.clone(),
        value: form.value.clone(),
        scope: if form.scope.is_empty() {
            Scope::Global.as_str().into()
        } else {
            form.scope.clone()
        },
        service: Some(form.service.clone()).filter(|s| !s.trim().is_empty()),
        environment: Some(form.environment.clone()).filter(|s| !s.trim().is_empty()),
    };
    match create_secret(&state, &who, project_id, input).await {
        Ok(info) if !info.warnings.is_empty() => {
            stored_with_warnings(&state, &v, project_id, "secret-added", info).await
        }
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{project_id}/secrets?done=secret-added#secrets"
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), SECRET_FIELDS)?;
            let forms = Forms {
                secret: Some((form, errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, project_id, forms).await
        }
    }
}

/// The replace-value form as submitted; wiped on drop.
#[derive(Deserialize, zeroize::ZeroizeOnDrop)]
pub struct ValueForm {
    #[serde(default)]
    value: String,
}

async fn project_of(state: &AppState, id: i64) -> Result<i64, PageError> {
    Ok(state
        .db
        .read(move |c| store::get(c, id).map(|s| s.project_id))
        .await?)
}

pub async fn update(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<ValueForm>,
) -> Result<Response, PageError> {
    let project_id = project_of(&state, id).await?;
    let new = NewValue {
        value: form.value.clone(),
    };
    match update_secret(&state, &who, id, new).await {
        Ok(info) if !info.warnings.is_empty() => {
            stored_with_warnings(&state, &v, project_id, "secret-updated", info).await
        }
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{project_id}/secrets?done=secret-updated#secrets"
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), &[])?;
            let forms = Forms {
                secret: Some((SecretForm::default(), errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, project_id, forms).await
        }
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let project_id = project_of(&state, id).await?;
    delete_secret(&state, &who, id).await?;
    Ok(layout::see_other(&format!(
        "/projects/{project_id}/secrets?done=secret-deleted#secrets"
    )))
}
