//! No deployment stays unfinished forever: the reaper fails those whose agent has been gone
//! longer than `agent_lost_timeout_secs` (`agent_lost`), that ran past `max_duration_secs` since
//! they were sent (`timeout`), or that waited in their environment's queue longer than
//! `max_duration_secs` without being sent (`queue_timeout`), and ends `expired` those that
//! awaited approval longer than `approval_ttl_secs`. It works from the database, so deployments interrupted by a restart are covered:
//! their agents count as gone since this process started.

use std::time::Duration;

use super::{ops, store};
use crate::app::AppState;
use crate::db::now_ms;

/// Run until shutdown, checking every `period`.
pub async fn run(state: AppState, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Once across replicas: only the leader reaps (src/cluster/leader.rs).
            _ = tick.tick() => if state.cluster.is_leader() {
                sweep(&state, now_ms()).await;
            },
            () = state.shutdown.cancelled() => break,
        }
    }
}

/// One pass: fail what is overdue as of `now`.
pub async fn sweep(state: &AppState, now: i64) {
    let rows = match state.db.read(store::unfinished).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "reaper cannot list unfinished deployments");
            return;
        }
    };
    let lost_after = i64::try_from(state.config.deploys.agent_lost_timeout_secs * 1000).unwrap_or(i64::MAX);
    let max_age = i64::try_from(state.config.deploys.max_duration_secs * 1000).unwrap_or(i64::MAX);
    super::approval::expire_due(state, now).await;
    match state.db.read(store::waiting).await {
        Ok(waiting) => {
            for (id, environment_id, created) in waiting {
                if now - created > max_age {
                    tracing::warn!(deployment_id = id, "failing a deployment that waited too long");
                    ops::end_by_server(state, id, environment_id, "queue_timeout").await;
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "reaper cannot list waiting deployments"),
    }
    for (id, environment_id, agent_id, sent) in rows {
        let verdict = if now - sent > max_age {
            Some("timeout")
        } else {
            let since = match agent_id {
                Some(a) => Some(offline_since(state, a, now).await),
                None => None,
            };
            match since {
                None => Some("agent_lost"),
                Some(Some(since)) if now - since > lost_after => Some("agent_lost"),
                _ => None,
            }
        };
        if let Some(error) = verdict {
            tracing::warn!(deployment_id = id, error, "failing overdue deployment");
            ops::end_by_server(state, id, environment_id, error).await;
        }
    }
}

/// When an agent went away, `None` while it is connected here or to another replica (a live
/// lease). Gone since the later of what this replica saw (its disconnect, or this process's
/// start) and the end of its last lease (a dead replica's agents: when their lease ran out).
async fn offline_since(state: &AppState, agent_id: i64, now: i64) -> Option<i64> {
    let local = state.hub.offline_since(agent_id)?;
    let presence = state
        .db
        .read(move |c| crate::agents::store::presence(c, agent_id, now))
        .await;
    match presence {
        Ok(p) if p.replica.is_some() => None,
        Ok(p) => Some(local.max(p.lease_until.unwrap_or(0))),
        Err(e) => {
            tracing::error!(agent_id, error = %e, "reaper cannot read the agent's presence");
            None
        }
    }
}
