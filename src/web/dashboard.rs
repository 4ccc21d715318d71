//! The dashboard: every project × environment with its agent (online / offline, last seen) and
//! its last deploy (status, when, who), kept current over a WebSocket without reloading.
//!
//! The socket listens to the hub's events (agent online/offline, deployment changed) and sends
//! the whole table again (and the header's "N of M agents online"), at most a few times a
//! second; a lagging socket just re-renders.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use tokio::sync::broadcast::error::RecvError;

use crate::agents::AgentInfo;
use crate::app::AppState;
use crate::db::now_ms;
use crate::deploys::Deployment;
use crate::projects::Project;
use crate::users::Role;
use crate::web::error::WebError;
use crate::web::layout::{Nav, PageError, Viewer, ago, badge, no_store, page};

/// Changes closer together than this are sent as one re-render.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// "3 min ago" texts are refreshed this often even when nothing happens.
const REFRESH: Duration = Duration::from_secs(30);

struct Snapshot {
    projects: Vec<Project>,
    agents: HashMap<i64, Vec<AgentInfo>>,
    latest: HashMap<i64, Deployment>,
    /// What runs per environment and its drift (issue 14).
    runtime: HashMap<i64, crate::runtime::store::Summary>,
}

async fn snapshot(state: &AppState) -> Result<Snapshot, WebError> {
    let (projects, latest, runtime) = state
        .db
        .read(|c| {
            let projects = crate::projects::store::list(c)?;
            let latest = crate::deploys::store::latest_per_environment(c)?;
            let runtime = crate::runtime::store::summaries(c)?;
            Ok::<_, WebError>((projects, latest, runtime))
        })
        .await?;
    let mut agents: HashMap<i64, Vec<AgentInfo>> = HashMap::new();
    for a in crate::agents::ops::list_agents(state).await? {
        if !a.revoked {
            agents.entry(a.environment_id).or_default().push(a);
        }
    }
    Ok(Snapshot {
        projects,
        agents,
        latest: latest.into_iter().map(|d| (d.environment_id, d)).collect(),
        runtime,
    })
}

fn rows(s: &Snapshot, can_admin: bool) -> Markup {
    let now = now_ms();
    html! {
        div id="dashboard-table" hx-swap-oob="true" { table {
        thead { tr { th { "Project" } th { "Environment" } th { "Agent" } th { "Last deploy" } th { "Running" } } }
        tbody {
            @for p in &s.projects {
                @if p.environments.is_empty() {
                    tr {
                        td { a href=(format!("/projects/{}", p.id)) { strong { (p.name) } } }
                        td colspan="4" { span.muted { "no environment yet" } }
                    }
                }
                @for e in &p.environments {
                    tr data-env=(format!("{}/{}", p.name, e.name)) {
                        td { a href=(format!("/projects/{}", p.id)) { strong { (p.name) } } }
                        td { a href=(format!("/projects/{}#env-{}", p.id, e.name)) { (e.name) } (crate::protect::pages::badge(e)) }
                        td {
                            @match s.agents.get(&e.id) {
                                Some(list) => {
                                    @for a in list {
                                        div {
                                            @if a.online { (badge("online", "online")) } @else { (badge("offline", "offline")) }
                                            " " (a.name)
                                            @if let Some(seen) = &a.last_heartbeat {
                                                " " small.muted { "seen " (ago(seen, now)) }
                                            } @else {
                                                " " small.muted { "never connected" }
                                            }
                                        }
                                    }
                                }
                                None => {
                                    span.muted { "no agent" }
                                    @if can_admin { " · " a href=(crate::projects::tabs::new_agent_link(e.id)) { "create one" } }
                                }
                            }
                        }
                        td {
                            @match s.latest.get(&e.id) {
                                Some(d) => {
                                    a href=(format!("/deployments/{}", d.id)) { (crate::deploys::pages::status_badge(d.status)) }
                                    " " small { (ago(&d.created_at, now)) " by " (d.triggered_by) }
                                }
                                None => { (badge("never", "never deployed")) }
                            }
                        }
                        // What runs, apart from how the last deploy ended (issue 14).
                        td { (crate::runtime::pages::drift_badge(s.runtime.get(&e.id))) }
                    }
                }
            }
        }
        } }
    }
}

/// The header's counts ("2 projects · 1 of 3 agents online"), swapped with the table on every
/// re-render so it never disagrees with the rows.
fn summary(s: &Snapshot) -> Markup {
    let online = s.agents.values().flatten().filter(|a| a.online).count();
    let total = s.agents.values().map(Vec::len).sum::<usize>();
    html! {
        span.muted id="dashboard-summary" hx-swap-oob="true" {
            span.live-dot {}
            (plural(s.projects.len(), "project")) " · " (online) " of " (plural(total, "agent")) " online"
        }
    }
}

pub async fn dashboard_page(State(state): State<AppState>, v: Viewer) -> Result<Response, PageError> {
    let snap = snapshot(&state).await?;
    let body = html! {
        div.page-head {
            h1 { "Dashboard" }
            (summary(&snap))
        }
        @if snap.projects.is_empty() {
            article.empty {
                p { "Nothing to deploy yet." }
                @if v.can(Role::Member) { a href="/projects#new-project" role="button" { "Create your first project" } }
            }
        } @else {
            figure hx-ext="ws" ws-connect="/ws/dashboard" {
                (rows(&snap, v.can(Role::Admin)))
            }
        }
    };
    Ok((no_store(), page(&v, "Dashboard", Nav::Dashboard, body)).into_response())
}

/// `?project=<id>`: the socket serves that project page's runtime panels instead of the table.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SocketQuery {
    #[serde(default)]
    project: Option<i64>,
}

pub async fn dashboard_socket(
    State(state): State<AppState>,
    v: Viewer,
    axum::extract::Query(q): axum::extract::Query<SocketQuery>,
    session: Option<axum::Extension<crate::web::session::Session>>,
    ws: WebSocketUpgrade,
) -> Response {
    let can_admin = v.can(Role::Admin);
    let view = match q.project {
        Some(project) => {
            // The panel's buttons follow the caller's role on that project (this route is not
            // project-scoped, so the choke point did not look it up); a failed lookup shows none.
            let who = v.who.clone();
            let role = state
                .db
                .lookup(move |c| crate::access::project_role(c, &who, project))
                .await;
            View::Runtime {
                project,
                can_member: role.is_ok_and(|r| r >= crate::access::ProjectRole::Deployer),
                csrf: v.csrf.clone(),
            }
        }
        None => View::Table { can_admin },
    };
    // Sign-out, disable, demotion, ended sessions or the session's expiry close the socket at
    // once (dropping it).
    let revoked = crate::web::session::socket_end(&state, &v.who, session.as_deref());
    // The whole table is one message: thousands of agents make a few MB.
    crate::deploys::pages::small_buffers(ws, 16 * 1024 * 1024).on_upgrade(move |socket| async move {
        tokio::select! {
            () = push_updates(state, socket, view) => {}
            () = revoked => {}
        }
    })
}

/// What one socket re-renders.
enum View {
    /// The dashboard's table.
    Table { can_admin: bool },
    /// A project page's runtime panels (one per environment).
    Runtime {
        project: i64,
        can_member: bool,
        csrf: String,
    },
}

async fn render(state: &AppState, view: &View) -> Option<String> {
    match view {
        View::Table { can_admin } => {
            let snap = snapshot(state).await.ok()?;
            Some(html! { (summary(&snap)) (rows(&snap, *can_admin)) }.into_string())
        }
        View::Runtime {
            project,
            can_member,
            csrf,
        } => {
            let project = *project;
            let list = state
                .db
                .read(move |c| {
                    let p = crate::projects::store::get(c, project)?;
                    let mut out = Vec::new();
                    for e in &p.environments {
                        out.push(crate::runtime::ops::read(c, e.id).map_err(WebError::from)?);
                    }
                    Ok::<_, WebError>(out)
                })
                .await
                .ok()?;
            let mut html = String::new();
            for rt in &list {
                html.push_str(&crate::runtime::pages::panel_for(*can_member, csrf, rt).into_string());
            }
            Some(html)
        }
    }
}

async fn push_updates(state: AppState, mut socket: WebSocket, view: View) {
    let mut events = state.hub.events();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Let a burst (a restart reconnecting many agents) settle into one re-render.
                    tokio::time::sleep(DEBOUNCE).await;
                    while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
                }
                Err(RecvError::Closed) => return,
            },
            _ = refresh.tick() => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            () = state.shutdown.cancelled() => return,
        }
        let Some(html) = render(&state, &view).await else {
            continue;
        };
        if html.is_empty() {
            continue;
        }
        if socket.send(Message::Text(html.into())).await.is_err() {
            return;
        }
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
