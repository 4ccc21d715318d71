//! Lifecycle actions: restart, stop or start one service, or take a whole environment down,
//! through the environment's agents (ACTION → ACTION_RESULT, docs/protocol.md).
//!
//! Which agents: every online, not revoked agent of the environment that offers `operate`, all
//! at once (an environment's agents serve the same compose project; a deploy goes to the oldest
//! online one, but a stack brought up earlier by another one may run where that one runs). The
//! answer lists each; it is `ok` only when every one of them succeeded. An online agent without
//! `operate` is listed as skipped. Refused (nothing sent) when the environment has no agent
//! online offering `operate`, or while one of its deployments is queued or running.
//!
//! Audited `service.restart|stop|start` / `environment.down` with the project, environment and
//! service names and the outcome, once the agents answered (or the wait ran out).

use std::time::Duration;

use serde::Serialize;
use stagely_protocol::mask::Masker;
use stagely_protocol::operate::{self, Action};
use stagely_protocol::{self as protocol, ServerMessage};

use super::actions_store::{self as store, EnvAgent, Target};
use crate::agents::hub::{HubEvent, Outbound};
use crate::agents::requests::Reply;
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms};
use crate::users::Principal;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("environment not found")]
    EnvironmentNotFound,
    /// 400: never sent to an agent.
    #[error("service: {0}")]
    InvalidService(String),
    #[error("unknown action {0:?}: use restart, stop or start")]
    UnknownAction(String),
    /// 409: no agent (online, or at all) that could run it.
    #[error("{0}")]
    NoAgent(String),
    /// 409: its agent is connected to another replica (issue 17: actions are not routed).
    #[error(
        "the agent of {environment:?} is connected to replica {replica}: service actions go only through the \
         replica holding the agent; retry there (or when the agent reconnects here)"
    )]
    Elsewhere { environment: String, replica: String },
    /// 409: a deployment of the environment is queued or running.
    #[error(
        "deployment #{deployment_id} of {environment:?} is {status}: wait for it to end (or cancel it), then try again"
    )]
    Deploying {
        environment: String,
        deployment_id: i64,
        status: String,
    },
    /// 502: an agent ran it and it failed (its masked reason).
    #[error("{0}")]
    Failed(String),
    /// 504: an agent did not answer in time.
    #[error("{0}")]
    Timeout(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for ActionError {
    fn from(e: crate::db::SqlError) -> Self {
        ActionError::Db(e.into())
    }
}

/// How long a successful action waits for the agent's RUNTIME report of the new state.
const RUNTIME_WAIT: Duration = Duration::from_secs(5);

/// What one agent answered.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentOutcome {
    pub id: i64,
    pub name: String,
    /// `done`, `failed`, `timeout`, `disconnected` or `skipped` (it does not offer `operate`).
    pub result: String,
    pub ok: bool,
    /// Why it failed, in the agent's words, masked with the environment's secret values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to an action.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActionOutcome {
    pub environment_id: i64,
    /// `null` for `down`.
    pub service: Option<String>,
    /// `restart`, `stop`, `start` or `down`.
    pub action: String,
    pub ok: bool,
    pub agents: Vec<AgentOutcome>,
}

/// A per-service action from its name in a route.
pub fn service_action(name: &str) -> Result<Action, ActionError> {
    match name {
        "restart" => Ok(Action::Restart),
        "stop" => Ok(Action::Stop),
        "start" => Ok(Action::Start),
        other => Err(ActionError::UnknownAction(other.chars().take(32).collect())),
    }
}

/// Check the service name the way the agent will (it checks again).
pub fn check_service(service: &str) -> Result<(), ActionError> {
    match operate::service_name_error(service) {
        Some(rule) => Err(ActionError::InvalidService(rule)),
        None => Ok(()),
    }
}

fn audit_action(action: Action) -> &'static str {
    match action {
        Action::Restart => "service.restart",
        Action::Stop => "service.stop",
        Action::Start => "service.start",
        Action::Down => "environment.down",
    }
}

/// Run `action` on `service` (or, for `down`, on the whole environment) and wait for the
/// agents' answers. `Ok` with `ok: false` never happens: a failure is [`ActionError::Failed`]
/// or [`ActionError::Timeout`] (their message names the agents), after the audit entry.
pub async fn run(
    state: &AppState,
    who: &Principal,
    environment_id: i64,
    action: Action,
    service: Option<&str>,
) -> Result<ActionOutcome, ActionError> {
    if let Some(s) = service {
        check_service(s)?;
    }
    let (target, agents, masker) = prepare(state, environment_id).await?;
    let outcome = send_and_wait(state, &target, &agents, action, service, &masker).await?;
    record(state, who, &target, action, service, &outcome).await?;
    let names = |pred: &dyn Fn(&AgentOutcome) -> bool| {
        outcome
            .agents
            .iter()
            .filter(|a| pred(a))
            .map(|a| match &a.error {
                Some(e) => format!("agent {}: {e}", a.name),
                None => format!("agent {}: {}", a.name, a.result),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if outcome.agents.iter().any(|a| a.result == "timeout") {
        return Err(ActionError::Timeout(format!(
            "{} did not finish in time: {}",
            action.as_str(),
            names(&|a: &AgentOutcome| !a.ok && a.result != "skipped")
        )));
    }
    if !outcome.ok {
        return Err(ActionError::Failed(names(&|a: &AgentOutcome| {
            !a.ok && a.result != "skipped"
        })));
    }
    Ok(outcome)
}

/// The environment, the agents to send to, and the masker for their answers. Refuses when no
/// agent could run it, or a deployment is in flight.
async fn prepare(
    state: &AppState,
    environment_id: i64,
) -> Result<(Target, Vec<EnvAgent>, Masker), ActionError> {
    let vault = state.vault.clone();
    let (target, agents, in_flight, masker) = state
        .db
        .read(move |c| {
            let target = store::target(c, environment_id)?.ok_or(ActionError::EnvironmentNotFound)?;
            let agents = store::agents(c, environment_id)?;
            let in_flight = store::deployment_in_flight(c, environment_id)?;
            let masker = environment_masker(c, &vault, target.project_id, environment_id)?;
            Ok::<_, ActionError>((target, agents, in_flight, masker))
        })
        .await?;
    if let Some((deployment_id, status)) = in_flight {
        return Err(ActionError::Deploying {
            environment: target.environment,
            deployment_id,
            status,
        });
    }
    let ids: Vec<i64> = agents.iter().map(|a| a.id).collect();
    let online: Vec<EnvAgent> = agents.into_iter().filter(|a| state.hub.is_online(a.id)).collect();
    if online.is_empty() {
        // Connected to another replica: actions are not routed between replicas (issue 17).
        let now = now_ms();
        let elsewhere = state
            .db
            .read(move |c| {
                for id in ids {
                    if let Some(r) = crate::agents::store::presence(c, id, now)?.replica {
                        return Ok::<_, crate::db::DbError>(Some(r));
                    }
                }
                Ok(None)
            })
            .await?;
        if let Some(replica) = elsewhere {
            return Err(ActionError::Elsewhere {
                environment: target.environment,
                replica,
            });
        }
        return Err(ActionError::NoAgent(format!(
            "no agent of {:?} is online: start its agent (see the Agents page), then try again",
            target.environment
        )));
    }
    if !online.iter().any(|a| a.operates) {
        return Err(ActionError::NoAgent(format!(
            "no online agent of {:?} offers actions (the `operate` capability): update its agent \
             ({}) to this version, then try again",
            target.environment,
            online
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok((target, online, masker))
}

/// Send ACTION to every agent offering `operate` and wait for their answers (at most
/// `agents.action_timeout_secs`).
pub(super) async fn send_and_wait(
    state: &AppState,
    target: &Target,
    agents: &[EnvAgent],
    action: Action,
    service: Option<&str>,
    masker: &Masker,
) -> Result<ActionOutcome, ActionError> {
    let wait = Duration::from_secs(state.config.agents.action_timeout_secs);
    // Subscribed before sending, so the RUNTIME that follows the action is not missed.
    let mut events = state.hub.events();
    let waits = agents.iter().map(|a| async move {
        let outcome = |result: &str, ok: bool, error: Option<String>| AgentOutcome {
            id: a.id,
            name: a.name.clone(),
            result: result.to_owned(),
            ok,
            error: error.map(|e| masker.mask(&e)),
        };
        if !a.operates {
            return outcome("skipped", true, None);
        }
        let mut ticket = state.requests.open(a.id, 1);
        let frame = protocol::encode(&ServerMessage::Action {
            request_id: ticket.id,
            project: target.compose_project.clone(),
            action,
            service: service.map(str::to_owned),
        });
        if state
            .hub
            .send_to(a.id, target.environment_id, Outbound::Text(frame.into()))
            .is_err()
        {
            return outcome("disconnected", false, Some("the agent is not connected".into()));
        }
        match tokio::time::timeout(wait, ticket.rx.recv()).await {
            Err(_) => outcome(
                "timeout",
                false,
                Some(format!("no answer within {} s", wait.as_secs())),
            ),
            Ok(None) => outcome(
                "disconnected",
                false,
                Some("the agent disconnected before it answered".into()),
            ),
            Ok(Some(Reply::Action { ok: true, .. })) => outcome("done", true, None),
            Ok(Some(Reply::Action { ok: false, error })) => outcome(
                "failed",
                false,
                Some(error.unwrap_or_else(|| "the agent gave no reason".into())),
            ),
            Ok(Some(_)) => outcome("failed", false, Some("an unexpected answer".into())),
        }
    });
    let answers = futures_util::future::join_all(waits).await;
    if answers.iter().any(|a| a.result == "done") {
        // The agent reports what runs now right after the action (RUNTIME): waiting a moment
        // for it means the answer, and a page loaded after it, show the new state.
        let env_id = target.environment_id;
        let _ = tokio::time::timeout(RUNTIME_WAIT, async {
            loop {
                match events.recv().await {
                    Ok(HubEvent::RuntimeChanged { environment_id }) if environment_id == env_id => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ => {}
                }
            }
        })
        .await;
    }
    Ok(ActionOutcome {
        environment_id: target.environment_id,
        service: service.map(str::to_owned),
        action: action.as_str().to_owned(),
        ok: answers.iter().all(|a| a.ok),
        agents: answers,
    })
}

/// The audit entry: `shop/staging web: done (web-1)` or `... failed (web-1: <why>)`.
async fn record(
    state: &AppState,
    who: &Principal,
    target: &Target,
    action: Action,
    service: Option<&str>,
    outcome: &ActionOutcome,
) -> Result<(), ActionError> {
    let actor = who.actor.clone();
    let what = match service {
        Some(s) => format!("{}/{} {s}", target.project, target.environment),
        None => format!("{}/{}", target.project, target.environment),
    };
    let agents = outcome
        .agents
        .iter()
        .map(|a| match &a.error {
            Some(e) => format!(
                "{} {}: {}",
                a.name,
                a.result,
                e.chars().take(200).collect::<String>()
            ),
            None => format!("{} {}", a.name, a.result),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let detail = format!(
        "{what}: {} ({agents})",
        if outcome.ok { "done" } else { "failed" }
    );
    let (env_id, project_id) = (target.environment_id, target.project_id);
    let env_name = format!("{}/{}", target.project, target.environment);
    let name = audit_action(action);
    state
        .db
        .write(move |tx| {
            let entry = audit::Entry::new(&actor, name, "environment", Some(env_id))
                .name(&env_name)
                .project(project_id)
                .detail(&detail);
            audit::record(tx, now_ms(), &entry)?;
            Ok::<_, ActionError>(())
        })
        .await
}

/// Take an environment's stack down for a deletion: like `down`, but the caller decided which
/// agents (see `super::delete`); audited `environment.down` too.
pub(super) async fn down_for_delete(
    state: &AppState,
    who: &Principal,
    target: &Target,
    agents: &[EnvAgent],
) -> Result<ActionOutcome, ActionError> {
    let env_id = target.environment_id;
    let project_id = target.project_id;
    let vault = state.vault.clone();
    let masker = state
        .db
        .read(move |c| environment_masker(c, &vault, project_id, env_id))
        .await?;
    let outcome = send_and_wait(state, target, agents, Action::Down, None, &masker).await?;
    record(state, who, target, Action::Down, None, &outcome).await?;
    Ok(outcome)
}

/// A masker over the environment's current secret values (for the agents' error lines).
fn environment_masker(
    c: &crate::db::Conn<'_>,
    vault: &crate::secrets::vault::Vault,
    project_id: i64,
    environment_id: i64,
) -> Result<Masker, ActionError> {
    let sealed = crate::secrets::store::for_environment(c, project_id, environment_id)?;
    let values = sealed
        .iter()
        .map(|s| vault.decrypt(&s.ciphertext))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DbError::Task(e.to_string()))?;
    Ok(Masker::new(values.iter().map(|v| v.as_str())))
}
