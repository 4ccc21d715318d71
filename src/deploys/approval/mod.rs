//! Deploy approvals (issue 16): a deploy of an environment with `require_approval` (or a push
//! webhook's deploy of a protected one) is recorded `awaiting_approval`. Another person who may
//! deploy the environment ([`crate::protect::rules::may_deploy`]) approves it (it becomes
//! `waiting` and goes through the queue as usual) or rejects it (`cancelled`). Approving your
//! own deploy is refused (the same user id, by session or token; with no user id, the same
//! actor). One nobody approves within `deploys.approval_ttl_secs` ends `expired` (the reaper's
//! sweep, and any approval that comes too late). The approver sees the [`diff`]: the commit
//! range and which secret versions change, never a value.

pub mod diff;
pub mod store;

use serde::Serialize;

use super::{DeployError, DeployStatus};
use crate::agents::hub::HubEvent;
use crate::app::AppState;
use crate::audit;
use crate::db::{now_ms, rfc3339};
use crate::protect::rules::{forbidden, may_deploy};
use crate::users::Principal;

/// What `GET /api/deployments/{id}` says about the approval of a deployment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Approval {
    /// True while it awaits approval, and for one that was approved or expired.
    pub required: bool,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    /// When an approval is no longer accepted (`created_at` + `deploys.approval_ttl_secs`).
    pub expires_at: Option<String>,
    /// What it changes compared with the environment's last successful release.
    pub diff: Option<diff::Diff>,
}

fn ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.deploys.approval_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The approval part of a deployment's answer; `None` when it never needed one.
pub fn view(
    c: &crate::db::Conn<'_>,
    d: &super::Deployment,
    ttl_ms: i64,
) -> Result<Option<Approval>, DeployError> {
    let Some(p) = store::pending(c, d.id)? else {
        return Ok(None);
    };
    let awaiting = d.status == DeployStatus::AwaitingApproval;
    let required = awaiting || p.approved_at.is_some() || d.status == DeployStatus::Expired;
    if !required {
        return Ok(None);
    }
    Ok(Some(Approval {
        required,
        approved_by: p.approved_by,
        approved_at: p.approved_at.map(rfc3339),
        expires_at: Some(rfc3339(p.created_at.saturating_add(ttl_ms))),
        diff: if awaiting { Some(diff::diff(c, d)?) } else { None },
    }))
}

/// The approval view with the configured ttl.
pub fn view_for(
    state: &AppState,
    c: &crate::db::Conn<'_>,
    d: &super::Deployment,
) -> Result<Option<Approval>, DeployError> {
    view(c, d, ttl_ms(state))
}

/// What became of an approved or rejected deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub deployment_id: i64,
    pub status: DeployStatus,
}

enum Verdict {
    Approve,
    Reject,
}

/// Approve a deployment awaiting approval: 403 for someone who may not deploy its environment
/// or who triggered it, 409 when it does not await approval (approved already, ended) or its
/// approval expired (it then ends `expired`). Audited `deployment.approve`; then dispatched.
pub async fn approve(state: &AppState, who: &Principal, deployment_id: i64) -> Result<Decided, DeployError> {
    decide(state, who, deployment_id, Verdict::Approve).await
}

/// Reject (cancel) a deployment awaiting approval: it ends `cancelled`. The person who
/// triggered it may withdraw it; others need the right to deploy the environment.
pub async fn reject(state: &AppState, who: &Principal, deployment_id: i64) -> Result<Decided, DeployError> {
    decide(state, who, deployment_id, Verdict::Reject).await
}

async fn decide(
    state: &AppState,
    who: &Principal,
    deployment_id: i64,
    verdict: Verdict,
) -> Result<Decided, DeployError> {
    let who = who.clone();
    let ttl = ttl_ms(state);
    let outcome = state
        .db
        .write(move |tx| {
            let now = now_ms();
            let d = super::store::get(tx, deployment_id)?;
            let p = store::pending(tx, deployment_id)?.ok_or(DeployError::NotFound)?;
            let env = crate::projects::store::get_environment(tx, d.environment_id).map_err(|e| match e {
                crate::projects::ProjectError::Db(e) => DeployError::Db(e),
                _ => DeployError::NotFound,
            })?;
            let own = match (who.user_id, p.triggered_by_user) {
                (Some(a), Some(b)) => a == b,
                (None, None) => who.actor == p.triggered_by,
                _ => false,
            };
            let permitted = may_deploy(tx, &who, &env)?;
            match verdict {
                Verdict::Approve if !permitted => return Err(forbidden_approval(&env)),
                Verdict::Reject if !permitted && !own => return Err(forbidden_approval(&env)),
                _ => {}
            }
            if d.status == DeployStatus::Expired {
                return Err(DeployError::NotAwaiting(format!(
                    "the approval of deployment {deployment_id} expired at {}",
                    rfc3339(p.created_at.saturating_add(ttl))
                )));
            }
            if d.status != DeployStatus::AwaitingApproval {
                let already = p
                    .approved_by
                    .as_deref()
                    .map(|by| format!("; it was approved by {by}"))
                    .unwrap_or_default();
                return Err(DeployError::NotAwaiting(format!(
                    "deployment {deployment_id} is not awaiting approval (it is {}{already})",
                    d.status.as_str()
                )));
            }
            let expires = p.created_at.saturating_add(ttl);
            if now >= expires {
                store::end(tx, deployment_id, "expired", "approval_expired", now)?;
                audit::record(
                    tx,
                    now,
                    &audit::Entry::new("stagely", "deployment.expire", "deployment", Some(deployment_id))
                        .project(d.project_id)
                        .detail(&format!("{}: nobody approved it in time", d.environment)),
                )?;
                return Ok(Err((d.environment_id, rfc3339(expires))));
            }
            let status = match verdict {
                Verdict::Approve => {
                    if own {
                        return Err(DeployError::Forbidden(format!(
                            "you triggered deployment {deployment_id}: another person who may deploy environment {:?} must approve it",
                            env.name
                        )));
                    }
                    if !store::approve(tx, deployment_id, &who.actor, who.user_id, now)? {
                        return Err(DeployError::NotAwaiting(format!(
                            "deployment {deployment_id} is no longer awaiting approval"
                        )));
                    }
                    audit::record(
                        tx,
                        now,
                        &audit::Entry::new(&who.actor, "deployment.approve", "deployment", Some(deployment_id))
                            .project(d.project_id)
                            .detail(&format!(
                                "{}: approved by {} (triggered by {})",
                                env.name, who.actor, p.triggered_by
                            )),
                    )?;
                    DeployStatus::Waiting
                }
                Verdict::Reject => {
                    store::end(tx, deployment_id, "cancelled", &format!("rejected by {}", who.actor), now)?;
                    audit::record(
                        tx,
                        now,
                        &audit::Entry::new(&who.actor, "deployment.reject", "deployment", Some(deployment_id))
                            .project(d.project_id)
                            .detail(&format!("{}: rejected by {}", env.name, who.actor)),
                    )?;
                    DeployStatus::Cancelled
                }
            };
            Ok(Ok((d.environment_id, status)))
        })
        .await?;
    match outcome {
        Err((environment_id, expired_at)) => {
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id,
            });
            Err(DeployError::NotAwaiting(format!(
                "the approval of deployment {deployment_id} expired at {expired_at}"
            )))
        }
        Ok((environment_id, status)) => {
            tracing::info!(deployment_id, status = status.as_str(), "approval decided");
            state.hub.publish(HubEvent::DeploymentChanged {
                deployment_id,
                environment_id,
            });
            if status == DeployStatus::Waiting {
                super::queue::dispatch_next(state, environment_id).await;
            }
            let status = state
                .db
                .read(move |c| super::store::owner(c, deployment_id))
                .await?
                .map_or(status, |(_, _, s)| s);
            Ok(Decided {
                deployment_id,
                status,
            })
        }
    }
}

/// A deployment now awaits approval: enqueue `deploy.awaiting_approval` (ids, names, the ref:
/// never a secret).
pub async fn awaiting(state: &AppState, deployment_id: i64) {
    if let Err(e) = crate::notify::ops::awaiting_approval(state, deployment_id).await {
        tracing::warn!(deployment_id, error = %e, "cannot enqueue the deploy.awaiting_approval notice");
    }
}

fn forbidden_approval(env: &crate::projects::Environment) -> DeployError {
    if env.protected {
        forbidden(env, "approve deploys of")
    } else {
        DeployError::Forbidden(format!(
            "approving a deploy of environment {:?} needs the deployer role on its project",
            env.name
        ))
    }
}

/// The reaper's pass: every deployment that awaited approval longer than
/// `deploys.approval_ttl_secs` as of `now` ends `expired`.
pub async fn expire_due(state: &AppState, now: i64) {
    let before = now.saturating_sub(ttl_ms(state));
    let expired = state
        .db
        .write(move |tx| {
            let mut done = Vec::new();
            for (id, environment_id, project_id) in store::overdue(tx, before)? {
                if store::end(tx, id, "expired", "approval_expired", now)? {
                    audit::record(
                        tx,
                        now,
                        &audit::Entry::new("stagely", "deployment.expire", "deployment", Some(id))
                            .project(project_id)
                            .detail("nobody approved it in time"),
                    )?;
                    done.push((id, environment_id));
                }
            }
            Ok::<_, DeployError>(done)
        })
        .await;
    match expired {
        Ok(done) => {
            for (deployment_id, environment_id) in done {
                tracing::info!(deployment_id, "approval expired");
                state.hub.publish(HubEvent::DeploymentChanged {
                    deployment_id,
                    environment_id,
                });
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot expire deployments awaiting approval"),
    }
}
