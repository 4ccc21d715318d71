//! Container logs on demand (issue 15): LOGS runs exactly
//! `docker compose -p <project> logs --no-color --timestamps --tail <N> [--follow] <service>`
//! (an argument list, never a shell; its own process group), for the compose project the
//! appliance named in WATCH only, and streams the lines back masked with the secrets the request
//! sealed, in CONTAINER_LOG batches, then one CONTAINER_LOG_END.
//!
//! Compose v2 serves `logs` by project name from the containers' labels, without the compose
//! file; it runs from an empty private directory so no compose file of the agent's own working
//! directory (or its parents) is picked up. Nothing of the lines is written to disk or to the
//! agent's log. The process group is killed on LOGS_STOP, at the time limit and when the
//! connection ends ([`Streams::stop_all`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::compose::Compose;
use super::process::{self, MAX_READ_LINE_BYTES, read_line_capped};
use stagely_protocol::AgentMessage;
use stagely_protocol::mask::Masker;
use stagely_protocol::operate::{
    ContainerLogLine, LogEnd, MAX_FOLLOW_SECS, MAX_LOG_BATCH, MAX_LOG_LINE, MAX_LOG_TAIL, is_service_name,
};

/// Most log streams one agent serves at once; the next LOGS is refused.
pub const MAX_STREAMS: usize = 8;
/// Most lines per second one stream forwards; beyond it lines are dropped and counted.
pub const MAX_LINES_PER_SEC: u64 = 2_000;
/// A batch is sent at least this often while lines come.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A tail without follow that takes longer than this is ended (`time_limit`).
pub const TAIL_TIMEOUT: Duration = Duration::from_secs(60);
/// A batch is sent before its lines pass this many bytes (frames are capped at 1 MiB).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// A LOGS request, as received.
#[derive(Debug, Clone)]
pub struct LogRequest {
    pub request_id: u64,
    pub project: String,
    pub service: String,
    pub tail: u32,
    pub follow: bool,
    pub follow_secs: u32,
}

/// Why a LOGS request is refused before anything runs; `None` when it may run. `watching` is
/// the compose project this connection's WATCH named, `open` the streams running now.
pub fn refusal(req: &LogRequest, watching: Option<&str>, open: usize) -> Option<String> {
    if watching != Some(req.project.as_str()) {
        return Some(format!(
            "refused: compose project {:?} is not the one this agent was asked to watch",
            req.project
        ));
    }
    if !is_service_name(&req.service) {
        return Some(
            "refused: the service is not a compose service name (letters, digits, '_', '.', '-', \
             starting with a letter or digit)"
                .into(),
        );
    }
    if req.tail == 0 || req.tail > MAX_LOG_TAIL {
        return Some(format!("refused: tail must be 1 to {MAX_LOG_TAIL} lines"));
    }
    if req.follow && (req.follow_secs == 0 || req.follow_secs > MAX_FOLLOW_SECS) {
        return Some(format!("refused: follow_secs must be 1 to {MAX_FOLLOW_SECS}"));
    }
    if open >= MAX_STREAMS {
        return Some(format!(
            "refused: this agent already sends {MAX_STREAMS} container logs, its most at once"
        ));
    }
    None
}

/// The argument list after the compose command itself (tested: exactly this, nothing more).
pub fn args(req: &LogRequest) -> Vec<String> {
    let mut args = vec![
        "-p".to_owned(),
        req.project.clone(),
        "logs".into(),
        "--no-color".into(),
        "--timestamps".into(),
        "--tail".into(),
        req.tail.to_string(),
    ];
    if req.follow {
        args.push("--follow".into());
    }
    args.push(req.service.clone());
    args
}

/// One line of `compose logs --no-color --timestamps`: `web-1  | 2024-…Z text`.
pub fn split_line(raw: &str) -> ContainerLogLine {
    let (container, rest) = match raw.split_once(" | ") {
        Some((c, rest)) => (c.trim().to_owned(), rest),
        None => match raw.split_once(" |") {
            Some((c, rest)) if rest.is_empty() => (c.trim().to_owned(), rest),
            _ => (String::new(), raw),
        },
    };
    let (at, line) = match rest.split_once(' ') {
        Some((ts, line)) if looks_like_time(ts) => (Some(ts.to_owned()), line),
        None if looks_like_time(rest) => (Some(rest.to_owned()), ""),
        _ => (None, rest),
    };
    ContainerLogLine {
        container,
        at,
        line: line.to_owned(),
    }
}

fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

/// The streams running now, and the channel their frames reach the connection through.
pub struct Streams {
    running: HashMap<u64, (CancellationToken, JoinHandle<()>)>,
    tx: mpsc::Sender<AgentMessage>,
    rx: mpsc::Receiver<AgentMessage>,
    /// An empty private directory the command runs in.
    cwd: PathBuf,
}

impl Streams {
    pub fn new(cwd: PathBuf) -> Streams {
        // Bounded: a slow connection slows the readers, which slow `compose logs` (the pipe).
        let (tx, rx) = mpsc::channel(32);
        Streams {
            running: HashMap::new(),
            tx,
            rx,
            cwd,
        }
    }

    /// Streams still running.
    pub fn open(&mut self) -> usize {
        self.running.retain(|_, (_, h)| !h.is_finished());
        self.running.len()
    }

    /// The next frame to send (pending forever when none comes).
    pub async fn next(&mut self) -> AgentMessage {
        match self.rx.recv().await {
            Some(m) => m,
            // `self.tx` lives as long as `self`: never closed.
            None => std::future::pending().await,
        }
    }

    /// Start a stream for a request [`refusal`] allowed.
    pub fn start(&mut self, compose: &Compose, req: LogRequest, masker: Masker) {
        let cancel = CancellationToken::new();
        let id = req.request_id;
        let task = run(
            compose.clone(),
            req,
            masker,
            self.cwd.clone(),
            cancel.clone(),
            self.tx.clone(),
        );
        let handle = tokio::spawn(task);
        self.running.insert(id, (cancel, handle));
    }

    /// LOGS_STOP: end the stream (its command's group killed); ignored when it already ended.
    pub fn stop(&mut self, request_id: u64) {
        if let Some((cancel, _)) = self.running.get(&request_id) {
            cancel.cancel();
        }
    }

    /// The connection ended: end every stream and forget what they had not sent (it belonged to
    /// that connection's requests).
    pub async fn stop_all(&mut self) {
        for (_, (cancel, _)) in self.running.iter() {
            cancel.cancel();
        }
        for (_, (_, handle)) in self.running.drain() {
            // Each task is woken by the cancel; none blocks on the channel while it is drained.
            let mut handle = handle;
            loop {
                tokio::select! {
                    _ = &mut handle => break,
                    _ = self.rx.recv() => {}
                }
            }
        }
        while self.rx.try_recv().is_ok() {}
    }
}

/// Lines gathered for the next CONTAINER_LOG, with the per-second rate cap.
struct Batch {
    request_id: u64,
    lines: Vec<ContainerLogLine>,
    bytes: usize,
    dropped: u64,
    window: Instant,
    in_window: u64,
}

impl Batch {
    fn push(&mut self, line: ContainerLogLine) {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.in_window = 0;
        }
        if self.in_window >= MAX_LINES_PER_SEC {
            self.dropped += 1;
            return;
        }
        self.in_window += 1;
        self.bytes += line.line.len() + line.container.len() + 64;
        self.lines.push(line);
    }

    fn full(&self) -> bool {
        self.lines.len() >= MAX_LOG_BATCH || self.bytes >= MAX_BATCH_BYTES
    }

    fn take(&mut self) -> Option<AgentMessage> {
        if self.lines.is_empty() && self.dropped == 0 {
            return None;
        }
        self.bytes = 0;
        Some(AgentMessage::ContainerLog {
            request_id: self.request_id,
            lines: std::mem::take(&mut self.lines),
            dropped: std::mem::take(&mut self.dropped),
        })
    }
}

async fn run(
    compose: Compose,
    req: LogRequest,
    masker: Masker,
    cwd: PathBuf,
    cancel: CancellationToken,
    tx: mpsc::Sender<AgentMessage>,
) {
    let request_id = req.request_id;
    let (reason, error) = stream(&compose, &req, &masker, &cwd, &cancel, &tx).await;
    tracing::info!(request_id, service = %req.service, reason = ?reason, "container log ended");
    let end = AgentMessage::ContainerLogEnd {
        request_id,
        reason,
        error: error.map(|e| masker.mask(&e)),
    };
    let _ = tx.send(end).await;
}

async fn stream(
    compose: &Compose,
    req: &LogRequest,
    masker: &Masker,
    cwd: &std::path::Path,
    cancel: &CancellationToken,
    tx: &mpsc::Sender<AgentMessage>,
) -> (LogEnd, Option<String>) {
    if let Err(e) = std::fs::create_dir_all(cwd) {
        return (
            LogEnd::Failed,
            Some(format!("cannot prepare the agent's log directory: {e}")),
        );
    }
    let mut cmd = compose.command();
    cmd.args(args(req))
        .current_dir(cwd)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = match process::spawn(&mut cmd) {
        Ok(r) => r,
        Err(e) => {
            return (
                LogEnd::Failed,
                Some(format!("cannot run {}: {e}", compose.display())),
            );
        }
    };
    tracing::info!(request_id = req.request_id, service = %req.service, tail = req.tail, follow = req.follow, "sending a container log");
    let stdout = running.child.stdout.take();
    let stderr = running.child.stderr.take();
    // The last lines compose printed on stderr, for the error (masked).
    let err_tail = async move {
        let mut tail = std::collections::VecDeque::new();
        let Some(stderr) = stderr else { return tail };
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        while read_line_capped(&mut reader, &mut buf, 4096).await.is_some() {
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            buf.clear();
            if tail.len() == 3 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail
    };
    let err_tail = tokio::spawn(err_tail);
    let limit = if req.follow {
        Duration::from_secs(u64::from(req.follow_secs))
    } else {
        TAIL_TIMEOUT
    };
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut batch = Batch {
        request_id: req.request_id,
        lines: Vec::new(),
        bytes: 0,
        dropped: 0,
        window: Instant::now(),
        in_window: 0,
    };
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut reader = stdout.map(BufReader::new);
    let mut buf = Vec::new();
    let ended = loop {
        let read = async {
            match reader.as_mut() {
                Some(r) => read_line_capped(r, &mut buf, MAX_READ_LINE_BYTES).await,
                None => None,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break Some(LogEnd::Stopped),
            () = &mut deadline => break Some(LogEnd::TimeLimit),
            _ = flush.tick() => {
                if let Some(m) = batch.take() && tx.send(m).await.is_err() {
                    break Some(LogEnd::Stopped);
                }
            }
            len = read => {
                let Some(len) = len else { break None };
                // Bytes the reading limit dropped from the line's end (0 for an ordinary line).
                let lost = len.saturating_sub(buf.len());
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let raw = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                let mut line = split_line(&raw);
                // Masked before it is cut, so a secret across the cut is still recognised whole.
                let whole = line.line.len() + lost;
                line.line = masker.mask_and_cut(&line.line, MAX_LOG_LINE, whole);
                line.container = masker.mask(&line.container);
                batch.push(line);
                if batch.full() && let Some(m) = batch.take() && tx.send(m).await.is_err() {
                    break Some(LogEnd::Stopped);
                }
            }
        }
    };
    if let Some(reason) = ended {
        // The whole group: compose and anything it started.
        let _ = running.kill().await;
        if let Some(m) = batch.take() {
            let _ = tx.send(m).await;
        }
        err_tail.abort();
        return (reason, None);
    }
    if let Some(m) = batch.take() {
        let _ = tx.send(m).await;
    }
    let status = running.wait().await;
    let tail = err_tail.await.unwrap_or_default();
    match status {
        Ok(s) if s.success() => (LogEnd::Done, None),
        Ok(_) => {
            let said: Vec<String> = tail.into_iter().collect();
            let said = if said.is_empty() {
                "no output".to_owned()
            } else {
                said.join(" / ")
            };
            (
                LogEnd::Failed,
                Some(format!("docker compose logs failed: {said}")),
            )
        }
        Err(e) => (
            LogEnd::Failed,
            Some(format!("cannot wait for docker compose logs: {e}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> LogRequest {
        LogRequest {
            request_id: 1,
            project: "shop-staging".into(),
            service: "web".into(),
            tail: 100,
            follow: false,
            follow_secs: 0,
        }
    }

    #[test]
    fn only_the_watched_project_a_service_name_and_the_limits_are_served() {
        assert_eq!(refusal(&req(), Some("shop-staging"), 0), None);
        assert!(refusal(&req(), None, 0).is_some());
        assert!(refusal(&req(), Some("other"), 0).is_some());
        for s in ["web;id", "../x", "--help", ""] {
            let r = LogRequest {
                service: s.into(),
                ..req()
            };
            assert!(refusal(&r, Some("shop-staging"), 0).is_some(), "{s}");
        }
        let big = LogRequest {
            tail: MAX_LOG_TAIL + 1,
            ..req()
        };
        assert!(refusal(&big, Some("shop-staging"), 0).unwrap().contains("5000"));
        let long = LogRequest {
            follow: true,
            follow_secs: MAX_FOLLOW_SECS + 1,
            ..req()
        };
        assert!(refusal(&long, Some("shop-staging"), 0).is_some());
        assert!(refusal(&req(), Some("shop-staging"), MAX_STREAMS).is_some());
    }

    #[test]
    fn the_command_is_exactly_compose_logs_of_one_service() {
        let f = LogRequest {
            follow: true,
            follow_secs: 600,
            ..req()
        };
        assert_eq!(
            args(&f),
            [
                "-p",
                "shop-staging",
                "logs",
                "--no-color",
                "--timestamps",
                "--tail",
                "100",
                "--follow",
                "web"
            ]
        );
        assert!(!args(&req()).contains(&"--follow".to_owned()));
    }

    #[test]
    fn lines_split_into_container_time_and_text() {
        let l = split_line("web-1  | 2026-12-02T02:31:53.183526377Z hello | world");
        assert_eq!(l.container, "web-1");
        assert_eq!(l.at.as_deref(), Some("2026-12-02T02:31:53.183526377Z"));
        assert_eq!(l.line, "hello | world");
        let empty = split_line("web-1  | 2026-12-02T02:31:53.183526377Z ");
        assert_eq!(empty.line, "");
        let odd = split_line("no prefix here");
        assert_eq!(
            (odd.container.as_str(), odd.at, odd.line.as_str()),
            ("", None, "no prefix here")
        );
    }

    #[test]
    fn beyond_the_rate_lines_are_dropped_and_counted() {
        let mut b = Batch {
            request_id: 3,
            lines: Vec::new(),
            bytes: 0,
            dropped: 0,
            window: Instant::now(),
            in_window: 0,
        };
        for i in 0..(MAX_LINES_PER_SEC + 10) {
            b.push(ContainerLogLine {
                container: "web-1".into(),
                at: None,
                line: i.to_string(),
            });
        }
        assert_eq!(b.lines.len() as u64, MAX_LINES_PER_SEC);
        let Some(AgentMessage::ContainerLog { dropped, .. }) = b.take() else {
            panic!()
        };
        assert_eq!(dropped, 10);
        assert!(b.take().is_none());
    }
}
