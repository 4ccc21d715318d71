//! Redeploying a release (issue 14): by hand (`POST /api/deployments/{id}/redeploy`, the
//! history's Redeploy button, `stagely rollback`) and automatically (`auto_rollback`, after a
//! failure that may have left the stack half-applied).
//!
//! A redeploy is an ordinary waiting deployment with `redeploy_of` naming the deployment whose
//! release it restores and the release's commit pinned. At dispatch ([`super::queue`]) it is
//! sent exactly the secret versions that release used (from `secret_versions`) and every
//! service's image pinned ([`stagely_protocol::ReleaseService::pin`]); when any of those
//! versions was pruned it is refused, here and again at dispatch, never half-restored.

use super::store::{self, NewDeployment};
use super::{DeployError, DeployStatus};
use crate::agents::hub::HubEvent;
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::releases::{self, Release, ReleaseError};
use crate::secrets::store as secret_store;
use crate::users::Principal;

/// Who the audit log and `triggered_by` name for an automatic rollback.
pub const AUTO_ROLLBACK_ACTOR: &str = "auto-rollback";

/// A redeploy just recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redeployed {
    pub deployment_id: i64,
    pub status: DeployStatus,
    pub redeploy_of: i64,
}

fn release_of(c: &crate::db::Conn<'_>, deployment_id: i64) -> Result<Release, DeployError> {
    match releases::store::get(c, deployment_id) {
        Ok(r) => Ok(r),
        Err(ReleaseError::NotFound) => Err(DeployError::NoRelease(deployment_id)),
        Err(ReleaseError::Db(e)) => Err(DeployError::Db(e)),
    }
}

fn environment(c: &crate::db::Conn<'_>, id: i64) -> Result<crate::projects::Environment, DeployError> {
    crate::projects::store::get_environment(c, id).map_err(|e| match e {
        crate::projects::ProjectError::Db(e) => DeployError::Db(e),
        _ => DeployError::NotFound,
    })
}

/// The release can be restored exactly: every secret version it used is still kept.
pub(super) fn check_complete(c: &crate::db::Conn<'_>, deployment_id: i64) -> Result<(), DeployError> {
    let (_, missing) = secret_store::versions_of_deployment(c, deployment_id)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DeployError::ReleaseIncomplete {
            id: deployment_id,
            keys: missing,
        })
    }
}

/// Start a redeploy of deployment `of`'s release: 409 `no_release` when it has none,
/// `release_incomplete` when a secret version it used was pruned; refused like a deploy when
/// nothing could run (no agent, offline, too old). Audited `deploy.redeploy` with both ids.
pub async fn redeploy(state: &AppState, who: &Principal, of: i64) -> Result<Redeployed, DeployError> {
    let found = state
        .db
        .read(move |c| {
            let d = store::get(c, of)?;
            let release = release_of(c, of)?;
            check_complete(c, of)?;
            Ok::<_, DeployError>((d, release))
        })
        .await?;
    let (source, release) = found;
    let hub = state.hub.clone();
    let (project_id, env_name) = (source.project_id, source.environment.clone());
    state
        .db
        .lookup(move |c| super::ops::find_target(c, &hub, project_id, Some(&env_name)))
        .await?;
    let actor = who.actor.clone();
    let who = who.clone();
    let deployment_id = state
        .db
        .write(move |tx| {
            let now = now_ms();
            // The same rule as a deploy (src/protect): a protected environment's deployers only,
            // and an approval when the environment requires one.
            let env = environment(tx, source.environment_id)?;
            let gate = crate::protect::rules::gate(tx, &who, &env)?;
            let awaiting = gate == crate::protect::rules::Gate::AwaitApproval;
            let id = insert_redeploy(
                tx,
                &source,
                &release,
                &actor,
                None,
                Some((who.user_id, awaiting)),
                now,
            )?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "deploy.redeploy", "deployment", Some(id)).detail(&format!(
                    "deployment {id} redeploys the release of deployment {of}"
                )),
            )?;
            Ok::<_, DeployError>(id)
        })
        .await?;
    let environment_id = state
        .db
        .read(move |c| store::owner(c, deployment_id))
        .await?
        .map_or(0, |(_, env, _)| env);
    state.hub.publish(HubEvent::DeploymentChanged {
        deployment_id,
        environment_id,
    });
    let failures = super::queue::dispatch_next(state, environment_id).await;
    if let Some((_, e)) = failures.into_iter().find(|(id, _)| *id == deployment_id) {
        return Err(e);
    }
    let status = state
        .db
        .read(move |c| store::owner(c, deployment_id))
        .await?
        .map_or(DeployStatus::Waiting, |(_, _, status)| status);
    if status == DeployStatus::AwaitingApproval {
        super::approval::awaiting(state, deployment_id).await;
    }
    tracing::info!(
        deployment_id,
        redeploy_of = of,
        status = status.as_str(),
        "redeploy triggered"
    );
    Ok(Redeployed {
        deployment_id,
        status,
        redeploy_of: of,
    })
}

/// Record the waiting redeploy of `source`'s release.
fn insert_redeploy(
    tx: &crate::db::Tx<'_>,
    source: &super::Deployment,
    release: &Release,
    actor: &str,
    rollback_of: Option<i64>,
    who: Option<(Option<i64>, bool)>,
    now: i64,
) -> Result<i64, DeployError> {
    let commit = release.commit.clone().or_else(|| source.commit.clone());
    let new = NewDeployment {
        project_id: source.project_id,
        environment_id: source.environment_id,
        git_ref: &source.git_ref,
        commit: commit.as_deref(),
        triggered_by: actor,
        redeploy_of: Some(source.id),
        rollback_of,
        triggered_by_user: who.and_then(|w| w.0),
        awaiting_approval: who.is_some_and(|w| w.1),
    };
    Ok(store::insert_waiting(tx, &new, now)?)
}

/// A deployment of an environment with `auto_rollback` failed after `up` ran: unless it was
/// itself a rollback, record a waiting redeploy of the environment's last successful release
/// (`rollback_of` = the failed one, triggered by `auto-rollback`), audited and notified
/// `deploy.rollback`. With no release (or one that cannot be restored exactly), or when a
/// deployment of the environment is already waiting (it goes next instead), nothing starts and
/// the log says why. The caller dispatches the queue.
pub async fn after_failure(state: &AppState, failed: i64, environment_id: i64) {
    let started = state
        .db
        .write(move |tx| {
            if !environment(tx, environment_id)?.auto_rollback {
                return Ok::<_, DeployError>(None);
            }
            let failed_d = store::get(tx, failed)?;
            if failed_d.rollback_of.is_some() {
                tracing::warn!(
                    deployment_id = failed,
                    "an automatic rollback failed: no further rollback is started"
                );
                return Ok(None);
            }
            if store::has_waiting(tx, environment_id)? {
                // Someone already asked for what comes next: it runs instead of a rollback (a
                // rollback, being newer, would supersede it).
                tracing::info!(
                    deployment_id = failed,
                    environment_id,
                    "auto_rollback: a newer deployment is already waiting and goes next instead"
                );
                return Ok(None);
            }
            let Some(release) = releases::store::latest(tx, environment_id)? else {
                tracing::warn!(
                    deployment_id = failed,
                    environment_id,
                    "auto_rollback: the environment has no successful release to roll back to"
                );
                return Ok(None);
            };
            if let Err(e) = check_complete(tx, release.deployment_id) {
                tracing::warn!(deployment_id = failed, error = %e, "auto_rollback: not started");
                return Ok(None);
            }
            let source = store::get(tx, release.deployment_id)?;
            let now = now_ms();
            // The server answers a failure of a deploy someone was permitted to start: not gated.
            let id = insert_redeploy(tx, &source, &release, AUTO_ROLLBACK_ACTOR, Some(failed), None, now)?;
            audit::record(tx, now, &audit::Entry::new(AUTO_ROLLBACK_ACTOR, "deploy.rollback", "deployment", Some(id)).detail(&format!(
                    "deployment {id} rolls back failed deployment {failed} to the release of deployment {}",
                    release.deployment_id
                )))?;
            Ok(Some((id, release.deployment_id)))
        })
        .await;
    match started {
        Ok(Some((id, release_of))) => {
            tracing::info!(
                deployment_id = id,
                rollback_of = failed,
                redeploy_of = release_of,
                "automatic rollback started"
            );
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id: id,
                environment_id,
            });
            if let Err(e) = crate::notify::ops::rollback_started(state, id, failed).await {
                tracing::warn!(deployment_id = id, error = %e, "cannot enqueue the deploy.rollback notice");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!(deployment_id = failed, error = %e, "cannot start the automatic rollback"),
    }
}

/// A release was recorded: releases that aged out of their environment's newest
/// `secrets.keep_versions` may have been the last to hold a deleted secret's versions.
pub async fn release_recorded(state: &AppState, environment_id: i64) {
    let keep = state.config.secrets.keep_versions;
    let pruned = state
        .db
        .write(move |tx| {
            let env = environment(tx, environment_id)?;
            Ok::<_, DeployError>(secret_store::prune_deleted_versions(tx, env.project_id, keep)?)
        })
        .await;
    match pruned {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            environment_id,
            pruned = n,
            "pruned deleted secrets' versions no release needs"
        ),
        Err(e) => tracing::warn!(environment_id, error = %e, "cannot prune deleted secrets' versions"),
    }
}
