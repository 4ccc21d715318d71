//! Deployment writes started by a principal or by the server: the deploy trigger (steps 1–3
//! of the deploy sequence: trigger, lookup, dispatch) and ending a deployment on the server's
//! own authority. The rules (which environment, which agent, an agent online) live here; the SQL
//! in [`super::store`]; `api.rs` and `pages.rs` only translate HTTP to these calls.

use zeroize::Zeroizing;

use super::store::{self, Finish, NewDeployment};
use super::{DeployError, DeployStatus, LiveEvent};
use crate::agents::hub::{HubEvent, Outbound};
use crate::agents::store as agent_store;
use crate::app::AppState;
use crate::db::{DbError, now_ms, rfc3339};
use crate::projects::{ProjectError, store as project_store};
use crate::secrets::store::{self as secret_store, SealedSecret};
use crate::secrets::vault::Vault;
use crate::users::Principal;
use crate::{audit, projects};
use stagely_protocol::mask::Masker;
use stagely_protocol::{self as protocol, ProjectSpec, SealedSecrets, SecretEntry, ServerMessage};

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

/// Start a deploy of one environment of a project; answers once the agent's connection holds
/// the DEPLOY.
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
        recipient,
        sealed,
    } = target;
    let (db, vault, actor) = (state.db.clone(), state.vault.clone(), who.actor.clone());
    let (env_id, env_name) = (env.id, env.name.clone());
    let git_ref = ref_override
        .or_else(|| env.git_ref.clone())
        .unwrap_or_else(|| project.git_ref.clone());
    let ref_for_record = git_ref.clone();
    // The agent checks out the pinned commit itself (it resolves a sha as a commit).
    let git_ref = commit.clone().unwrap_or(git_ref);
    let commit_for_record = commit.clone();
    let spec = ProjectSpec {
        name: project.name.clone(),
        environment: env.name.clone(),
        repo_url: project.repo_url.clone(),
        git_ref,
        compose_path: project.compose_path.clone(),
        pull: project.pull,
        compose_project: Some(env.compose_project.clone()),
    };
    let (secrets, deployment_id) = tokio::task::spawn_blocking(move || {
        let secrets = decrypt_all(&vault, &sealed)?;
        let new = NewDeployment {
            project_id,
            environment_id: env_id,
            environment: &env_name,
            agent_id,
            git_ref: &ref_for_record,
            commit: commit_for_record.as_deref(),
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
    let sealed_secrets = match tokio::task::spawn_blocking(move || seal(&recipient, &payload)).await {
        Ok(Some(sealed)) => sealed,
        _ => {
            tracing::error!(
                deployment_id,
                agent_id,
                "cannot seal the secrets to the agent's identity"
            );
            end_by_server(
                state,
                deployment_id,
                env.id,
                "cannot seal the secrets to the agent's identity",
            )
            .await;
            return Err(DeployError::Seal);
        }
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
        end_by_server(state, deployment_id, env.id, &message).await;
        return Err(DeployError::Invalid {
            field: "secrets",
            message,
        });
    }
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
    Ok(Triggered {
        deployment_id,
        status: DeployStatus::Queued,
    })
}

/// A DEPLOY frame the agent would refuse (over [`protocol::MAX_FRAME_BYTES`]): what to tell
/// the person, naming the largest secrets by key with their encoded sizes. `None` when it fits.
fn oversized(frame: &str, secret_sizes: &[(String, usize)]) -> Option<String> {
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
fn encoded_len(value: &str) -> usize {
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

/// Where a deploy goes: the project, its environment, an online agent there, and the sealed
/// values to send.
struct Target {
    project: projects::Project,
    env: projects::Environment,
    agent_id: i64,
    /// The agent's pinned age recipient, already parsed (it was checked at HELLO).
    recipient: age::x25519::Recipient,
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
    // An agent too old to offer a recipient is sent no DEPLOY: its secrets would travel in clear.
    let recipient = agent_store::recipient(c, agent_id)?
        .and_then(|r| r.parse::<age::x25519::Recipient>().ok())
        .ok_or_else(|| DeployError::AgentTooOld(env.name.clone()))?;
    let sealed = secret_store::for_environment(c, project.id, env.id)?;
    Ok(Target {
        project,
        env,
        agent_id,
        recipient,
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

/// A DEPLOY's `sealed_secrets`: base64 of one binary age file to `recipient`.
fn seal(recipient: &age::x25519::Recipient, payload: &SealedSecrets) -> Option<String> {
    use base64::Engine as _;
    let ciphertext = age::encrypt(recipient, &payload.to_plaintext()).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(ciphertext))
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
                // No live viewer is not an error.
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
