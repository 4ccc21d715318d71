//! How the agent starts the few commands it runs (git, compose, docker): always an argument
//! list, never a shell string; stdin closed; in a process group of its own, recorded while a
//! deployment's command runs and killed whole if the deployment is dropped ([`crate::groups`]);
//! and without the agent's own `STAGELY_AGENT_*` variables, so a compose file's `${…}` cannot
//! read the agent token.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::{LogLine, LogSink, groups};
use stagely_protocol::LogStream;
use stagely_protocol::mask::Masker;

/// Longest line forwarded as one LOG frame, its cut marker included (frames are capped at 1 MiB).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// How much of one line is held for masking before it is cut to [`MAX_LINE_BYTES`]; the rest of
/// a longer line is read and dropped. A secret (at most 64 KiB; its longest encoded form, JSON
/// `\uXXXX`, at most 6x that) that begins before the cut ends within this, so it is masked
/// whole before the cut.
pub const MAX_READ_LINE_BYTES: usize = 1024 * 1024;

/// A command with the agent's hygiene applied. Start it with [`spawn`] (or the helpers below),
/// which records its group and kills the whole group if it is dropped while running.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // Its own process group (pgid = its pid), so everything it starts can be ended together,
    // by this agent or, after a crash, by the next one.
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STAGELY_AGENT_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A started command: its child, its process group, and (inside a deployment) the group's
/// record. Dropped before the command was waited for, it kills the whole group.
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    pgid: Option<i32>,
    reaped: bool,
    _record: Option<groups::Recorded>,
}

/// Spawn `cmd` (made by [`command`]) and record its group.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Running> {
    let child = cmd.spawn()?;
    let pid = child.id();
    let program = Path::new(cmd.as_std().get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = pid.and_then(|pid| groups::record(pid, &program));
    Ok(Running {
        child,
        pgid: pid.and_then(|p| i32::try_from(p).ok()),
        reaped: false,
        _record: record,
    })
}

impl Running {
    pub fn pgid(&self) -> Option<i32> {
        self.pgid
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait().await?;
        self.reaped = true;
        Ok(status)
    }

    /// Kill the whole group now and reap the leader.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.kill_group();
        self.child.kill().await?;
        self.reaped = true;
        Ok(())
    }

    fn kill_group(&self) {
        // While the leader is not reaped its pid (the pgid) cannot be reused: this signals only
        // our own group.
        if let Some(pgid) = self.pgid.filter(|_| !self.reaped)
            && let Err(e) = groups::signal_group(pgid, rustix::process::Signal::KILL)
            && e.raw_os_error() != Some(3)
        {
            tracing::warn!(pgid, error = %e, "cannot kill a command's process group");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// What a streamed command left behind.
#[derive(Debug)]
pub struct Streamed {
    pub status: std::process::ExitStatus,
    /// The last lines of its output (both streams, masked), for error messages.
    pub tail: Vec<String>,
}

impl Streamed {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `exit code N` or `killed by a signal`.
    pub fn describe_exit(&self) -> String {
        match self.status.code() {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".into(),
        }
    }
}

/// Run `cmd`, sending each stdout/stderr line to `log` (masked) as soon as it is printed.
pub async fn run_streamed(
    mut cmd: Command,
    masker: &Masker,
    log: &LogSink,
    keep_tail: usize,
) -> std::io::Result<Streamed> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = spawn(&mut cmd)?;
    let stdout = running.child.stdout.take();
    let stderr = running.child.stderr.take();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ReadLine>();
    let readers = async {
        tokio::join!(
            pump(stdout, LogStream::Stdout, tx.clone()),
            pump(stderr, LogStream::Stderr, tx)
        )
    };
    let mut tail = std::collections::VecDeque::with_capacity(keep_tail + 1);
    let forward = async {
        while let Some(line) = rx.recv().await {
            // Masked before it is cut, so a secret across the cut is still recognised whole.
            let masked = masker.mask_and_cut(&line.line, MAX_LINE_BYTES, line.len);
            if keep_tail > 0 {
                if tail.len() == keep_tail {
                    tail.pop_front();
                }
                tail.push_back(masked.clone());
            }
            // A closed sink: the deployment's reader is gone (agent stopping); nothing to send to.
            let _ = log.send(LogLine {
                stream: line.stream,
                line: masked,
            });
        }
    };
    tokio::join!(readers, forward);
    let status = running.wait().await?;
    Ok(Streamed {
        status,
        tail: tail.into_iter().collect(),
    })
}

/// One line as read: at most [`MAX_READ_LINE_BYTES`] of it, and its whole length.
struct ReadLine {
    stream: LogStream,
    line: String,
    len: usize,
}

async fn pump(
    reader: Option<impl AsRead>,
    stream: LogStream,
    tx: tokio::sync::mpsc::UnboundedSender<ReadLine>,
) {
    let Some(reader) = reader else { return };
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let Some(len) = read_line_capped(&mut reader, &mut buf, MAX_READ_LINE_BYTES).await else {
            return;
        };
        let dropped = len > buf.len();
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        // The receiver stops only when the command is over: a late line has no reader.
        let _ = tx.send(ReadLine {
            stream,
            // Its line ending included when part of it was dropped: close enough for the marker.
            len: if dropped { len } else { buf.len() },
            line,
        });
    }
}

/// Read up to and including the next `\n` (split on \n only; compose's progress output uses \r
/// within a line, kept as is), keeping at most `max` bytes in `buf` and dropping the rest.
/// Returns the line's whole length, `None` at the end of the stream (or on a read error).
pub(crate) async fn read_line_capped(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> Option<usize> {
    let mut len = 0usize;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(_) => return (len > 0).then_some(len),
        };
        if chunk.is_empty() {
            return (len > 0).then_some(len);
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len()).min(take);
        buf.extend_from_slice(&chunk[..room]);
        len += take;
        reader.consume(take);
        if done {
            return Some(len);
        }
    }
}

/// Marker trait so `pump` takes either child pipe.
pub trait AsRead: AsyncRead + Unpin {}
impl<T: AsyncRead + Unpin> AsRead for T {}

/// Cut `s` to at most `max` bytes on a char boundary, saying so.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut at {max} bytes]", &s[..end])
}

/// Run a short command to completion, capturing its output (not streamed).
pub async fn output(cmd: Command) -> std::io::Result<std::process::Output> {
    output_within(cmd, u64::MAX)
        .await?
        .ok_or_else(|| std::io::Error::other("output cap reached"))
}

/// Like [`output`], but reading at most `max` bytes of each stream: a command printing more is
/// killed and reported as `Ok(None)`, so its output cannot fill the agent's memory.
pub async fn output_capped(cmd: Command, max: usize) -> std::io::Result<Option<std::process::Output>> {
    output_within(cmd, max as u64).await
}

async fn output_within(mut cmd: Command, max: u64) -> std::io::Result<Option<std::process::Output>> {
    use tokio::io::AsyncReadExt;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = spawn(&mut cmd)?;
    let read = |pipe: Option<Box<dyn AsRead + Send>>| async move {
        let mut buf = Vec::new();
        if let Some(pipe) = pipe {
            pipe.take(max.saturating_add(1)).read_to_end(&mut buf).await?;
        }
        Ok::<_, std::io::Error>(buf)
    };
    let stdout = running
        .child
        .stdout
        .take()
        .map(|p| Box::new(p) as Box<dyn AsRead + Send>);
    let stderr = running
        .child
        .stderr
        .take()
        .map(|p| Box::new(p) as Box<dyn AsRead + Send>);
    let (stdout, stderr) = tokio::try_join!(read(stdout), read(stderr))?;
    if stdout.len() as u64 > max || stderr.len() as u64 > max {
        running.kill().await?;
        return Ok(None);
    }
    let status = running.wait().await?;
    Ok(Some(std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_streamed_masked_and_tailed() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let masker = Masker::new(["hunter2"]);
        let mut cmd = command("sh");
        cmd.args(["-c", "echo one; echo 'pw hunter2' >&2; printf 'no newline'"]);
        let out = run_streamed(cmd, &masker, &tx, 2).await.unwrap();
        assert!(out.success());
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        assert_eq!(lines.len(), 3);
        assert!(
            lines
                .iter()
                .any(|l| l.line == "pw ***" && l.stream == LogStream::Stderr)
        );
        assert!(lines.iter().all(|l| !l.line.contains("hunter2")));
        assert_eq!(out.tail.len(), 2);
    }

    #[tokio::test]
    async fn long_lines_are_masked_before_they_are_cut_and_memory_stays_bounded() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let secret = "canary-across-the-cut-0123456789";
        let masker = Masker::new([secret]);
        // The secret begins just before the cut; a 3 MiB line follows (more than is ever held).
        let script = format!(
            "head -c {} /dev/zero | tr '\\0' a; printf '{secret}'; head -c 3145728 /dev/zero | tr '\\0' b; echo; echo next",
            MAX_LINE_BYTES - 40
        );
        let mut cmd = command("sh");
        cmd.args(["-c", &script]);
        let out = run_streamed(cmd, &masker, &tx, 0).await.unwrap();
        assert!(out.success());
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.line);
        }
        assert_eq!(lines.len(), 2);
        assert!(lines[0].len() <= MAX_LINE_BYTES, "{}", lines[0].len());
        assert!(!lines[0].contains("canary"), "a cut secret shows");
        assert!(lines[0].contains(stagely_protocol::mask::CUT_MARKER));
        assert!(lines[0].ends_with(" bytes]"));
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert!(truncate("éééé", 3).starts_with('é'));
    }
}
