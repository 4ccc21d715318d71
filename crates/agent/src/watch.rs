//! The runtime watch (issue 14): the state of the compose project the appliance named in WATCH,
//! read from the engine ([`crate::engine`]) when WATCH arrives, after every deployment, and
//! whenever the engine reports a change to the project, for RUNTIME.
//!
//! Changes come from one long-running `docker events` child for that project's containers
//! (its own process group, recorded in the private runtime dir like a deployment's commands, so
//! it ends with a stopping agent and a restarted agent ends what a killed one left). A burst of
//! events is read once, [`DEBOUNCE`] after its first event. Nothing is read between events:
//! idle costs nothing but the child. If the child exits it is started again with backoff (and
//! the project read again once it is back); while it cannot run, the project is read at most
//! every [`FALLBACK_EVERY`].
//!
//! The watcher publishes every reading as a [`Snapshot`]; the connection sends RUNTIME only for
//! one that differs from the last it sent ([`Snapshot::differs_from`]), and always the first
//! after a (re)connect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::engine::{self, LABEL_PROJECT};
use super::{groups, process};
use stagely_protocol::release::MAX_RUNTIME_CONTAINERS;
use stagely_protocol::{AgentMessage, RuntimeContainer};

/// A burst of engine events is read once, this long after its first event.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// While the events child cannot run, the project is read at most this often.
pub const FALLBACK_EVERY: Duration = Duration::from_secs(30);
/// First wait before starting the events child again; doubled up to [`FALLBACK_EVERY`].
pub const RESTART_BASE: Duration = Duration::from_secs(1);
/// The events child's process group is recorded under this deployment id (never a real one:
/// the appliance's ids start at 1).
pub const EVENTS_RECORD_ID: i64 = 0;
/// Longest events line kept (the agent only needs to know one arrived).
const MAX_EVENT_LINE: usize = 64 * 1024;

/// The container events that can change what RUNTIME says (state, health, restarts, image,
/// config hash, name, existence). Healthcheck runs (`exec_*`) and the rest are left out, so a
/// healthy idle project wakes nobody; `health_status` is emitted only when the status changes.
pub const EVENTS: &[&str] = &[
    "create",
    "start",
    "restart",
    "stop",
    "die",
    "kill",
    "oom",
    "pause",
    "unpause",
    "destroy",
    "rename",
    "update",
    "health_status",
];

/// One reading of the watched project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub project: String,
    /// Ordered by service then name, at most [`MAX_RUNTIME_CONTAINERS`].
    pub containers: Vec<RuntimeContainer>,
    pub truncated: bool,
}

impl Snapshot {
    /// From the engine's reading, capped at [`MAX_RUNTIME_CONTAINERS`] (the first by service,
    /// then name).
    pub fn new(project: String, mut containers: Vec<RuntimeContainer>) -> Self {
        containers.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        let truncated = containers.len() > MAX_RUNTIME_CONTAINERS;
        containers.truncate(MAX_RUNTIME_CONTAINERS);
        Self {
            project,
            containers,
            truncated,
        }
    }

    /// Whether this reading is worth a RUNTIME after `last` (the last one sent on this
    /// connection, `None` right after a (re)connect).
    pub fn differs_from(&self, last: Option<&Snapshot>) -> bool {
        last != Some(self)
    }

    pub fn to_message(&self) -> AgentMessage {
        AgentMessage::Runtime {
            project: self.project.clone(),
            containers: self.containers.clone(),
            truncated: self.truncated,
        }
    }
}

enum Command {
    /// Watch this project from now on (a WATCH): read it at once.
    Watch(String),
    /// A deployment finished: read the project again.
    Refresh,
}

/// The running watcher: a task of its own, so a slow engine never holds up a deployment or
/// the connection.
pub struct Watcher {
    commands: mpsc::UnboundedSender<Command>,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Watcher {
    /// Start watching `project`; the events child's group is recorded under `runtime_dir`.
    pub fn start(project: String, runtime_dir: PathBuf) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let (tx, snapshots) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(project, runtime_dir, rx, tx, stop.clone()));
        Self {
            commands,
            snapshots,
            stop,
            task,
        }
    }

    /// Watch another project (or the same one again: it is read at once either way).
    pub fn watch(&self, project: String) {
        // The task ends only on stop, after which nobody calls this.
        let _ = self.commands.send(Command::Watch(project));
    }

    /// Read the project again (a deployment finished).
    pub fn refresh(&self) {
        let _ = self.commands.send(Command::Refresh);
    }

    /// The next reading, when one is published.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        match self.snapshots.changed().await {
            Ok(()) => self.snapshots.borrow_and_update().clone(),
            // The task is gone (stopped): nothing will come.
            Err(_) => std::future::pending().await,
        }
    }

    /// End the watch: the events child is killed (its whole group) and the task awaited.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The events child for `project`, and its stdout's lines.
struct Events {
    running: process::Running,
    lines: BufReader<tokio::process::ChildStdout>,
}

async fn start_events(project: &str, runtime_dir: &std::path::Path) -> std::io::Result<Events> {
    let mut cmd = process::command("docker");
    cmd.args(["events", "--filter"])
        .arg(format!("label={LABEL_PROJECT}={project}"))
        .args(["--filter", "type=container"]);
    for event in EVENTS {
        cmd.arg("--filter").arg(format!("event={event}"));
    }
    // The agent needs only to know that something happened, not what: the shortest line.
    cmd.args(["--format", "{{.Action}}"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut running =
        groups::scope(runtime_dir, EVENTS_RECORD_ID, async { process::spawn(&mut cmd) }).await?;
    let stdout = running
        .child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    Ok(Events {
        running,
        lines: BufReader::with_capacity(1024, stdout),
    })
}

/// The next line from the events child; `None` when it has exited (its stdout closed).
async fn next_event(events: &mut Option<(Events, Instant)>, buf: &mut Vec<u8>) -> Option<()> {
    let Some((e, _)) = events.as_mut() else {
        return std::future::pending().await;
    };
    buf.clear();
    process::read_line_capped(&mut e.lines, buf, MAX_EVENT_LINE)
        .await
        .map(|_| ())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Read the project and publish the reading; a failure is logged (the next trigger reads again).
async fn read(project: &str, out: &watch::Sender<Option<Arc<Snapshot>>>, last_read: &mut Instant) {
    *last_read = Instant::now();
    match engine::project_containers(project).await {
        Ok(containers) => {
            out.send_replace(Some(Arc::new(Snapshot::new(project.to_owned(), containers))));
        }
        Err(e) => tracing::warn!(project, error = %e, "cannot read the watched project's containers"),
    }
}

/// A child that ran this long before it exited was fine: the backoff starts over.
const RAN_WELL: Duration = Duration::from_secs(60);

async fn run(
    mut project: String,
    runtime_dir: PathBuf,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: watch::Sender<Option<Arc<Snapshot>>>,
    stop: CancellationToken,
) {
    let mut events: Option<(Events, Instant)> = None;
    let mut restart_delay = RESTART_BASE;
    // When to try starting the events child (now, at first: below).
    let mut restart_at = None;
    // A burst of events being gathered: when to read it.
    let mut debounce_at: Option<Instant> = None;
    // The child came back after failing: read once it has stayed up [`DEBOUNCE`] (one that
    // fails again at once is not back, and costs no read).
    let mut back_at: Option<Instant> = None;
    let mut failing = false;
    let mut last_read = Instant::now();
    let mut buf = Vec::new();
    // The child first, then the first reading: a change in between is an event, not a miss.
    match start_events(&project, &runtime_dir).await {
        Ok(e) => events = Some((e, Instant::now())),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start docker events");
            failing = true;
            restart_at = Some(Instant::now() + restart_delay);
            restart_delay = (restart_delay * 2).min(FALLBACK_EVERY);
        }
    }
    read(&project, &out, &mut last_read).await;
    loop {
        // Only while the child is down: no steady polling otherwise.
        let fallback_at = (events.is_none() && failing).then(|| last_read + FALLBACK_EVERY);
        tokio::select! {
            () = stop.cancelled() => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Watch(p)) => {
                    if p != project {
                        tracing::info!(project = %p, "watching another compose project");
                        project = p;
                        // The child filters by project: a new one for the new project, started
                        // before the reading below.
                        events = None;
                        back_at = None;
                        restart_delay = RESTART_BASE;
                        restart_at = None;
                        match start_events(&project, &runtime_dir).await {
                            Ok(e) => events = Some((e, Instant::now())),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot start docker events");
                                failing = true;
                                restart_at = Some(Instant::now() + restart_delay);
                                restart_delay = (restart_delay * 2).min(FALLBACK_EVERY);
                            }
                        }
                    }
                    debounce_at = None;
                    read(&project, &out, &mut last_read).await;
                }
                Some(Command::Refresh) => {
                    debounce_at = None;
                    read(&project, &out, &mut last_read).await;
                }
            },
            line = next_event(&mut events, &mut buf) => match line {
                Some(()) => {
                    debounce_at.get_or_insert_with(|| Instant::now() + DEBOUNCE);
                }
                None => {
                    if let Some((mut e, started)) = events.take() {
                        let status = e.running.wait().await;
                        if started.elapsed() >= RAN_WELL {
                            restart_delay = RESTART_BASE;
                        }
                        tracing::warn!(?status, retry_in_ms = restart_delay.as_millis() as u64, "docker events ended; starting it again");
                    }
                    back_at = None;
                    failing = true;
                    restart_at = Some(Instant::now() + restart_delay);
                    restart_delay = (restart_delay * 2).min(FALLBACK_EVERY);
                }
            },
            () = sleep_until(debounce_at) => {
                debounce_at = None;
                read(&project, &out, &mut last_read).await;
            }
            () = sleep_until(back_at) => {
                back_at = None;
                failing = false;
                // What changed while it was down.
                read(&project, &out, &mut last_read).await;
            }
            () = sleep_until(restart_at) => {
                restart_at = None;
                match start_events(&project, &runtime_dir).await {
                    Ok(e) => {
                        events = Some((e, Instant::now()));
                        if failing {
                            back_at = Some(Instant::now() + DEBOUNCE);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = restart_delay.as_millis() as u64, "cannot start docker events");
                        failing = true;
                        restart_at = Some(Instant::now() + restart_delay);
                        restart_delay = (restart_delay * 2).min(FALLBACK_EVERY);
                    }
                }
            }
            () = sleep_until(fallback_at) => {
                read(&project, &out, &mut last_read).await;
            }
        }
    }
    if let Some((mut e, _)) = events.take() {
        // Its whole group, and the leader reaped, before the watcher says it stopped.
        let _ = e.running.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(service: &str, name: &str, state: &str) -> RuntimeContainer {
        RuntimeContainer {
            service: service.into(),
            name: name.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_change_or_a_new_connection_is_sent() {
        let a = Snapshot::new("p".into(), vec![container("web", "p-web-1", "running")]);
        assert!(
            a.differs_from(None),
            "the first after a (re)connect is always sent"
        );
        assert!(!a.differs_from(Some(&a.clone())));
        let stopped = Snapshot::new("p".into(), vec![container("web", "p-web-1", "exited")]);
        assert!(stopped.differs_from(Some(&a)));
        let mut restarted = a.clone();
        restarted.containers[0].restarts = 1;
        assert!(restarted.differs_from(Some(&a)));
        let elsewhere = Snapshot::new("q".into(), a.containers.clone());
        assert!(elsewhere.differs_from(Some(&a)));
        assert!(Snapshot::new("p".into(), vec![]).differs_from(Some(&a)));
    }

    #[test]
    fn snapshots_are_ordered_and_capped() {
        let many: Vec<RuntimeContainer> = (0..MAX_RUNTIME_CONTAINERS + 3)
            .rev()
            .map(|i| container(if i % 2 == 0 { "b" } else { "a" }, &format!("c{i:04}"), "running"))
            .collect();
        let s = Snapshot::new("p".into(), many);
        assert!(s.truncated);
        assert_eq!(s.containers.len(), MAX_RUNTIME_CONTAINERS);
        assert_eq!(
            (s.containers[0].service.as_str(), s.containers[0].name.as_str()),
            ("a", "c0001")
        );
        let AgentMessage::Runtime {
            truncated,
            containers,
            ..
        } = s.to_message()
        else {
            unreachable!()
        };
        assert!(truncated && containers.len() == MAX_RUNTIME_CONTAINERS);
        assert!(!Snapshot::new("p".into(), vec![container("a", "x", "running")]).truncated);
    }
}
