//! Deploy from the browser and watch it: the Deploy action (with a confirmation step for
//! production-like environments) and the deployment page; its live log is `live.rs`.

pub mod approval;
pub mod live;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde::Deserialize;

use super::{DeployStatus, Deployment, LogLine, ops, store};
use crate::access::ProjectRole;
use crate::app::AppState;
use crate::db::now_ms;
use crate::projects::pages::{Forms, is_production, with_errors};
use crate::users::Principal;
use crate::web::error::WebError;
use crate::web::layout::{self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, no_store, page};

/// At most this many stored lines are put in a page or sent on connect; the API has them all.
pub(super) const MAX_SHOWN_LINES: i64 = 5000;

/// Whether `actor` started a deployment whose `triggered_by` is this: by session
/// (`user:ada`) or by one of their tokens (`user:ada (token ci)`). Only for what the page
/// shows; the approval rule compares user ids on the server.
fn started_by(triggered_by: &str, actor: &str) -> bool {
    triggered_by == actor
        || triggered_by
            .strip_prefix(actor)
            .is_some_and(|rest| rest.starts_with(" (token "))
}

/// The class is the stored status (`awaiting_approval`); the text is for people
/// (`awaiting approval`).
pub fn status_badge(status: DeployStatus) -> Markup {
    badge(status.as_str(), &status.as_str().replace('_', " "))
}

#[derive(Deserialize)]
pub struct DeployForm {
    #[serde(default)]
    environment: String,
    #[serde(default)]
    confirm: String,
}

pub async fn deploy(
    State(state): State<AppState>,
    v: Viewer,
    Extension(who): Extension<Principal>,
    Path(project_id): Path<i64>,
    Form(form): Form<DeployForm>,
) -> Result<Response, PageError> {
    let env = form.environment.trim().to_owned();
    if is_production(&env) && form.confirm.trim() != env {
        return confirm_page(&state, &v, project_id, &env, !form.confirm.is_empty()).await;
    }
    let request = ops::Request {
        environment: Some(env),
        ..ops::Request::default()
    };
    match ops::trigger(&state, &who, project_id, request).await {
        Ok(t) => Ok(layout::see_other(&format!("/deployments/{}", t.deployment_id))),
        // Said in the UI's words, with a link to where an agent is created (not the API route).
        Err(super::DeployError::NoAgent {
            environment,
            environment_id,
        }) => {
            let forms = Forms {
                no_agent: Some((environment, environment_id)),
                ..Forms::default()
            };
            with_errors(&state, &v, project_id, forms).await
        }
        Err(e) => {
            let errors = FormErrors::from_web(e.into(), &[])?;
            let forms = Forms {
                deploy: Some(errors),
                ..Forms::default()
            };
            with_errors(&state, &v, project_id, forms).await
        }
    }
}

async fn confirm_page(
    state: &AppState,
    v: &Viewer,
    project_id: i64,
    env: &str,
    retried: bool,
) -> Result<Response, PageError> {
    let project = state
        .db
        .read(move |c| crate::projects::store::get(c, project_id))
        .await?;
    if !project.environments.iter().any(|e| e.name == env) {
        return Err(WebError::NotFound("environment").into());
    }
    let body = html! {
        article.secret-once {
            header { h2 { "Deploy " (project.name) " to " (env) "?" } }
            p { "This is a production environment. Type its name to confirm." }
            @if retried { p.notice.error role="alert" { "The name did not match." } }
            form method="post" action=(format!("/projects/{project_id}/deploy")) {
                (csrf_field(&v.csrf))
                input type="hidden" name="environment" value=(env);
                input name="confirm" placeholder=(env) required autocomplete="off" aria-label="Environment name";
                div.row-actions {
                    button type="submit" { "Deploy to " (env) }
                    a.secondary.outline href=(format!("/projects/{project_id}")) role="button" { "Cancel" }
                }
            }
        }
    };
    Ok((
        StatusCode::OK,
        no_store(),
        page(v, "Confirm deploy", Nav::Projects, body),
    )
        .into_response())
}

/// Characters of one line shown in a page; longer lines (up to a protocol frame, 1 MiB) are cut
/// here, and are whole in the JSON API.
const MAX_SHOWN_LINE_CHARS: usize = 4000;
/// A socket message carries about this much rendered log at most (many small messages rather
/// than one that outgrows the socket's write buffer).
pub(super) const MAX_FRAGMENT_BYTES: usize = 128 * 1024;

pub(super) fn line_markup(l: &LogLine) -> Markup {
    let cut = l.line.char_indices().nth(MAX_SHOWN_LINE_CHARS).map(|(i, _)| i);
    html! {
        span class=(l.stream) {
            span.seq { (l.seq) }
            @match cut {
                Some(i) => { (l.line[..i]) span.muted { " … (line cut; the API has it whole)" } }
                None => { (l.line) }
            }
            "\n"
        }
    }
}

/// The status block, replaced as a whole when the deployment finishes.
pub(super) fn status_block(d: &Deployment) -> Markup {
    let now = now_ms();
    html! {
        div id="deploy-status" hx-swap-oob="true" {
            div.stat {
                div { small { "Status" } (status_badge(d.status)) }
                div { small { "Environment" } a href=(format!("/projects/{}#env-{}", d.project_id, d.environment)) { (d.project) " / " (d.environment) } }
                div { small { "Ref" } code { (d.git_ref) } @if let Some(c) = &d.commit { " @ " code { (c.get(..12).unwrap_or(c)) } } }
                div { small { "Started by" } (d.triggered_by) }
                div { small { "Started" } (ago(&d.created_at, now)) }
                @if let Some(f) = &d.finished_at { div { small { "Finished" } (ago(f, now)) } }
            }
            @if let Some(e) = &d.error { p.notice.error role="alert" { "Error: " (e) } }
            @if let Some(failed) = d.rollback_of {
                p.notice { "Automatic rollback of the failed "
                    a href=(format!("/deployments/{failed}")) { "deployment #" (failed) } "." }
            }
            @if let Some(of) = d.redeploy_of {
                p.notice { "Redeploys the release of "
                    a href=(format!("/deployments/{of}")) { "deployment #" (of) }
                    ": its commit, its secret versions and its images, pinned." }
            }
            @if let Some(next) = d.superseded_by {
                p.notice { "Never ran: a newer deployment of this environment replaced it, "
                    a href=(format!("/deployments/{next}")) { "deployment #" (next) } "." }
            }
            @if !d.services.is_empty() {
                h3 { "Services" }
                table {
                    thead { tr { th { "Service" } th { "State" } th { "Health" } th { "Exit code" } } }
                    tbody {
                        @for s in &d.services {
                            tr {
                                td { code { (s.name) } }
                                td { (badge(if s.state == "running" { "success" } else { "failed" }, &s.state)) }
                                td { (if s.health.is_empty() { "–" } else { s.health.as_str() }) }
                                td { (exit_code_shown(&s.state, s.exit_code).map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What a successful deployment put on the server: agent, commit, compose hash, each service's
/// image and pin, the secret versions (keys and versions, never values).
fn release_block(d: &Deployment) -> Markup {
    html! {
        @if let Some(r) = &d.release {
            section id="release" {
                h3 { "Release" }
                div.stat {
                    div { small { "Agent" } (r.agent_name) }
                    div { small { "Commit" } @match &r.commit { Some(c) => code { (c) }, None => "–" } }
                    div { small { "Compose hash" } code title=(r.compose_hash) { (r.compose_hash.get(..16).unwrap_or(&r.compose_hash)) } }
                }
                table {
                    thead { tr { th { "Service" } th { "Image" } th { "Pinned as" } } }
                    tbody {
                        @for s in &r.services {
                            tr { td { code { (s.name) } } td { code { (s.image) } } td { code { (s.pin()) } } }
                        }
                    }
                }
                @if d.secrets.is_empty() {
                    p.muted { "No secrets." }
                } @else {
                    table {
                        thead { tr { th { "Secret" } th { "Scope" } th { "Version" } } }
                        tbody {
                            @for s in &d.secrets {
                                tr {
                                    td { code { (s.key) } }
                                    td { (s.scope) @if let Some(svc) = &s.service { " " code { (svc) } } }
                                    td { "v" (s.version) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The Redeploy button of a deployment with a release.
pub fn redeploy_form(id: i64, csrf: &str) -> Markup {
    html! {
        form.inline method="post" action=(format!("/deployments/{id}/redeploy")) {
            (csrf_field(csrf))
            button.secondary.outline type="submit" title="A new deployment of this release: the same commit, secret versions and images" { "Redeploy" }
        }
    }
}

/// `POST /deployments/{id}/redeploy` (MEMBER): redeploy that deployment's release, then to
/// the new deployment's page.
pub async fn redeploy(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let r = super::rollback::redeploy(&state, &who, id)
        .await
        .map_err(WebError::from)?;
    Ok(layout::see_other(&format!("/deployments/{}", r.deployment_id)))
}

/// The Cancel button of a deployment that has not finished (waiting, queued or running).
fn cancel_form(d: &Deployment, csrf: &str) -> Markup {
    html! {
        div id="deploy-cancel" {
            form method="post" action=(format!("/deployments/{}/cancel", d.id)) {
                (csrf_field(csrf))
                button.secondary.outline type="submit" { "Cancel deployment" }
            }
        }
    }
}

/// Removes the Cancel button once the deployment has finished (sent by the live socket).
pub(super) fn cancel_gone() -> Markup {
    html! { div id="deploy-cancel" hx-swap-oob="true" {} }
}

/// `POST /deployments/{id}/cancel` (MEMBER): cancel, then back to the deployment's page.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    super::queue::cancel(&state, &who, id)
        .await
        .map_err(WebError::from)?;
    Ok(layout::see_other(&format!("/deployments/{id}")))
}

/// The note under the status while the deployment's agent is disconnected: the deployment is
/// failed `agent_lost` if it does not come back within `deploys.agent_lost_timeout_secs`. Sent
/// (and cleared, empty) by the live socket as the agent's connection drops and returns.
pub(super) fn agent_hint(offline: bool, timeout_secs: u64) -> Markup {
    html! {
        div id="agent-hint" hx-swap-oob="true" {
            @if offline {
                p.notice.error role="status" {
                    "Agent disconnected, waiting up to " (timeout_secs) " s for it to come back before this deployment fails."
                }
            }
        }
    }
}

pub(super) fn live_indicator(live: bool) -> Markup {
    html! {
        span id="live-indicator" hx-swap-oob="true" {
            @if live { span.live-dot {} "live" } @else { span.muted { "log complete" } }
        }
    }
}

pub async fn deployment_page(
    State(state): State<AppState>,
    v: Viewer,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let s = state.clone();
    let (d, lines) = state
        .db
        .read(move |c| {
            let mut d = store::get(c, id)?;
            d.approval = super::approval::view_for(&s, c, &d)?;
            let lines = last_lines(c, id)?;
            Ok::<_, super::DeployError>((d, lines))
        })
        .await?;
    let live = !d.status.is_finished();
    // Sent to an agent that is not connected now (a reload after its socket dropped).
    let agent_gone = live
        && state
            .hub
            .active_deploy(id)
            .is_some_and(|a| !state.hub.is_online(a.agent_id));
    let body = html! {
        div.page-head {
            h1 { "Deployment #" (d.id) }
            (live_indicator(live))
        }
        (status_block(&d))
        (agent_hint(agent_gone, state.config.deploys.agent_lost_timeout_secs))
        @if let Some(a) = &d.approval {
            (approval::block(d.id, a, d.status == DeployStatus::AwaitingApproval, started_by(&d.triggered_by, &v.who.actor), &v.csrf))
        }
        @if live && v.may(ProjectRole::Deployer) { (cancel_form(&d, &v.csrf)) }
        (release_block(&d))
        @if d.release.is_some() && v.may(ProjectRole::Deployer) { (redeploy_form(d.id, &v.csrf)) }
        h3 { "Log" }
        @if let Some(at) = &d.log_pruned_at {
            p.muted { "Log pruned " (ago(at, now_ms())) " by the retention policy (deploys.log_keep_deployments, deploys.log_keep_days)." }
        }
        // Reading works without JavaScript; with it, the socket streams the rest in.
        @if live {
            div hx-ext="ws" ws-connect=(format!("/ws/deployments/{id}")) {
                pre.log id="log" { @for l in &lines { (line_markup(l)) } }
            }
        } @else {
            pre.log id="log" { @for l in &lines { (line_markup(l)) } }
        }
        p.muted { small { "Full log as JSON: " a href=(format!("/api/deployments/{id}/logs")) { "/api/deployments/" (id) "/logs" } } }
    };
    let title = format!("Deployment #{id}");
    Ok((no_store(), page(&v, &title, Nav::Projects, body)).into_response())
}

/// The newest stored lines, oldest first.
fn last_lines(c: &crate::db::Conn<'_>, id: i64) -> Result<Vec<LogLine>, crate::db::DbError> {
    let max_seq = store::max_seq(c, id)?.unwrap_or(0);
    store::logs(c, id, max_seq - MAX_SHOWN_LINES, MAX_SHOWN_LINES)
}

/// Browser sockets read almost nothing and write one message at a time: small buffers, with
/// room for the largest message the socket sends (a bigger one would fail to send).
pub fn small_buffers(ws: WebSocketUpgrade, largest_message: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(largest_message)
        .max_message_size(16 * 1024)
}

/// A container's exit code, shown only for one that exited: Docker reports 0 for a running
/// container, which read as "Exit code 0" next to a running service.
pub fn exit_code_shown(state: &str, code: Option<i64>) -> Option<i64> {
    matches!(state, "exited" | "dead").then_some(code).flatten()
}

#[cfg(test)]
mod exit_code_tests {
    use super::exit_code_shown;

    #[test]
    fn only_an_exited_container_shows_its_exit_code() {
        assert_eq!(exit_code_shown("running", Some(0)), None);
        assert_eq!(exit_code_shown("restarting", Some(1)), None);
        assert_eq!(exit_code_shown("exited", Some(0)), Some(0));
        assert_eq!(exit_code_shown("exited", Some(137)), Some(137));
        assert_eq!(exit_code_shown("dead", Some(1)), Some(1));
        assert_eq!(exit_code_shown("missing", None), None);
    }
}
