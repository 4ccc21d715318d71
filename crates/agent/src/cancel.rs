//! A deployment that can be cancelled (the appliance's CANCEL, issue 13): on the signal, its
//! commands' process groups get SIGTERM ([`groups::terminate_deployment`]), up to
//! [`groups::GRACE`] to end; then the deployment's future is dropped, which kills whatever is
//! left with SIGKILL (each command's handle) and removes the override and the run's private
//! directory (their drop guards). The result is `CANCELLED`, whatever the commands did.

use std::future::Future;
use std::path::Path;

use stagely_protocol::DeployOutcome;
use tokio_util::sync::CancellationToken;

use crate::results::DeployResult;
use crate::{LogSink, agent_line, groups};

/// How often a cancel looks for commands that started after its first round of SIGTERMs.
const RESIGNAL: std::time::Duration = std::time::Duration::from_millis(200);

/// What a cancelled deployment reports.
pub const CANCELLED: &str = "cancelled: the appliance asked the agent to stop";

tokio::task_local! {
    /// The running deployment's CANCEL signal, for code inside it ([`requested`]).
    static CANCEL: CancellationToken;
}

/// Whether the deployment this runs in has been told to stop: its commands then end on the
/// SIGTERM, and what they report is the cancel's doing, not a failure of the deployment.
pub fn requested() -> bool {
    CANCEL.try_with(CancellationToken::is_cancelled).unwrap_or(false)
}

impl DeployResult {
    pub fn cancelled() -> Self {
        Self {
            status: DeployOutcome::Cancelled,
            services: Vec::new(),
            error: Some(CANCELLED.into()),
            commit: None,
            applied: false,
            release: None,
        }
    }
}

/// Run `deployment` (one [`crate::deploy::Deployer::run`]) until it ends or `cancel` fires.
pub async fn run_until_cancelled<F>(
    deployment: F,
    deployment_id: i64,
    runtime_dir: &Path,
    log: &LogSink,
    cancel: &CancellationToken,
) -> DeployResult
where
    F: Future<Output = DeployResult>,
{
    let mut deployment = Box::pin(CANCEL.scope(cancel.clone(), deployment));
    tokio::select! {
        result = &mut deployment => return result,
        () = cancel.cancelled() => {}
    }
    tracing::info!(deployment_id, "CANCEL: stopping the deployment");
    let mut signalled = groups::terminate_deployment(runtime_dir, deployment_id, &[]);
    agent_line(
        log,
        format!(
            "cancel requested: stopping ({} command(s) sent SIGTERM)",
            signalled.len()
        ),
    );
    let started = tokio::time::Instant::now();
    // A command spawned in the moment of the cancel may not be recorded yet when the first
    // round of SIGTERMs goes out (or the deployment may start one before it sees the cancel):
    // look again while waiting, so it too ends on a SIGTERM rather than the grace's SIGKILL.
    let ended = loop {
        match tokio::time::timeout(RESIGNAL, &mut deployment).await {
            Ok(_) => break true,
            Err(_) if started.elapsed() >= groups::GRACE => break false,
            Err(_) => {
                let late = groups::terminate_deployment(runtime_dir, deployment_id, &signalled);
                signalled.extend(late);
            }
        }
    };
    // Kills what is left (SIGKILL to each command's group) and removes the override and the
    // run's private directory.
    drop(deployment);
    // A command's leader can end before the rest of its group has acted on the SIGTERM: the
    // report waits until none of them is left (killing any still there once the grace is over).
    let rest = groups::GRACE.saturating_sub(started.elapsed());
    let killed = groups::reap_groups(&signalled, rest).await;
    if !ended || killed {
        agent_line(
            log,
            format!(
                "still running {} s after SIGTERM: killed",
                groups::GRACE.as_secs()
            ),
        );
    }
    agent_line(log, "deployment cancelled");
    DeployResult::cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A "deployment" that runs one command in its scope and holds a private file meanwhile.
    async fn deployment(runtime: &Path, script: &str, marker: &Path) -> DeployResult {
        let mut cmd = crate::process::command("sh");
        cmd.args(["-c", script]);
        groups::scope(runtime, 31, async {
            // Stands for the override: removed when the deployment's future is dropped.
            struct Guard<'a>(&'a Path);
            impl Drop for Guard<'_> {
                fn drop(&mut self) {
                    let _ = std::fs::remove_file(self.0);
                }
            }
            std::fs::write(marker, "override").unwrap();
            let _guard = Guard(marker);
            let mut running = crate::process::spawn(&mut cmd).unwrap();
            let _ = running.wait().await;
            // A failed command fails the deployment; the result is CANCELLED all the same.
            DeployResult::fail("the command was killed by a signal")
        })
        .await
    }

    async fn cancel_after_start(script: &str) -> (DeployResult, Vec<i32>, bool, Vec<String>) {
        let runtime = tempfile::tempdir().unwrap();
        let marker = runtime.path().join("override.yml");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let dir = runtime.path().to_owned();
        tokio::spawn(async move {
            // Once the command is recorded (it runs), cancel.
            while groups::read_records(&dir).is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            trigger.cancel();
        });
        let run = deployment(runtime.path(), script, &marker);
        let pgid = async {
            loop {
                if let Some(r) = groups::read_records(runtime.path()).first() {
                    return r.pgid;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (result, pgid) = tokio::join!(run_until_cancelled(run, 31, runtime.path(), &tx, &cancel), pgid);
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.line);
        }
        (result, groups::live_members(pgid), marker.exists(), lines)
    }

    #[tokio::test]
    async fn a_cancelled_command_ends_on_sigterm_and_the_override_goes() {
        let (result, left, override_left, lines) = cancel_after_start("sleep 300").await;
        assert_eq!(result, DeployResult::cancelled());
        assert!(left.is_empty(), "{left:?}");
        assert!(!override_left);
        assert!(lines[0].contains("1 command(s) sent SIGTERM"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("killed")), "{lines:?}");
    }

    #[tokio::test]
    async fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
        let (result, left, override_left, lines) =
            cancel_after_start("trap '' TERM; sleep 300 & while :; do sleep 1; done").await;
        assert_eq!(result.status, DeployOutcome::Cancelled);
        assert!(left.is_empty(), "{left:?}");
        assert!(!override_left);
        assert!(lines.iter().any(|l| l.contains("killed")), "{lines:?}");
    }

    #[tokio::test]
    async fn a_command_recorded_after_the_first_sigterms_still_ends_on_sigterm() {
        let runtime = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The cancel is there before the command is: its first round signals nothing.
        let late = groups::scope(runtime.path(), 32, async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut cmd = crate::process::command("sleep");
            cmd.arg("300");
            let mut running = crate::process::spawn(&mut cmd).unwrap();
            let _ = running.wait().await;
            DeployResult::fail("the command was killed by a signal")
        });
        let result = run_until_cancelled(late, 32, runtime.path(), &tx, &cancel).await;
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.line);
        }
        assert_eq!(result, DeployResult::cancelled());
        assert!(lines[0].contains("0 command(s) sent SIGTERM"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("killed")), "{lines:?}");
    }
}
