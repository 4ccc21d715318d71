//! The live log of one deployment over a WebSocket (htmx ws extension): `/ws/deployments/{id}`.
//!
//! The socket subscribes to the live channel first, then sends the newest stored lines, then
//! forwards live lines it has not sent yet (by seq). Lines already waiting in the channel go
//! out together as one message, so a fast log costs few socket writes. A browser that reads too
//! slowly makes the bounded broadcast channel lag; the lines it missed are then read from the
//! store (waiting for the log writer's next commit where they are not written yet, never forcing
//! one), so the viewer still gets every line once and in order, a slow viewer costs bounded
//! memory, and it never slows the deploy or the log batching.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, PreEscaped, html};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::{
    MAX_FRAGMENT_BYTES, MAX_SHOWN_LINES, agent_hint, cancel_gone, line_markup, live_indicator, small_buffers,
    status_block,
};
use crate::agents::hub::HubEvent;
use crate::app::AppState;
use crate::deploys::{DeployStatus, LiveEvent, store};
use crate::web::layout::PageError;

/// Stored lines read per query while catching a viewer up.
const CATCH_UP_CHUNK: i64 = 5000;
/// How often a viewer of a deployment running on another replica reads its stored log.
const REMOTE_POLL: Duration = Duration::from_millis(300);

pub async fn live_socket(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    axum::Extension(who): axum::Extension<crate::users::Principal>,
    session: Option<axum::Extension<crate::web::session::Session>>,
    ws: WebSocketUpgrade,
) -> Result<Response, PageError> {
    // 404 before upgrading, so a wrong id is a plain HTTP answer.
    state.db.read(move |c| store::get(c, id)).await?;
    // Sign-out, disable, demotion, ended sessions or the session's expiry close the socket at
    // once (dropping it).
    let revoked = crate::web::session::socket_end(&state, &who, session.as_deref());
    Ok(
        small_buffers(ws, 1024 * 1024).on_upgrade(move |socket| async move {
            tokio::select! {
                () = stream_log(state, id, socket) => {}
                () = revoked => {}
            }
        }),
    )
}

/// One viewer's socket and how far its log has got.
struct Viewer {
    state: AppState,
    id: i64,
    socket: WebSocket,
    /// The highest seq sent (-1: none yet).
    seen: i64,
}

/// The socket went away; the viewer's task ends.
struct Gone;

async fn stream_log(state: AppState, id: i64, socket: WebSocket) {
    // Subscribe before reading the store, so no line falls between the two.
    let live = state.hub.subscribe(id);
    let mut v = Viewer {
        state,
        id,
        socket,
        seen: -1,
    };
    // `Gone` only means the viewer left: nothing to report.
    let _ = v.stream(live).await;
}

impl Viewer {
    async fn stream(&mut self, live: Option<broadcast::Receiver<LiveEvent>>) -> Result<(), Gone> {
        // Whatever the page showed, the socket starts from a clean log (it may be a reconnect).
        self.send(html! { pre.log id="log" hx-swap-oob="true" {} })
            .await?;
        // Lines that reached the hub before the subscription may still be queued for the writer.
        self.state.logs.flush().await;
        self.send_tail().await?;
        let mut live = match live {
            Some(rx) => Some(rx),
            None => self.while_waiting().await?,
        };
        if live.is_none() {
            // Running on an agent connected to another replica (issue 17): from the store.
            live = self.poll_remote().await?;
        }
        if let Some(mut rx) = live {
            self.follow(&mut rx).await?;
        }
        // Finished (or already finished when the socket opened): the rest of the log, then the
        // outcome. The end is committed after every line, so the store has them all now.
        self.catch_up(None).await?;
        let id = self.id;
        let d = self
            .state
            .db
            .read(move |c| store::get(c, id))
            .await
            .map_err(|e| self.storage_failed(&e))?;
        self.send(html! { (status_block(&d)) (live_indicator(false)) (cancel_gone()) (self.hint(false)) })
            .await?;
        // A normal close: the htmx ws extension reconnects only after abnormal ones. A viewer
        // already gone cannot be told.
        let _ = self.socket.send(Message::Close(None)).await;
        Ok(())
    }

    /// A deployment waiting in its environment's queue has no live channel yet: wait until it
    /// is dispatched (then its channel) or ends without running (superseded, cancelled).
    async fn while_waiting(&mut self) -> Result<Option<broadcast::Receiver<LiveEvent>>, Gone> {
        // Subscribed before the status is read, so no change falls between the two.
        let mut events = self.state.hub.events();
        loop {
            let id = self.id;
            let owner = self
                .state
                .db
                .read(move |c| store::owner(c, id))
                .await
                .map_err(|e: crate::db::DbError| self.storage_failed(&e))?;
            if !matches!(owner, Some((_, _, DeployStatus::Waiting))) {
                return Ok(self.state.hub.subscribe(id));
            }
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(HubEvent::DeploymentChanged { deployment_id, .. }) if deployment_id == id => break,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return Ok(None),
                    },
                    msg = self.socket.recv() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(Gone),
                        Some(Ok(_)) => continue,
                    },
                    () = self.state.shutdown.cancelled() => return Ok(None),
                    // Another replica dispatches it without an event here: look again.
                    () = tokio::time::sleep(REMOTE_POLL), if self.shared() => break,
                }
            }
        }
    }

    fn shared(&self) -> bool {
        self.state.db.backend() == crate::db::Backend::Postgres
    }

    /// A deployment not finished whose live channel is on another replica: send its stored
    /// lines every [`REMOTE_POLL`] (the same frames as the live view) until it ends, or until
    /// its agent connects here (then its live channel, `Some`).
    async fn poll_remote(&mut self) -> Result<Option<broadcast::Receiver<LiveEvent>>, Gone> {
        if !self.shared() {
            return Ok(None);
        }
        let mut shown_running = false;
        loop {
            if let Some(rx) = self.state.hub.subscribe(self.id) {
                return Ok(Some(rx));
            }
            let id = self.id;
            let d = self
                .state
                .db
                .read(move |c| store::get(c, id))
                .await
                .map_err(|e| self.storage_failed(&e))?;
            if d.status.is_finished() {
                return Ok(None);
            }
            self.catch_up(None).await?;
            if !shown_running && self.seen >= 0 {
                shown_running = true;
                let mut d = d;
                d.status = DeployStatus::Running;
                self.send(status_block(&d)).await?;
            }
            tokio::select! {
                () = tokio::time::sleep(REMOTE_POLL) => {}
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(Gone),
                    Some(Ok(_)) => {}
                },
                () = self.state.shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// The agent-disconnected note (empty when `offline` is false).
    fn hint(&self, offline: bool) -> Markup {
        agent_hint(offline, self.state.config.deploys.agent_lost_timeout_secs)
    }

    /// Forward live lines until the deployment ends, the server stops, or the viewer leaves;
    /// meanwhile say so as soon as the deployment's agent disconnects, and when it is back.
    async fn follow(&mut self, rx: &mut broadcast::Receiver<LiveEvent>) -> Result<(), Gone> {
        // Subscribed before the agent's state is read, so no change falls between the two.
        let mut events = self.state.hub.events();
        let mut agent = self.state.hub.active_deploy(self.id).map(|a| a.agent_id);
        let mut offline = agent.is_some_and(|a| !self.state.hub.is_online(a));
        self.send(self.hint(offline)).await?;
        let mut shown_running = false;
        // Set when the channel dropped events for this viewer: missing lines are then worth
        // waiting for (they are on their way to the store).
        let mut lagged = false;
        loop {
            let first = tokio::select! {
                event = rx.recv() => event,
                event = events.recv(), if agent.is_some() => {
                    match event {
                        Ok(HubEvent::AgentOffline { agent_id } | HubEvent::AgentOnline { agent_id })
                            if Some(agent_id) == agent => {}
                        Ok(_) => continue,
                        // Missed events: read the state again.
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => {
                            agent = None;
                            continue;
                        }
                    }
                    let now_offline = agent.is_some_and(|a| !self.state.hub.is_online(a));
                    if now_offline != offline {
                        offline = now_offline;
                        self.send(self.hint(offline)).await?;
                    }
                    continue;
                },
                msg = self.socket.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(Gone),
                    Some(Ok(_)) => continue,
                },
                () = self.state.shutdown.cancelled() => return Ok(()),
            };
            // This event and every one already waiting go out as one message.
            let mut rendered = String::new();
            let mut next = Some(first);
            while let Some(event) = next.take() {
                match event {
                    Ok(LiveEvent::Line(l)) => {
                        if l.seq > self.seen + 1 {
                            // The channel no longer holds what came between: from the store.
                            self.send_rendered(&std::mem::take(&mut rendered)).await?;
                            let until = std::mem::take(&mut lagged).then_some(l.seq);
                            self.catch_up(until).await?;
                        }
                        if l.seq > self.seen {
                            self.seen = l.seq;
                            rendered.push_str(&line_markup(&l).into_string());
                        }
                    }
                    Ok(LiveEvent::Finished { .. }) | Err(RecvError::Closed) => {
                        self.send_rendered(&rendered).await?;
                        return Ok(());
                    }
                    Err(RecvError::Lagged(skipped)) => {
                        lagged = true;
                        tracing::debug!(
                            deployment_id = self.id,
                            skipped,
                            "live log viewer lagged; the next line resyncs it from the store"
                        );
                    }
                }
                if rendered.len() < MAX_FRAGMENT_BYTES {
                    next = match rx.try_recv() {
                        Ok(event) => Some(Ok(event)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    };
                }
            }
            self.send_rendered(&rendered).await?;
            if !shown_running && self.seen >= 0 {
                // The agent has started: the page said "queued" until now.
                shown_running = true;
                let id = self.id;
                let mut d = self
                    .state
                    .db
                    .read(move |c| store::get(c, id))
                    .await
                    .map_err(|e| self.storage_failed(&e))?;
                if !d.status.is_finished() {
                    d.status = DeployStatus::Running;
                }
                self.send(status_block(&d)).await?;
            }
        }
    }

    /// The newest stored lines (at most [`MAX_SHOWN_LINES`], like the page), with a note when
    /// there are earlier ones.
    async fn send_tail(&mut self) -> Result<(), Gone> {
        let id = self.id;
        let newest = self
            .state
            .db
            .read(move |c| store::max_seq(c, id))
            .await
            .map_err(|e| self.storage_failed(&e))?;
        if let Some(max) = newest.filter(|m| *m >= MAX_SHOWN_LINES) {
            let earlier = max + 1 - MAX_SHOWN_LINES;
            self.send_rendered(
                &html! { span.muted { "… " (earlier) " earlier lines: the full log is in the API\n" } }
                    .into_string(),
            )
            .await?;
            self.seen = earlier - 1;
        }
        self.catch_up(None).await
    }

    /// Send the stored lines after `seen`; with `until` (a live line that came after a gap),
    /// first make sure the lines before it are stored: each line is queued for the writer
    /// before it goes live (`deploys::service`), so once the writer has committed what is
    /// queued they are in the store, or never will be (a gap in what the agent sent, the cap).
    /// A slow writer (PostgreSQL under load) is waited for, never raced with a timer.
    async fn catch_up(&mut self, until: Option<i64>) -> Result<(), Gone> {
        let mut flushed = false;
        loop {
            let (id, after) = (self.id, self.seen);
            let lines = self
                .state
                .db
                .read(move |c| store::logs(c, id, after, CATCH_UP_CHUNK))
                .await
                .map_err(|e| self.storage_failed(&e))?;
            if let Some(last) = lines.last().map(|l| l.seq) {
                let mut chunk = String::new();
                for l in &lines {
                    chunk.push_str(&line_markup(l).into_string());
                    if chunk.len() >= MAX_FRAGMENT_BYTES {
                        self.send_rendered(&std::mem::take(&mut chunk)).await?;
                    }
                }
                self.send_rendered(&chunk).await?;
                self.seen = last;
                continue;
            }
            let Some(until) = until.filter(|u| self.seen + 1 < *u) else {
                return Ok(());
            };
            if flushed {
                tracing::debug!(
                    deployment_id = self.id,
                    from = self.seen + 1,
                    until,
                    "live log lines never stored; going on"
                );
                return Ok(());
            }
            self.state.logs.flush().await;
            flushed = true;
        }
    }

    /// The log cannot be read: logged, and the socket ends (abnormally, so the browser
    /// reconnects) rather than showing a log with a silent gap.
    fn storage_failed(&self, e: &dyn std::fmt::Display) -> Gone {
        tracing::error!(deployment_id = self.id, error = %e, "cannot read the log for a live viewer");
        Gone
    }

    /// Append already-rendered lines to the page's log.
    async fn send_rendered(&mut self, rendered: &str) -> Result<(), Gone> {
        if rendered.is_empty() {
            return Ok(());
        }
        self.send(html! { pre id="log" hx-swap-oob="beforeend" { (PreEscaped(rendered)) } })
            .await
    }

    async fn send(&mut self, m: Markup) -> Result<(), Gone> {
        self.socket
            .send(Message::Text(m.into_string().into()))
            .await
            .map_err(|_| Gone)
    }
}
