//! Nothing lost under kill -9: every LOG line a deployment sent is kept until the appliance says
//! it is committed (`LOG_ACK`), and the rest is resent after a reconnect, before the STATUS.
//!
//! One [`LogBuffer`] per deployment whose STATUS is not yet acknowledged. Lines are kept as they
//! were sent: already masked (the masker runs where the output is read, [`crate::process`]), so
//! nothing here, in memory or on disk, holds a secret in clear. Up to [`MEMORY_BYTES`] /
//! [`MEMORY_LINES`] stay in memory; past that the lines held in memory are written to a spill
//! file in the agent's private runtime directory (`<runtime>/logs/d<id>-<first seq>.jsonl`, 0600,
//! written aside and renamed, so never torn), removed once every line in it is acknowledged or
//! the STATUS is. Past [`DISK_BYTES`] of spill per deployment, lines are still sent but no
//! longer kept (an appliance killed then may miss some: the agent log says how many).
//!
//! A restarted agent (after its own kill -9) knows only what is on disk: the spill files of a
//! deployment it still has to report are read back ([`LogBuffer::recover`]) and resent before
//! that deployment's (failed) STATUS; the lines it held in memory are gone, and its STATUS then
//! carries no line count.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use stagely_protocol::{AgentMessage, LogStream};

/// Bytes of unacknowledged lines held in memory per deployment before they are spilled.
pub const MEMORY_BYTES: usize = 4 * 1024 * 1024;
/// Unacknowledged lines held in memory per deployment before they are spilled.
pub const MEMORY_LINES: usize = 20_000;
/// Bytes of spill files per deployment; past it lines are sent but not kept. As large as the
/// appliance's default per-deployment log cap (`deploys.log_max_bytes`).
pub const DISK_BYTES: u64 = 64 * 1024 * 1024;
/// The spill directory's name inside the agent's private runtime directory. The agent's start
/// ([`crate::ephemeral::RuntimeDir::prepare`]) leaves it for [`LogBuffer::recover`].
pub const SPILL_DIR: &str = "logs";
/// Rough per-line overhead counted against [`MEMORY_BYTES`] besides the text.
const LINE_OVERHEAD: usize = 48;

#[derive(Debug, thiserror::Error)]
#[error("cannot write or read the log spill file {path}: {source}")]
pub struct SpillError {
    path: PathBuf,
    source: std::io::Error,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpillError + '_ {
    move |source| SpillError {
        path: path.to_owned(),
        source,
    }
}

/// One line as it was sent (masked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub seq: u64,
    pub stream: LogStream,
    pub line: String,
}

impl Kept {
    pub fn to_message(&self, deployment_id: i64) -> AgentMessage {
        AgentMessage::Log {
            deployment_id,
            seq: self.seq,
            stream: self.stream,
            line: self.line.clone(),
        }
    }
}

#[derive(Debug)]
struct Spill {
    path: PathBuf,
    last: u64,
    bytes: u64,
}

/// The sent-but-unacknowledged lines of one deployment.
#[derive(Debug)]
pub struct LogBuffer {
    deployment_id: i64,
    dir: PathBuf,
    /// The seq the next line gets.
    next_seq: u64,
    /// Lines up to this seq are acknowledged (forgotten).
    acked: Option<u64>,
    files: VecDeque<Spill>,
    memory: VecDeque<Kept>,
    memory_bytes: usize,
    disk_bytes: u64,
    /// Lines sent but not kept (spill bound reached, or a spill write failed).
    not_kept: u64,
    /// Whether every line this deployment sent is accounted for (false after a restart).
    complete: bool,
}

impl LogBuffer {
    /// An empty buffer for a deployment starting now; spills go under `spill_dir`.
    pub fn new(deployment_id: i64, spill_dir: &Path) -> Self {
        Self {
            deployment_id,
            dir: spill_dir.to_owned(),
            next_seq: 0,
            acked: None,
            files: VecDeque::new(),
            memory: VecDeque::new(),
            memory_bytes: 0,
            disk_bytes: 0,
            not_kept: 0,
            complete: true,
        }
    }

    /// What an earlier agent process spilled for this deployment, or `None` when it spilled
    /// nothing. Unreadable tails are ignored (files are renamed into place whole).
    pub fn recover(deployment_id: i64, spill_dir: &Path) -> Option<Self> {
        let mut found: Vec<(u64, PathBuf)> = fs::read_dir(spill_dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = parse_name(&name)?;
                (first.0 == deployment_id).then(|| (first.1, e.path()))
            })
            .collect();
        found.sort();
        let mut me = Self::new(deployment_id, spill_dir);
        me.complete = false;
        for (_, path) in found {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let last = text
                .lines()
                .map_while(|l| serde_json::from_str::<Kept>(l).ok())
                .last()
                .map(|k| k.seq);
            let Some(last) = last.filter(|l| *l >= me.next_seq) else {
                // Empty or out of order: nothing to resend from it.
                let _ = fs::remove_file(&path);
                continue;
            };
            let bytes = text.len() as u64;
            me.disk_bytes += bytes;
            me.next_seq = last + 1;
            me.files.push_back(Spill { path, last, bytes });
        }
        (!me.files.is_empty()).then_some(me)
    }

    /// Remove every spill file but those of `keep` (at start: what no record still needs).
    pub fn remove_others(spill_dir: &Path, keep: &[i64]) {
        let Ok(entries) = fs::read_dir(spill_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let needed = parse_name(&name).is_some_and(|(id, _)| keep.contains(&id));
            if !needed && let Err(err) = fs::remove_file(e.path()) {
                tracing::error!(path = %e.path().display(), error = %err, "cannot delete a leftover log spill file");
            }
        }
    }

    pub fn deployment_id(&self) -> i64 {
        self.deployment_id
    }

    /// Lines sent so far (seq `0..lines`), when known: for STATUS.
    pub fn lines_sent(&self) -> Option<u64> {
        self.complete.then_some(self.next_seq)
    }

    /// Give the next line its seq and keep it; the LOG frame to send.
    pub fn push(&mut self, stream: LogStream, line: String) -> AgentMessage {
        let kept = Kept {
            seq: self.next_seq,
            stream,
            line,
        };
        self.next_seq += 1;
        let msg = kept.to_message(self.deployment_id);
        self.memory_bytes += kept.line.len() + LINE_OVERHEAD;
        self.memory.push_back(kept);
        if self.memory_bytes > MEMORY_BYTES || self.memory.len() > MEMORY_LINES {
            self.spill();
        }
        msg
    }

    /// The appliance committed every line up to `seq`: forget them.
    pub fn ack(&mut self, seq: u64) {
        if self.acked.is_some_and(|a| a >= seq) {
            return;
        }
        self.acked = Some(seq);
        while self.memory.front().is_some_and(|k| k.seq <= seq) {
            if let Some(k) = self.memory.pop_front() {
                self.memory_bytes -= k.line.len() + LINE_OVERHEAD;
            }
        }
        if self.memory.is_empty() {
            self.memory = VecDeque::new();
        }
        while self.files.front().is_some_and(|f| f.last <= seq) {
            if let Some(f) = self.files.pop_front() {
                self.disk_bytes -= f.bytes;
                remove(&f.path);
            }
        }
    }

    /// Every kept line not yet acknowledged, oldest first, in chunks of at most one spill file
    /// (so a resend never reads all of them at once).
    pub fn unacked(&self) -> impl Iterator<Item = Vec<Kept>> + '_ {
        let after = self.acked;
        let fresh = move |k: &Kept| after.is_none_or(|a| k.seq > a);
        self.files
            .iter()
            .map(move |f| match fs::read_to_string(&f.path) {
                Ok(text) => text
                    .lines()
                    .map_while(|l| serde_json::from_str::<Kept>(l).ok())
                    .filter(fresh)
                    .collect(),
                Err(e) => {
                    tracing::error!(path = %f.path.display(), error = %e, "cannot read a log spill file: its lines are not resent");
                    Vec::new()
                }
            })
            .chain(std::iter::once(
                self.memory.iter().filter(|k| fresh(k)).cloned().collect(),
            ))
            .filter(|chunk: &Vec<Kept>| !chunk.is_empty())
    }

    /// The STATUS is acknowledged: nothing of this deployment is needed any more.
    pub fn discard(self) {
        for f in &self.files {
            remove(&f.path);
        }
    }

    /// Move the lines held in memory to a new spill file (or, past the bound, let them go).
    fn spill(&mut self) {
        let Some(first) = self.memory.front().map(|k| k.seq) else {
            return;
        };
        let last = self.next_seq - 1;
        let mut text = String::with_capacity(self.memory_bytes);
        for k in &self.memory {
            // Plain structs: serialising cannot fail.
            text.push_str(&serde_json::to_string(k).unwrap_or_default());
            text.push('\n');
        }
        let lines = self.memory.len() as u64;
        self.memory = VecDeque::new();
        self.memory_bytes = 0;
        if self.disk_bytes + text.len() as u64 > DISK_BYTES {
            self.lose(lines, "the spill bound is reached");
            return;
        }
        let path = self
            .dir
            .join(format!("d{}-{first:020}.jsonl", self.deployment_id));
        match write_private(&self.dir, &path, &text) {
            Ok(()) => {
                self.disk_bytes += text.len() as u64;
                self.files.push_back(Spill {
                    path,
                    last,
                    bytes: text.len() as u64,
                });
            }
            Err(e) => {
                tracing::error!(deployment_id = self.deployment_id, error = %e, "cannot spill log lines");
                self.lose(lines, "a spill file could not be written");
            }
        }
    }

    fn lose(&mut self, lines: u64, why: &str) {
        if self.not_kept == 0 {
            tracing::warn!(
                deployment_id = self.deployment_id,
                "{why}: later unacknowledged log lines are sent but not kept (an appliance that stops \
                 before committing them will miss them)"
            );
        }
        self.not_kept += lines;
    }
}

/// `d<id>-<first seq>.jsonl` → `(id, first seq)`.
fn parse_name(name: &str) -> Option<(i64, u64)> {
    let rest = name.strip_prefix('d')?.strip_suffix(".jsonl")?;
    let (id, first) = rest.split_once('-')?;
    Some((id.parse().ok()?, first.parse().ok()?))
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(path = %path.display(), error = %e, "cannot delete a log spill file");
    }
}

/// Write `text` to `path` (0600, in a 0700 `dir`), aside first and renamed into place.
fn write_private(dir: &Path, path: &Path, text: &str) -> Result<(), SpillError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stagely_protocol::mask::Masker;

    const CANARY: &str = "canary-spill-secret-4711";

    fn seqs(buf: &LogBuffer) -> Vec<u64> {
        buf.unacked().flatten().map(|k| k.seq).collect()
    }

    fn spill_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn lines_are_kept_until_acked_and_resent_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = LogBuffer::new(3, &dir.path().join(SPILL_DIR));
        for i in 0..5 {
            let AgentMessage::Log { seq, .. } = buf.push(LogStream::Stdout, format!("l{i}")) else {
                panic!("not a LOG")
            };
            assert_eq!(seq, i);
        }
        assert_eq!(seqs(&buf), vec![0, 1, 2, 3, 4]);
        buf.ack(2);
        assert_eq!(seqs(&buf), vec![3, 4]);
        buf.ack(1); // an older, late ACK changes nothing
        assert_eq!(seqs(&buf), vec![3, 4]);
        assert_eq!(buf.lines_sent(), Some(5));
        buf.ack(4);
        assert_eq!(seqs(&buf), Vec::<u64>::new());
        assert_eq!(buf.memory_bytes, 0);
    }

    #[test]
    fn past_the_memory_bound_lines_spill_to_private_files_without_secrets_and_go_on_ack() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join(SPILL_DIR);
        let mut buf = LogBuffer::new(9, &spill);
        // As the agent sends them: masked where the output is read.
        let masker = Masker::new([CANARY]);
        let n = MEMORY_LINES as u64 * 2 + 10;
        for i in 0..n {
            let line = masker.mask(&format!("line {i} token: {CANARY}"));
            buf.push(LogStream::Stderr, line);
        }
        let files = spill_files(&spill);
        assert_eq!(files.len(), 2, "two spills past the line bound: {files:?}");
        assert!(buf.memory.len() < MEMORY_LINES);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spill), 0o700);
        for f in &files {
            assert_eq!(mode(f), 0o600, "{f:?}");
            let text = fs::read_to_string(f).unwrap();
            assert!(!text.contains(CANARY), "a spill file holds the secret");
            assert!(text.contains(": ***"), "the masked line is what is kept");
        }
        // Resent in seq order across the files and memory, every line once.
        let all: Vec<u64> = seqs(&buf);
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        // An ACK inside the second file removes the first file only.
        let first_of_second = MEMORY_LINES as u64 + 1;
        buf.ack(first_of_second + 5);
        assert_eq!(spill_files(&spill), files[1..].to_vec());
        assert_eq!(seqs(&buf), (first_of_second + 6..n).collect::<Vec<_>>());
        buf.ack(n - 1);
        assert!(spill_files(&spill).is_empty(), "acknowledged spills are removed");
        assert_eq!(seqs(&buf), Vec::<u64>::new());
    }

    #[test]
    fn a_restarted_agent_recovers_what_was_spilled_and_discard_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join(SPILL_DIR);
        let mut buf = LogBuffer::new(4, &spill);
        let n = MEMORY_LINES as u64 + 100;
        for i in 0..n {
            buf.push(LogStream::Stdout, format!("l{i}"));
        }
        buf.ack(10);
        // Another deployment's leftovers, and a torn write aside.
        fs::write(spill.join("d5-00000000000000000000.jsonl"), "{}\n").unwrap();
        fs::write(spill.join("d4-00000000000000099999.jsonl.tmp"), "{\"seq\":").unwrap();
        drop(buf); // the agent dies: memory is gone, the spill stays

        LogBuffer::remove_others(&spill, &[4]);
        assert_eq!(spill_files(&spill).len(), 1, "only deployment 4's spill is kept");
        let back = LogBuffer::recover(4, &spill).expect("the spill is recovered");
        assert_eq!(
            back.lines_sent(),
            None,
            "a restarted agent cannot know every line"
        );
        assert_eq!(seqs(&back), (0..=MEMORY_LINES as u64).collect::<Vec<_>>());
        back.discard();
        assert!(spill_files(&spill).is_empty());
        assert!(LogBuffer::recover(4, &spill).is_none());
    }
}
