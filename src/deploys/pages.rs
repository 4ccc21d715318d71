//! Deploy from the browser and watch it: the Deploy action (with a confirmation step for
//! production-like environments), the deployment page, and its live log over a WebSocket
//! (htmx ws extension).
//!
//! The socket subscribes to the live channel first, then sends the stored lines, then forwards
//! live lines it has not sent yet (deduplicated by seq). A browser that reads too slowly makes
//! the bounded broadcast channel lag; it is then told so and resynchronised from the store, so
//! a slow viewer costs bounded memory and never blocks the deploy.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{DeployStatus, Deployment, LiveEvent, LogLine, service, store};
use crate::app::AppState;
use crate::db::now_ms;
use crate::projects::pages::{Forms, is_production, with_errors};
use crate::users::Principal;
use crate::web::error::WebError;
use crate::web::layout::{self, FormErrors, Nav, PageError, Viewer, ago, badge, csrf_field, no_store, page};

/// At most this many stored lines are put in a page or sent on connect; the API has them all.
const MAX_SHOWN_LINES: i64 = 5000;

pub fn status_badge(status: DeployStatus) -> Markup {
    badge(status.as_str(), status.as_str())
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
    match service::trigger(&state, &who, project_id, Some(env)).await {
        Ok(id) => Ok(layout::see_other(&format!("/deployments/{id}"))),
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
const MAX_FRAGMENT_BYTES: usize = 128 * 1024;

fn line_markup(l: &LogLine) -> Markup {
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
fn status_block(d: &Deployment) -> Markup {
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
                                td { (s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn live_indicator(live: bool) -> Markup {
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
    let (d, lines) = state
        .db
        .read(move |c| {
            let d = store::get(c, id)?;
            let lines = last_lines(c, id)?;
            Ok::<_, super::DeployError>((d, lines))
        })
        .await?;
    let live = !d.status.is_finished();
    let body = html! {
        div.page-head {
            h1 { "Deployment #" (d.id) }
            (live_indicator(live))
        }
        (status_block(&d))
        h3 { "Log" }
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
fn last_lines(c: &rusqlite::Connection, id: i64) -> Result<Vec<LogLine>, crate::db::DbError> {
    let max_seq: i64 = c.query_row(
        "SELECT IFNULL(MAX(seq), 0) FROM deployment_logs WHERE deployment_id = ?1",
        [id],
        |r| r.get(0),
    )?;
    store::logs(c, id, max_seq - MAX_SHOWN_LINES, MAX_SHOWN_LINES)
}

pub async fn live_socket(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    ws: WebSocketUpgrade,
) -> Result<Response, PageError> {
    // 404 before upgrading, so a wrong id is a plain HTTP answer.
    state.db.read(move |c| store::get(c, id)).await?;
    Ok(small_buffers(ws, 1024 * 1024).on_upgrade(move |socket| stream_log(state, id, socket)))
}

/// Browser sockets read almost nothing and write one message at a time: small buffers, with
/// room for the largest message the socket sends (a bigger one would fail to send).
pub fn small_buffers(ws: WebSocketUpgrade, largest_message: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(largest_message)
        .max_message_size(16 * 1024)
}

async fn send(socket: &mut WebSocket, m: Markup) -> bool {
    socket.send(Message::Text(m.into_string().into())).await.is_ok()
}

/// Send every stored line after `after` as one fragment; returns the new high-water mark.
async fn send_stored(state: &AppState, socket: &mut WebSocket, id: i64, after: i64) -> Option<i64> {
    let lines = state
        .db
        .read(move |c| store::logs(c, id, after, MAX_SHOWN_LINES))
        .await
        .ok()?;
    let Some(last) = lines.last().map(|l| l.seq) else {
        return Some(after);
    };
    let mut chunk = String::new();
    for l in &lines {
        chunk.push_str(&line_markup(l).into_string());
        if chunk.len() >= MAX_FRAGMENT_BYTES && !send_lines(socket, &std::mem::take(&mut chunk)).await {
            return None;
        }
    }
    if !chunk.is_empty() && !send_lines(socket, &chunk).await {
        return None;
    }
    Some(last)
}

/// Append already-rendered lines to the page's log.
async fn send_lines(socket: &mut WebSocket, rendered: &str) -> bool {
    send(
        socket,
        html! { pre id="log" hx-swap-oob="beforeend" { (PreEscaped(rendered)) } },
    )
    .await
}

async fn stream_log(state: AppState, id: i64, mut socket: WebSocket) {
    // Subscribe before reading the store, so no line falls between the two.
    let mut live = state.hub.subscribe(id);
    // Whatever the page showed, the socket starts from a clean log (it may be a reconnect).
    let start = html! { pre.log id="log" hx-swap-oob="true" {} };
    if !send(&mut socket, start).await {
        return;
    }
    state.logs.flush().await;
    let Some(mut seen) = send_stored(&state, &mut socket, id, -1).await else {
        return;
    };
    let mut shown_running = false;
    if let Some(rx) = live.as_mut() {
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Ok(LiveEvent::Line(l)) if l.seq > seen => {
                        seen = l.seq;
                        let fragment = html! { pre id="log" hx-swap-oob="beforeend" { (line_markup(&l)) } };
                        if !send(&mut socket, fragment).await { return; }
                        if !shown_running {
                            // The agent has started: the page said "queued" until now.
                            shown_running = true;
                            if let Ok(mut d) = state.db.read(move |c| store::get(c, id)).await {
                                if !d.status.is_finished() {
                                    d.status = DeployStatus::Running;
                                }
                                if !send(&mut socket, status_block(&d)).await { return; }
                            }
                        }
                    }
                    Ok(LiveEvent::Line(_)) => {}
                    Ok(LiveEvent::Finished { .. }) | Err(RecvError::Closed) => break,
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(deployment_id = id, skipped = n, "live log viewer lagged; resyncing from the store");
                        state.logs.flush().await;
                        match send_stored(&state, &mut socket, id, seen).await {
                            Some(s) => seen = s,
                            None => return,
                        }
                    }
                },
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
                () = state.shutdown.cancelled() => break,
            }
        }
    }
    // Finished (or already finished when the socket opened): the rest of the log and the outcome.
    state.logs.flush().await;
    if send_stored(&state, &mut socket, id, seen).await.is_none() {
        return;
    }
    if let Ok(d) = state.db.read(move |c| store::get(c, id)).await {
        let _ = send(&mut socket, html! { (status_block(&d)) (live_indicator(false)) }).await;
    }
    // A normal close: the htmx ws extension reconnects only after abnormal ones.
    let _ = socket.send(Message::Close(None)).await;
}
