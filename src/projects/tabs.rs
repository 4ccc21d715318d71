//! One project's page, as tabs: Overview (`/projects/{id}`: the environments, what runs there,
//! the deploy buttons and their latest deployments), Deployments (`/deployments`: the whole
//! history, paged), Secrets (`/secrets`), Agents (`/agents`: the project's agents per
//! environment) and Settings (`/settings`: the project form, each environment's retention and
//! push triggers, the webhook and notifications).
//!
//! Every tab is a page of its own (it works without JavaScript and survives a reload); a form
//! that comes back with errors is shown on the tab it belongs to.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::pages::{
    Forms, ProjectForm, RetentionDefaults, auto_rollback_form, duration, project_fields, retention_form,
    retention_line, triggers_form,
};
use super::{Environment, Project, store};
use crate::access::ProjectRole;
use crate::agents::AgentInfo;
use crate::app::AppState;
use crate::db::now_ms;
use crate::deploys::{self, Deployment};
use crate::secrets::pages::secrets_section;
use crate::users::Role;
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, field_error, form_banner, invalid,
    no_store, page,
};

/// Deployments per page of the Deployments tab.
pub const HISTORY_PAGE: i64 = 20;
/// Deployments per environment on the Overview (the rest is on the Deployments tab).
pub const OVERVIEW_LATEST: i64 = 5;

/// The tabs of a project page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    /// The history, newest first; `before` shows the page of deployments older than that id.
    Deployments {
        before: Option<i64>,
    },
    Secrets,
    Agents,
    Settings,
}

const TABS: [Tab; 5] = [
    Tab::Overview,
    Tab::Deployments { before: None },
    Tab::Secrets,
    Tab::Agents,
    Tab::Settings,
];

impl Tab {
    fn slug(self) -> &'static str {
        match self {
            Tab::Overview => "overview",
            Tab::Deployments { .. } => "deployments",
            Tab::Secrets => "secrets",
            Tab::Agents => "agents",
            Tab::Settings => "settings",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Deployments { .. } => "Deployments",
            Tab::Secrets => "Secrets",
            Tab::Agents => "Agents",
            Tab::Settings => "Settings",
        }
    }

    /// The tab's address (without a page cursor).
    pub fn path(self, project_id: i64) -> String {
        match self {
            Tab::Overview => format!("/projects/{project_id}"),
            other => format!("/projects/{project_id}/{}", other.slug()),
        }
    }

    /// The tab a form that came back with errors belongs on.
    fn of_forms(forms: &Forms) -> Tab {
        if forms.secret.is_some() || !forms.secret_warnings.is_empty() {
            Tab::Secrets
        } else if forms.settings.is_some()
            || forms.retention.is_some()
            || forms.triggers.is_some()
            || forms.new_webhook.is_some()
            || forms.members.is_some()
        {
            Tab::Settings
        } else {
            Tab::Overview
        }
    }
}

/// The tab bar: one link per tab, the current one marked for assistive technology and CSS.
pub fn tab_bar(project_id: i64, current: Tab) -> Markup {
    html! {
        nav.tabs aria-label="Project" {
            ul {
                @for t in TABS {
                    li {
                        a href=(t.path(project_id)) data-testid=(format!("tab-{}", t.slug()))
                            aria-current=[(t.slug() == current.slug()).then_some("page")] { (t.label()) }
                    }
                }
            }
        }
    }
}

fn header(project: &Project, tab: Tab, done: Option<&str>) -> Markup {
    html! {
        (layout::notice(done))
        div.page-head {
            h1 { (project.name) }
            span.muted { (project.repo_url.as_deref().unwrap_or("local compose file")) " · " code { (project.compose_path) } }
        }
        (tab_bar(project.id, tab))
    }
}

/// A deployment history table (newest first); `with_environment` adds the environment column.
pub fn history_table(v: &Viewer, history: &[Deployment], with_environment: bool) -> Markup {
    let now = now_ms();
    html! {
        table {
            thead { tr {
                th { "#" } @if with_environment { th { "Environment" } }
                th { "Status" } th { "Ref" } th { "Commit" } th { "By" } th { "When" } th { "Took" } th { "Release" }
            } }
            tbody {
                @for d in history {
                    tr {
                        td { a href=(format!("/deployments/{}", d.id)) { "#" (d.id) } }
                        @if with_environment { td { (d.environment) } }
                        td {
                            (deploys::pages::status_badge(d.status))
                            @if d.log_pruned_at.is_some() { " " small.muted { "log pruned" } }
                            @if let Some(of) = d.rollback_of { " " small { "rollback of " a href=(format!("/deployments/{of}")) { "#" (of) } } }
                            @else if let Some(of) = d.redeploy_of { " " small { "redeploy of " a href=(format!("/deployments/{of}")) { "#" (of) } } }
                            @if let Some(e) = &d.error { br; small.muted title=(e) { (e.chars().take(80).collect::<String>()) } }
                        }
                        td { code { (d.git_ref) } }
                        td { @match &d.commit { Some(c) => code title=(c) { (c.get(..12).unwrap_or(c)) }, None => "–" } }
                        td { (d.triggered_by) }
                        td { (ago(&d.created_at, now)) }
                        td { (duration(&d.created_at, d.finished_at.as_deref())) }
                        td {
                            @if d.release.is_some() {
                                a href=(format!("/deployments/{}#release", d.id)) { "release" }
                                @if v.may(ProjectRole::Deployer) { " " (deploys::pages::redeploy_form(d.id, &v.csrf)) }
                            } @else { "–" }
                        }
                    }
                }
            }
        }
    }
}

/// Where a web user creates an agent for an environment: the Agents page's form, preselected.
pub fn new_agent_link(environment_id: i64) -> String {
    format!("/agents?environment={environment_id}#new-agent")
}

/// A deploy refused because the environment has no agent, in the UI's words.
fn no_agent_hint(v: &Viewer, environment: &str, environment_id: i64) -> Markup {
    html! {
        p.notice.error role="alert" id="no-agent" {
            "Environment " strong { (environment) } " has no agent yet, so nothing can deploy there. "
            @if v.can(Role::Admin) {
                a href=(new_agent_link(environment_id)) data-testid="create-agent" { "Create an agent for " (environment) }
                " on the Agents page, then start it on the target server."
            } @else {
                "An admin can create one on the "
                a href=(new_agent_link(environment_id)) data-testid="create-agent" { "Agents page" } "."
            }
        }
    }
}

fn environment_card(
    v: &Viewer,
    project: &Project,
    env: &Environment,
    (latest, runtime): (&[Deployment], &crate::runtime::Runtime),
) -> Markup {
    html! {
        article.env-card id=(format!("env-{}", env.name)) {
            header.page-head {
                h4 { (env.name) (crate::protect::pages::badge(env)) @if let Some(r) = &env.git_ref { " " small.muted { "ref " code { (r) } } } }
                @if v.may(ProjectRole::Deployer) {
                    form.inline method="post" action=(format!("/projects/{}/deploy", project.id)) {
                        (csrf_field(&v.csrf))
                        input type="hidden" name="environment" value=(env.name);
                        button.small type="submit" data-testid=(format!("deploy-{}", env.name)) {
                            "Deploy " (env.name)
                        }
                    }
                }
            }
            @if latest.is_empty() {
                p.muted { "Never deployed." }
            } @else {
                (history_table(v, latest, false))
            }
            // What runs now, apart from how the last deploy ended (issue 14, src/runtime).
            (crate::runtime::pages::panel(v, runtime))
            (crate::operate::actions_pages::take_down_form(v, env.id, &env.name))
            (auto_rollback_form(v, env))
            (crate::protect::pages::form(v, env))
        }
    }
}

async fn overview(
    state: &AppState,
    v: &Viewer,
    project: &Project,
    forms: &Forms,
) -> Result<Markup, PageError> {
    let env_ids: Vec<i64> = project.environments.iter().map(|e| e.id).collect();
    let (latest, runtimes) = state
        .db
        .read(move |c| {
            let mut latest = Vec::new();
            let mut runtimes = Vec::new();
            for id in env_ids {
                latest.push(deploys::store::list(c, Some(id), OVERVIEW_LATEST).map_err(WebError::from)?);
                runtimes.push(crate::runtime::ops::read(c, id).map_err(WebError::from)?);
            }
            Ok::<_, WebError>((latest, runtimes))
        })
        .await?;
    let (env_name, env_errors) = forms.environment.clone().unwrap_or_default();
    let any_history = latest.iter().any(|l| !l.is_empty());
    Ok(html! {
        section id="environments" hx-ext="ws" ws-connect=(format!("/ws/dashboard?project={}", project.id)) {
            h2 { "Environments" }
            @if let Some(errors) = &forms.deploy { (form_banner(errors)) }
            @if let Some((name, id)) = &forms.no_agent { (no_agent_hint(v, name, *id)) }
            @if project.environments.is_empty() {
                p.empty { "No environment yet. Add one (e.g. staging) to deploy." }
            }
            @for ((env, hist), rt) in project.environments.iter().zip(&latest).zip(&runtimes) {
                (environment_card(v, project, env, (hist, rt)))
            }
            @if any_history {
                p { a href=(Tab::Deployments { before: None }.path(project.id)) data-testid="all-deployments" {
                    "All deployments →"
                } }
            }
            @if v.may(ProjectRole::Maintainer) {
                details open[!env_errors.is_empty()] {
                    summary { "Add an environment" }
                    (form_banner(&env_errors))
                    form.grid-form method="post" action=(format!("/projects/{}/environments", project.id)) {
                        (csrf_field(&v.csrf))
                        label { "Name"
                            input name="name" value=(env_name) required placeholder="staging" pattern="[a-z0-9][a-z0-9_-]{0,31}"
                                aria-invalid=[invalid(&env_errors, "name")];
                            (field_error(&env_errors, "name"))
                        }
                        label { "Git ref " span.muted { "(optional)" }
                            input name="git_ref" placeholder=(project.git_ref) aria-invalid=[invalid(&env_errors, "git_ref")];
                            (field_error(&env_errors, "git_ref"))
                        }
                        button type="submit" { "Add environment" }
                    }
                }
            }
        }
    })
}

/// The Deployments tab: one page of the project's history with Newer / Older links.
async fn deployments(
    state: &AppState,
    v: &Viewer,
    project: &Project,
    before: Option<i64>,
) -> Result<Markup, PageError> {
    let id = project.id;
    let page = state
        .db
        .read(move |c| deploys::store::project_page(c, id, before, HISTORY_PAGE))
        .await
        .map_err(WebError::from)?;
    let base = Tab::Deployments { before: None }.path(id);
    Ok(html! {
        section id="history" {
            h2 { "Deployments" }
            @if page.deployments.is_empty() {
                p.empty { @if before.is_some() { "No older deployments." } @else { "No deployments yet." } }
            } @else {
                figure { (history_table(v, &page.deployments, true)) }
            }
            nav.pager aria-label="History pages" {
                ul {
                    li { @match page.newer {
                        Some(None) => a href=(base) rel="prev" data-testid="history-newer" { "← Newer" },
                        Some(Some(b)) => a href=(format!("{base}?before={b}")) rel="prev" data-testid="history-newer" { "← Newer" },
                        None => {},
                    } }
                    li { @if let Some(b) = page.older {
                        a href=(format!("{base}?before={b}")) rel="next" data-testid="history-older" { "Older →" }
                    } }
                }
            }
        }
    })
}

async fn secrets(
    state: &AppState,
    v: &Viewer,
    project: &Project,
    forms: &Forms,
) -> Result<Markup, PageError> {
    let id = project.id;
    let (secrets, versions) = state
        .db
        .read(move |c| {
            let secrets = crate::secrets::store::list(c, id).map_err(WebError::from)?;
            let versions = crate::secrets::store::versions_of_project(c, id)?;
            Ok::<_, WebError>((secrets, versions))
        })
        .await?;
    Ok(secrets_section(
        v,
        project,
        &secrets,
        &versions,
        forms.secret.as_ref(),
    ))
}

/// The Agents tab: each environment's agents, and where to create one where there is none.
async fn agents(state: &AppState, v: &Viewer, project: &Project) -> Result<Markup, PageError> {
    let agents: Vec<AgentInfo> = crate::agents::ops::list_agents(state)
        .await?
        .into_iter()
        .filter(|a| a.project_id == project.id)
        .collect();
    let now = now_ms();
    Ok(html! {
        section id="agents" {
            h2 { "Agents" }
            p.muted { "Each environment is served by its own agent, running on the target server." }
            @if project.environments.is_empty() {
                p.empty { "No environment yet: add one on the " a href=(Tab::Overview.path(project.id)) { "Overview" } "." }
            }
            @for env in &project.environments {
                @let list: Vec<&AgentInfo> = agents.iter().filter(|a| a.environment_id == env.id).collect();
                article id=(format!("agents-{}", env.name)) {
                    header { h4 { (env.name) } }
                    @if list.iter().all(|a| a.revoked) {
                        p.muted { "No agent." " "
                            @if v.can(Role::Admin) {
                                a href=(new_agent_link(env.id)) data-testid=(format!("create-agent-{}", env.name)) { "Create an agent for " (env.name) }
                            } @else { "An admin can create one on the " a href=(new_agent_link(env.id)) { "Agents page" } "." }
                        }
                    }
                    @if !list.is_empty() {
                        table {
                            thead { tr { th { "Agent" } th { "State" } th { "Last seen" } th { "Host" } } }
                            tbody {
                                @for a in &list {
                                    tr {
                                        td { a href=(format!("/agents/{}", a.id)) { strong { (a.name) } } }
                                        td {
                                            @if a.revoked { (badge("revoked", "revoked")) }
                                            @else if a.online { (badge("online", "online")) }
                                            @else { (badge("offline", "offline")) }
                                        }
                                        td { @if let Some(s) = &a.last_heartbeat { (ago(s, now)) } @else { span.muted { "never" } } }
                                        td { small {
                                            (a.hostname.as_deref().unwrap_or("–"))
                                            @if let Some(ver) = &a.version { br; span.muted { "agent " (ver) } }
                                        } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

async fn settings(
    state: &AppState,
    v: &Viewer,
    project: &Project,
    forms: Forms,
) -> Result<Markup, PageError> {
    let editable = v.may(ProjectRole::Maintainer);
    let webhook = crate::hooks::ops::info(state, project.id)
        .await
        .map_err(WebError::from)?;
    let (settings_form, settings_errors) = forms
        .settings
        .unwrap_or_else(|| (ProjectForm::from_project(project), FormErrors::default()));
    let members = crate::access::ops::list(state, project.id)
        .await
        .map_err(WebError::from)?;
    let defaults: RetentionDefaults = (
        state.config.deploys.log_keep_deployments,
        state.config.deploys.log_keep_days,
    );
    let retention_of = |id: i64| {
        forms
            .retention
            .as_ref()
            .filter(|(form_id, _, _)| *form_id == id)
            .map(|(_, f, e)| (f.clone(), e.clone()))
    };
    let triggers_of = |id: i64| {
        forms
            .triggers
            .as_ref()
            .filter(|(form_id, _, _)| *form_id == id)
            .map(|(_, f, e)| (f.clone(), e.clone()))
    };
    Ok(html! {
        section id="settings" {
            h2 { "Settings" }
            article {
                (form_banner(&settings_errors))
                form method="post" action=(format!("/projects/{}", project.id)) {
                    (csrf_field(&v.csrf))
                    (project_fields(&settings_form, &settings_errors, !editable))
                    @if editable { button type="submit" { "Save settings" } }
                }
            }
        }
        @if !project.environments.is_empty() {
            section id="environment-settings" {
                h2 { "Environments" }
                @for env in &project.environments {
                    article id=(format!("settings-{}", env.name)) {
                        header { h4 { (env.name) } }
                        p.retention { small { (retention_line(env, defaults)) } }
                        @if editable { (retention_form(v, env, defaults, retention_of(env.id).as_ref())) }
                        (triggers_form(v, project, env, triggers_of(env.id).as_ref()))
                        (crate::operate::delete_pages::environment_delete_form(v, env.id, &env.name))
                    }
                }
            }
        }
        (crate::access::pages::members_section(v, project.id, &members, forms.members.as_ref()))
        (crate::hooks::pages::webhook_section(v, project.id, &webhook, forms.new_webhook.as_ref()))
        section id="notifications" {
            h2 { "Notifications" }
            p { a href=(format!("/projects/{}/notifications", project.id)) { "Notification channels" }
                span.muted { " — webhook, Slack, Discord or email when a deploy ends or an agent goes offline." } }
        }
        (crate::operate::delete_pages::project_delete_form(v, project.id, &project.name))
    })
}

/// One tab of a project's page, with the forms that came back with errors (if any).
pub async fn render_project(
    state: &AppState,
    v: &Viewer,
    id: i64,
    tab: Tab,
    forms: Forms,
    done: Option<&str>,
) -> Result<Markup, PageError> {
    let project = state
        .db
        .read(move |c| store::get(c, id))
        .await
        .map_err(WebError::from)?;
    let forms_warnings = forms.secret_warnings.clone();
    let content = match tab {
        Tab::Overview => overview(state, v, &project, &forms).await?,
        Tab::Deployments { before } => deployments(state, v, &project, before).await?,
        Tab::Secrets => secrets(state, v, &project, &forms).await?,
        Tab::Agents => agents(state, v, &project).await?,
        Tab::Settings => settings(state, v, &project, forms).await?,
    };
    let warnings = crate::secrets::pages::warnings(&forms_warnings);
    let body = html! { (header(&project, tab, done)) (warnings) (content) };
    let title = match tab {
        Tab::Overview => project.name.clone(),
        other => format!("{} · {}", project.name, other.label()),
    };
    Ok(page(v, &title, Nav::Projects, body))
}

/// Re-render the tab a form belongs to with its errors (422).
pub async fn with_errors(state: &AppState, v: &Viewer, id: i64, forms: Forms) -> Result<Response, PageError> {
    let tab = Tab::of_forms(&forms);
    let markup = render_project(state, v, id, tab, forms, None).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, no_store(), markup).into_response())
}

#[derive(Deserialize)]
pub struct TabQuery {
    done: Option<String>,
    before: Option<i64>,
}

async fn tab_page(
    state: &AppState,
    v: &Viewer,
    id: i64,
    tab: Tab,
    q: &TabQuery,
) -> Result<Response, PageError> {
    let markup = render_project(state, v, id, tab, Forms::default(), q.done.as_deref()).await?;
    Ok((no_store(), markup).into_response())
}

/// `GET /projects/{id}`: the Overview.
pub async fn overview_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<TabQuery>,
) -> Result<Response, PageError> {
    tab_page(&state, &v, id, Tab::Overview, &q).await
}

/// `GET /projects/{id}/deployments[?before=<id>]`: the history, a page at a time.
pub async fn deployments_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<TabQuery>,
) -> Result<Response, PageError> {
    tab_page(&state, &v, id, Tab::Deployments { before: q.before }, &q).await
}

/// `GET /projects/{id}/secrets`.
pub async fn secrets_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<TabQuery>,
) -> Result<Response, PageError> {
    tab_page(&state, &v, id, Tab::Secrets, &q).await
}

/// `GET /projects/{id}/agents`.
pub async fn agents_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<TabQuery>,
) -> Result<Response, PageError> {
    tab_page(&state, &v, id, Tab::Agents, &q).await
}

/// `GET /projects/{id}/settings`.
pub async fn settings_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<TabQuery>,
) -> Result<Response, PageError> {
    tab_page(&state, &v, id, Tab::Settings, &q).await
}
