//! One agent connection after the `/ws/agent` upgrade (in `agents::api`, of which this is part): HELLO, then frames
//! until either side closes, the agent goes quiet past `offline_after_secs`, or the appliance
//! shuts down.
//!
//! HTTP-facing: this module lives an upgraded axum [`WebSocket`] (its `Message`/`CloseFrame`
//! types); the upgrade, the token check and everything else about the request are in `api.rs`.
//!
//! Nothing an agent sends can panic or stall this task: oversized frames close the connection
//! with a reason, malformed or unknown frames are answered with an ERROR frame, and every
//! decision about a deployment goes through `deploys::service`, which checks ownership.

use crate::agents::requests::{Delivery, Reply};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};

use crate::agents::hub::{Outbound, Registration};
use crate::agents::ops::{self, Admission};
use crate::agents::{AgentIdentity, CLOSE_IDENTITY_MISMATCH, HelloInfo, store};
use crate::app::AppState;
use crate::db::now_ms;
use crate::deploys::service;
use stagely_protocol::{self as protocol, AgentMessage, Incoming, PROTOCOL_VERSION, ServerMessage, release};

/// An agent must say HELLO this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Malformed frames tolerated on one connection before it is closed.
const MAX_BAD_FRAMES: u32 = 20;

/// Send a frame whose failure leaves nothing to do: a Close on a connection that is ending, an
/// ERROR frame answering a bad one, an ACK. When the send fails the connection is already broken
/// and the next receive ends it (and records it offline), so the error is dropped on purpose.
async fn send_anyway(socket: &mut WebSocket, msg: Message) {
    let _ = socket.send(msg).await;
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A server message as the agent gets it: sealed in a signed envelope addressed to this agent
/// and dated now (issue 11, `crate::signing`). Every text frame to an agent goes through here.
fn signed(state: &AppState, agent: &AgentIdentity, message_json: &str) -> Message {
    let frame = state.signer.seal(&agent.recipient_tag(), message_json, now_ms());
    Message::Text(frame.as_str().into())
}

fn error_frame(state: &AppState, agent: &AgentIdentity, code: &str, message: impl Into<String>) -> Message {
    let msg = protocol::encode(&ServerMessage::Error {
        code: code.into(),
        message: message.into(),
    });
    signed(state, agent, &msg)
}

/// One connection's task. It lives as long as the agent is connected, so its resting size is the
/// per-agent cost of the hub (BENCHMARKS.md, "10,000 idle agents"):
/// - the futures that run only now and then (HELLO, the database, frame handling) are boxed
///   while they run instead of being laid out inline in every idle task;
/// - it is an `async move` block, not an `async fn`: an async fn keeps its arguments' slots
///   beside the locals it moves them into (~480 bytes here).
#[allow(clippy::manual_async_fn)] // see above: the async fn form costs ~480 bytes per agent
pub fn run(
    state: AppState,
    agent: AgentIdentity,
    address: String,
    mut socket: WebSocket,
) -> impl Future<Output = ()> + Send {
    async move {
        let Some(reg) = Box::pin(connect(&state, &agent, address, &mut socket)).await else {
            return;
        };
        serve(&state, &agent, &mut socket, reg).await;
    }
}

/// HELLO, then the identity and second-connection rules ([`ops::admit`]), then the connection
/// is registered with the hub.
async fn connect(
    state: &AppState,
    agent: &AgentIdentity,
    address: String,
    socket: &mut WebSocket,
) -> Option<Registration> {
    let (hello, active) = await_hello(state, agent, socket).await?;
    let live = state.hub.is_online(agent.id);
    match ops::admit(state, agent, &hello, &address, live).await {
        Ok(Admission::Accepted) => {}
        Ok(Admission::IdentityMismatch(message)) => {
            tracing::warn!(agent_id = agent.id, agent = %agent.name, %address, hostname = %hello.hostname, "agent identity mismatch: connection refused");
            send_anyway(socket, error_frame(state, agent, "identity_mismatch", message)).await;
            send_anyway(socket, close(1008, CLOSE_IDENTITY_MISMATCH)).await;
            return None;
        }
        Err(e) => {
            tracing::error!(agent_id = agent.id, error = %e, "cannot record agent connection");
            send_anyway(socket, close(1011, "server error")).await;
            return None;
        }
    }
    // After a rotation, the chain from older keys comes first, so an agent pinned to one of
    // them accepts the frames that follow (signed by today's key).
    if let Some(rekey) = state.signer.rekey_message()
        && socket.send(signed(state, agent, &rekey)).await.is_err()
    {
        return None;
    }
    if live {
        tracing::warn!(agent_id = agent.id, agent = %agent.name, %address, "a second connection with this agent's token replaces the first (recorded)");
    }
    let connected_at = now_ms();
    let reg = state.hub.register(agent.id, agent.environment_id, connected_at);
    tracing::info!(agent_id = agent.id, agent = %agent.name, hostname = %hello.hostname, version = %hello.agent_version, pinned = hello.recipient.is_some(), "agent connected");
    let watches = hello.capabilities.iter().any(|c| c == release::CAP_RUNTIME);
    drop(hello);
    // Issue 14: an agent that can report what runs is told which compose project to watch.
    if watches {
        match crate::runtime::ops::watch_frame(state, agent.environment_id).await {
            Ok(Some(frame)) => {
                if socket.send(signed(state, agent, &frame)).await.is_err() {
                    return None;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(agent_id = agent.id, error = %e, "cannot read the project to WATCH"),
        }
    }
    service::on_hello(state, agent, active, connected_at).await;
    Some(reg)
}

/// What woke a connection's task.
enum Event {
    Incoming(Option<Result<Message, axum::Error>>),
    Outbound(Option<Outbound>),
    Ping,
    Shutdown,
}

/// A registered connection between events.
struct Connected<'a> {
    state: &'a AppState,
    agent: &'a AgentIdentity,
    socket: &'a mut WebSocket,
    reg: Registration,
    offline_after: i64,
    bad_frames: u32,
}

/// Frames both ways until either side closes, the agent goes quiet, or the appliance stops.
async fn serve(state: &AppState, agent: &AgentIdentity, socket: &mut WebSocket, reg: Registration) {
    let ping_every = Duration::from_secs(state.config.agents.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut conn = Connected {
        state,
        agent,
        socket,
        reg,
        offline_after: i64::try_from(state.config.agents.offline_after_secs * 1000).unwrap_or(i64::MAX),
        bad_frames: 0,
    };
    let reason = loop {
        // The only await of an idle connection: handling an event runs boxed, so none of it
        // takes room in the idle task.
        let event = tokio::select! {
            incoming = conn.socket.recv() => Event::Incoming(incoming),
            out = conn.reg.rx.recv() => Event::Outbound(out),
            _ = ping.tick() => Event::Ping,
            () = state.shutdown.cancelled() => Event::Shutdown,
        };
        if let Some(reason) = Box::pin(conn.handle(event)).await {
            break reason;
        }
    };
    Box::pin(conn.end(reason)).await;
}

impl Connected<'_> {
    /// `Some(reason)` when the connection is over.
    async fn handle(&mut self, event: Event) -> Option<&'static str> {
        let agent = self.agent;
        match event {
            Event::Incoming(None) => Some("closed"),
            Event::Incoming(Some(Err(e))) => {
                tracing::warn!(agent_id = agent.id, error = %e, "agent connection error");
                send_anyway(self.socket, close(1009, "frame too large or malformed")).await;
                Some("error")
            }
            Event::Incoming(Some(Ok(msg))) => {
                self.reg.last_seen.store(now_ms(), Ordering::Relaxed);
                self.incoming(msg).await
            }
            Event::Outbound(Some(Outbound::Text(frame))) => {
                let sent = self.socket.send(signed(self.state, agent, &frame)).await;
                sent.is_err().then_some("send failed")
            }
            Event::Outbound(Some(Outbound::Close(code, why))) => {
                send_anyway(self.socket, close(code, why)).await;
                Some(why)
            }
            Event::Outbound(None) => Some("hub dropped"),
            Event::Ping => {
                if now_ms() - self.reg.last_seen.load(Ordering::Relaxed) > self.offline_after {
                    send_anyway(self.socket, close(1001, "heartbeat timeout")).await;
                    return Some("heartbeat timeout");
                }
                let sent = self.socket.send(Message::Ping(Default::default())).await;
                sent.is_err().then_some("ping failed")
            }
            Event::Shutdown => {
                send_anyway(self.socket, close(1001, protocol::CLOSE_SHUTDOWN)).await;
                Some(protocol::CLOSE_SHUTDOWN)
            }
        }
    }

    async fn incoming(&mut self, msg: Message) -> Option<&'static str> {
        let (state, agent) = (self.state, self.agent);
        match msg {
            Message::Text(text) => match handle_text(state, agent, text.as_str(), self.socket).await {
                Err(reply) => self.bad_frame(reply).await,
                Ok(()) => None,
            },
            // Counted like any other invalid frame (issue 12), so a flood of them ends the
            // connection instead of costing a warning and a reply each, forever.
            Message::Binary(_) => {
                tracing::warn!(agent_id = agent.id, "binary frame from agent refused");
                self.bad_frame(error_frame(
                    state,
                    agent,
                    "bad_message",
                    "binary frames are not part of the protocol",
                ))
                .await
            }
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some("closed by agent"),
        }
    }

    /// Answer an invalid frame; past [`MAX_BAD_FRAMES`] of them, close the connection.
    async fn bad_frame(&mut self, reply: Message) -> Option<&'static str> {
        self.bad_frames += 1;
        send_anyway(self.socket, reply).await;
        if self.bad_frames > MAX_BAD_FRAMES {
            send_anyway(self.socket, close(1008, "too many invalid frames")).await;
            return Some("too many invalid frames");
        }
        None
    }

    async fn end(self, reason: &'static str) {
        let (state, agent) = (self.state, self.agent);
        let last_seen = self.reg.last_seen.load(Ordering::Relaxed);
        if state.hub.unregister(agent.id, self.reg.conn_id, now_ms()) {
            state.requests.agent_gone(agent.id);
            let (id, replica) = (agent.id, state.cluster.replica_id.clone());
            if let Err(e) = state
                .db
                .write(move |tx| store::mark_offline(tx, id, &replica, last_seen))
                .await
            {
                tracing::error!(agent_id = agent.id, error = %e, "cannot record agent disconnect");
            }
        }
        tracing::info!(agent_id = agent.id, reason, "agent disconnected");
    }
}

/// Wait for the first frame, which must be a HELLO in this protocol version.
async fn await_hello(
    state: &AppState,
    agent: &AgentIdentity,
    socket: &mut WebSocket,
) -> Option<(HelloInfo, Option<Vec<i64>>)> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let text = match first {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(_) => {
            send_anyway(socket, close(1008, "no HELLO within 10 s")).await;
            return None;
        }
    };
    match protocol::decode_agent_message(text.as_str()) {
        Ok(Incoming::Known(AgentMessage::Hello {
            protocol,
            agent_version,
            hostname,
            docker_version,
            compose_version,
            active_deployments,
            recipient,
            capabilities,
        })) => {
            if protocol != PROTOCOL_VERSION {
                tracing::warn!(
                    agent_id = agent.id,
                    protocol,
                    "agent speaks an unsupported protocol version"
                );
                let message = format!(
                    "this appliance speaks protocol {PROTOCOL_VERSION}, the agent speaks {protocol}: upgrade the agent \
                     (download it from this appliance)"
                );
                send_anyway(socket, error_frame(state, agent, "protocol_unsupported", message)).await;
                send_anyway(
                    socket,
                    close(1002, "unsupported protocol version: upgrade the agent"),
                )
                .await;
                return None;
            }
            let clip = |s: String| s.chars().take(200).collect::<String>();
            if let Some(r) = &recipient
                && r.parse::<age::x25519::Recipient>().is_err()
            {
                tracing::warn!(
                    agent_id = agent.id,
                    "agent's HELLO recipient is not an age X25519 recipient"
                );
                let message = "the HELLO recipient is not an age X25519 recipient (age1…)";
                send_anyway(socket, error_frame(state, agent, "bad_message", message)).await;
                send_anyway(socket, close(1002, "invalid HELLO recipient")).await;
                return None;
            }
            let hello = HelloInfo {
                agent_version: clip(agent_version),
                hostname: clip(hostname),
                docker_version: clip(docker_version),
                compose_version: clip(compose_version),
                recipient,
                // Known names only, so the stored list stays short whatever an agent sends.
                capabilities: capabilities
                    .into_iter()
                    .filter(|c| {
                        [
                            release::CAP_RELEASES,
                            release::CAP_RUNTIME,
                            stagely_protocol::operate::CAP_OPERATE,
                        ]
                        .contains(&c.as_str())
                    })
                    .collect(),
            };
            Some((hello, active_deployments))
        }
        _ => {
            tracing::warn!(agent_id = agent.id, "agent's first frame was not a HELLO");
            send_anyway(
                socket,
                error_frame(state, agent, "hello_required", "the first frame must be a HELLO"),
            )
            .await;
            send_anyway(socket, close(1002, "HELLO required")).await;
            None
        }
    }
}

/// Handle one text frame; `Err` carries the ERROR frame to answer a bad one with.
async fn handle_text(
    state: &AppState,
    agent: &AgentIdentity,
    text: &str,
    socket: &mut WebSocket,
) -> Result<(), Message> {
    let msg = match protocol::decode_agent_message(text) {
        Ok(Incoming::Known(msg)) => msg,
        Ok(Incoming::Unknown(kind)) => {
            tracing::warn!(agent_id = agent.id, kind = %kind.chars().take(40).collect::<String>(), "unknown message type from agent");
            return Err(error_frame(state, agent, "unknown_type", "unknown message type"));
        }
        Err(e) => {
            tracing::warn!(agent_id = agent.id, error = %e, "invalid frame from agent");
            return Err(error_frame(state, agent, "bad_message", e.to_string()));
        }
    };
    match msg {
        AgentMessage::Hello { .. } => Ok(()),
        AgentMessage::Log {
            deployment_id,
            seq,
            stream,
            line,
        } => service::on_log(state, agent, deployment_id, seq, stream, &line)
            .await
            .map_err(|e| refused(state, agent, &e)),
        AgentMessage::Status {
            deployment_id,
            status,
            services,
            error,
            commit,
            lines,
            release,
            applied,
        } => {
            service::check_line_count(state, deployment_id, lines);
            let report = service::StatusReport {
                outcome: status,
                services,
                error,
                commit,
                release,
                applied,
            };
            let ack = service::on_status(state, agent, deployment_id, report)
                .await
                .map_err(|e| refused(state, agent, &e))?;
            if ack {
                let frame = protocol::encode(&ServerMessage::Ack { deployment_id });
                send_anyway(socket, signed(state, agent, &frame)).await;
            }
            Ok(())
        }
        // Issue 14: what runs in the agent's compose project, compared with the last release.
        AgentMessage::Runtime {
            project,
            containers,
            truncated,
        } => match crate::runtime::ops::on_runtime(state, agent, project, containers, truncated).await {
            Ok(_) => Ok(()),
            Err(e @ crate::runtime::RuntimeError::WrongProject { .. }) => {
                tracing::warn!(agent_id = agent.id, error = %e, "agent reported another compose project: refused");
                Err(error_frame(state, agent, "wrong_project", e.to_string()))
            }
            Err(e) => {
                tracing::error!(agent_id = agent.id, error = %e, "cannot record an agent's runtime report");
                Err(error_frame(
                    state,
                    agent,
                    "server_error",
                    "the runtime report was not recorded",
                ))
            }
        },
        // Issue 15: answers to LOGS and ACTION, for the request's waiter (if it still waits).
        AgentMessage::ContainerLog {
            request_id,
            lines,
            dropped,
        } => {
            deliver(state, agent, request_id, Reply::Log { lines, dropped });
            Ok(())
        }
        AgentMessage::ContainerLogEnd {
            request_id,
            reason,
            error,
        } => {
            deliver(state, agent, request_id, Reply::LogEnd { reason, error });
            Ok(())
        }
        AgentMessage::ActionResult {
            request_id,
            ok,
            error,
        } => {
            deliver(state, agent, request_id, Reply::Action { ok, error });
            Ok(())
        }
        AgentMessage::Error { code, .. } => {
            // The message may quote compose output; only the code is logged.
            tracing::warn!(agent_id = agent.id, code = %code.chars().take(60).collect::<String>(), "agent reported an error");
            Ok(())
        }
    }
}

/// An answer for a request nobody waits on any more (the viewer left) is dropped quietly; one
/// the waiter is too slow for is dropped too (the log view says lines were lost).
fn deliver(state: &AppState, agent: &AgentIdentity, request_id: u64, reply: Reply) {
    if state.requests.deliver(agent.id, request_id, reply) == Delivery::Unknown {
        tracing::debug!(
            agent_id = agent.id,
            request_id,
            "an answer for no open request: dropped"
        );
    }
}

fn refused(state: &AppState, agent: &AgentIdentity, e: &service::NotAssigned) -> Message {
    tracing::warn!(
        agent_id = agent.id,
        deployment_id = e.0,
        "agent reported for a deployment that is not its own: refused"
    );
    error_frame(state, agent, "not_assigned", e.to_string())
}
