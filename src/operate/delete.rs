//! Deleting a project or an environment: its stacks are taken down through its agents first
//! (ACTION `down`, see [`super::actions`]), then the records go (`projects::ops`).
//!
//! Per environment, before anything is sent:
//! - an agent (not revoked) that has connected before and is offline now: refused (409
//!   `agent_offline`, naming it: its stack would be left running), unless an admin forces it
//!   (`?force=true`; a member's force is 403);
//! - an agent connected to another replica (issue 17; actions are not routed between replicas):
//!   refused (409 `agent_elsewhere`, naming the agent and the replica: deleting through that
//!   replica takes its stack down first), unless an admin forces it, as for an offline agent;
//! - online agents offering `operate`: each is sent `down`; any failure (or no answer) → nothing
//!   is deleted, the error says why;
//! - no agent that could take it down (none online with `operate`, or no agent at all) while a
//!   deployment of it succeeded: the check of issue 12 (409 `stack_running`, unless
//!   `?stack_removed=true` says it was taken down by hand, or an admin forces it).
//!
//! A deployment queued or running in the environment refuses it (409), like an action.

use serde::Deserialize;

use super::actions::{self, ActionError};
use super::actions_store::{self as store, EnvAgent, Target};
use crate::app::AppState;
use crate::projects::ops::{self as project_ops, StackCheck};
use crate::projects::{ProjectError, store as project_store};
use crate::users::{Principal, Role};
use crate::web::error::WebError;

/// `?stack_removed=true&force=true` on a delete.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct DeleteOptions {
    /// The person took the stack down on the target themselves (issue 12).
    #[serde(default)]
    pub stack_removed: bool,
    /// Admin only: delete even though an agent is offline (its stack may be left running).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("only an admin can force a deletion")]
    ForceNotAllowed,
    #[error("{0}")]
    AgentOffline(String),
    #[error("{0}")]
    AgentElsewhere(String),
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error(transparent)]
    Project(#[from] ProjectError),
}

impl From<crate::db::DbError> for DeleteError {
    fn from(e: crate::db::DbError) -> Self {
        DeleteError::Project(ProjectError::Db(e))
    }
}

impl From<DeleteError> for WebError {
    fn from(e: DeleteError) -> Self {
        match e {
            e @ DeleteError::ForceNotAllowed => WebError::ForbiddenBecause(e.to_string()),
            DeleteError::AgentOffline(message) => WebError::Conflict {
                code: "agent_offline",
                message,
            },
            DeleteError::AgentElsewhere(message) => WebError::Conflict {
                code: "agent_elsewhere",
                message,
            },
            DeleteError::Action(ActionError::Failed(m)) => WebError::Status {
                status: axum::http::StatusCode::BAD_GATEWAY,
                code: "agent_failed",
                message: format!("nothing was deleted: taking the stack down failed: {m}"),
            },
            DeleteError::Action(ActionError::Timeout(m)) => WebError::Status {
                status: axum::http::StatusCode::GATEWAY_TIMEOUT,
                code: "agent_timeout",
                message: format!("nothing was deleted: taking the stack down did not finish: {m}"),
            },
            DeleteError::Action(e) => e.into(),
            DeleteError::Project(e) => e.into(),
        }
    }
}

/// What will be done about one environment.
struct Plan {
    target: Target,
    /// Online agents to send `down` (those without `operate` are skipped by the send).
    down: Vec<EnvAgent>,
    /// Offline agents that may have left a stack (forced past).
    offline: Vec<String>,
    /// Agents connected to another replica, and which (forced past).
    elsewhere: Vec<(String, String)>,
}

async fn plan(state: &AppState, env_ids: Vec<i64>) -> Result<Vec<Plan>, DeleteError> {
    let rows = state
        .db
        .read(move |c| {
            let mut rows = Vec::new();
            for id in env_ids {
                let target = store::target(c, id)?.ok_or(ActionError::EnvironmentNotFound)?;
                let agents = store::agents(c, id)?;
                let in_flight = store::deployment_in_flight(c, id)?;
                rows.push((target, agents, in_flight));
            }
            Ok::<_, ActionError>(rows)
        })
        .await?;
    let mut plans = Vec::new();
    for (target, agents, in_flight) in rows {
        if let Some((deployment_id, status)) = in_flight {
            return Err(ActionError::Deploying {
                environment: target.environment,
                deployment_id,
                status,
            }
            .into());
        }
        let (down, offline): (Vec<EnvAgent>, Vec<EnvAgent>) =
            agents.into_iter().partition(|a| state.hub.is_online(a.id));
        let (elsewhere, offline) = held_elsewhere(state, offline).await?;
        let offline = offline
            .into_iter()
            .filter(|a| a.ever_connected)
            .map(|a| a.name)
            .collect();
        plans.push(Plan {
            target,
            down,
            offline,
            elsewhere,
        });
    }
    Ok(plans)
}

/// Of agents not connected here, those another replica holds (a live presence lease: issue 17),
/// with the replica, and the others. Nothing is held elsewhere on SQLite.
async fn held_elsewhere(
    state: &AppState,
    agents: Vec<EnvAgent>,
) -> Result<(Vec<(String, String)>, Vec<EnvAgent>), DeleteError> {
    if agents.is_empty() || state.db.backend() != crate::db::Backend::Postgres {
        return Ok((Vec::new(), agents));
    }
    let now = crate::db::now_ms();
    let ids: Vec<i64> = agents.iter().map(|a| a.id).collect();
    let replicas = state
        .db
        .read(move |c| {
            ids.into_iter()
                .map(|id| Ok(crate::agents::store::presence(c, id, now)?.replica))
                .collect::<Result<Vec<_>, crate::db::DbError>>()
        })
        .await?;
    let mut elsewhere = Vec::new();
    let mut rest = Vec::new();
    for (a, replica) in agents.into_iter().zip(replicas) {
        match replica {
            Some(r) => elsewhere.push((a.name, r)),
            None => rest.push(a),
        }
    }
    Ok((elsewhere, rest))
}

/// Check the plans against the options; `Ok` when deleting may go on (after the downs).
async fn refuse_if_unsafe(state: &AppState, plans: &[Plan], opts: DeleteOptions) -> Result<(), DeleteError> {
    for p in plans {
        if let Some((agent, replica)) = p.elsewhere.first()
            && !opts.force
        {
            return Err(DeleteError::AgentElsewhere(format!(
                "agent {agent} of {:?} is connected to replica {replica}, and actions (the take-down of \
                 its stack, compose project {:?}) go only through the replica holding the agent: delete \
                 again through that replica (or once the agent reconnects here), or, as an admin, force \
                 the deletion (?force=true) and take the stack down yourself",
                p.target.environment, p.target.compose_project
            )));
        }
        if !p.offline.is_empty() && !opts.force {
            return Err(DeleteError::AgentOffline(format!(
                "agent {} of {:?} is offline: deleting now, its stack (compose project {:?}) would be \
                 left running on its target with nobody tracking it. Start the agent and delete again \
                 (its stack is then taken down first), or, as an admin, force the deletion (?force=true)",
                p.offline.join(", "),
                p.target.environment,
                p.target.compose_project
            )));
        }
        let can_take_down = p.down.iter().any(|a| a.operates);
        if !can_take_down && !opts.force && !opts.stack_removed {
            // Nobody can take it down: the check of issue 12 decides (it refuses when a stack
            // may run).
            let id = p.target.environment_id;
            let stack = state
                .db
                .read(move |c| project_store::stack_in_use(c, None, Some(id)))
                .await?;
            if let Some((environment, compose_project, deployment_id)) = stack {
                return Err(ProjectError::StackRunning {
                    environment,
                    compose_project,
                    deployment_id,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Take each planned environment down; the audit note for the deletion.
async fn take_down(
    state: &AppState,
    who: &Principal,
    plans: &[Plan],
    opts: DeleteOptions,
) -> Result<String, DeleteError> {
    let mut notes = Vec::new();
    for p in plans {
        if p.down.iter().any(|a| a.operates) {
            actions::down_for_delete(state, who, &p.target, &p.down)
                .await
                .and_then(|o| {
                    if o.ok {
                        Ok(o)
                    } else {
                        Err(ActionError::Failed(
                            o.agents
                                .iter()
                                .filter(|a| !a.ok)
                                .map(|a| format!("agent {}: {}", a.name, a.error.clone().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join("; "),
                        ))
                    }
                })
                .map_err(|e| match e {
                    ActionError::Failed(m) => ActionError::Failed(format!("{}: {m}", p.target.environment)),
                    other => other,
                })?;
            let names: Vec<&str> = p
                .down
                .iter()
                .filter(|a| a.operates)
                .map(|a| a.name.as_str())
                .collect();
            notes.push(format!(
                "{} taken down through {}",
                p.target.environment,
                names.join(", ")
            ));
        }
        if !p.offline.is_empty() {
            notes.push(format!(
                "forced: agent {} of {} offline, its stack may still run",
                p.offline.join(", "),
                p.target.environment
            ));
        }
        for (agent, replica) in &p.elsewhere {
            notes.push(format!(
                "forced: agent {agent} of {} connected to replica {replica}, its stack left running",
                p.target.environment
            ));
        }
    }
    if opts.stack_removed && notes.is_empty() {
        return Ok(" (its stack taken down on the target, as confirmed)".into());
    }
    if opts.force && notes.is_empty() {
        return Ok(" (forced by an admin)".into());
    }
    Ok(if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    })
}

fn check_force(who: &Principal, opts: DeleteOptions) -> Result<(), DeleteError> {
    if opts.force && who.role != Role::Admin {
        return Err(DeleteError::ForceNotAllowed);
    }
    Ok(())
}

/// Delete a project after taking each environment's stack down through its agents.
pub async fn delete_project(
    state: &AppState,
    who: &Principal,
    id: i64,
    opts: DeleteOptions,
) -> Result<(), DeleteError> {
    check_force(who, opts)?;
    let env_ids = state
        .db
        .read(move |c| {
            project_store::get(c, id)?;
            Ok::<_, DeleteError>(store::environments_of(c, id)?)
        })
        .await?;
    let plans = plan(state, env_ids).await?;
    refuse_if_unsafe(state, &plans, opts).await?;
    let note = take_down(state, who, &plans, opts).await?;
    let check = if note.is_empty() {
        StackCheck::Guard
    } else {
        StackCheck::Handled(note)
    };
    project_ops::delete_project(state, who, id, check).await?;
    Ok(())
}

/// Delete an environment after taking its stack down through its agents.
pub async fn delete_environment(
    state: &AppState,
    who: &Principal,
    id: i64,
    opts: DeleteOptions,
) -> Result<(), DeleteError> {
    check_force(who, opts)?;
    let plans = match plan(state, vec![id]).await {
        Err(DeleteError::Action(ActionError::EnvironmentNotFound)) => {
            return Err(ProjectError::EnvironmentNotFound.into());
        }
        other => other?,
    };
    refuse_if_unsafe(state, &plans, opts).await?;
    let note = take_down(state, who, &plans, opts).await?;
    let check = if note.is_empty() {
        StackCheck::Guard
    } else {
        StackCheck::Handled(note)
    };
    project_ops::delete_environment(state, who, id, check).await?;
    Ok(())
}
