//! No command outlives its agent. Every command the agent runs starts in a process group of its
//! own ([`crate::process::command`]); while a deployment's command runs, the agent keeps a small
//! record of its group in the private runtime directory (`pgroup-<pgid>.json`: pgid, leader pid,
//! the leader's start time from `/proc/<pid>/stat`, the boot id, the deployment id, the program
//! name), written atomically and removed when the command ends.
//!
//! A killed agent (SIGKILL, OOM, power to the process only) cannot clean up: its `docker compose
//! up` goes on and could create containers with the old values, racing the next deploy. So the
//! next agent, before it connects and reports, reads those records and ends every recorded group
//! that still exists and whose leader is the very process recorded (same pid, same start time,
//! same boot, still in that group: a recycled pid is never mistaken for it): SIGTERM to the group,
//! up to [`GRACE`], then SIGKILL. A normally stopping agent (SIGTERM, timeout, dropped
//! deployment) kills its groups itself when the command's handle drops.
//!
//! Records hold no argv (only the program's file name) and no secrets.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};

/// The records' file names in the agent's private runtime directory: `pgroup-<pgid>.json`.
pub const RECORD_PREFIX: &str = "pgroup-";
/// How long a leftover group gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long to wait for a group to go after SIGKILL before saying it did not.
const KILL_WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// What the agent writes for one running command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Format version (1).
    pub v: u32,
    /// The process group (= the leader's pid: `process_group(0)`).
    pub pgid: i32,
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`: start times restart with the machine.
    pub boot_id: String,
    pub deployment_id: i64,
    /// The program's file name only (`docker`, `git`), never its arguments.
    pub program: String,
}

/// The few fields of `/proc/<pid>/stat` the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
    pub start_time: u64,
}

/// Parse `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses: the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), fields[2] field 5 (pgrp), fields[19] field 22 (starttime).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Whether the process `leader` (its stat now, `None` if it is gone) is the one `record` names:
/// same boot, same start time, still leading that group. A pid that was recycled has another
/// start time; a record from before a reboot has another boot id.
pub fn leader_matches(record: &GroupRecord, leader: Option<Stat>, boot_id: Option<&str>) -> bool {
    record.pgid > 1
        && record.pgid == record.pid
        && boot_id == Some(record.boot_id.as_str())
        && leader.is_some_and(|s| s.start_time == record.start_time && s.pgrp == record.pgid)
}

/// The processes of group `pgid` that are not zombies (a zombie has ended; only its parent's
/// wait is missing, which for an orphan is init's business).
pub fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| read_stat(*pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
}

/// Send `signal` to group `pgid`; never to group 0/1 (ourselves / everyone) or our own group.
pub fn signal_group(pgid: i32, signal: Signal) -> std::io::Result<()> {
    let ours = rustix::process::getpgrp().as_raw_nonzero().get();
    match Pid::from_raw(pgid) {
        Some(pid) if pgid > 1 && pgid != ours => Ok(kill_process_group(pid, signal)?),
        _ => Err(std::io::Error::other(format!(
            "refusing to signal process group {pgid}"
        ))),
    }
}

#[derive(Debug, Clone)]
struct Scope {
    dir: PathBuf,
    deployment_id: i64,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Run `fut` (one deployment) so that the commands it spawns are recorded under `runtime_dir`.
pub async fn scope<F: Future>(runtime_dir: &Path, deployment_id: i64, fut: F) -> F::Output {
    let scope = Scope {
        dir: runtime_dir.to_owned(),
        deployment_id,
    };
    SCOPE.scope(scope, fut).await
}

/// One written record; its file is removed on drop.
#[derive(Debug)]
pub struct Recorded {
    path: PathBuf,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot remove a process group record");
        }
    }
}

/// Record the group just started (leader `pid`) if this runs inside a deployment's [`scope`].
/// A record that cannot be written is logged, not fatal: the command still dies with a normally
/// stopping agent; only a crash could then leave it running.
pub fn record(pid: u32, program: &str) -> Option<Recorded> {
    let scope = SCOPE.try_with(Scope::clone).ok()?;
    let pid = i32::try_from(pid).ok()?;
    let written = (|| {
        let stat = read_stat(pid).ok_or_else(|| std::io::Error::other("no /proc/<pid>/stat"))?;
        let record = GroupRecord {
            v: 1,
            pgid: pid,
            pid,
            start_time: stat.start_time,
            boot_id: boot_id().unwrap_or_default(),
            deployment_id: scope.deployment_id,
            program: program.to_owned(),
        };
        write_record(&scope.dir, &record)
    })();
    match written {
        Ok(path) => Some(Recorded { path }),
        Err(e) => {
            tracing::warn!(program, pgid = pid, error = %e, "cannot record the command's process group");
            None
        }
    }
}

/// Write `record` as `<dir>/pgroup-<pgid>.json`, atomically (a temporary file renamed into
/// place), readable by the agent's user only.
pub fn write_record(dir: &Path, record: &GroupRecord) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{RECORD_PREFIX}{}.json", record.pgid));
    let mut tmp = tempfile::Builder::new().prefix(".pgroup-").tempfile_in(dir)?;
    tmp.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// The record files in `private_dir`, with what they hold (`None`: unreadable).
fn record_files(private_dir: &Path) -> Vec<(PathBuf, Option<GroupRecord>)> {
    let Ok(entries) = std::fs::read_dir(private_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(RECORD_PREFIX) && name.ends_with(".json")
        })
        .map(|e| {
            let path = e.path();
            let record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<GroupRecord>(&b).ok());
            (path, record)
        })
        .collect()
}

/// Every readable record in `private_dir`.
pub fn read_records(private_dir: &Path) -> Vec<GroupRecord> {
    record_files(private_dir)
        .into_iter()
        .filter_map(|(_, r)| r)
        .collect()
}

/// SIGTERM every live group this agent recorded under `private_dir` for `deployment_id` (a
/// CANCEL), except those in `already` (signalled once: a second SIGTERM makes compose give up
/// its clean stop): the commands may end cleanly; whatever is left is killed when the
/// deployment's future is dropped after the grace ([`crate::cancel`]). Answers the groups
/// signalled now.
pub fn terminate_deployment(private_dir: &Path, deployment_id: i64, already: &[i32]) -> Vec<i32> {
    let boot = boot_id();
    let mut signalled = Vec::new();
    for r in read_records(private_dir)
        .into_iter()
        .filter(|r| r.deployment_id == deployment_id && !already.contains(&r.pgid))
    {
        if !leader_matches(&r, read_stat(r.pid), boot.as_deref()) || live_members(r.pgid).is_empty() {
            continue;
        }
        match signal_group(r.pgid, Signal::TERM) {
            Ok(()) => signalled.push(r.pgid),
            Err(e) => {
                tracing::warn!(program = %r.program, pgid = r.pgid, error = %e, "cannot stop a deployment's process group")
            }
        }
    }
    signalled
}

/// After a cancel: wait up to `wait` for every member of `groups` to be gone (a command's
/// leader may exit before its children have acted on the SIGTERM), then SIGKILL what is left.
/// Answers whether anything had to be killed.
pub async fn reap_groups(groups: &[i32], wait: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let alive = || {
        groups
            .iter()
            .copied()
            .filter(|g| !live_members(*g).is_empty())
            .collect::<Vec<_>>()
    };
    loop {
        let left = alive();
        if left.is_empty() {
            return false;
        }
        if tokio::time::Instant::now() >= deadline {
            for g in &left {
                let _ = signal_group(*g, Signal::KILL);
            }
            let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
            while !alive().is_empty() && tokio::time::Instant::now() < until {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// What [`end_leftovers`] did to one recorded group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It was gone already (or its pid now belongs to another process): nothing sent.
    Gone,
    /// It ended after SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It was still there after SIGKILL (or could not be signalled).
    Survived,
}

/// At start, before anything else: end every group an earlier agent recorded under
/// `private_dir` and left running, then remove the records. Blocks for at most
/// [`GRACE`] + a short wait, and only when there is something to end.
pub fn end_leftovers(private_dir: &Path) -> Vec<(GroupRecord, Ended)> {
    let files = record_files(private_dir);
    let mut records = Vec::new();
    for (path, record) in &files {
        match record {
            Some(r) => records.push(r.clone()),
            None => tracing::warn!(path = %path.display(), "ignoring an unreadable process group record"),
        }
    }
    let boot = boot_id();
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for r in records {
        if leader_matches(&r, read_stat(r.pid), boot.as_deref()) && !live_members(r.pgid).is_empty() {
            match signal_group(r.pgid, Signal::TERM) {
                Ok(()) => pending.push(r),
                Err(e) => {
                    tracing::error!(program = %r.program, pgid = r.pgid, error = %e, "cannot stop a process group left by an earlier agent");
                    out.push((r, Ended::Survived));
                }
            }
        } else {
            tracing::debug!(program = %r.program, pgid = r.pgid, "a recorded process group is gone already");
            out.push((r, Ended::Gone));
        }
    }
    let wait_gone = |pending: &mut Vec<GroupRecord>, limit: Duration| {
        let until = Instant::now() + limit;
        while !pending.is_empty() && Instant::now() < until {
            std::thread::sleep(POLL);
            pending.retain(|r| !live_members(r.pgid).is_empty());
        }
    };
    let termed = pending.clone();
    wait_gone(&mut pending, GRACE);
    for r in termed.iter().filter(|r| !pending.contains(r)) {
        tracing::warn!(
            program = %r.program, pgid = r.pgid, deployment_id = r.deployment_id,
            "ended (SIGTERM) a process group an earlier agent left running"
        );
        out.push((r.clone(), Ended::Terminated));
    }
    for r in &pending {
        if let Err(e) = signal_group(r.pgid, Signal::KILL) {
            tracing::error!(program = %r.program, pgid = r.pgid, error = %e, "cannot kill a process group left by an earlier agent");
        }
    }
    let killed = pending.clone();
    wait_gone(&mut pending, KILL_WAIT);
    for r in killed {
        let ended = if pending.contains(&r) {
            tracing::error!(
                program = %r.program, pgid = r.pgid, deployment_id = r.deployment_id,
                "a process group an earlier agent left running survived SIGKILL"
            );
            Ended::Survived
        } else {
            tracing::warn!(
                program = %r.program, pgid = r.pgid, deployment_id = r.deployment_id,
                "ended (SIGKILL after {} s) a process group an earlier agent left running",
                GRACE.as_secs()
            );
            Ended::Killed
        };
        out.push((r, ended));
    }
    for (path, _) in files {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(path = %path.display(), error = %e, "cannot remove a process group record");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (docker compose) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 100 1 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            }
        );
        let tricky = STAT.replace("(docker compose)", "(a) b (c) )");
        assert_eq!(parse_stat(&tricky), Some(s));
        assert_eq!(parse_stat("1 (x) S 1"), None);
        let me = read_stat(std::process::id() as i32).unwrap();
        assert!(me.start_time > 0);
    }

    fn record(start_time: u64) -> GroupRecord {
        GroupRecord {
            v: 1,
            pgid: 4242,
            pid: 4242,
            start_time,
            boot_id: "boot-a".into(),
            deployment_id: 7,
            program: "docker".into(),
        }
    }

    #[test]
    fn a_recycled_pid_or_another_boot_is_never_mistaken_for_the_leader() {
        let now = parse_stat(STAT);
        assert!(leader_matches(&record(987654), now, Some("boot-a")));
        // Same pid, another start time: the pid was recycled.
        assert!(!leader_matches(&record(987653), now, Some("boot-a")));
        // Same start time, another boot.
        assert!(!leader_matches(&record(987654), now, Some("boot-b")));
        // Gone.
        assert!(!leader_matches(&record(987654), None, Some("boot-a")));
        // It left the group.
        let moved = now.map(|s| Stat { pgrp: 1, ..s });
        assert!(!leader_matches(&record(987654), moved, Some("boot-a")));
        // Never group 1 (kill(-1) is everyone).
        let init = GroupRecord {
            pgid: 1,
            pid: 1,
            ..record(987654)
        };
        assert!(!leader_matches(
            &init,
            now.map(|s| Stat { pgrp: 1, ..s }),
            Some("boot-a")
        ));
        assert!(signal_group(1, Signal::TERM).is_err());
        assert!(signal_group(0, Signal::TERM).is_err());
    }

    #[test]
    fn records_round_trip_and_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_record(dir.path(), &record(5)).unwrap();
        assert_eq!(path, dir.path().join("pgroup-4242.json"));
        let names = || -> Vec<_> {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect()
        };
        assert_eq!(
            names(),
            vec![std::ffi::OsString::from("pgroup-4242.json")],
            "no temporary file left"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"pgid":4242,"pid":4242,"start_time":5,"boot_id":"boot-a","deployment_id":7,"program":"docker"}"#
        );
        std::fs::write(dir.path().join("pgroup-junk.json"), "{").unwrap();
        std::fs::write(dir.path().join("other.json"), "{}").unwrap();
        assert_eq!(read_records(dir.path()), vec![record(5)]);
        // Gone processes are not signalled; the records (readable or not) go, nothing else.
        let ended = end_leftovers(dir.path());
        assert_eq!(ended, vec![(record(5), Ended::Gone)]);
        assert_eq!(names(), vec![std::ffi::OsString::from("other.json")]);
    }

    #[tokio::test]
    async fn a_recorded_group_left_running_is_ended_and_a_dropped_command_kills_its_group() {
        let runtime = tempfile::tempdir().unwrap();
        // A group whose leader (and so its children) ignores SIGTERM and has a child: both go.
        let mut cmd = crate::process::command("sh");
        cmd.args(["-c", "trap '' TERM; sleep 300 & while :; do sleep 1; done"]);
        let running = scope(runtime.path(), 9, async { crate::process::spawn(&mut cmd) })
            .await
            .unwrap();
        let pgid = running.pgid().unwrap();
        let recs = read_records(runtime.path());
        assert_eq!(recs.len(), 1);
        assert_eq!(
            (recs[0].pgid, recs[0].deployment_id, recs[0].program.as_str()),
            (pgid, 9, "sh")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(live_members(pgid).len() >= 2, "{:?}", live_members(pgid));
        // As if the agent had died: the handle is forgotten, its record stays.
        std::mem::forget(running);
        let ended = tokio::task::spawn_blocking({
            let p = runtime.path().to_owned();
            move || end_leftovers(&p)
        })
        .await
        .unwrap();
        assert_eq!(ended.len(), 1);
        // SIGTERM was ignored: SIGKILL after the grace finished it.
        assert_eq!(ended[0].1, Ended::Killed);
        assert!(live_members(pgid).is_empty());
        assert!(read_records(runtime.path()).is_empty());

        // Dropping a running command (cancelled deployment, agent stopping) kills its whole group.
        let mut cmd = crate::process::command("sh");
        cmd.args(["-c", "sleep 300 & sleep 300; wait"]);
        let running = scope(runtime.path(), 10, async { crate::process::spawn(&mut cmd) })
            .await
            .unwrap();
        let pgid = running.pgid().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(live_members(pgid).len() >= 2);
        drop(running);
        let until = Instant::now() + Duration::from_secs(5);
        while !live_members(pgid).is_empty() && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        assert!(live_members(pgid).is_empty(), "the group's other member survived");
        assert!(read_records(runtime.path()).is_empty(), "the record went with it");
    }
}
