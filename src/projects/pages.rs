//! Project pages: the list (with the create form), and the forms of one project's page (its tabs
//! are `tabs.rs`): settings, environments, retention, push triggers, automatic rollback.
//!
//! Forms post to the same domain functions as the JSON API, so a bad value comes back as a typed
//! error naming its field, shown next to that field; nothing is half-saved.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::ops::{create_environment, create_project, update_environment, update_project};
use super::{
    EnvironmentInput, EnvironmentPatch, MAX_KEEP_DAYS, MAX_KEEP_DEPLOYMENTS, Project, ProjectInput,
    ProjectPatch, parse_keep_form, store,
};
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::db::now_ms;
use crate::secrets::pages::SecretForm;
use crate::users::{Principal, Role};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, csrf_field, field_error, form_banner, invalid, no_store,
    page,
};

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

/// What the project forms hold when they come back with errors.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ProjectForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub repo_url: String,
    #[serde(default)]
    pub git_ref: String,
    #[serde(default)]
    pub compose_path: String,
    #[serde(default)]
    pub pull: String,
}

impl ProjectForm {
    pub(super) fn from_project(p: &Project) -> ProjectForm {
        ProjectForm {
            name: p.name.clone(),
            repo_url: p.repo_url.clone().unwrap_or_default(),
            git_ref: p.git_ref.clone(),
            compose_path: p.compose_path.clone(),
            pull: p.pull.as_str().to_owned(),
        }
    }
}

const PROJECT_FIELDS: &[&str] = &["name", "repo_url", "git_ref", "compose_path", "pull"];

pub(super) fn project_fields(f: &ProjectForm, errors: &FormErrors, readonly: bool) -> Markup {
    let pull = if f.pull.is_empty() {
        "always"
    } else {
        f.pull.as_str()
    };
    html! {
        fieldset disabled[readonly] {
            label { "Name"
                input name="name" value=(f.name) required pattern="[a-z0-9][a-z0-9_-]{0,62}" placeholder="shop"
                    aria-invalid=[invalid(errors, "name")] aria-describedby="name-help";
                small id="name-help" { "Lowercase letters, digits, '-' and '_'." }
            }
            (field_error(errors, "name"))
            label { "Repository URL " span.muted { "(optional)" }
                input name="repo_url" value=(f.repo_url) placeholder="https://github.com/acme/shop.git"
                    aria-invalid=[invalid(errors, "repo_url")];
            }
            (field_error(errors, "repo_url"))
            div.grid {
                label { "Git ref"
                    input name="git_ref" value=(f.git_ref) placeholder="main" aria-invalid=[invalid(errors, "git_ref")];
                }
                label { "Pull images"
                    select name="pull" aria-invalid=[invalid(errors, "pull")] {
                        @for p in ["always", "missing", "never"] {
                            option value=(p) selected[p == pull] { (p) }
                        }
                    }
                }
            }
            (field_error(errors, "git_ref"))
            (field_error(errors, "pull"))
            label { "Compose file"
                input name="compose_path" value=(f.compose_path) required
                    placeholder="docker-compose.yml (in the repo) or /srv/shop/compose.yaml"
                    aria-invalid=[invalid(errors, "compose_path")];
                small { "Relative to the repository root, or an absolute path on the target server when there is no repository." }
            }
            (field_error(errors, "compose_path"))
        }
    }
}

// --- the list -----------------------------------------------------------------------------------

fn list_body(v: &Viewer, projects: &[Project], form: &ProjectForm, errors: &FormErrors) -> Markup {
    html! {
        div.page-head { h1 { "Projects" } }
        @if projects.is_empty() {
            p.empty { "No projects yet." }
        } @else {
            figure {
                table {
                    thead { tr { th { "Project" } th { "Source" } th { "Environments" } th { "Updated" } } }
                    tbody {
                        @for p in projects {
                            tr {
                                td { a href=(format!("/projects/{}", p.id)) { strong { (p.name) } } }
                                td { small { (p.repo_url.as_deref().unwrap_or("local compose file")) " · " code { (p.compose_path) } } }
                                td { @for e in &p.environments { span.badge.none { (e.name) } " " } }
                                td { (ago(&p.updated_at, now_ms())) }
                            }
                        }
                    }
                }
            }
        }
        @if v.can(Role::Member) {
            article id="new-project" {
                header { h3 { "New project" } }
                (form_banner(errors))
                form method="post" action="/projects" {
                    (csrf_field(&v.csrf))
                    (project_fields(form, errors, false))
                    button type="submit" { "Create project" }
                }
            }
        }
    }
}

pub async fn list_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let projects = state.db.read(store::list).await?;
    let body = html! {
        (layout::notice(q.done.as_deref()))
        (list_body(&v, &projects, &ProjectForm::default(), &FormErrors::default()))
    };
    Ok((no_store(), page(&v, "Projects", Nav::Projects, body)).into_response())
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

pub async fn create(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Form(form): Form<ProjectForm>,
) -> Result<Response, PageError> {
    let input = ProjectInput {
        name: form.name.clone(),
        repo_url: opt(&form.repo_url),
        git_ref: opt(&form.git_ref),
        compose_path: opt(&form.compose_path),
        pull: opt(&form.pull),
    };
    match create_project(&state, &who, input).await {
        Ok(p) => Ok(layout::see_other(&format!(
            "/projects/{}?done=project-created",
            p.id
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), PROJECT_FIELDS)?;
            let projects = state.db.read(store::list).await?;
            let body = list_body(&v, &projects, &form, &errors);
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                no_store(),
                page(&v, "Projects", Nav::Projects, body),
            )
                .into_response())
        }
    }
}

// --- one project --------------------------------------------------------------------------------

/// Forms of the project page that came back with errors.
#[derive(Default)]
pub struct Forms {
    pub settings: Option<(ProjectForm, FormErrors)>,
    pub environment: Option<(String, FormErrors)>,
    pub secret: Option<(SecretForm, FormErrors)>,
    pub deploy: Option<FormErrors>,
    /// A deploy refused because the environment has no agent: its name and id (the page links
    /// to where an agent is created).
    pub no_agent: Option<(String, i64)>,
    /// The retention form of one environment (its id).
    pub retention: Option<(i64, RetentionForm, FormErrors)>,
    /// The push-trigger form of one environment (its id).
    pub triggers: Option<(i64, TriggersForm, FormErrors)>,
    /// A webhook secret just made: shown once.
    pub new_webhook: Option<crate::hooks::ops::NewSecret>,
    /// Warnings about a secret just stored (src/secrets: a service no release has).
    pub secret_warnings: Vec<String>,
    /// The Members section's add form (src/access).
    pub members: Option<(crate::access::pages::MemberForm, FormErrors)>,
}

/// An environment's push-trigger form (src/hooks): a checkbox and a tag glob.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TriggersForm {
    /// Present (`on`) when the box is ticked.
    #[serde(default)]
    pub deploy_on_push: Option<String>,
    #[serde(default)]
    pub deploy_on_tag: String,
}

const TRIGGER_FIELDS: &[&str] = &["deploy_on_push", "deploy_on_tag"];

pub(super) fn triggers_form(
    v: &Viewer,
    project: &Project,
    env: &super::Environment,
    form: Option<&(TriggersForm, FormErrors)>,
) -> Markup {
    let (values, errors) = match form {
        Some((f, e)) => (f.clone(), e.clone()),
        None => (
            TriggersForm {
                deploy_on_push: env.deploy_on_push.then(|| "on".to_owned()),
                deploy_on_tag: env.deploy_on_tag.clone().unwrap_or_default(),
            },
            FormErrors::default(),
        ),
    };
    let branch = env.git_ref.as_deref().unwrap_or(&project.git_ref);
    html! {
        p.triggers { small {
            "Push webhooks: "
            @if env.deploy_on_push { "a push to " code { (branch) } " deploys the pushed commit" } @else { "pushes do not deploy" }
            @if let Some(g) = &env.deploy_on_tag { "; tags matching " code { (g) } " deploy" }
            "."
        } }
        @if v.may(ProjectRole::Maintainer) {
            details open[!errors.is_empty()] {
                summary { "Deploy on push" }
                (form_banner(&errors))
                form.grid-form method="post" action=(format!("/environments/{}/triggers", env.id)) {
                    (csrf_field(&v.csrf))
                    label {
                        input type="checkbox" name="deploy_on_push" checked[values.deploy_on_push.is_some()];
                        " Deploy each push to " code { (branch) }
                    }
                    label { "Deploy tags matching " span.muted { "(optional glob)" }
                        input name="deploy_on_tag" value=(values.deploy_on_tag) placeholder="v*"
                            maxlength=(super::MAX_TAG_GLOB_BYTES) aria-invalid=[invalid(&errors, "deploy_on_tag")];
                        (field_error(&errors, "deploy_on_tag"))
                    }
                    button type="submit" { "Save triggers" }
                }
            }
        }
    }
}

/// An environment's log retention form: empty fields mean the appliance's default.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RetentionForm {
    #[serde(default)]
    pub log_keep_deployments: String,
    #[serde(default)]
    pub log_keep_days: String,
}

const RETENTION_FIELDS: &[&str] = &["log_keep_deployments", "log_keep_days"];

/// The configured defaults an environment without overrides uses: (deployments, days).
pub(super) type RetentionDefaults = (u64, u64);

pub(super) fn retention_line(env: &super::Environment, defaults: RetentionDefaults) -> Markup {
    let shown = |v: Option<u32>, default: u64| match v {
        Some(n) => html! { strong { (n) } },
        None => html! { (default) " " span.muted { "(default)" } },
    };
    html! {
        "Logs kept: the last " (shown(env.log_keep_deployments, defaults.0))
        " deployments and those of the last " (shown(env.log_keep_days, defaults.1)) " days."
    }
}

pub(super) fn retention_form(
    v: &Viewer,
    env: &super::Environment,
    defaults: RetentionDefaults,
    form: Option<&(RetentionForm, FormErrors)>,
) -> Markup {
    let (values, errors) = match form {
        Some((f, e)) => (f.clone(), e.clone()),
        None => (
            RetentionForm {
                log_keep_deployments: env
                    .log_keep_deployments
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                log_keep_days: env.log_keep_days.map(|n| n.to_string()).unwrap_or_default(),
            },
            FormErrors::default(),
        ),
    };
    html! {
        details open[!errors.is_empty()] {
            summary { "Log retention" }
            (form_banner(&errors))
            form.grid-form method="post" action=(format!("/environments/{}/retention", env.id)) {
                (csrf_field(&v.csrf))
                label { "Keep the logs of the last N deployments"
                    input name="log_keep_deployments" type="number" min="0" max=(MAX_KEEP_DEPLOYMENTS)
                        value=(values.log_keep_deployments) placeholder=(format!("{} (default)", defaults.0))
                        aria-invalid=[invalid(&errors, "log_keep_deployments")];
                    (field_error(&errors, "log_keep_deployments"))
                }
                label { "…and of the last D days"
                    input name="log_keep_days" type="number" min="0" max=(MAX_KEEP_DAYS)
                        value=(values.log_keep_days) placeholder=(format!("{} (default)", defaults.1))
                        aria-invalid=[invalid(&errors, "log_keep_days")];
                    (field_error(&errors, "log_keep_days"))
                }
                button type="submit" { "Save retention" }
            }
            small.muted { "Empty uses the appliance's default. Older logs are deleted in the background; the deployments stay." }
        }
    }
}

/// Production-like environments ask for a confirmation before a deploy.
pub fn is_production(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("prod") || n == "live" || n.contains("production")
}

/// How long a deployment took, from its creation to its end: `42 s`, `3 min 5 s`; `–` while it runs.
pub(super) fn duration(created_at: &str, finished_at: Option<&str>) -> String {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp())
    };
    match (parse(created_at), finished_at.and_then(parse)) {
        (Some(a), Some(b)) => {
            let secs = (b - a).max(0);
            if secs < 60 {
                format!("{secs} s")
            } else {
                format!("{} min {} s", secs / 60, secs % 60)
            }
        }
        _ => "–".to_owned(),
    }
}

/// An environment's automatic rollback setting (PATCH /api/environments/{id} `auto_rollback`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AutoRollbackForm {
    /// Present (`on`) when the box is ticked.
    #[serde(default)]
    pub auto_rollback: Option<String>,
}

pub(super) fn auto_rollback_form(v: &Viewer, env: &super::Environment) -> Markup {
    html! {
        p.rollback { small {
            @if env.auto_rollback { "A deployment that fails after changing the stack rolls back to the last successful release." }
            @else { "Failed deployments are not rolled back automatically." }
        } }
        @if v.may(ProjectRole::Maintainer) {
            details {
                summary { "Automatic rollback" }
                form.grid-form method="post" action=(format!("/environments/{}/rollback", env.id)) {
                    (csrf_field(&v.csrf))
                    label {
                        input type="checkbox" name="auto_rollback" checked[env.auto_rollback];
                        " Roll back to the last successful release when a deployment fails after " code { "up" } " ran"
                    }
                    button type="submit" { "Save" }
                }
            }
        }
    }
}

/// The automatic rollback form of an environment's card.
pub async fn set_auto_rollback(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(env_id): Path<i64>,
    Form(form): Form<AutoRollbackForm>,
) -> Result<Response, PageError> {
    let env = state
        .db
        .read(move |c| store::get_environment(c, env_id))
        .await
        .map_err(WebError::from)?;
    let patch = EnvironmentPatch {
        auto_rollback: Some(serde_json::Value::Bool(form.auto_rollback.is_some())),
        ..EnvironmentPatch::default()
    };
    update_environment(&state, &who, env_id, patch)
        .await
        .map_err(WebError::from)?;
    Ok(layout::see_other(&format!(
        "/projects/{}?done=rollback-saved#env-{}",
        env.project_id, env.name
    )))
}

pub use super::tabs::{Tab, render_project, with_errors};

pub async fn update(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<ProjectForm>,
) -> Result<Response, PageError> {
    let patch = ProjectPatch {
        name: Some(form.name.clone()),
        repo_url: Some(opt(&form.repo_url)),
        git_ref: Some(form.git_ref.clone()),
        compose_path: Some(form.compose_path.clone()),
        pull: Some(form.pull.clone()),
    };
    match update_project(&state, &who, id, patch).await {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{id}/settings?done=project-saved"
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), PROJECT_FIELDS)?;
            let forms = Forms {
                settings: Some((form, errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, id, forms).await
        }
    }
}

#[derive(Deserialize)]
pub struct EnvironmentForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    git_ref: String,
}

pub async fn add_environment(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Form(form): Form<EnvironmentForm>,
) -> Result<Response, PageError> {
    let input = EnvironmentInput {
        name: form.name.clone(),
        git_ref: opt(&form.git_ref),
        log_keep_deployments: serde_json::Value::Null,
        log_keep_days: serde_json::Value::Null,
    };
    match create_environment(&state, &who, id, input).await {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{id}?done=environment-added"
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), &["name", "git_ref"])?;
            let forms = Forms {
                environment: Some((form.name, errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, id, forms).await
        }
    }
}

/// The retention form of an environment's card: empty fields return to the default.
pub async fn set_retention(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(env_id): Path<i64>,
    Form(form): Form<RetentionForm>,
) -> Result<Response, PageError> {
    let env = state
        .db
        .read(move |c| store::get_environment(c, env_id))
        .await
        .map_err(WebError::from)?;
    let parsed = parse_keep_form(
        "log_keep_deployments",
        &form.log_keep_deployments,
        MAX_KEEP_DEPLOYMENTS,
    )
    .and_then(|n| {
        Ok((
            n,
            parse_keep_form("log_keep_days", &form.log_keep_days, MAX_KEEP_DAYS)?,
        ))
    });
    let result = match parsed {
        Ok((n, d)) => {
            let patch = EnvironmentPatch {
                log_keep_deployments: Some(n.map_or(serde_json::Value::Null, serde_json::Value::from)),
                log_keep_days: Some(d.map_or(serde_json::Value::Null, serde_json::Value::from)),
                ..EnvironmentPatch::default()
            };
            update_environment(&state, &who, env_id, patch).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{}/settings?done=retention-saved#settings-{}",
            env.project_id, env.name
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), RETENTION_FIELDS)?;
            let forms = Forms {
                retention: Some((env_id, form, errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, env.project_id, forms).await
        }
    }
}

/// The push-trigger form of an environment's card.
pub async fn set_triggers(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(env_id): Path<i64>,
    Form(form): Form<TriggersForm>,
) -> Result<Response, PageError> {
    let env = state
        .db
        .read(move |c| store::get_environment(c, env_id))
        .await
        .map_err(WebError::from)?;
    let patch = EnvironmentPatch {
        deploy_on_push: Some(serde_json::Value::Bool(form.deploy_on_push.is_some())),
        deploy_on_tag: Some(serde_json::Value::String(form.deploy_on_tag.clone())),
        ..EnvironmentPatch::default()
    };
    match update_environment(&state, &who, env_id, patch).await {
        Ok(_) => Ok(layout::see_other(&format!(
            "/projects/{}/settings?done=triggers-saved#settings-{}",
            env.project_id, env.name
        ))),
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), TRIGGER_FIELDS)?;
            let forms = Forms {
                triggers: Some((env_id, form, errors)),
                ..Forms::default()
            };
            with_errors(&state, &v, env.project_id, forms).await
        }
    }
}
