//! The deploy rule of an environment: who may deploy it and whether the deploy waits for an
//! approval. Every path that creates a deployment by a principal asks [`gate`] (the trigger,
//! a redeploy and so the runtime page's Re-converge); an approval asks [`may_deploy`].

use rusqlite::Connection;

use super::{DeployerRef, describe};
use crate::access::{ProjectRole, project_role};
use crate::db::DbError;
use crate::deploys::DeployError;
use crate::projects::Environment;
use crate::users::{Principal, Role};

/// What a permitted deploy becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Recorded `waiting` and dispatched as usual.
    Direct,
    /// Recorded `awaiting_approval`: another permitted person approves it first.
    AwaitApproval,
}

/// A push webhook's principal: a forge's pusher (`github:<login>`, `gitlab:…`, `gitea:…`), no
/// person of this appliance behind it.
pub fn is_push(p: &Principal) -> bool {
    p.user_id.is_none()
        && ["github:", "gitlab:", "gitea:"]
            .iter()
            .any(|prefix| p.actor.starts_with(prefix))
}

/// May `p` deploy `env` (or approve a deploy of it)? Deployer or higher on the project; on a
/// protected environment also a global admin, a person it names, or someone at or above a role
/// it names. A push webhook's principal is never permitted here (it only starts deploys that
/// await approval, see [`gate`]).
pub fn may_deploy(c: &Connection, p: &Principal, env: &Environment) -> Result<bool, DbError> {
    if is_push(p) {
        return Ok(false);
    }
    let role = project_role(c, p, env.project_id)?;
    if role < ProjectRole::Deployer {
        return Ok(false);
    }
    if !env.protected || p.role == Role::Admin {
        return Ok(true);
    }
    Ok(env.deployers.iter().any(|d| match d.as_ref() {
        DeployerRef::User(id) => p.user_id == Some(id),
        DeployerRef::Role(r) => role >= r,
    }))
}

/// The 403 naming the environment and who may deploy it.
pub fn forbidden(env: &Environment, what: &str) -> DeployError {
    DeployError::Forbidden(format!(
        "environment {:?} is protected: only admins and {} may {what} it",
        env.name,
        describe(&env.deployers)
    ))
}

/// Whether `p` may start a deploy of `env`, and whether it then awaits approval: a push
/// webhook's deploy of a protected environment always does; any deploy of an environment with
/// `require_approval` does.
pub fn gate(c: &Connection, p: &Principal, env: &Environment) -> Result<Gate, DeployError> {
    if is_push(p) {
        return Ok(if env.protected || env.require_approval {
            Gate::AwaitApproval
        } else {
            Gate::Direct
        });
    }
    if !may_deploy(c, p, env)? {
        if env.protected {
            return Err(forbidden(env, "deploy"));
        }
        return Err(DeployError::Forbidden(format!(
            "deploying environment {:?} needs the deployer role on its project",
            env.name
        )));
    }
    Ok(if env.require_approval {
        Gate::AwaitApproval
    } else {
        Gate::Direct
    })
}
