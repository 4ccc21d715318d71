//! The deploy rule of an environment: who may deploy it and whether the deploy waits for an
//! approval. Every path that creates a deployment by a principal asks [`gate`] (the trigger,
//! a redeploy and so the runtime page's Re-converge); an approval asks [`may_deploy`].

use crate::db::Conn;

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
pub fn may_deploy(c: &Conn<'_>, p: &Principal, env: &Environment) -> Result<bool, DbError> {
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
pub fn gate(c: &Conn<'_>, p: &Principal, env: &Environment) -> Result<Gate, DeployError> {
    if is_push(p) {
        // A push is no person, but on a protected environment its triggers were set by someone
        // who may deploy it (`projects::ops::update_environment`); with approvals required it
        // waits like anyone's deploy.
        return Ok(if env.require_approval {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn principal(user_id: Option<i64>, role: Role, actor: &str) -> Principal {
        Principal {
            actor: actor.into(),
            role,
            user_id,
            via_token: false,
            token_role: None,
        }
    }

    /// Global member 1 (listed by name), member 2 (unlisted), viewer 3 with the project role
    /// deployer, viewer 4, admin 5; environment 10 protected for `deployer+` and user 1.
    #[test]
    fn who_may_deploy_a_protected_and_an_open_environment() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO users (id, username, role, created_at) VALUES
                     (1, 'maya', 'member', 0), (2, 'carl', 'member', 0), (3, 'dee', 'viewer', 0),
                     (4, 'vic', 'viewer', 0), (5, 'root', 'admin', 0);
                 INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                     VALUES (1, 'shop', 'main', 'c.yaml', 'never', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at, compose_project) VALUES (10, 1, 'edge', 0, 'e'), (11, 1, 'dev', 0, 'd');
                 INSERT INTO project_members (project_id, user_id, role, created_at, granted_by)
                     VALUES (1, 3, 'deployer', 0, 'root');",
            )?;
            let mut env = crate::projects::store::get_environment(tx, 11).unwrap();
            let open = env.clone();
            env.protected = true;
            env.deployers = vec![super::super::Deployer::User {
                user_id: 1,
                username: "maya".into(),
            }];
            let maya = principal(Some(1), Role::Member, "user:maya");
            let carl = principal(Some(2), Role::Member, "user:carl");
            let dee = principal(Some(3), Role::Viewer, "user:dee");
            let vic = principal(Some(4), Role::Viewer, "user:vic");
            let root = principal(Some(5), Role::Admin, "user:root");
            // Open: deployer or higher on the project.
            for (p, may) in [(&maya, true), (&carl, true), (&dee, true), (&vic, false), (&root, true)] {
                assert_eq!(may_deploy(tx, p, &open)?, may, "open, {}", p.actor);
            }
            // Protected for maya only: admins and maya.
            for (p, may) in [(&maya, true), (&carl, false), (&dee, false), (&vic, false), (&root, true)] {
                assert_eq!(may_deploy(tx, p, &env)?, may, "maya only, {}", p.actor);
            }
            let Err(DeployError::Forbidden(why)) = gate(tx, &carl, &env) else {
                panic!("carl may not deploy");
            };
            assert_eq!(why, "environment \"dev\" is protected: only admins and user:maya may deploy it");
            // Protected for deployer+: the project's deployer too, not a viewer.
            env.deployers.push(super::super::Deployer::Role {
                role: ProjectRole::Deployer,
            });
            for (p, may) in [(&maya, true), (&carl, true), (&dee, true), (&vic, false)] {
                assert_eq!(may_deploy(tx, p, &env)?, may, "deployer+, {}", p.actor);
            }
            // A viewer token caps its owner: dee with a viewer token may not deploy.
            let mut dee_token = dee.clone();
            dee_token.token_role = Some(Role::Viewer);
            assert!(!may_deploy(tx, &dee_token, &env)?);
            // A push webhook never deploys a protected environment directly.
            let push = principal(None, Role::Member, "github:octo");
            assert!(!may_deploy(tx, &push, &env)?);
            assert_eq!(gate(tx, &push, &env).unwrap(), Gate::Direct);
            assert_eq!(gate(tx, &push, &open).unwrap(), Gate::Direct);
            assert_eq!(gate(tx, &maya, &env).unwrap(), Gate::Direct);
            env.require_approval = true;
            assert_eq!(gate(tx, &maya, &env).unwrap(), Gate::AwaitApproval);
            assert_eq!(gate(tx, &push, &env).unwrap(), Gate::AwaitApproval);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }
}
