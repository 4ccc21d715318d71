//! The queue per environment (issue 13): at most one deployment of an environment is queued or
//! running (the `deployments_one_active` index guarantees it); triggers meanwhile wait, and when
//! the running one ends only the newest waiting one runs, the older ones ending `superseded`.
//! Also cancelling a deployment, waiting or running.
//!
//! [`dispatch_next`] is called whenever something may start: after a trigger, after every end
//! (STATUS, the server's own ends, a cancel) and after an agent's HELLO. The claim is one write
//! transaction; the secrets are read in it, so the values sent are those of the dispatch (not
//! of the trigger) and the versions recorded are exactly those sent.

use zeroize::Zeroizing;

use super::ops::{self, decrypt_all, encoded_len, finish_as, oversized, seal};
use super::store::{self, Claimed};
use super::{DeployError, DeployStatus};
use crate::agents::hub::{HubEvent, Outbound};
use crate::agents::{AgentIdentity, store as agent_store};
use crate::app::AppState;
use crate::audit;
use crate::db::{DbError, now_ms};
use crate::projects::{self, ProjectError, store as project_store};
use crate::secrets::store::{self as secret_store, SealedSecret};
use crate::users::Principal;
use stagely_protocol::mask::Masker;
use stagely_protocol::{self as protocol, ProjectSpec, SealedSecrets, ServerMessage};

/// Who the audit log names for what the queue does by itself.
const QUEUE_ACTOR: &str = "stagely";

/// One dispatch attempt.
enum Round {
    /// Nothing was sent: something runs already, nothing waits, or no agent is online.
    Idle,
    Sent,
    /// The claimed deployment could not be sent and has ended failed; the next may go.
    Failed(i64, DeployError),
}

/// Send the environment's newest waiting deployment if nothing of it is queued or running and
/// its agent is online. Answers the deployments that were claimed and ended failed instead
/// (vault or seal problems, a frame too big) with why, so a trigger can say so.
/// When the environment's agent is connected to another replica, that replica is told
/// (src/cluster/route.rs) and sends it.
pub async fn dispatch_next(state: &AppState, environment_id: i64) -> Vec<(i64, DeployError)> {
    dispatch(state, environment_id, true).await
}

/// [`dispatch_next`] for an agent connected here, telling no other replica (what the routing
/// listener and sweep run).
pub async fn dispatch_local(state: &AppState, environment_id: i64) -> Vec<(i64, DeployError)> {
    dispatch(state, environment_id, false).await
}

async fn dispatch(state: &AppState, environment_id: i64, route: bool) -> Vec<(i64, DeployError)> {
    let mut failed = Vec::new();
    // Every failed round ends one waiting deployment, so this ends.
    loop {
        match dispatch_once(state, environment_id, route).await {
            Round::Idle | Round::Sent => return failed,
            Round::Failed(id, e) => failed.push((id, e)),
        }
    }
}

/// Where the environment's agent is.
enum Holder {
    Here(i64, Option<age::x25519::Recipient>),
    Elsewhere,
    Nowhere,
}

async fn dispatch_once(state: &AppState, environment_id: i64, route: bool) -> Round {
    let hub = state.hub.clone();
    let shared = route && state.db.backend() == crate::db::Backend::Postgres;
    let me = state.cluster.replica_id.clone();
    let agent = state
        .db
        .lookup(move |c| {
            let ids = agent_store::ids_for_environment(c, environment_id)?;
            if let Some(id) = ids.iter().copied().find(|id| hub.is_online(*id)) {
                return Ok::<_, DbError>(Holder::Here(id, ops::recipient_of(c, id)?));
            }
            if shared {
                let now = now_ms();
                for id in ids {
                    if agent_store::presence(c, id, now)?
                        .replica
                        .is_some_and(|r| r != me)
                    {
                        return Ok(Holder::Elsewhere);
                    }
                }
            }
            Ok(Holder::Nowhere)
        })
        .await;
    let (agent_id, recipient) = match agent {
        Ok(Holder::Here(id, recipient)) => (id, recipient),
        Ok(Holder::Elsewhere) => {
            crate::cluster::route::notify(state, crate::cluster::route::DISPATCH, environment_id).await;
            return Round::Idle;
        }
        // Whatever waits stays waiting: the agent's HELLO dispatches it.
        Ok(Holder::Nowhere) => return Round::Idle,
        Err(e) => {
            tracing::error!(environment_id, error = %e, "cannot look up the environment's agent");
            return Round::Idle;
        }
    };
    let claimed = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let Some(claimed) = store::claim_next(tx, environment_id, agent_id, now)? else {
                return Ok(None);
            };
            let detail = format!("superseded by deployment {}", claimed.id);
            for old in &claimed.superseded {
                audit::record(
                    tx,
                    now,
                    &audit::Entry::new(QUEUE_ACTOR, "deploy.supersede", "deployment", Some(*old))
                        .detail(&detail),
                )?;
            }
            let project = project_store::get(tx, claimed.project_id).map_err(|e| match e {
                ProjectError::Db(e) => DeployError::Db(e),
                _ => DeployError::ProjectNotFound,
            })?;
            let env = project
                .environments
                .iter()
                .find(|e| e.id == environment_id)
                .cloned()
                .ok_or(DeployError::NotFound)?;
            let what = match claimed.redeploy_of {
                Some(of) => redeploy_content(tx, of, agent_id, &env)?,
                None => Ok(Content {
                    sealed: secret_store::for_environment(tx, project.id, environment_id)?,
                    images: Default::default(),
                }),
            };
            if let Ok(content) = &what {
                store::record_secrets(tx, claimed.id, &content.sealed)?;
            }
            Ok::<_, DeployError>(Some((claimed, project, env, what)))
        })
        .await;
    let (claimed, project, env, what) = match claimed {
        Ok(Some(c)) => c,
        Ok(None) => return Round::Idle,
        Err(e) => {
            tracing::error!(environment_id, error = %e, "cannot dispatch the environment's queue");
            return Round::Idle;
        }
    };
    for old in &claimed.superseded {
        tracing::info!(
            deployment_id = old,
            by = claimed.id,
            "deployment superseded by a newer one"
        );
        state.hub.publish(HubEvent::DeploymentChanged {
            deployment_id: *old,
            environment_id,
        });
    }
    let id = claimed.id;
    let content = match what {
        Ok(content) => content,
        Err(e) => {
            tracing::warn!(deployment_id = id, error = %e, "redeploy refused at dispatch");
            finish_as(state, id, environment_id, DeployStatus::Failed, &failure_text(&e)).await;
            return Round::Failed(id, e);
        }
    };
    match send(state, agent_id, recipient, &claimed, &project, &env, content).await {
        Ok(true) => {
            tracing::info!(deployment_id = id, agent_id, project = %project.name, environment = %env.name, "deploy dispatched");
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id: id,
                environment_id,
            });
            Round::Sent
        }
        Ok(false) => Round::Idle,
        Err(e) => {
            finish_as(state, id, environment_id, DeployStatus::Failed, &failure_text(&e)).await;
            Round::Failed(id, e)
        }
    }
}

/// What a claimed deployment is sent: the secrets (still encrypted) and the image pins.
struct Content {
    sealed: Vec<SealedSecret>,
    /// Service -> pinned image reference; empty for an ordinary deploy.
    images: std::collections::BTreeMap<String, String>,
}

/// A redeploy of deployment `of`'s release: exactly the secret versions it used (from the
/// history, re-checked now: a pruned one refuses the whole redeploy) and each service's image
/// pinned. `Ok(Err(_))` when it cannot be sent (the deployment then fails with why); an agent
/// without the `releases` capability would ignore the pins, so it is not sent one.
fn redeploy_content(
    tx: &crate::db::Tx<'_>,
    of: i64,
    agent_id: i64,
    env: &projects::Environment,
) -> Result<Result<Content, DeployError>, DeployError> {
    if !agent_store::has_capability(tx, agent_id, protocol::release::CAP_RELEASES)? {
        return Ok(Err(DeployError::AgentWithoutReleases(env.name.clone())));
    }
    let release = match crate::releases::store::get(tx, of) {
        Ok(r) => r,
        Err(crate::releases::ReleaseError::NotFound) => return Ok(Err(DeployError::NoRelease(of))),
        Err(crate::releases::ReleaseError::Db(e)) => return Err(DeployError::Db(e)),
    };
    let (sealed, missing) = secret_store::versions_of_deployment(tx, of)?;
    if !missing.is_empty() {
        return Ok(Err(DeployError::ReleaseIncomplete {
            id: of,
            keys: missing,
        }));
    }
    let images = release
        .services
        .iter()
        .map(|s| (s.name.clone(), s.pin().to_owned()))
        .collect();
    Ok(Ok(Content { sealed, images }))
}

/// What a deployment that could not be sent says.
fn failure_text(e: &DeployError) -> String {
    match e {
        DeployError::Invalid { message, .. } => message.clone(),
        DeployError::Vault(e) => format!("cannot decrypt the secrets: {e}"),
        e => e.to_string(),
    }
}

/// Decrypt, seal and queue the DEPLOY of a claimed deployment. `Ok(false)`: the agent went
/// away before the frame could be queued, and the deployment is back to waiting for it.
async fn send(
    state: &AppState,
    agent_id: i64,
    recipient: Option<age::x25519::Recipient>,
    claimed: &Claimed,
    project: &projects::Project,
    env: &projects::Environment,
    content: Content,
) -> Result<bool, DeployError> {
    let Content { sealed, images } = content;
    let deployment_id = claimed.id;
    // An agent too old to offer a recipient is sent no DEPLOY: its secrets would travel in clear.
    let recipient = recipient.ok_or_else(|| DeployError::AgentTooOld(env.name.clone()))?;
    let vault = state.vault.clone();
    let secrets = tokio::task::spawn_blocking(move || decrypt_all(&vault, &sealed))
        .await
        .map_err(|e| DeployError::Db(DbError::Task(e.to_string())))??;
    // The agent checks out the pinned commit itself (it resolves a sha as a commit).
    let spec = ProjectSpec {
        name: project.name.clone(),
        environment: env.name.clone(),
        repo_url: project.repo_url.clone(),
        git_ref: claimed.commit.clone().unwrap_or_else(|| claimed.git_ref.clone()),
        compose_path: project.compose_path.clone(),
        pull: project.pull,
        compose_project: Some(env.compose_project.clone()),
        images,
    };
    state.hub.start_deploy(
        deployment_id,
        agent_id,
        Masker::new(secrets.iter().map(|s| s.value.as_str())),
    );
    // Names and encoded sizes only (no value), to explain a frame that is too big.
    let secret_sizes: Vec<(String, usize)> = secrets
        .iter()
        .map(|s| (s.key.clone(), encoded_len(&s.value)))
        .collect();
    // Sealed to the agent's pinned identity: the frame holds no value in clear, and the sealed
    // payload names this deployment and project, so it is of no use in any other DEPLOY.
    let payload = SealedSecrets {
        deployment_id,
        project: spec.clone(),
        secrets,
    };
    let Ok(Some(sealed_secrets)) = tokio::task::spawn_blocking(move || seal(&recipient, &payload)).await
    else {
        tracing::error!(
            deployment_id,
            agent_id,
            "cannot seal the secrets to the agent's identity"
        );
        return Err(DeployError::Seal);
    };
    let frame = Zeroizing::new(protocol::encode(&ServerMessage::Deploy {
        deployment_id,
        project: spec,
        sealed_secrets,
    }));
    if let Some(message) = oversized(&frame, &secret_sizes) {
        // The agent would refuse the frame and the deploy end as `agent_lost` with no word of
        // why (issue 12): say what is too big instead, on the deployment and to the caller.
        tracing::warn!(
            deployment_id,
            agent_id,
            bytes = frame.len(),
            "DEPLOY frame over the limit: not sent"
        );
        return Err(DeployError::Invalid {
            field: "secrets",
            message,
        });
    }
    if let Err(e) = state.hub.send_to(agent_id, env.id, Outbound::Text(frame)) {
        tracing::warn!(deployment_id, agent_id, error = ?e, "agent went away before the DEPLOY could be queued: the deployment waits for it");
        state.hub.end_deploy(deployment_id);
        let back = state.db.write(move |tx| store::unclaim(tx, deployment_id)).await;
        if let Err(e) = back {
            tracing::error!(deployment_id, error = %e, "cannot put the deployment back on the queue");
        }
        return Ok(false);
    }
    Ok(true)
}

/// Cancel a deployment: a waiting one ends `cancelled` at once; a queued or running one is sent
/// a CANCEL and ends when its agent reports `CANCELLED` (answered as it is now); when its agent
/// is offline it ends `cancelled` on the appliance's authority and the agent is told at its
/// next HELLO. Answers the deployment's status after the request.
pub async fn cancel(
    state: &AppState,
    who: &Principal,
    deployment_id: i64,
) -> Result<DeployStatus, DeployError> {
    // Twice at most: a waiting deployment dispatched between the read and the write is
    // cancelled as a queued one.
    for _ in 0..2 {
        let (agent_id, environment_id, status) = state
            .db
            .read(move |c| store::owner(c, deployment_id))
            .await?
            .ok_or(DeployError::NotFound)?;
        if status.is_finished() {
            return Err(DeployError::AlreadyFinished {
                id: deployment_id,
                status,
            });
        }
        if status == DeployStatus::AwaitingApproval {
            // Cancelling a deploy that awaits approval is rejecting it (its rules).
            return Ok(super::approval::reject(state, who, deployment_id).await?.status);
        }
        let actor = who.actor.clone();
        if status == DeployStatus::Waiting {
            let cancelled = state
                .db
                .write(move |tx| {
                    let now = now_ms();
                    let done =
                        store::cancel_waiting(tx, deployment_id, &format!("cancelled by {actor}"), now)?;
                    if done {
                        audit::record(
                            tx,
                            now,
                            &audit::Entry::new(&actor, "deploy.cancel", "deployment", Some(deployment_id))
                                .detail("waiting"),
                        )?;
                    }
                    Ok::<_, DeployError>(done)
                })
                .await?;
            if !cancelled {
                continue;
            }
            tracing::info!(deployment_id, "waiting deployment cancelled");
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id,
            });
            dispatch_next(state, environment_id).await;
            return Ok(DeployStatus::Cancelled);
        }
        let frame = Zeroizing::new(protocol::encode(&ServerMessage::Cancel { deployment_id }));
        let sent = agent_id.is_some_and(|a| {
            state
                .hub
                .send_to(a, environment_id, Outbound::Text(frame))
                .is_ok()
        });
        // Its agent is connected to another replica: that one sends the CANCEL (issue 17).
        let elsewhere = match (sent, agent_id) {
            (false, Some(a)) => {
                let me = state.cluster.replica_id.clone();
                let now = now_ms();
                let holder = state
                    .db
                    .read(move |c| agent_store::presence(c, a, now))
                    .await?
                    .replica
                    .filter(|r| *r != me);
                if holder.is_some() {
                    state
                        .db
                        .write(move |tx| store::queue_cancel(tx, a, deployment_id, now_ms()))
                        .await?;
                    crate::cluster::route::notify(state, crate::cluster::route::COMMAND, a).await;
                }
                holder
            }
            _ => None,
        };
        let detail = match (&elsewhere, sent) {
            (_, true) => "sent to the agent".to_owned(),
            (Some(replica), _) => format!("sent to the agent through replica {replica}"),
            (None, false) => "agent offline: ended by the appliance".to_owned(),
        };
        let sent = sent || elsewhere.is_some();
        let who_cancelled = actor.clone();
        state
            .db
            .write(move |tx| {
                audit::record(
                    tx,
                    now_ms(),
                    &audit::Entry::new(&actor, "deploy.cancel", "deployment", Some(deployment_id))
                        .detail(&detail),
                )?;
                Ok::<_, DeployError>(())
            })
            .await?;
        if sent {
            tracing::info!(deployment_id, "CANCEL sent to the agent");
            return Ok(status);
        }
        tracing::info!(deployment_id, "deployment cancelled while its agent is offline");
        let error = format!(
            "cancelled by {who_cancelled} while its agent was offline (the agent is told to stop when it reconnects)"
        );
        finish_as(
            state,
            deployment_id,
            environment_id,
            DeployStatus::Cancelled,
            &error,
        )
        .await;
        dispatch_next(state, environment_id).await;
        return Ok(DeployStatus::Cancelled);
    }
    // Both reads saw it waiting and both writes found it no longer so: it changed twice
    // meanwhile; say what it is now.
    let status = state
        .db
        .read(move |c| store::owner(c, deployment_id))
        .await?
        .ok_or(DeployError::NotFound)?
        .2;
    Ok(status)
}

/// After an agent's HELLO (and the agent_lost pass): tell it to stop the deployments it still
/// holds that the appliance cancelled while it was away, then dispatch its environment's queue.
pub async fn on_hello(state: &AppState, agent: &AgentIdentity, active: Option<&[i64]>) {
    if let Some(active) = active.filter(|a| !a.is_empty()) {
        let (agent_id, ids) = (agent.id, active.to_vec());
        match state
            .db
            .read(move |c| store::cancelled_of(c, agent_id, &ids))
            .await
        {
            Ok(cancelled) => {
                for deployment_id in cancelled {
                    tracing::info!(
                        deployment_id,
                        agent_id,
                        "the agent still holds a cancelled deployment: CANCEL sent"
                    );
                    let frame = Zeroizing::new(protocol::encode(&ServerMessage::Cancel { deployment_id }));
                    if state
                        .hub
                        .send_to(agent_id, agent.environment_id, Outbound::Text(frame))
                        .is_err()
                    {
                        tracing::warn!(deployment_id, agent_id, "cannot queue the CANCEL");
                    }
                }
            }
            Err(e) => tracing::error!(agent_id, error = %e, "cannot look up cancelled deployments"),
        }
    }
    deliver_commands(state, agent.id).await;
    dispatch_next(state, agent.environment_id).await;
}

/// Send the commands other replicas recorded for an agent connected here (src/cluster/route.rs),
/// deleting those queued; what cannot be queued stays for the next sweep or HELLO.
pub async fn deliver_commands(state: &AppState, agent_id: i64) {
    let Some(environment_id) = state.hub.environment_of(agent_id) else {
        return;
    };
    let pending = match state.db.read(move |c| store::commands_for(c, agent_id)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(agent_id, error = %e, "cannot read the agent's pending commands");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    let mut done = Vec::new();
    for (command_id, deployment_id) in pending {
        let frame = Zeroizing::new(protocol::encode(&ServerMessage::Cancel { deployment_id }));
        if state
            .hub
            .send_to(agent_id, environment_id, Outbound::Text(frame))
            .is_ok()
        {
            tracing::info!(
                deployment_id,
                agent_id,
                "CANCEL from another replica sent to the agent"
            );
            done.push(command_id);
        }
    }
    if let Err(e) = state.db.write(move |tx| store::delete_commands(tx, &done)).await {
        tracing::error!(agent_id, error = %e, "cannot delete the delivered commands");
    }
}
