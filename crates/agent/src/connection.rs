//! The Connection Manager: dial the appliance, say HELLO, run what it sends, report, and dial
//! again forever with exponential backoff and full jitter when the connection drops.
//!
//! [`Agent::session`] is generic over `Sink`/`Stream`, so the protocol (HELLO, LOG ordering,
//! LOG lines kept until LOG_ACK and resent, STATUS kept until ACK, repeated DEPLOY, one deploy
//! at a time) is tested over channels.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LogLine;
use super::actions;
use super::cancel;
use super::compose::{self, Compose};
use super::config::Settings;
use super::deploy::Deployer;
use super::ephemeral::RuntimeDir;
use super::identity::{AgentIdentity, IdentityError};
use super::log_buffer::{self, LogBuffer};
pub use super::reconnect::{BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET_AFTER, Backoff, ServerRing};
use super::results::{DeployResult, Results};
use super::transport::{self, WsIn, WsOut};
use super::trust::{self, Trust, Verdict};
use super::watch::{Snapshot, Watcher};
use stagely_protocol::operate::CAP_OPERATE;
use stagely_protocol::release::{CAP_RELEASES, CAP_RUNTIME};
use stagely_protocol::{
    self as protocol, AgentMessage, Incoming, PROTOCOL_VERSION, ProjectSpec, ServerMessage,
};

/// The agent pings this often, and gives the connection up after [`IDLE_TIMEOUT`] of silence.
pub const PING_EVERY: Duration = Duration::from_secs(30);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(95);

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot create the work directory {path}: {source}")]
    WorkDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Private(#[from] super::ephemeral::EphemeralError),
    #[error(transparent)]
    Results(#[from] super::results::ResultsError),
    #[error(transparent)]
    Compose(#[from] super::compose::ComposeError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
}

/// What HELLO says about this machine.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    pub hostname: String,
    pub docker_version: String,
    pub compose_version: String,
}

impl HostInfo {
    /// Informational only (shown on the Agents page): what cannot be read is left empty.
    pub async fn gather(compose: &Compose) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Self {
            hostname,
            docker_version: compose::docker_version().await.unwrap_or_default(),
            compose_version: compose.version().await.unwrap_or_default(),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    Disconnected(String),
    Shutdown,
}

struct Running {
    id: i64,
    log_rx: mpsc::UnboundedReceiver<LogLine>,
    handle: JoinHandle<DeployResult>,
    /// Fired by the appliance's CANCEL ([`super::cancel`]).
    cancel: CancellationToken,
    /// Set as `docker compose up` starts ([`Deployer::run_tracked`]).
    applied: Arc<AtomicBool>,
}

enum Event {
    Log(LogLine),
    Done,
}

/// The agent's state across connections: the running deployment, the results record, the log
/// lines not yet acknowledged, and which appliance key it obeys.
pub struct Agent {
    deployer: Arc<Deployer>,
    results: Arc<Mutex<Results>>,
    current: Option<Running>,
    /// Sent-but-unacknowledged LOG lines of every deployment whose STATUS is not acknowledged.
    logs: HashMap<i64, LogBuffer>,
    spill_dir: PathBuf,
    host: HostInfo,
    identity: Arc<AgentIdentity>,
    trust: Trust,
    /// The runtime watch, started by the first WATCH ([`super::watch`]); it outlives
    /// connections, so what changed while disconnected is read and sent after the reconnect.
    watcher: Option<Watcher>,
    /// The project this connection's appliance asked for in WATCH, and the last RUNTIME sent
    /// for it on this connection (both forgotten at every (re)connect).
    watching: Option<String>,
    last_runtime: Option<Arc<Snapshot>>,
    /// Container logs being sent (LOGS, issue 15); all end with their connection.
    log_streams: super::container_logs::Streams,
    /// The ACTION running ([`super::actions`]): its request id and task (one at a time).
    action: Option<(u64, JoinHandle<Result<(), String>>)>,
}

fn lock(results: &Mutex<Results>) -> MutexGuard<'_, Results> {
    // A panic while holding the lock leaves the record as it was on disk: keep using it.
    results.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    pub fn new(
        deployer: Deployer,
        results: Results,
        trust: Trust,
        host: HostInfo,
        identity: Arc<AgentIdentity>,
    ) -> Self {
        // What an earlier run of this agent spilled for a deployment it still has to report is
        // resent before that STATUS; any other spill is of no use to anybody.
        let spill_dir = deployer.runtime.path().join(log_buffer::SPILL_DIR);
        let mut logs = HashMap::new();
        for (id, _) in results.unacked() {
            if let Some(buffer) = LogBuffer::recover(id, &spill_dir) {
                tracing::info!(
                    deployment_id = id,
                    "log lines spilled by an earlier run will be resent"
                );
                logs.insert(id, buffer);
            }
        }
        LogBuffer::remove_others(&spill_dir, &logs.keys().copied().collect::<Vec<_>>());
        let log_streams = super::container_logs::Streams::new(deployer.runtime.path().join("logs-cwd"));
        Self {
            deployer: Arc::new(deployer),
            results: Arc::new(Mutex::new(results)),
            current: None,
            logs,
            spill_dir,
            host,
            identity,
            trust,
            watcher: None,
            watching: None,
            last_runtime: None,
            log_streams,
            action: None,
        }
    }

    pub fn set_host(&mut self, host: HostInfo) {
        self.host = host;
    }

    /// Deployment ids for HELLO: the running one and every unacknowledged result.
    pub fn active_deployments(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.results)
            .unacked()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if let Some(r) = &self.current
            && !ids.contains(&r.id)
        {
            ids.push(r.id);
        }
        ids.sort_unstable();
        ids
    }

    /// Whether a deployment is running.
    pub fn is_busy(&self) -> bool {
        self.current.is_some()
    }

    /// Stop the running deployment, if any: its task is dropped, so its override is deleted and
    /// its compose process killed. The record keeps it as interrupted (a FAIL on next start).
    pub async fn abort(&mut self) {
        if let Some(r) = self.current.take() {
            tracing::warn!(
                deployment_id = r.id,
                "stopping: the running deployment is interrupted"
            );
            r.handle.abort();
            // An aborted task answers `Cancelled`: waiting is only so its guards (the override's
            // removal) run before the process exits.
            let _ = r.handle.await;
        }
    }

    /// End the runtime watch, if any: its `docker events` child is killed with its group.
    pub async fn stop_watch(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.stop().await;
        }
    }

    /// One connection, from HELLO until it drops or `shutdown` fires. The container logs it
    /// asked for end with it (their commands killed).
    pub async fn session<S, R, SE, RE>(
        &mut self,
        sink: S,
        stream: R,
        shutdown: &CancellationToken,
    ) -> SessionEnd
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        R: Stream<Item = Result<WsIn, RE>> + Unpin,
        SE: std::fmt::Display,
        RE: std::fmt::Display,
    {
        let end = self.connected(sink, stream, shutdown).await;
        self.log_streams.stop_all().await;
        end
    }

    async fn connected<S, R, SE, RE>(
        &mut self,
        mut sink: S,
        mut stream: R,
        shutdown: &CancellationToken,
    ) -> SessionEnd
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        R: Stream<Item = Result<WsIn, RE>> + Unpin,
        SE: std::fmt::Display,
        RE: std::fmt::Display,
    {
        let hello = AgentMessage::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            hostname: self.host.hostname.clone(),
            docker_version: self.host.docker_version.clone(),
            compose_version: self.host.compose_version.clone(),
            active_deployments: Some(self.active_deployments()),
            recipient: Some(self.identity.recipient().to_owned()),
            capabilities: vec![
                CAP_RELEASES.to_owned(),
                CAP_RUNTIME.to_owned(),
                CAP_OPERATE.to_owned(),
            ],
        };
        // Every connection starts afresh: the appliance says in WATCH what to report, and the
        // first RUNTIME after it is sent whatever was sent before.
        self.watching = None;
        self.last_runtime = None;
        if let Err(e) = send(&mut sink, &hello).await {
            return SessionEnd::Disconnected(e);
        }
        // Results that finished while disconnected (or before a restart), each after the log
        // lines the appliance has not acknowledged. The running deployment's unacknowledged
        // lines go next; its STATUS after its remaining lines, from the loop below.
        let running = self.current.as_ref().map(|r| r.id);
        let pending = lock(&self.results).unacked();
        for (id, result) in pending.into_iter().filter(|(id, _)| Some(*id) != running) {
            if let Err(e) = self.resend_lines(id, &mut sink).await {
                return SessionEnd::Disconnected(e);
            }
            if let Err(e) = send(&mut sink, &self.status_of(id, &result)).await {
                return SessionEnd::Disconnected(e);
            }
        }
        if let Some(id) = running
            && let Err(e) = self.resend_lines(id, &mut sink).await
        {
            return SessionEnd::Disconnected(e);
        }

        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // A polite close; if the socket is already gone there is nobody to tell.
                    let _ = sink.send(WsOut::Close).await;
                    return SessionEnd::Shutdown;
                }
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None => return SessionEnd::Disconnected("connection closed".into()),
                        Some(Err(e)) => return SessionEnd::Disconnected(e.to_string()),
                        Some(Ok(WsIn::Close(reason))) => {
                            return SessionEnd::Disconnected(format!("server closed the connection: {reason}"));
                        }
                        Some(Ok(WsIn::Other)) => {}
                        Some(Ok(WsIn::Text(text))) => {
                            if let Err(e) = self.handle_frame(&text, &mut sink).await {
                                return SessionEnd::Disconnected(e);
                            }
                        }
                    }
                }
                event = next_event(&mut self.current) => {
                    if let Err(e) = self.handle_event(event, &mut sink).await {
                        return SessionEnd::Disconnected(e);
                    }
                }
                message = self.log_streams.next() => {
                    if let Err(e) = send(&mut sink, &message).await {
                        return SessionEnd::Disconnected(e);
                    }
                }
                (request_id, result) = next_action(&mut self.action) => {
                    if let Err(e) = self.on_action_done(request_id, result, &mut sink).await {
                        return SessionEnd::Disconnected(e);
                    }
                }
                snapshot = next_snapshot(&mut self.watcher) => {
                    if let Err(e) = self.on_snapshot(snapshot, &mut sink).await {
                        return SessionEnd::Disconnected(e);
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > IDLE_TIMEOUT {
                        return SessionEnd::Disconnected(format!("nothing heard from the server for {IDLE_TIMEOUT:?}"));
                    }
                    if let Err(e) = sink.send(WsOut::Ping).await {
                        return SessionEnd::Disconnected(e.to_string());
                    }
                }
            }
        }
    }

    async fn handle_event<S, SE>(&mut self, event: Event, sink: &mut S) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        match event {
            Event::Log(line) => {
                let Some(r) = self.current.as_ref() else {
                    return Ok(());
                };
                // Kept (masked, as sent) until the appliance acknowledges it.
                let id = r.id;
                let spill_dir = &self.spill_dir;
                let msg = self
                    .logs
                    .entry(id)
                    .or_insert_with(|| LogBuffer::new(id, spill_dir))
                    .push(line.stream, line.line);
                send(sink, &msg).await
            }
            Event::Done => {
                let Some(r) = self.current.take() else {
                    return Ok(());
                };
                let result = match r.handle.await {
                    Ok(result) => result,
                    Err(e) => {
                        // The task panicked: its drop guard removed the override; record a FAIL.
                        tracing::error!(deployment_id = r.id, error = %e, "the deployment task crashed");
                        let result = DeployResult {
                            applied: r.applied.load(Ordering::Relaxed),
                            ..DeployResult::fail("the agent's deployment task crashed (see the agent log)")
                        };
                        if let Err(e) = lock(&self.results).finish(r.id, result.clone()) {
                            tracing::error!(deployment_id = r.id, error = %e, "cannot record the result");
                        }
                        result
                    }
                };
                tracing::info!(deployment_id = r.id, status = ?result.status, "deployment finished");
                // What runs now, read after every deployment (RUNTIME follows if it changed).
                if let Some(w) = &self.watcher {
                    w.refresh();
                }
                send(sink, &self.status_of(r.id, &result)).await
            }
        }
    }

    /// A reading of the watched project: RUNTIME when it is the project this connection's
    /// WATCH named and differs from the last sent.
    async fn on_snapshot<S, SE>(&mut self, snapshot: Arc<Snapshot>, sink: &mut S) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        if self.watching.as_deref() != Some(snapshot.project.as_str())
            || !snapshot.differs_from(self.last_runtime.as_deref())
        {
            return Ok(());
        }
        send(sink, &snapshot.to_message()).await?;
        self.last_runtime = Some(snapshot);
        Ok(())
    }

    /// ACTION: checked ([`actions::accept`]), then run in a task of its own; its ACTION_RESULT
    /// is sent when it ends (a refusal at once).
    async fn on_action<S, SE>(
        &mut self,
        request_id: u64,
        project: &str,
        action: stagely_protocol::operate::Action,
        service: Option<&str>,
        sink: &mut S,
    ) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        let running = self.current.as_ref().map(|r| r.id);
        let accepted = match actions::accept(
            self.watching.as_deref(),
            running,
            self.action.is_some(),
            project,
            action,
            service,
        ) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(request_id, action = action.as_str(), "ACTION refused: {why}");
                let msg = AgentMessage::ActionResult {
                    request_id,
                    ok: false,
                    error: Some(why),
                };
                return send(sink, &msg).await;
            }
        };
        tracing::info!(
            request_id,
            project = %accepted.project,
            action = action.as_str(),
            service = accepted.service.as_deref().unwrap_or("(all)"),
            "running an action"
        );
        let compose = self.deployer.compose.clone();
        let handle =
            tokio::spawn(async move { actions::run(&compose, &accepted, actions::ACTION_TIMEOUT).await });
        self.action = Some((request_id, handle));
        Ok(())
    }

    async fn on_action_done<S, SE>(
        &mut self,
        request_id: u64,
        result: Result<(), String>,
        sink: &mut S,
    ) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        match &result {
            Ok(()) => tracing::info!(request_id, "action done"),
            Err(e) => tracing::warn!(request_id, error = %e, "action failed"),
        }
        // What runs now, read at once (RUNTIME follows if it changed); docker events would tell
        // the watch too, this only makes it sooner and certain.
        if let Some(w) = &self.watcher {
            w.refresh();
        }
        let msg = AgentMessage::ActionResult {
            request_id,
            ok: result.is_ok(),
            error: result.err(),
        };
        send(sink, &msg).await
    }

    /// WATCH: report this project from now on (read at once, whether or not it changed).
    fn on_watch(&mut self, project: String) {
        tracing::info!(project = %project, "watching the compose project's containers");
        self.watching = Some(project.clone());
        // The first RUNTIME after a WATCH is sent even if it says what the last one did.
        self.last_runtime = None;
        match &self.watcher {
            Some(w) => w.watch(project),
            None => {
                self.watcher = Some(Watcher::start(project, self.deployer.runtime.path().to_owned()));
            }
        }
    }

    async fn handle_frame<S, SE>(&mut self, text: &str, sink: &mut S) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        // Nothing is decoded, let alone run, before the frame is proven to come from the pinned
        // appliance key and to be addressed to this agent (issue 11).
        let opened = match self.trust.check(text) {
            Verdict::Accept(opened) => opened,
            Verdict::Refuse {
                reason,
                deployment_id,
            } => {
                tracing::warn!(deployment_id, "{reason}");
                return match deployment_id {
                    // The deployment fails with the reason (not recorded: a forged frame must not
                    // decide what a real DEPLOY of that id gets later).
                    Some(id) => send(sink, &DeployResult::fail(reason).to_status(id)).await,
                    None => send(sink, &refusal("frame_refused", reason)).await,
                };
            }
        };
        match protocol::decode_server_message(opened.message()) {
            Ok(Incoming::Known(ServerMessage::Deploy {
                deployment_id,
                project,
                sealed_secrets,
            })) => {
                self.on_deploy(deployment_id, opened.at_ms, project, &sealed_secrets, sink)
                    .await
            }
            Ok(Incoming::Known(ServerMessage::Ack { deployment_id })) => {
                if let Err(e) = lock(&self.results).ack(deployment_id) {
                    tracing::error!(deployment_id, error = %e, "cannot record the ACK");
                }
                // The STATUS is stored after every line before it: none is needed any more.
                if let Some(buffer) = self.logs.remove(&deployment_id) {
                    buffer.discard();
                }
                Ok(())
            }
            Ok(Incoming::Known(ServerMessage::Cancel { deployment_id })) => {
                self.on_cancel(deployment_id, sink).await
            }
            Ok(Incoming::Known(ServerMessage::LogAck { deployment_id, seq })) => {
                if let Some(buffer) = self.logs.get_mut(&deployment_id) {
                    buffer.ack(seq);
                }
                Ok(())
            }
            Ok(Incoming::Known(ServerMessage::Error { code, message })) => {
                tracing::warn!(%code, %message, "the server reported an error");
                Ok(())
            }
            // Its chain was followed (or not needed) by the trust check.
            Ok(Incoming::Known(ServerMessage::Rekey { .. })) => Ok(()),
            Ok(Incoming::Known(ServerMessage::Watch { project })) => {
                self.on_watch(project);
                Ok(())
            }
            // Issue 15: container logs (crate::container_logs).
            Ok(Incoming::Known(ServerMessage::Logs {
                request_id,
                project,
                service,
                tail,
                follow,
                follow_secs,
                sealed_secrets,
            })) => {
                let request = super::container_logs::LogRequest {
                    request_id,
                    project,
                    service,
                    tail,
                    follow,
                    follow_secs,
                };
                self.on_logs(request, &sealed_secrets, sink).await
            }
            Ok(Incoming::Known(ServerMessage::LogsStop { request_id })) => {
                self.log_streams.stop(request_id);
                Ok(())
            }
            Ok(Incoming::Known(ServerMessage::Action {
                request_id,
                project,
                action,
                service,
            })) => {
                self.on_action(request_id, &project, action, service.as_deref(), sink)
                    .await
            }
            Ok(Incoming::Unknown(kind)) => {
                tracing::debug!(%kind, "ignoring a message type this agent does not know");
                Ok(())
            }
            Err(e) => {
                // Only the kind of error: serde's reason can quote the frame, which may be a
                // DEPLOY full of secrets.
                let what = match &e {
                    protocol::DecodeError::TooLarge(n) => format!("a frame of {n} bytes is too large"),
                    protocol::DecodeError::NotAMessage => "a frame is not a protocol message".into(),
                    protocol::DecodeError::Invalid { kind, .. } => format!("an invalid {kind} message"),
                };
                tracing::warn!("cannot decode a frame from the server: {what}");
                Ok(())
            }
        }
    }

    /// LOGS: refused with a reason (one CONTAINER_LOG_END `failed`) unless it is for the watched
    /// project, a service name, within the limits and its secrets open; else streamed.
    async fn on_logs<S, SE>(
        &mut self,
        request: super::container_logs::LogRequest,
        sealed_secrets: &str,
        sink: &mut S,
    ) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        let request_id = request.request_id;
        let open = self.log_streams.open();
        let refused =
            super::container_logs::refusal(&request, self.watching.as_deref(), open).or_else(|| {
                match self
                    .identity
                    .open_logs(sealed_secrets, request_id, &request.project)
                {
                    Ok(secrets) => {
                        let masker =
                            stagely_protocol::mask::Masker::new(secrets.iter().map(|s| s.value.as_str()));
                        self.log_streams
                            .start(&self.deployer.compose, request.clone(), masker);
                        None
                    }
                    // The DEPLOY wording of the error, said of this request.
                    Err(e) => Some(format!(
                        "refused: {}",
                        e.to_string().replace("DEPLOY's", "LOGS request's")
                    )),
                }
            });
        match refused {
            None => Ok(()),
            Some(error) => {
                tracing::warn!(request_id, "LOGS {error}");
                let end = AgentMessage::ContainerLogEnd {
                    request_id,
                    reason: stagely_protocol::operate::LogEnd::Failed,
                    error: Some(error),
                };
                send(sink, &end).await
            }
        }
    }

    async fn on_deploy<S, SE>(
        &mut self,
        deployment_id: i64,
        signed_at: i64,
        project: ProjectSpec,
        sealed_secrets: &str,
        sink: &mut S,
    ) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        let now = trust::now_ms();
        // A copy of a frame already received, or one too old: never run. Not a STATUS, since the
        // deployment it copies may be running or done; the appliance is told with an ERROR.
        if let Some(reason) = self.trust.refuse_deploy(deployment_id, signed_at, now) {
            tracing::warn!(deployment_id, "{reason}");
            return send(sink, &refusal("deploy_refused", reason)).await;
        }
        let seen_before = self.trust.has_seen(deployment_id);
        if let Err(e) = self.trust.remember(deployment_id, signed_at, now) {
            // Without the list a replay later in the window could run: refuse rather than risk it.
            tracing::error!(deployment_id, error = %e, "cannot record the DEPLOY; refusing it");
            let result = DeployResult::fail(format!("the agent cannot record the deployment: {e}"));
            return send(sink, &result.to_status(deployment_id)).await;
        }
        let stored = lock(&self.results).get(deployment_id).cloned();
        if let Some(record) = stored {
            match record.result {
                Some(result) => {
                    tracing::info!(
                        deployment_id,
                        "DEPLOY for a finished deployment: resending its result"
                    );
                    if let Err(e) = lock(&self.results).reopen(deployment_id) {
                        tracing::error!(deployment_id, error = %e, "cannot update the record");
                    }
                    self.resend_lines(deployment_id, sink).await?;
                    return send(sink, &self.status_of(deployment_id, &result)).await;
                }
                None => {
                    tracing::info!(
                        deployment_id,
                        "DEPLOY for the deployment already running: ignored"
                    );
                    return Ok(());
                }
            }
        }
        if seen_before {
            // Run before and its result long acknowledged (and pruned from the record).
            let reason = format!("refused DEPLOY {deployment_id}: this agent already ran it");
            tracing::warn!(deployment_id, "{reason}");
            return send(sink, &refusal("deploy_refused", reason)).await;
        }
        if let Some(r) = &self.current {
            tracing::warn!(
                deployment_id,
                running = r.id,
                "DEPLOY refused: another deployment is running"
            );
            let result = DeployResult::fail(format!(
                "the agent is busy with deployment {}; only one deployment runs at a time",
                r.id
            ));
            if let Err(e) = lock(&self.results).finish(deployment_id, result.clone()) {
                tracing::error!(deployment_id, error = %e, "cannot record the result");
            }
            return send(sink, &result.to_status(deployment_id)).await;
        }
        let secrets = match self.identity.open(sealed_secrets, deployment_id, &project) {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::warn!(deployment_id, error = %e, "DEPLOY refused: its secrets cannot be opened");
                let result = DeployResult::fail(e.to_string());
                if let Err(e) = lock(&self.results).finish(deployment_id, result.clone()) {
                    tracing::error!(deployment_id, error = %e, "cannot record the result");
                }
                return send(sink, &result.to_status(deployment_id)).await;
            }
        };
        if let Err(e) = lock(&self.results).mark_running(deployment_id) {
            // Without the record a restart would forget this deployment; still run it.
            tracing::error!(deployment_id, error = %e, "cannot record the deployment start");
        }
        tracing::info!(
            deployment_id,
            project = %project.name,
            environment = %project.environment,
            secrets = secrets.len(),
            "deploying"
        );
        let (tx, log_rx) = mpsc::unbounded_channel();
        let deployer = Arc::clone(&self.deployer);
        let results = Arc::clone(&self.results);
        let cancel = CancellationToken::new();
        let cancelled = cancel.clone();
        let applied = Arc::new(AtomicBool::new(false));
        let applied_in_run = Arc::clone(&applied);
        let handle = tokio::spawn(async move {
            let run = deployer.run_tracked(deployment_id, &project, &secrets, &tx, &applied_in_run);
            let runtime = deployer.runtime.path();
            let mut result = cancel::run_until_cancelled(run, deployment_id, runtime, &tx, &cancelled).await;
            // A cancelled run was dropped: whether it had started `up` is in the flag.
            result.applied |= applied_in_run.load(Ordering::Relaxed);
            drop(secrets);
            // Recorded before the log channel closes, so a crash after this still reports it.
            if let Err(e) = lock(&results).finish(deployment_id, result.clone()) {
                tracing::error!(deployment_id, error = %e, "cannot record the result");
            }
            drop(tx);
            result
        });
        self.logs
            .insert(deployment_id, LogBuffer::new(deployment_id, &self.spill_dir));
        self.current = Some(Running {
            id: deployment_id,
            log_rx,
            handle,
            cancel,
            applied,
        });
        Ok(())
    }

    /// The appliance's CANCEL: the running deployment stops (its STATUS `CANCELLED` follows
    /// when it has); one already finished keeps its result; one this agent never started is
    /// answered `CANCELLED` at once, so the appliance's record ends.
    async fn on_cancel<S, SE>(&mut self, deployment_id: i64, sink: &mut S) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        if let Some(r) = self.current.as_ref().filter(|r| r.id == deployment_id) {
            tracing::info!(deployment_id, "CANCEL for the running deployment");
            r.cancel.cancel();
            return Ok(());
        }
        if lock(&self.results).get(deployment_id).is_some() {
            tracing::info!(
                deployment_id,
                "CANCEL for a deployment already ended: its result stands"
            );
            return Ok(());
        }
        tracing::info!(deployment_id, "CANCEL for a deployment this agent never started");
        send(sink, &DeployResult::cancelled().to_status(deployment_id)).await
    }

    /// A deployment's STATUS, with how many lines it sent when the agent knows.
    fn status_of(&self, deployment_id: i64, result: &DeployResult) -> AgentMessage {
        let mut msg = result.to_status(deployment_id);
        if let AgentMessage::Status { lines, .. } = &mut msg {
            *lines = self.logs.get(&deployment_id).and_then(LogBuffer::lines_sent);
        }
        msg
    }

    /// Resend, in seq order, every line of a deployment the appliance has not acknowledged.
    async fn resend_lines<S, SE>(&self, deployment_id: i64, sink: &mut S) -> Result<(), String>
    where
        S: Sink<WsOut, Error = SE> + Unpin,
        SE: std::fmt::Display,
    {
        let Some(buffer) = self.logs.get(&deployment_id) else {
            return Ok(());
        };
        let mut resent = 0u64;
        for chunk in buffer.unacked() {
            for kept in chunk {
                send(sink, &kept.to_message(deployment_id)).await?;
                resent += 1;
            }
        }
        if resent > 0 {
            tracing::info!(
                deployment_id,
                lines = resent,
                "resent the log lines the server had not acknowledged"
            );
        }
        Ok(())
    }
}

/// The running ACTION's end: its request id and outcome.
async fn next_action(
    action: &mut Option<(u64, JoinHandle<Result<(), String>>)>,
) -> (u64, Result<(), String>) {
    match action {
        Some((id, handle)) => {
            let result = handle
                .await
                .unwrap_or_else(|_| Err("the agent's action task crashed (see the agent log)".into()));
            let id = *id;
            *action = None;
            (id, result)
        }
        None => std::future::pending().await,
    }
}

async fn next_snapshot(watcher: &mut Option<Watcher>) -> Arc<Snapshot> {
    match watcher {
        Some(w) => match w.changed().await {
            Some(snapshot) => snapshot,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn next_event(current: &mut Option<Running>) -> Event {
    match current {
        Some(r) => match r.log_rx.recv().await {
            Some(line) => Event::Log(line),
            None => Event::Done,
        },
        None => std::future::pending().await,
    }
}

/// An ERROR frame telling the appliance what the agent refused and why.
fn refusal(code: &str, message: String) -> AgentMessage {
    AgentMessage::Error {
        code: code.into(),
        message,
    }
}

async fn send<S, SE>(sink: &mut S, msg: &AgentMessage) -> Result<(), String>
where
    S: Sink<WsOut, Error = SE> + Unpin,
    SE: std::fmt::Display,
{
    sink.send(WsOut::Text(protocol::encode(msg)))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

/// `stagely-agent run`: prepare, then connect and reconnect until `shutdown` resolves.
pub async fn run_agent(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConnectionError> {
    create_private_dir(&settings.work_dir)?;
    let runtime = RuntimeDir::prepare(&settings.work_dir, settings.runtime_dir.as_deref())?;
    let results = Results::open(&settings.work_dir)?;
    let trust = Trust::open(&settings.work_dir, &settings.token)?;
    let compose = match &settings.compose_command {
        Some(c) => Compose::configured(c).await?,
        None => Compose::detect().await,
    };
    let tls = transport::tls_config(settings.ca_file.as_deref())?;
    tracing::info!(
        servers = %settings.servers.join(", "),
        work_dir = %settings.work_dir.display(),
        private_dir = %runtime.path().display(),
        compose = %compose.display(),
        "stagely-agent {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let deployer = Deployer {
        compose: compose.clone(),
        work_dir: settings.work_dir.clone(),
        runtime,
        verify_wait: settings.verify_wait,
        health_timeout: settings.health_timeout,
        deploy_timeout: settings.deploy_timeout,
        policy: settings.policy.clone(),
    };
    let identity = AgentIdentity::load_or_create(&settings.work_dir)?;
    tracing::info!(recipient = %identity.recipient(), "agent identity (the appliance pins it at the first connection)");
    let mut agent = Agent::new(deployer, results, trust, HostInfo::default(), Arc::new(identity));

    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });

    // The cap is a setting (default [`BACKOFF_CAP`]): the fault suite keeps it short.
    let cap = settings.reconnect_max;
    let mut backoff = Backoff::new(BACKOFF_BASE.min(cap), cap);
    let mut ring = ServerRing::new(settings.servers.clone());
    while !stop.is_cancelled() {
        agent.set_host(HostInfo::gather(&compose).await);
        let started = Instant::now();
        let mut floor = Duration::ZERO;
        let Some(url) = ring.next_server().map(str::to_owned) else {
            break;
        };
        if let Some(host) = super::config::insecure_host(&url) {
            tracing::warn!(
                server = %url,
                host = %host,
                "--insecure-transport: connecting without encryption to a host that is not loopback; \
                 anyone on the path can read the agent token and every secret, and forge deployments"
            );
        }
        tracing::debug!(server = %url, "connecting");
        tokio::select! {
            () = stop.cancelled() => break,
            dialed = transport::connect(&url, &settings.token, Arc::clone(&tls)) => match dialed {
                Ok((sink, stream)) => {
                    tracing::info!(server = %url, "connected");
                    match agent.session(sink, stream, &stop).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Disconnected(why) => {
                            tracing::warn!(server = %url, reason = %why, "disconnected");
                        }
                    }
                    if started.elapsed() >= BACKOFF_RESET_AFTER {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    floor = e.retry_after().unwrap_or_default().min(cap);
                    tracing::warn!(server = %url, error = %e, "cannot connect to the server");
                }
            }
        }
        let delay = backoff.next_delay(rand::random::<f64>()).max(floor);
        tracing::info!(
            retry_in_ms = delay.as_millis() as u64,
            next_server = ring.peek().unwrap_or_default(),
            "reconnecting"
        );
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    agent.abort().await;
    agent.stop_watch().await;
    tracing::info!("stopped");
    Ok(())
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ConnectionError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ConnectionError::WorkDir {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
