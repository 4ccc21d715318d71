//! Log retention: per environment, the logs of the last `deploys.log_keep_deployments`
//! deployments and of every deployment younger than `deploys.log_keep_days` are kept (an
//! environment's own `log_keep_deployments` / `log_keep_days`, when set, replace those two); the
//! others' log lines are deleted in the background. Deployment rows stay, marked `log_pruned_at`.
//! Unfinished deployments are never touched.

use std::time::Duration;

use super::store;
use crate::app::AppState;
use crate::db::{DbError, now_ms};

/// Deployments pruned per write transaction: short transactions leave the writer to others.
const PER_TRANSACTION: i64 = 20;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deployments: usize,
    pub lines: usize,
}

/// Run until shutdown, pruning every `deploys.log_prune_every_secs` (never when it is 0).
pub async fn run(state: AppState) {
    let every = state.config.deploys.log_prune_every_secs;
    if every == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Once across replicas: only the leader prunes.
            _ = tick.tick() => match if state.cluster.is_leader() { sweep(&state, now_ms()).await } else { Ok(Pruned::default()) } {
                Ok(p) if p.deployments > 0 => tracing::info!(
                    deployments = p.deployments,
                    lines = p.lines,
                    "pruned deployment logs past retention"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cannot prune deployment logs"),
            },
            () = state.shutdown.cancelled() => break,
        }
    }
}

/// One pass as of `now` (ms): prune every log retention no longer keeps.
pub async fn sweep(state: &AppState, now: i64) -> Result<Pruned, DbError> {
    let keep_ms =
        i64::try_from(state.config.deploys.log_keep_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let keep = store::KeepDefaults {
        deployments: i64::try_from(state.config.deploys.log_keep_deployments).unwrap_or(i64::MAX),
        older_than: now.saturating_sub(keep_ms),
        now,
    };
    let mut total = Pruned::default();
    let rules = state.db.read(move |c| store::prune_rules(c, &keep)).await?;
    for rule in rules {
        let mut after_id = 0;
        loop {
            if state.shutdown.is_cancelled() {
                return Ok(total);
            }
            let ids = state
                .db
                .read(move |c| store::prunable(c, &rule, after_id, PER_TRANSACTION))
                .await?;
            let Some(&last) = ids.last() else { break };
            after_id = last;
            let count = ids.len();
            let lines = state
                .db
                .write(move |tx| {
                    ids.iter()
                        .map(|id| store::prune_log(tx, *id, now))
                        .sum::<Result<usize, DbError>>()
                })
                .await?;
            total.deployments += count;
            total.lines += lines;
        }
    }
    Ok(total)
}
