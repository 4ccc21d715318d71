//! A simulated agent: a real WebSocket client on loopback speaking protocol v1 with a real token.
//!
//! It dials `/ws/agent` with `Authorization: Bearer`, says HELLO, answers the server's pings
//! (tungstenite sends the pong on its next read), takes DEPLOY frames and answers each at once
//! with a STATUS SUCCESS (a "fast-acking" agent), and when the connection drops it comes back
//! with the agent's own backoff: base 1 s, cap 60 s, full jitter, `Retry-After` as a floor, reset
//! after a minute connected. Given several servers it dials them in turn, as the agent does with
//! `--server` more than once: every attempt (after a failed dial or an ended connection) goes to
//! the next one. Every loop is bounded by a deadline and a stop token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use stagely_protocol::{
    self as protocol, AgentMessage, DeployOutcome, Incoming, ServerMessage, ServiceState,
};

pub type Ws = WebSocketStream<TcpStream>;

/// The agent's reconnect policy (docs/protocol.md, issue 3).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// A handshake that takes longer than this counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Milliseconds since the Unix epoch: the one clock the generator's processes share.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a dial failed.
#[derive(Debug)]
pub enum DialError {
    /// 503 with the server's `Retry-After`, if any.
    Busy(Option<Duration>),
    Other(String),
}

/// Dial `/ws/agent` with small client buffers (10,000 clients in a few processes must stay cheap).
pub async fn dial(addr: SocketAddr, token: &str) -> Result<Ws, DialError> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| DialError::Other(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut req = format!("ws://{addr}{}", protocol::AGENT_WS_PATH)
            .into_client_request()
            .map_err(|e| DialError::Other(e.to_string()))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| DialError::Other("token is not a header value".into()))?;
        req.headers_mut().insert("authorization", value);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(4 * protocol::MAX_FRAME_BYTES);
        match tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) if resp.status().as_u16() == 503 => {
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err(DialError::Busy(retry))
            }
            Err(tungstenite::Error::Http(resp)) => Err(DialError::Other(format!("HTTP {}", resp.status()))),
            Err(e) => Err(DialError::Other(e.to_string())),
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Other("handshake timed out".into())),
    }
}

pub fn hello_frame(name: &str) -> String {
    hello_offering(name, &[])
}

/// A HELLO offering `capabilities` (`runtime`: the appliance answers with WATCH).
pub fn hello_offering(name: &str, capabilities: &[&str]) -> String {
    json!({"type": "HELLO", "protocol": protocol::PROTOCOL_VERSION, "agent_version": "loadgen",
        "hostname": name, "docker_version": "0", "compose_version": "0", "active_deployments": [],
        "recipient": recipient(), "capabilities": capabilities})
    .to_string()
}

/// A RUNTIME report of a small stack (web ×2, db, worker) in `project`; `round` changes the
/// start times, so every round is a report that changed.
pub fn runtime_frame(project: &str, index: usize, round: u64) -> String {
    let container = |service: &str, n: usize| protocol::release::RuntimeContainer {
        service: service.into(),
        name: format!("{project}-{service}-{n}"),
        state: "running".into(),
        health: if service == "web" {
            "healthy".into()
        } else {
            String::new()
        },
        restarts: 0,
        image: format!("registry.example.com/shop/{service}:1.{index}"),
        image_id: format!("sha256:{:064x}", (index as u64) << 8 | n as u64),
        repo_digest: Some(format!(
            "registry.example.com/shop/{service}@sha256:{:064x}",
            index
        )),
        started_at: Some(format!("2026-01-01T00:{:02}:{:02}Z", round % 60, n)),
        config_hash: format!("{:064x}", index as u64 * 31 + n as u64),
    };
    protocol::encode(&AgentMessage::Runtime {
        project: project.to_owned(),
        containers: vec![
            container("db", 1),
            container("web", 1),
            container("web", 2),
            container("worker", 1),
        ],
        truncated: false,
    })
}

/// The age recipient every simulated agent offers. A constant, not a fresh identity: the bench
/// runs its phases in several processes against one appliance, which pins the first recipient an
/// agent offers and refuses any other. The load generator never opens the sealed secrets, so no
/// identity is kept (the appliance still seals every DEPLOY to this, as it would to a real agent).
const RECIPIENT: &str = "age19qp3pdun8mfgp75nz3dz86hrrw8frnztxffu3ulev6t778jjna9s6pfag0";

fn recipient() -> &'static str {
    RECIPIENT
}

pub fn log_frame(deployment_id: i64, seq: u64, line: &str) -> String {
    protocol::encode(&AgentMessage::Log {
        deployment_id,
        seq,
        stream: protocol::LogStream::Stdout,
        line: line.to_owned(),
    })
}

pub fn status_frame(deployment_id: i64) -> String {
    protocol::encode(&AgentMessage::Status {
        deployment_id,
        status: DeployOutcome::Success,
        services: vec![ServiceState {
            name: "web".into(),
            state: "running".into(),
            health: String::new(),
            exit_code: Some(0),
        }],
        error: None,
        commit: None,
        lines: None,
        applied: None,
        release: None,
    })
}

/// What an agent saw, reported to whoever drives it (in-process benchmarks).
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// A DEPLOY frame was read off the socket (`at`: this process's clock).
    Deploy { deployment_id: i64, at: Instant },
    /// The server acknowledged a STATUS.
    Ack { deployment_id: i64 },
}

/// Counters shared by all agents of one process.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub busy_503: AtomicU64,
    pub dial_errors: AtomicU64,
    pub deploys: AtomicU64,
    /// RUNTIME reports sent (agents with `runtime`).
    pub runtime_sent: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({"connected": get(&self.connected), "connects": get(&self.connects),
            "disconnects": get(&self.disconnects), "busy_503": get(&self.busy_503),
            "dial_errors": get(&self.dial_errors), "deploys": get(&self.deploys),
            "runtime_sent": get(&self.runtime_sent)})
    }
}

/// One simulated agent's identity and where it reports.
pub struct AgentSpec {
    pub index: usize,
    pub token: String,
    /// The servers, dialed in turn (the first one first); never empty.
    pub servers: Arc<[SocketAddr]>,
    pub stats: Arc<Stats>,
    /// Epoch ms of the current connection's start; 0 while disconnected.
    pub connected_since: Arc<AtomicU64>,
    /// Which of `servers` the current connection is to, counted from 1; 0 while disconnected.
    pub connected_to: Arc<AtomicU64>,
    pub events: Option<mpsc::UnboundedSender<Event>>,
    /// Told once, when the first connection is up.
    pub on_first_connect: Option<tokio::sync::oneshot::Sender<()>>,
    /// How long each deploy "runs" before its STATUS (zero: at once, as a fast-acking agent).
    pub hold: Duration,
    /// Offer `runtime` in HELLO and, each time this changes, send a RUNTIME of the project the
    /// appliance said to WATCH (the `runtime` group).
    pub runtime: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Full jitter: uniform in `[0, min(cap, base·2ⁿ)]`.
pub fn backoff_delay(attempt: u32, unit: f64) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Run the agent until `stop` fires or `deadline` passes: connect, serve, reconnect with backoff.
/// Mirrors the real agent's loop: dial at once, then before every retry wait
/// `max(full jitter, Retry-After)`.
pub async fn run(mut spec: AgentSpec, stop: CancellationToken, deadline: Instant) {
    let stats = spec.stats.clone();
    let mut attempt: u32 = 0;
    let mut turn = 0usize;
    while !stop.is_cancelled() && Instant::now() < deadline {
        let mut floor = Duration::ZERO;
        let addr = spec.servers[turn % spec.servers.len()];
        turn = turn.wrapping_add(1);
        match dial(addr, &spec.token).await {
            Ok(ws) => {
                let started = Instant::now();
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.fetch_add(1, Ordering::Relaxed);
                spec.connected_since.store(epoch_ms(), Ordering::Relaxed);
                spec.connected_to
                    .store(((turn - 1) % spec.servers.len()) as u64 + 1, Ordering::Relaxed);
                if let Some(tx) = spec.on_first_connect.take() {
                    let _ = tx.send(());
                }
                let _ = session(&spec, ws, &stop, deadline).await;
                spec.connected_since.store(0, Ordering::Relaxed);
                spec.connected_to.store(0, Ordering::Relaxed);
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() >= BACKOFF_RESET_AFTER {
                    attempt = 0;
                }
            }
            Err(DialError::Busy(retry)) => {
                stats.busy_503.fetch_add(1, Ordering::Relaxed);
                floor = retry.unwrap_or_default().min(BACKOFF_CAP);
            }
            Err(DialError::Other(why)) => {
                // The first few say what goes wrong; the count says how often.
                if stats.dial_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("loadgen: agent {} could not connect: {why}", spec.index);
                }
            }
        }
        let delay = backoff_delay(attempt, rand::random::<f64>()).max(floor);
        attempt = attempt.saturating_add(1);
        if !sleep_or_stop(delay, &stop, deadline).await {
            break;
        }
    }
}

/// Sleep unless stopped; false when the agent should end.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken, deadline: Instant) -> bool {
    let until = (Instant::now() + d).min(deadline);
    tokio::select! {
        () = tokio::time::sleep_until(until.into()) => Instant::now() < deadline,
        () = stop.cancelled() => false,
    }
}

/// One connection: HELLO, then report every DEPLOY (after `hold`) until the socket closes.
async fn session(spec: &AgentSpec, mut ws: Ws, stop: &CancellationToken, deadline: Instant) -> Result<()> {
    let name = format!("sim-{}", spec.index);
    let hello = match spec.runtime {
        Some(_) => hello_offering(&name, &[protocol::release::CAP_RUNTIME]),
        None => hello_frame(&name),
    };
    ws.send(Message::Text(hello.into())).await.context("HELLO")?;
    let mut rounds = spec.runtime.clone();
    if let Some(r) = &mut rounds {
        r.mark_unchanged();
    }
    let mut watching: Option<String> = None;
    // Deploys still "running": when each reports, oldest first.
    let mut running: std::collections::VecDeque<(Instant, i64)> = std::collections::VecDeque::new();
    loop {
        let next_due = running.front().map_or(deadline, |(at, _)| *at);
        let frame = tokio::select! {
            f = ws.next() => f,
            () = tokio::time::sleep_until(next_due.into()), if !running.is_empty() => {
                if let Some((_, deployment_id)) = running.pop_front() {
                    ws.send(Message::Text(status_frame(deployment_id).into()))
                        .await
                        .context("STATUS")?;
                }
                continue;
            }
            () = stop.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            () = tokio::time::sleep_until(deadline.into()) => return Ok(()),
            alive = async {
                match rounds.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            }, if rounds.is_some() => {
                if !alive {
                    rounds = None;
                    continue;
                }
                let round = rounds.as_ref().map_or(0, |r| *r.borrow());
                if let Some(project) = &watching {
                    ws.send(Message::Text(runtime_frame(project, spec.index, round).into()))
                        .await
                        .context("RUNTIME")?;
                    spec.stats.runtime_sent.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
            Some(Ok(_)) => continue,
        };
        let at = Instant::now();
        // Every server frame is a signed envelope (issue 11). The signature is checked as a real
        // agent would (that cost is part of the load); which key to pin is not this tool's concern.
        let Ok(opened) = protocol::signing::open(text.as_str()) else {
            continue;
        };
        match protocol::decode_server_message(opened.message()) {
            Ok(Incoming::Known(ServerMessage::Deploy { deployment_id, .. })) => {
                spec.stats.deploys.fetch_add(1, Ordering::Relaxed);
                if let Some(events) = &spec.events {
                    let _ = events.send(Event::Deploy { deployment_id, at });
                }
                if spec.hold.is_zero() {
                    ws.send(Message::Text(status_frame(deployment_id).into()))
                        .await
                        .context("STATUS")?;
                } else {
                    running.push_back((at + spec.hold, deployment_id));
                }
            }
            Ok(Incoming::Known(ServerMessage::Watch { project })) => watching = Some(project),
            Ok(Incoming::Known(ServerMessage::Ack { deployment_id })) => {
                if let Some(events) = &spec.events {
                    let _ = events.send(Event::Ack { deployment_id });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_recipient_is_one_the_appliance_can_seal_to() {
        let payload = stagely_protocol::SealedSecrets {
            deployment_id: 1,
            project: stagely_protocol::ProjectSpec {
                name: "p".into(),
                environment: "e".into(),
                repo_url: None,
                git_ref: "main".into(),
                compose_path: "/c.yml".into(),
                pull: Default::default(),
                compose_project: None,
                images: Default::default(),
            },
            secrets: Vec::new(),
        };
        assert!(stagely_agent::identity::seal(super::RECIPIENT, &payload).is_some());
        let hello: serde_json::Value = serde_json::from_str(&super::hello_frame("x")).unwrap();
        assert_eq!(hello["recipient"], super::RECIPIENT);
    }
}
