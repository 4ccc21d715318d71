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

/// What a cancelled deployment reports.
pub const CANCELLED: &str = "cancelled: the appliance asked the agent to stop";

impl DeployResult {
    pub fn cancelled() -> Self {
        Self {
            status: DeployOutcome::Cancelled,
            services: Vec::new(),
            error: Some(CANCELLED.into()),
            commit: None,
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
    let mut deployment = Box::pin(deployment);
    tokio::select! {
        result = &mut deployment => return result,
        () = cancel.cancelled() => {}
    }
    tracing::info!(deployment_id, "CANCEL: stopping the deployment");
    let signalled = groups::terminate_deployment(runtime_dir, deployment_id);
    agent_line(
        log,
        format!("cancel requested: stopping ({signalled} command(s) sent SIGTERM)"),
    );
    if tokio::time::timeout(groups::GRACE, &mut deployment)
        .await
        .is_err()
    {
        agent_line(
            log,
            format!(
                "still running {} s after SIGTERM: killed",
                groups::GRACE.as_secs()
            ),
        );
    }
    // Kills what is left (SIGKILL to each command's group) and removes the override and the
    // run's private directory.
    drop(deployment);
    agent_line(log, "deployment cancelled");
    DeployResult::cancelled()
}
