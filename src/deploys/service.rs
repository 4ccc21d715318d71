//! What agents report about their deployments (HELLO's list, LOG, STATUS), with the rule that
//! an agent speaks only for its own deployments, and the rule that nothing is stored or shown
//! unmasked: when a deployment's masker cannot be built, its log lines are withheld and the
//! deployment says why.

use std::sync::Arc;

use super::limits::{Admit, truncated_note};
use super::logs::AckTo;
use super::ops::end_by_server;
use super::store::{self, Finish, PendingLine};
use super::{DeployError, DeployStatus, LiveEvent, LogLine};
use crate::agents::AgentIdentity;
use crate::agents::hub::{ActiveDeploy, HubEvent};
use crate::app::AppState;
use crate::db::{now_ms, rfc3339};
use crate::secrets::store as secret_store;
use stagely_protocol::mask::Masker;
use stagely_protocol::{DeployOutcome, LogStream, ServiceState};

/// What a deployment's log says, and its error, when its masker cannot be built.
pub const WITHHELD_NOTE: &str = "log withheld: the secrets could not be loaded to mask it";

/// An agent spoke about a deployment that is not its own (or does not exist).
#[derive(Debug, thiserror::Error)]
#[error("deployment {0} is not assigned to this agent")]
pub struct NotAssigned(pub i64);

/// Where an agent's report about one of its deployments goes.
enum Reporting {
    /// Live: masked with this context's masker.
    Live(Arc<ActiveDeploy>),
    /// Already finished.
    Finished,
    /// Its masker could not be built: nothing it sends is stored or shown.
    Withheld,
}

/// The live context of a deployment this agent may report for. After a server restart the
/// context (and its masker) is rebuilt; if the masker cannot be, the report is withheld.
async fn context(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
) -> Result<Reporting, NotAssigned> {
    if let Some(active) = state.hub.active_deploy(deployment_id) {
        return if active.agent_id == agent.id {
            Ok(Reporting::Live(active))
        } else {
            Err(NotAssigned(deployment_id))
        };
    }
    let owner = state
        .db
        .read(move |c| store::owner(c, deployment_id))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, deployment_id, "cannot look up deployment owner");
            NotAssigned(deployment_id)
        })?;
    match owner {
        Some((Some(a), _, status)) if a == agent.id && status.is_finished() => Ok(Reporting::Finished),
        Some((Some(a), environment_id, _)) if a == agent.id && environment_id == agent.environment_id => {
            match rebuild_masker(state, deployment_id).await {
                Ok((masker, (lines, bytes), next_seq)) => {
                    let active = state.hub.start_deploy(deployment_id, agent.id, masker);
                    // The caps count what an earlier process stored, too, and the lines it
                    // stored are the duplicates of what the agent resends.
                    active.log.resume(lines, bytes, next_seq, &state.config.deploys);
                    Ok(Reporting::Live(active))
                }
                Err(e) => {
                    // Not cached: the next report tries again, so a passing vault problem heals.
                    tracing::error!(deployment_id, error = %e, "cannot build the masker: the deployment's log is withheld");
                    Ok(Reporting::Withheld)
                }
            }
        }
        _ => Err(NotAssigned(deployment_id)),
    }
}

/// After a restart the values a deployment was sent are gone from memory; mask with the current
/// values of its secrets and the versions it recorded, still kept (the agent masks with the
/// exact ones before sending, too). Any secret
/// that cannot be read or decrypted fails the whole masker: a partial one would let its value
/// through. Also answers how much of its log is stored already (lines, bytes) and the seq after
/// the highest stored one.
async fn rebuild_masker(
    state: &AppState,
    deployment_id: i64,
) -> Result<(Masker, (u64, u64), u64), DeployError> {
    let vault = state.vault.clone();
    state
        .db
        .read(move |c| {
            let (project_id, env_id) = store::project_and_environment(c, deployment_id)?;
            let mut sealed = secret_store::for_environment(c, project_id, env_id)?;
            // A redeploy was sent older versions: those it recorded are masked too.
            sealed.extend(secret_store::versions_of_deployment(c, deployment_id)?.0);
            let values = sealed
                .iter()
                .map(|s| vault.decrypt(&s.ciphertext))
                .collect::<Result<Vec<_>, _>>()?;
            let usage = store::log_usage(c, deployment_id)?;
            let next_seq = store::max_seq(c, deployment_id)?.map_or(0, |s| u64::try_from(s).unwrap_or(0) + 1);
            Ok::<_, DeployError>((Masker::new(values.iter().map(|v| v.as_str())), usage, next_seq))
        })
        .await
}

/// Record, once, that a deployment's log is withheld: its error says so, and one log line (at the
/// first withheld line's place) too. Later lines are dropped without a word.
async fn note_withheld(state: &AppState, agent: &AgentIdentity, deployment_id: i64, seq: i64) {
    // Most withheld lines come after the note: a read tells, so they cost no write transaction.
    let error = state.db.read(move |c| store::error_of(c, deployment_id)).await;
    if matches!(&error, Ok(Some(e)) if e == WITHHELD_NOTE) {
        return;
    }
    let noted = state
        .db
        .write(move |tx| store::note_withheld(tx, deployment_id, seq, WITHHELD_NOTE, now_ms()))
        .await;
    match noted {
        Ok(true) => state.hub.publish(HubEvent::DeploymentChanged {
            deployment_id,
            environment_id: agent.environment_id,
        }),
        Ok(false) => {}
        Err(e) => tracing::error!(deployment_id, error = %e, "cannot record that the log is withheld"),
    }
}

pub async fn on_log(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
    seq: u64,
    stream: LogStream,
    line: &str,
) -> Result<(), NotAssigned> {
    let wire_seq = seq;
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let to = AckTo {
        agent_id: agent.id,
        environment_id: agent.environment_id,
    };
    // Lines not stored are still acknowledged, after everything before them is committed, so
    // the agent stops holding them.
    let seen = || async move {
        if state.logs.seen(deployment_id, seq, to).await.is_err() {
            tracing::warn!(
                deployment_id,
                "log line not acknowledged: the log writer has stopped"
            );
        }
    };
    let active = match context(state, agent, deployment_id).await? {
        Reporting::Live(active) => active,
        Reporting::Finished => {
            seen().await;
            return Ok(());
        }
        Reporting::Withheld => {
            note_withheld(state, agent, deployment_id, seq).await;
            seen().await;
            return Ok(());
        }
    };
    // A line resent after a reconnect: neither counted, shown nor stored twice.
    if active.log.is_duplicate(wire_seq) {
        seen().await;
        return Ok(());
    }
    let at = now_ms();
    let limits = &state.config.deploys;
    // Masked before it is cut, so a secret across the cut is still recognised whole.
    let masked = active
        .masker
        .mask_and_cut(line, limits.log_max_line_bytes, line.len());
    let (stream, line) = match active.log.admit(wire_seq, masked.len(), limits) {
        Admit::Keep => (stream.as_str(), masked),
        Admit::Truncate => {
            tracing::warn!(
                deployment_id,
                "deployment log reached its cap: later lines are dropped"
            );
            ("agent", truncated_note(limits))
        }
        Admit::Drop | Admit::Duplicate => {
            seen().await;
            return Ok(());
        }
    };
    // No live viewer is not an error: the line is stored for those who come later.
    let _ = active.live.send(LiveEvent::Line(LogLine {
        seq,
        stream: stream.into(),
        line: line.clone(),
        at: rfc3339(at),
    }));
    let pending = PendingLine {
        deployment_id,
        seq,
        stream,
        line,
        at,
    };
    if state.logs.line(pending, to).await.is_err() {
        tracing::warn!(deployment_id, "log line dropped: the log writer has stopped");
    }
    Ok(())
}

/// A STATUS says how many lines the agent sent (`lines`, newer agents): say so when some never
/// arrived. An agent resends unacknowledged lines before its STATUS, so this means lines it
/// could not keep (its spill bound) or an agent from before LOG_ACK across an appliance restart.
pub fn check_line_count(state: &AppState, deployment_id: i64, lines: Option<u64>) {
    let (Some(sent), Some(active)) = (lines, state.hub.active_deploy(deployment_id)) else {
        return;
    };
    let arrived = active.log.next_seq();
    if arrived < sent {
        tracing::warn!(
            deployment_id,
            sent,
            arrived,
            "the agent sent log lines this appliance never received: the stored log ends early"
        );
    }
}

/// What a STATUS says about one deployment.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub outcome: DeployOutcome,
    pub services: Vec<ServiceState>,
    pub error: Option<String>,
    pub commit: Option<String>,
    /// On SUCCESS, from an agent offering releases: what it put on the server.
    pub release: Option<stagely_protocol::Release>,
    /// Whether `docker compose up` ran (absent from older agents).
    pub applied: Option<bool>,
}

/// A STATUS from the agent; `Ok(true)` when it should be acknowledged. A success's release is
/// recorded with the end (a release that fails validation is logged and dropped: the STATUS
/// still counts); a failure after `up` ran starts the environment's automatic rollback when it
/// has one ([`super::rollback::after_failure`]).
pub async fn on_status(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
    report: StatusReport,
) -> Result<bool, NotAssigned> {
    let StatusReport {
        outcome,
        services,
        error,
        commit,
        release,
        applied,
    } = report;
    let active = match context(state, agent, deployment_id).await? {
        Reporting::Live(active) => Some(active),
        // Already finished (e.g. failed as agent_lost): acknowledge so the agent stops resending.
        Reporting::Finished => return Ok(true),
        Reporting::Withheld => None,
    };
    // Without a masker, the agent's own words (service states, its error) are withheld too.
    let mask = |text: &str| match &active {
        Some(active) => active.masker.mask(text),
        None => "(withheld)".to_owned(),
    };
    let masked_services = services
        .into_iter()
        .map(|s| ServiceState {
            state: mask(&s.state),
            name: s.name,
            health: s.health,
            exit_code: s.exit_code,
        })
        .collect();
    let status = match outcome {
        DeployOutcome::Success => DeployStatus::Success,
        DeployOutcome::Fail => DeployStatus::Failed,
        DeployOutcome::Cancelled => DeployStatus::Cancelled,
    };
    let error = match &active {
        Some(_) => error.map(|e| mask(&e)),
        None => Some(WITHHELD_NOTE.to_owned()),
    };
    let commit = commit.filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_hexdigit()));
    let release = match release {
        Some(r) if status == DeployStatus::Success => match crate::releases::validate(&r) {
            Ok(()) => Some((agent.id, r)),
            Err(why) => {
                tracing::warn!(
                    deployment_id,
                    agent_id = agent.id,
                    why,
                    "the agent's release is not valid: not recorded"
                );
                None
            }
        },
        // A release is what a success put on the server; with any other outcome it is noise.
        Some(_) => None,
        None => None,
    };
    let recorded = release.is_some();
    let finish = Finish {
        deployment_id,
        status,
        error: error.clone(),
        services: masked_services,
        commit,
        at: now_ms(),
        release,
    };
    match state.logs.finish(finish).await {
        Ok(changed) => {
            if let Some(active) = &active {
                // No live viewer is not an error.
                let _ = active.live.send(LiveEvent::Finished { status, error });
            }
            state.hub.end_deploy(deployment_id);
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id: agent.environment_id,
            });
            tracing::info!(
                deployment_id,
                agent_id = agent.id,
                status = status.as_str(),
                "deployment finished"
            );
            if changed && recorded {
                super::rollback::release_recorded(state, agent.environment_id).await;
            }
            if changed && status == DeployStatus::Failed && applied == Some(true) {
                super::rollback::after_failure(state, deployment_id, agent.environment_id).await;
            }
            super::queue::dispatch_next(state, agent.environment_id).await;
            Ok(true)
        }
        Err(e) => {
            // Not acknowledged: the agent keeps the STATUS and resends it after reconnecting.
            tracing::error!(deployment_id, error = %e, "cannot store deployment status");
            Ok(false)
        }
    }
}

/// The agent says which deployments it still holds; any other unfinished deployment of its
/// was lost (the agent restarted mid-deploy) and fails now rather than at the timeout. Then the
/// queue: CANCEL for what was cancelled while it was away, and the newest waiting deployment.
/// `connected_at` is when this connection was registered (ms): a deployment sent since then
/// went over this very connection, after the HELLO was written, and is not lost.
pub async fn on_hello(state: &AppState, agent: &AgentIdentity, active: Option<Vec<i64>>, connected_at: i64) {
    if let Some(active) = &active {
        lost_pass(state, agent, active, connected_at).await;
    }
    super::queue::on_hello(state, agent, active.as_deref()).await;
}

async fn lost_pass(state: &AppState, agent: &AgentIdentity, active: &[i64], connected_at: i64) {
    let agent_id = agent.id;
    let unfinished = match state.db.read(store::unfinished).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "cannot list unfinished deployments");
            return;
        }
    };
    for (id, environment_id, owner, sent_at) in unfinished {
        if owner == Some(agent_id) && !active.contains(&id) && sent_at < connected_at {
            tracing::warn!(
                deployment_id = id,
                agent_id,
                "agent reconnected without this deployment: agent_lost"
            );
            end_by_server(state, id, environment_id, "agent_lost").await;
        }
    }
}
