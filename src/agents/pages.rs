//! The Agents page: every agent with its live state; admins create an agent for an environment
//! (its token is shown once, inside a copy-paste command that starts it against this
//! appliance) and revoke agents (their connection is closed at once).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::download::install_command;
use super::ops::{self, CreatedAgent, create_agent, list_agents, revoke_agent};
use super::{AgentError, AgentInfo};
use crate::app::AppState;
use crate::db::now_ms;
use crate::projects::Project;
use crate::users::{Principal, Role};
use crate::web::error::WebError;
use crate::web::layout::{
    self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, field_error, form_banner, invalid,
    no_store, page,
};

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
    /// `?environment=<id>`: the new-agent form starts with that environment chosen (the link
    /// from a deploy refused for want of an agent).
    #[serde(default)]
    environment: String,
}

/// The manual steps, second to install.sh: the token is pasted into `cat` (ended with Ctrl-D),
/// so it never enters a command line or the shell's history.
fn manual_steps(public_url: &str) -> String {
    format!(
        "sudo install -d -m 700 /etc/stagely-agent /var/lib/stagely-agent\n\
         sudo sh -c 'umask 077; cat > /etc/stagely-agent/token'   # paste the token, Enter, then Ctrl-D\n\
         sudo stagely-agent run --server {public_url} --token-file /etc/stagely-agent/token --work-dir /var/lib/stagely-agent"
    )
}

fn body(
    v: &Viewer,
    public_url: &str,
    agents: &[AgentInfo],
    projects: &[Project],
    created: Option<&CreatedAgent>,
    form: (&str, &str, &FormErrors),
    done: Option<&str>,
) -> Markup {
    let now = now_ms();
    let (form_env, form_name, errors) = form;
    html! {
        (layout::notice(done))
        div.page-head {
            h1 { "Agents" }
            span.muted { "Agents run on your servers and dial out to this appliance; each serves one environment." }
        }
        @if let Some(c) = created {
            article.secret-once id="agent-created" {
                header { strong { "Agent " (c.name) " created" } }
                p { "The token is shown only this once: copy it now. Reloading this page will not show it again." }
                p.row-actions {
                    code.token-box id="agent-token" { (c.token) }
                    button.small.secondary type="button" data-copy="agent-token" { "Copy token" }
                }
                p { "On the target server, run the installer and paste the token when it asks (it reads it from the terminal, hidden, so it stays out of your shell history). It downloads the agent from this appliance, checks its signature against the key the token names, and starts it as a systemd service:" }
                pre.token-box id="agent-command" { (install_command(public_url)) }
                p.row-actions {
                    button.small.secondary type="button" data-copy="agent-command" { "Copy command" }
                }
                details {
                    summary { "Without the installer" }
                    p.muted { "With the stagely-agent binary already on the server (download it from " code { "/agent/download/linux-x86_64" } " or " code { "linux-aarch64" } " here):" }
                    pre.token-box id="agent-manual" { (manual_steps(public_url)) }
                }
            }
        }
        @if agents.is_empty() {
            p.empty { "No agents yet." }
        } @else {
            figure {
                table {
                    thead { tr { th { "Agent" } th { "Project / environment" } th { "State" } th { "Last seen" } th { "Host" } @if v.can(Role::Admin) { th {} } } }
                    tbody {
                        @for a in agents {
                            tr {
                                td { a href=(format!("/agents/{}", a.id)) { strong { (a.name) } } br; small.muted { "#" (a.id) } }
                                td { a href=(format!("/projects/{}#env-{}", a.project_id, a.environment)) { (a.project) " / " (a.environment) } }
                                td {
                                    @if a.revoked { (badge("revoked", "revoked")) }
                                    @else if a.online { (badge("online", "online")) }
                                    @else { (badge("offline", "offline")) }
                                }
                                td { @if let Some(s) = &a.last_heartbeat { (ago(s, now)) } @else { span.muted { "never" } } }
                                td {
                                    small {
                                        (a.hostname.as_deref().unwrap_or("–"))
                                        @if let Some(ver) = &a.version { br; span.muted { "agent " (ver) } }
                                    }
                                }
                                @if v.can(Role::Admin) {
                                    td {
                                        @if !a.revoked {
                                            form method="post" action=(format!("/agents/{}/revoke", a.id)) {
                                                (csrf_field(&v.csrf))
                                                button.small.secondary.outline type="submit" { "Revoke" }
                                            }
                                        } @else {
                                            form method="post" action=(format!("/agents/{}/delete", a.id)) {
                                                (csrf_field(&v.csrf))
                                                button.small.secondary.outline type="submit"
                                                    data-testid=(format!("delete-agent-{}", a.id)) { "Delete" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if v.can(Role::Admin) {
            article id="new-agent" {
                header { h3 { "New agent" } }
                (form_banner(errors))
                @if projects.iter().all(|p| p.environments.is_empty()) {
                    p.muted { "Create a project with an environment first." }
                } @else {
                    form.grid-form method="post" action="/agents" {
                        (csrf_field(&v.csrf))
                        label { "Environment"
                            select name="environment_id" required aria-invalid=[invalid(errors, "environment_id")] {
                                @for p in projects {
                                    optgroup label=(p.name) {
                                        @for e in &p.environments {
                                            option value=(e.id) selected[form_env == e.id.to_string()] { (p.name) " / " (e.name) }
                                        }
                                    }
                                }
                            }
                            (field_error(errors, "environment_id"))
                        }
                        label { "Name"
                            input name="name" value=(form_name) required maxlength="64" placeholder="web-1"
                                pattern="[A-Za-z0-9][A-Za-z0-9._-]{0,63}" aria-invalid=[invalid(errors, "name")]
                                aria-describedby="agent-name-help";
                            small id="agent-name-help" { "Letters, digits, '-', '_' and '.'; unique within the environment." }
                            (field_error(errors, "name"))
                        }
                        button type="submit" { "Create agent" }
                    }
                }
            }
        }
    }
}

/// What an agent (and install.sh) checks: the signing key's fingerprint, carried in every new
/// token, and the sha256 of each agent binary served, to compare with what install.sh prints.
async fn trust_section(state: &AppState) -> Markup {
    let downloads = state.agent_downloads.all().await;
    let previous = state.signer.previous();
    let public_url = state.config.public_url.as_str();
    html! {
        article id="agent-trust" {
            header { h3 { "Signed commands and downloads" } }
            p {
                "Every command sent to an agent, and every agent download, is signed with this appliance's key. "
                "New agent tokens carry its fingerprint; the agent pins it and refuses anything else."
            }
            p { "Signing key: " code id="signing-fingerprint" { (state.signer.fingerprint()) } }
            @if !previous.is_empty() {
                p.muted {
                    "Replaced keys (agents pinned to them follow the signed hand-over): "
                    @for (i, fp) in previous.iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (fp) }
                    }
                }
            }
            p { "Install an agent: " code { (install_command(public_url)) } }
            @if downloads.is_empty() {
                p.muted { "No agent binary is present on this appliance." }
            } @else {
                table {
                    thead { tr { th { "Agent build" } th { "sha256 (install.sh prints the same)" } } }
                    tbody {
                        @for (target, signed) in downloads {
                            tr { td { (target) } td { code.sha256 { (signed.sha256) } } }
                        }
                    }
                }
            }
        }
    }
}

async fn render(
    state: &AppState,
    v: &Viewer,
    created: Option<&CreatedAgent>,
    form: (&str, &str, &FormErrors),
    done: Option<&str>,
) -> Result<Markup, PageError> {
    let agents = list_agents(state).await?;
    let projects = state.db.read(crate::projects::store::list).await?;
    let markup = body(
        v,
        state.config.public_url.as_str(),
        &agents,
        &projects,
        created,
        form,
        done,
    );
    let trust = trust_section(state).await;
    let markup = html! { (markup) (trust) };
    Ok(page(v, "Agents", Nav::Agents, markup))
}

pub async fn agents_page(
    State(state): State<AppState>,
    v: Viewer,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let markup = render(
        &state,
        &v,
        None,
        (&q.environment, "", &FormErrors::default()),
        q.done.as_deref(),
    )
    .await?;
    Ok((no_store(), markup).into_response())
}

#[derive(Deserialize)]
pub struct NewAgentForm {
    #[serde(default)]
    environment_id: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Form(form): Form<NewAgentForm>,
) -> Result<Response, PageError> {
    let result = match form.environment_id.trim().parse::<i64>() {
        Ok(env) => create_agent(&state, &who, env, &form.name).await,
        Err(_) => Err(AgentError::Invalid {
            field: "environment_id",
            message: "choose an environment".into(),
        }),
    };
    let (status, errors) = match result {
        Ok(created) => {
            // POST → redirect → GET: a reload of the page that shows the token creates nothing.
            let id = created.id;
            let nonce = state.shown_once.put(who.user_id, created);
            return Ok(
                axum::response::Redirect::to(&format!("/agents/{id}/created?once={nonce}")).into_response(),
            );
        }
        // Shown at the fields they are about: 422 for a bad value, 409 for a name in use.
        Err(AgentError::EnvironmentNotFound) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            FormErrors::one("environment_id", "this environment no longer exists"),
        ),
        Err(e) => {
            let e = WebError::from(e);
            (e.status(), FormErrors::from_web(e, &["name", "environment_id"])?)
        }
    };
    let markup = render(
        &state,
        &v,
        None,
        (&form.environment_id, &form.name, &errors),
        None,
    )
    .await?;
    Ok((status, no_store(), markup).into_response())
}

#[derive(Deserialize)]
pub struct OnceQuery {
    #[serde(default)]
    once: String,
}

/// `GET /agents/{id}/created?once=…`: the new agent's token, shown to its creator once; a reload
/// (or anyone else) gets the Agents page with a note instead.
pub async fn created_page(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
    Query(q): Query<OnceQuery>,
) -> Result<Response, PageError> {
    let created = state.shown_once.take(who.user_id, id, &q.once);
    let note = match &created {
        Some(_) => None,
        None => Some("agent-token-gone"),
    };
    let markup = render(
        &state,
        &v,
        created.as_ref(),
        ("", "", &FormErrors::default()),
        note,
    )
    .await?;
    Ok((no_store(), markup).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    revoke_agent(&state, &who, id).await?;
    Ok(layout::see_other("/agents?done=agent-revoked"))
}

/// `POST /agents/{id}/delete` (admin): delete a revoked agent for good.
pub async fn delete(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    super::ops::delete_revoked_agent(&state, &who, id).await?;
    Ok(layout::see_other("/agents?done=agent-deleted"))
}

/// One agent: its state, its pinned identity, and what was seen of its token elsewhere.
fn agent_body(v: &Viewer, a: &AgentInfo, done: Option<&str>) -> Markup {
    let now = now_ms();
    html! {
        (layout::notice(done))
        div.page-head {
            h1 { "Agent " (a.name) }
            span.muted { a href=(format!("/projects/{}#env-{}", a.project_id, a.environment)) { (a.project) " / " (a.environment) } }
        }
        @if let Some(m) = &a.identity_mismatch {
            article.notice.error id="identity-mismatch" role="alert" {
                header { strong { "A connection offered another identity and was refused " } (ago(&m.at, now)) }
                p { (m.detail) }
                p.muted { "If this target was reinstalled (its work dir, and so its identity, is new), reset the pin below. \
                    If not, someone else holds this agent's token: revoke the agent." }
            }
        }
        @if let Some(s) = &a.second_connection {
            article.notice id="second-connection" {
                header { strong { "Last second connection with this token " } (ago(&s.at, now)) }
                p { (s.detail) }
                p.muted { "Expected after a network blip from the same place; from elsewhere, someone else may hold the token." }
            }
        }
        figure {
            table {
                tbody {
                    tr { th { "State" } td {
                        @if a.revoked { (badge("revoked", "revoked")) }
                        @else if a.online { (badge("online", "online")) }
                        @else { (badge("offline", "offline")) }
                    } }
                    tr { th { "Last seen" } td { @if let Some(s) = &a.last_heartbeat { (ago(s, now)) } @else { span.muted { "never" } } } }
                    tr { th { "Host" } td { (a.hostname.as_deref().unwrap_or("–")) } }
                    tr { th { "Address" } td { (a.address.as_deref().unwrap_or("–")) } }
                    tr { th { "Agent version" } td { (a.version.as_deref().unwrap_or("–")) } }
                    tr { th { "Identity (age recipient)" } td id="agent-recipient" {
                        @if let Some(r) = &a.recipient {
                            code { (r) }
                            @if let Some(at) = &a.recipient_pinned_at { br; small.muted { "pinned " (ago(at, now)) } }
                        } @else if a.version.is_some() {
                            span.muted { "none: this agent is too old to receive sealed secrets; upgrade it" }
                        } @else {
                            span.muted { "not pinned yet: pinned at the agent's next connection" }
                        }
                    } }
                }
            }
        }
        @if v.can(Role::Admin) && !a.revoked {
            div.row-actions {
                @if a.recipient.is_some() {
                    form method="post" action=(format!("/agents/{}/identity/reset", a.id)) {
                        (csrf_field(&v.csrf))
                        button.small.secondary type="submit" { "Reset identity pin" }
                    }
                }
                form method="post" action=(format!("/agents/{}/revoke", a.id)) {
                    (csrf_field(&v.csrf))
                    button.small.secondary.outline type="submit" { "Revoke" }
                }
            }
        }
    }
}

pub async fn agent_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PageError> {
    let agent = ops::get_agent(&state, id).await?;
    let markup = page(
        &v,
        &format!("Agent {}", agent.name),
        Nav::Agents,
        agent_body(&v, &agent, q.done.as_deref()),
    );
    Ok((no_store(), markup).into_response())
}

pub async fn reset_identity(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    ops::reset_identity(&state, &who, id).await?;
    Ok(layout::see_other(&format!("/agents/{id}?done=identity-reset")))
}
