//! Deployment writes started by a principal or by the server: the deploy trigger (steps 1–3
//! of the deploy sequence: trigger, lookup, dispatch) and ending a deployment on the server's
//! own authority. The rules (which environment, which agent, an agent online) live here; the SQL
//! in [`super::store`]; `api.rs` and `pages.rs` only translate HTTP to these calls.

use super::store::{self, Finish, NewDeployment};
use super::{DeployError, DeployStatus, LiveEvent};
use crate::agents::hub::HubEvent;
use crate::agents::store as agent_store;
use crate::app::AppState;
use crate::db::{DbError, now_ms, rfc3339};
use crate::projects::{ProjectError, store as project_store};
use crate::secrets::store::SealedSecret;
use crate::secrets::vault::Vault;
use crate::users::Principal;
use crate::{audit, projects};
use stagely_protocol::{self as protocol, SealedSecrets, SecretEntry};

/// What to deploy: which environment (optional when the project has one), and optionally a ref
/// other than the environment's, or one exact commit (a push webhook deploys the pushed sha, not
/// whatever the branch points at when the agent fetches).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub environment: Option<String>,
    /// A branch, tag or commit instead of the environment's `git_ref` (else the project's).
    pub git_ref: Option<String>,
    /// The exact commit (40 or 64 hex digits): the agent checks out this sha, and the
    /// deployment records it from the start. `git_ref` then only names where it came from.
    pub commit: Option<String>,
}

/// A deployment just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triggered {
    pub deployment_id: i64,
    pub status: DeployStatus,
}

/// A ref from a caller: what git and the agent accept (the agent checks again).
fn valid_ref(field: &'static str, value: &str) -> Result<(), DeployError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('-')
        && !value.contains(|c: char| c.is_whitespace() || c.is_control() || c == '\\')
        && !value.contains("..");
    if ok {
        Ok(())
    } else {
        Err(DeployError::Invalid {
            field,
            message:
                "must be a branch, tag or commit name (no spaces, no leading '-', no '..', at most 255 bytes)"
                    .into(),
        })
    }
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn is_commit_id(value: &str) -> bool {
    matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Start a deploy of one environment of a project. The deployment is recorded `waiting`, then
/// the environment's queue is dispatched ([`super::queue::dispatch_next`]): when nothing else
/// of the environment is queued or running, it is sent at once (the answer comes once the
/// agent's connection holds the DEPLOY, `queued`); else it waits (`waiting`), and only the
/// newest waiting one runs when the current one ends. A trigger is refused as before when
/// nothing could run at all: no agent, agent offline, agent too old.
pub async fn trigger(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    request: Request,
) -> Result<Triggered, DeployError> {
    let Request {
        environment,
        git_ref: ref_override,
        commit,
    } = request;
    if let Some(r) = &ref_override {
        valid_ref("ref", r)?;
    }
    if let Some(c) = &commit
        && !is_commit_id(c)
    {
        return Err(DeployError::Invalid {
            field: "commit",
            message: "must be a full commit id (40 or 64 hex digits)".into(),
        });
    }
    let commit = commit.map(|c| c.to_ascii_lowercase());
    // The lookup is a few indexed reads, on this thread (no trip to the blocking pool). The
    // secrets are not read here: a waiting deployment gets the values of when it is sent.
    let hub = state.hub.clone();
    let (project, env) = state
        .db
        .lookup(move |c| find_target(c, &hub, project_id, environment.as_deref()))
        .await?;
    let git_ref = ref_override
        .or_else(|| env.git_ref.clone())
        .unwrap_or_else(|| project.git_ref.clone());
    let actor = who.actor.clone();
    let principal = who.clone();
    let (env_id, env_name) = (env.id, env.name.clone());
    let (deployment_id, awaiting) = state
        .db
        .write(move |tx| {
            let now = now_ms();
            // The environment's rule (src/protect), read again in this transaction.
            let env = crate::projects::store::get_environment(tx, env_id).map_err(|e| match e {
                ProjectError::Db(e) => DeployError::Db(e),
                _ => DeployError::NotFound,
            })?;
            let awaiting = crate::protect::rules::gate(tx, &principal, &env)?
                == crate::protect::rules::Gate::AwaitApproval;
            let new = NewDeployment {
                project_id,
                environment_id: env_id,
                git_ref: &git_ref,
                commit: commit.as_deref(),
                triggered_by: &actor,
                redeploy_of: None,
                rollback_of: None,
                triggered_by_user: principal.user_id,
                awaiting_approval: awaiting,
            };
            let id = store::insert_waiting(tx, &new, now)?;
            let detail = if awaiting {
                format!("{env_name} (awaiting approval)")
            } else {
                env_name.clone()
            };
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "deploy.start", "deployment", Some(id)).detail(&detail),
            )?;
            Ok::<_, DeployError>((id, awaiting))
        })
        .await?;
    if awaiting {
        state.hub.publish(HubEvent::DeploymentChanged {
            deployment_id,
            environment_id: env.id,
        });
        super::approval::awaiting(state, deployment_id).await;
        tracing::info!(deployment_id, project = %project.name, environment = %env.name, "deploy awaits approval");
        return Ok(Triggered {
            deployment_id,
            status: DeployStatus::AwaitingApproval,
        });
    }
    state.hub.publish(HubEvent::DeploymentChanged {
        deployment_id,
        environment_id: env.id,
    });
    let failures = super::queue::dispatch_next(state, env.id).await;
    if let Some((_, e)) = failures.into_iter().find(|(id, _)| *id == deployment_id) {
        return Err(e);
    }
    let status = state
        .db
        .read(move |c| store::owner(c, deployment_id))
        .await?
        .map_or(DeployStatus::Waiting, |(_, _, status)| status);
    tracing::info!(deployment_id, project = %project.name, environment = %env.name, status = status.as_str(), "deploy triggered");
    Ok(Triggered {
        deployment_id,
        status,
    })
}

/// A DEPLOY frame the agent would refuse (over [`protocol::MAX_FRAME_BYTES`]): what to tell
/// the person, naming the largest secrets by key with their encoded sizes. `None` when it fits.
pub(super) fn oversized(frame: &str, secret_sizes: &[(String, usize)]) -> Option<String> {
    if frame.len() <= protocol::MAX_FRAME_BYTES {
        return None;
    }
    let total: usize = secret_sizes.iter().map(|(_, n)| n).sum();
    let mut largest: Vec<&(String, usize)> = secret_sizes.iter().collect();
    largest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let named: Vec<String> = largest
        .iter()
        .take(3)
        .map(|(key, n)| format!("{key} ({})", size(*n)))
        .collect();
    Some(format!(
        "the DEPLOY message is {} and the agent accepts at most {}; its {} secret values take {} \
         once JSON-encoded (quotes, backslashes and control characters take 2-6 bytes each), the \
         largest being {}. Make the values smaller or fewer (e.g. mount large files on the target \
         instead of storing them as secrets)",
        size(frame.len()),
        size(protocol::MAX_FRAME_BYTES),
        secret_sizes.len(),
        size(total),
        if named.is_empty() {
            "none".to_owned()
        } else {
            named.join(", ")
        },
    ))
}

/// A value's size inside the JSON frame (escaping included).
pub(super) fn encoded_len(value: &str) -> usize {
    serde_json::to_string(value).map_or(value.len(), |s| s.len())
}

/// Bytes for people: `1.3 MiB`, `12.0 KiB`, `900 B`.
fn size(bytes: usize) -> String {
    #[allow(clippy::cast_precision_loss, reason = "one decimal for display")]
    let b = bytes as f64;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if bytes >= 1024 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// Where a deploy goes: the project and its environment, refused when nothing could run there
/// (no agent, none online, or the online one too old for sealed secrets).
pub(super) fn find_target(
    c: &crate::db::Conn<'_>,
    hub: &crate::agents::hub::Hub,
    project_id: i64,
    environment: Option<&str>,
) -> Result<(projects::Project, projects::Environment), DeployError> {
    let project = project_store::get(c, project_id).map_err(|e| match e {
        ProjectError::NotFound => DeployError::ProjectNotFound,
        ProjectError::Db(e) => DeployError::Db(e),
        other => DeployError::Db(DbError::Task(other.to_string())),
    })?;
    let env = pick_environment(&project, environment)?;
    let agent_ids = agent_store::ids_for_environment(c, env.id)?;
    if agent_ids.is_empty() {
        return Err(DeployError::NoAgent {
            environment: env.name,
            environment_id: env.id,
        });
    }
    // Connected here, or to another replica (a live lease): the queue routes it there.
    let now = now_ms();
    let mut online = None;
    for id in agent_ids.iter().copied() {
        if hub.is_online(id) || agent_store::presence(c, id, now)?.replica.is_some() {
            online = Some(id);
            break;
        }
    }
    let Some(agent_id) = online else {
        return Err(offline_error(c, &env.name, &agent_ids)?);
    };
    // An agent too old to offer a recipient is sent no DEPLOY: its secrets would travel in clear.
    if recipient_of(c, agent_id)?.is_none() {
        return Err(DeployError::AgentTooOld(env.name.clone()));
    }
    Ok((project, env))
}

/// The agent's pinned age recipient, parsed (it was checked at HELLO).
pub(super) fn recipient_of(
    c: &crate::db::Conn<'_>,
    agent_id: i64,
) -> Result<Option<age::x25519::Recipient>, DbError> {
    Ok(agent_store::recipient(c, agent_id)?.and_then(|r| r.parse::<age::x25519::Recipient>().ok()))
}

pub(super) fn pick_environment(
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
pub(super) fn offline_error(
    c: &crate::db::Conn<'_>,
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

pub(super) fn decrypt_all(vault: &Vault, sealed: &[SealedSecret]) -> Result<Vec<SecretEntry>, DeployError> {
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

/// A DEPLOY's `sealed_secrets`: base64 of one binary age file to `recipient`.
pub(super) fn seal(recipient: &age::x25519::Recipient, payload: &SealedSecrets) -> Option<String> {
    use base64::Engine as _;
    let ciphertext = age::encrypt(recipient, &payload.to_plaintext()).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(ciphertext))
}

/// Fail a deployment on the server's own authority (`agent_lost`, `timeout`, `agent_offline`,
/// `queue_timeout`), then dispatch what waits in its environment.
pub async fn end_by_server(state: &AppState, deployment_id: i64, environment_id: i64, error: &str) {
    finish_as(state, deployment_id, environment_id, DeployStatus::Failed, error).await;
    super::queue::dispatch_next(state, environment_id).await;
}

/// End a deployment with `status` and `error` on the server's authority, telling its live
/// viewers and the dashboards; nothing is dispatched (the caller does).
pub(super) async fn finish_as(
    state: &AppState,
    deployment_id: i64,
    environment_id: i64,
    status: DeployStatus,
    error: &str,
) {
    let finish = Finish {
        deployment_id,
        status,
        error: Some(error.to_owned()),
        services: Vec::new(),
        commit: None,
        at: now_ms(),
        release: None,
    };
    let error = finish.error.clone();
    match state.logs.finish(finish).await {
        Ok(true) => {
            if let Some(active) = state.hub.end_deploy(deployment_id) {
                // No live viewer is not an error.
                let _ = active.live.send(LiveEvent::Finished { status, error });
            }
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id,
            });
        }
        Ok(false) => {
            state.hub.end_deploy(deployment_id);
        }
        Err(e) => tracing::error!(deployment_id, error = %e, "cannot end deployment"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_frame_is_explained_without_values() {
        let sizes = vec![
            ("BIG".to_owned(), 700 * 1024),
            ("ALSO".to_owned(), 600 * 1024),
            ("SMALL".to_owned(), 10),
        ];
        let frame = "x".repeat(1_300 * 1024 + 100);
        let msg = oversized(&frame, &sizes).unwrap();
        assert!(
            msg.starts_with("the DEPLOY message is 1.3 MiB and the agent accepts at most 1.0 MiB"),
            "{msg}"
        );
        assert!(
            msg.contains("BIG (700.0 KiB), ALSO (600.0 KiB), SMALL (10 B)"),
            "{msg}"
        );
        assert!(oversized("small", &sizes).is_none());
        assert_eq!(encoded_len("a\"b\n"), 8);
    }
}
