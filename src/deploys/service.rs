//! Steps 1–3 of the deploy sequence (trigger, lookup, dispatch) and the handling of what agents
//! report back (LOG, STATUS), with the rule that an agent speaks only for its own deployments.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::store::{self, Finish, NewDeployment, PendingLine};
use super::{DeployError, DeployStatus, LiveEvent, LogLine};
use crate::agents::hub::{ActiveDeploy, HubEvent, Outbound};
use crate::agents::{AgentIdentity, store as agent_store};
use crate::app::AppState;
use crate::db::{DbError, now_ms, rfc3339};
use crate::projects::{ProjectError, store as project_store};
use crate::secrets::store::{self as secret_store, SealedSecret};
use crate::secrets::vault::Vault;
use crate::users::Principal;
use crate::{audit, projects};
use stagely_protocol::mask::Masker;
use stagely_protocol::{
    self as protocol, DeployOutcome, LogStream, ProjectSpec, SecretEntry, ServerMessage, ServiceState,
};

/// Start a deploy of one environment of a project; returns the deployment id once the agent's
/// connection holds the DEPLOY.
pub async fn trigger(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    environment: Option<String>,
) -> Result<i64, DeployError> {
    // The lookup is a few indexed reads, on this thread (no trip to the blocking pool); the
    // decryption and the record are one trip, decryption first, so a vault problem leaves
    // nothing half-made. The record keeps the versions of exactly the values decrypted.
    let hub = state.hub.clone();
    let target = state
        .db
        .lookup(move |c| find_target(c, &hub, project_id, environment.as_deref()))
        .await?;
    let Target {
        project,
        env,
        agent_id,
        sealed,
    } = target;
    let (db, vault, actor) = (state.db.clone(), state.vault.clone(), who.actor.clone());
    let (env_id, env_name) = (env.id, env.name.clone());
    let git_ref = env.git_ref.clone().unwrap_or_else(|| project.git_ref.clone());
    let ref_for_record = git_ref.clone();
    let (secrets, deployment_id) = tokio::task::spawn_blocking(move || {
        let secrets = decrypt_all(&vault, &sealed)?;
        let new = NewDeployment {
            project_id,
            environment_id: env_id,
            environment: &env_name,
            agent_id,
            git_ref: &ref_for_record,
            triggered_by: &actor,
        };
        let id = db.write_blocking(|tx| {
            let now = now_ms();
            let id = store::insert(tx, &new, &sealed, now)?;
            audit::record(tx, now, &actor, "deploy.start", "deployment", Some(id), &env_name)?;
            Ok::<_, DeployError>(id)
        })?;
        Ok::<_, DeployError>((secrets, id))
    })
    .await
    .map_err(|e| DeployError::Db(DbError::Task(e.to_string())))??;
    state.hub.start_deploy(
        deployment_id,
        agent_id,
        Masker::new(secrets.iter().map(|s| s.value.as_str())),
    );
    let frame = Zeroizing::new(protocol::encode(&ServerMessage::Deploy {
        deployment_id,
        project: ProjectSpec {
            name: project.name.clone(),
            environment: env.name.clone(),
            repo_url: project.repo_url.clone(),
            git_ref,
            compose_path: project.compose_path.clone(),
            pull: project.pull,
        },
        secrets,
    }));
    if let Err(e) = state.hub.send_to(agent_id, env.id, Outbound::Text(frame)) {
        tracing::warn!(deployment_id, agent_id, error = ?e, "agent went away before the DEPLOY could be queued");
        end_by_server(state, deployment_id, env.id, "agent_offline").await;
        let env_name = env.name.clone();
        return Err(state
            .db
            .read(move |c| offline_error(c, &env_name, &[agent_id]))
            .await?);
    }
    tracing::info!(deployment_id, agent_id, project = %project.name, environment = %env.name, "deploy dispatched");
    state.hub.publish(HubEvent::DeploymentChanged {
        deployment_id,
        environment_id: env.id,
    });
    Ok(deployment_id)
}

/// Where a deploy goes: the project, its environment, an online agent there, and the sealed
/// values to send.
struct Target {
    project: projects::Project,
    env: projects::Environment,
    agent_id: i64,
    sealed: Vec<SealedSecret>,
}

fn find_target(
    c: &rusqlite::Connection,
    hub: &crate::agents::hub::Hub,
    project_id: i64,
    environment: Option<&str>,
) -> Result<Target, DeployError> {
    let project = project_store::get(c, project_id).map_err(|e| match e {
        ProjectError::NotFound => DeployError::ProjectNotFound,
        ProjectError::Db(e) => DeployError::Db(e),
        other => DeployError::Db(DbError::Task(other.to_string())),
    })?;
    let env = pick_environment(&project, environment)?;
    let agent_ids = agent_store::ids_for_environment(c, env.id)?;
    if agent_ids.is_empty() {
        return Err(DeployError::NoAgent(env.name));
    }
    let Some(agent_id) = agent_ids.iter().copied().find(|id| hub.is_online(*id)) else {
        return Err(offline_error(c, &env.name, &agent_ids)?);
    };
    let sealed = secret_store::for_environment(c, project.id, env.id)?;
    Ok(Target {
        project,
        env,
        agent_id,
        sealed,
    })
}

fn pick_environment(
    project: &projects::Project,
    name: Option<&str>,
) -> Result<projects::Environment, DeployError> {
    let names = || {
        project
            .environments
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => project
            .environments
            .iter()
            .find(|e| e.name == name)
            .cloned()
            .ok_or_else(|| DeployError::Invalid {
                field: "environment",
                message: format!(
                    "project {} has no environment {name:?} (it has: {})",
                    project.name,
                    names()
                ),
            }),
        None => match project.environments.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(DeployError::Invalid {
                field: "environment",
                message: format!(
                    "project {} has no environment yet; create one first",
                    project.name
                ),
            }),
            _ => Err(DeployError::Invalid {
                field: "environment",
                message: format!(
                    "required: project {} has several environments ({})",
                    project.name,
                    names()
                ),
            }),
        },
    }
}

/// `agent_offline`, with the last time any of the environment's agents was seen.
fn offline_error(
    c: &rusqlite::Connection,
    environment: &str,
    agent_ids: &[i64],
) -> Result<DeployError, DbError> {
    let mut last: Option<i64> = None;
    for id in agent_ids {
        last = last.max(agent_store::last_heartbeat(c, *id)?);
    }
    Ok(DeployError::AgentOffline {
        environment: environment.to_owned(),
        last_seen: last.map(rfc3339).unwrap_or_else(|| "never".into()),
        last_seen_ms: last,
    })
}

fn decrypt_all(vault: &Vault, sealed: &[SealedSecret]) -> Result<Vec<SecretEntry>, DeployError> {
    sealed
        .iter()
        .map(|s| {
            let value = vault.decrypt(&s.ciphertext)?;
            Ok(SecretEntry {
                key: s.key.clone(),
                value: value.as_str().to_owned(),
                scope: s.scope,
                service: s.service.clone(),
            })
        })
        .collect()
}

/// An agent spoke about a deployment that is not its own (or does not exist).
#[derive(Debug, thiserror::Error)]
#[error("deployment {0} is not assigned to this agent")]
pub struct NotAssigned(pub i64);

/// The live context of a deployment this agent may report for. `Ok(None)`: it is this agent's
/// but already finished. After a server restart the context (and its masker) is rebuilt.
async fn context(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
) -> Result<Option<Arc<ActiveDeploy>>, NotAssigned> {
    if let Some(active) = state.hub.active_deploy(deployment_id) {
        return if active.agent_id == agent.id {
            Ok(Some(active))
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
        Some((Some(a), _, status)) if a == agent.id && status.is_finished() => Ok(None),
        Some((Some(a), environment_id, _)) if a == agent.id && environment_id == agent.environment_id => {
            let masker = rebuild_masker(state, deployment_id).await;
            Ok(Some(state.hub.start_deploy(deployment_id, agent.id, masker)))
        }
        _ => Err(NotAssigned(deployment_id)),
    }
}

/// After a restart the values a deployment was sent are gone from memory; mask with the current
/// values of its secrets (the agent masks with the exact ones before sending, too).
async fn rebuild_masker(state: &AppState, deployment_id: i64) -> Masker {
    let vault = state.vault.clone();
    let values = state
        .db
        .read(move |c| {
            let (project_id, env_id): (i64, i64) = c.query_row(
                "SELECT project_id, environment_id FROM deployments WHERE id = ?1",
                [deployment_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let sealed = secret_store::for_environment(c, project_id, env_id)?;
            Ok::<_, DbError>(
                sealed
                    .iter()
                    .filter_map(|s| vault.decrypt(&s.ciphertext).ok())
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap_or_default();
    Masker::new(values.iter().map(|v| v.as_str()))
}

pub async fn on_log(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
    seq: u64,
    stream: LogStream,
    line: &str,
) -> Result<(), NotAssigned> {
    let Some(active) = context(state, agent, deployment_id).await? else {
        return Ok(());
    };
    let at = now_ms();
    let line = active.masker.mask(line);
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let _ = active.live.send(LiveEvent::Line(LogLine {
        seq,
        stream: stream.as_str().into(),
        line: line.clone(),
        at: rfc3339(at),
    }));
    let pending = PendingLine {
        deployment_id,
        seq,
        stream: stream.as_str(),
        line,
        at,
    };
    if state.logs.line(pending).await.is_err() {
        tracing::warn!(deployment_id, "log line dropped: the log writer has stopped");
    }
    Ok(())
}

/// A STATUS from the agent; `Ok(true)` when it should be acknowledged.
pub async fn on_status(
    state: &AppState,
    agent: &AgentIdentity,
    deployment_id: i64,
    outcome: DeployOutcome,
    services: Vec<ServiceState>,
    error: Option<String>,
    commit: Option<String>,
) -> Result<bool, NotAssigned> {
    let Some(active) = context(state, agent, deployment_id).await? else {
        // Already finished (e.g. failed as agent_lost): acknowledge so the agent stops resending.
        return Ok(true);
    };
    let masked_services = services
        .into_iter()
        .map(|s| ServiceState {
            name: s.name,
            state: active.masker.mask(&s.state),
            health: s.health,
            exit_code: s.exit_code,
        })
        .collect();
    let status = match outcome {
        DeployOutcome::Success => DeployStatus::Success,
        DeployOutcome::Fail => DeployStatus::Failed,
    };
    let error = error.map(|e| active.masker.mask(&e));
    let commit = commit.filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_hexdigit()));
    let finish = Finish {
        deployment_id,
        status,
        error: error.clone(),
        services: masked_services,
        commit,
        at: now_ms(),
    };
    match state.logs.finish(finish).await {
        Ok(_) => {
            let _ = active.live.send(LiveEvent::Finished { status, error });
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
/// was lost (the agent restarted mid-deploy) and fails now rather than at the timeout.
pub async fn on_hello(state: &AppState, agent: &AgentIdentity, active: Option<Vec<i64>>) {
    let Some(active) = active else { return };
    let agent_id = agent.id;
    let unfinished = match state.db.read(store::unfinished).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "cannot list unfinished deployments");
            return;
        }
    };
    for (id, environment_id, owner, _) in unfinished {
        if owner == Some(agent_id) && !active.contains(&id) {
            tracing::warn!(
                deployment_id = id,
                agent_id,
                "agent reconnected without this deployment: agent_lost"
            );
            end_by_server(state, id, environment_id, "agent_lost").await;
        }
    }
}

/// Fail a deployment on the server's own authority (`agent_lost`, `timeout`, `agent_offline`).
pub async fn end_by_server(state: &AppState, deployment_id: i64, environment_id: i64, error: &str) {
    let finish = Finish {
        deployment_id,
        status: DeployStatus::Failed,
        error: Some(error.to_owned()),
        services: Vec::new(),
        commit: None,
        at: now_ms(),
    };
    let error = finish.error.clone();
    match state.logs.finish(finish).await {
        Ok(true) => {
            if let Some(active) = state.hub.end_deploy(deployment_id) {
                let _ = active.live.send(LiveEvent::Finished {
                    status: DeployStatus::Failed,
                    error,
                });
            }
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id,
            });
        }
        Ok(false) => {
            state.hub.end_deploy(deployment_id);
        }
        Err(e) => tracing::error!(deployment_id, error = %e, "cannot mark deployment failed"),
    }
}
