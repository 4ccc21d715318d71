//! The agent: runs on a target server, dials the appliance, and deploys what it is told to
//! (steps 4–7 of the deploy sequence in docs/design.md).
//!
//! - [`connection`]: the outbound WebSocket, reconnect with backoff, HELLO/LOG/STATUS/ACK.
//! - [`deploy`]: one deployment, start to finish: checkout, override, pull, up, verify, clean up.
//! - [`actions`]: ACTION (restart, stop, start, down) on the agent's own compose project.
//! - [`cancel`]: a deployment stopped on the appliance's CANCEL (SIGTERM, grace, SIGKILL).
//! - [`override_file`]: the Config Merger that turns secrets into `docker-compose.stagely.yml`.
//! - [`compose`], [`checkout`], [`verify`]: the only external commands the agent runs.
//! - [`ephemeral`]: the private tmpfs directory the override lives in, and its drop guard.
//! - [`groups`]: every command in a process group of its own, recorded while it runs, so no
//!   command outlives its agent (a restarted agent ends what a killed one left running).
//! - [`policy`], [`sources`]: the compose policy (what a compose model may ask of the host) and
//!   the confinement of every file compose reads to the checkout.
//! - [`identity`]: the age identity DEPLOY secrets are sealed to (end to end).
//! - [`results`]: the small on-disk record of finished deployments (no secrets).
//! - [`log_buffer`]: the LOG lines sent but not yet acknowledged, kept (spilled to the private
//!   runtime dir past a bound) and resent after a reconnect.
//! - [`reconnect`]: which server to dial next (replicas in turn) and the backoff before it.
//! - [`trust`]: the pinned appliance key; every server frame must be signed by it (issue 11).
//!
//! The agent links no server code: it shares only [`stagely_protocol`] with the appliance.

pub mod actions;
pub mod cancel;
pub mod checkout;
pub mod compose;
pub mod config;
pub mod connection;
pub mod container_logs;
pub mod deploy;
pub mod engine;
pub mod ephemeral;
pub mod groups;
pub mod identity;
pub mod log_buffer;
pub mod override_file;
pub mod policy;
pub mod process;
pub mod reconnect;
pub mod results;
pub mod sources;
pub mod transport;
pub mod trust;
pub mod verify;
pub mod watch;

use stagely_protocol::LogStream;

/// One line of deploy output, on its way to the appliance as a `LOG` frame. Already masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

/// Where a deployment sends its output. Unbounded on purpose: a deployment keeps running while
/// the connection is down, and its lines wait here to be sent after the reconnect.
pub type LogSink = tokio::sync::mpsc::UnboundedSender<LogLine>;

/// Send one line the agent itself writes ("pulling images", "verifying").
pub(crate) fn agent_line(log: &LogSink, line: impl Into<String>) {
    // A closed sink means nobody listens any more (test finished, agent stopping): nothing to do.
    let _ = log.send(LogLine {
        stream: LogStream::Agent,
        line: line.into(),
    });
}
