//! Project and environment operations, shared by the JSON API and the pages: each validates its
//! input, writes through [`store`], and records its audit entry in the same transaction.

use super::{
    Environment, EnvironmentInput, EnvironmentPatch, Project, ProjectError, ProjectInput, ProjectPatch,
    Retention, store,
};
use crate::agents::{ops as agent_ops, store as agent_store};
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::users::Principal;

/// Create a project.
pub async fn create_project(
    state: &AppState,
    who: &Principal,
    input: ProjectInput,
) -> Result<Project, ProjectError> {
    let valid = input.validate()?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let id = store::insert(tx, &valid, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "project.create", "project", Some(id)).detail(&valid.name),
            )?;
            store::get(tx, id)
        })
        .await
}

/// Apply a partial update; the result is validated as a whole.
pub async fn update_project(
    state: &AppState,
    who: &Principal,
    id: i64,
    patch: ProjectPatch,
) -> Result<Project, ProjectError> {
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let current = store::get(tx, id)?;
            let valid = patch.apply(&current).validate()?;
            let now = now_ms();
            store::update(tx, id, &valid, now)?;
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "project.update", "project", Some(id)).detail(&valid.name),
            )?;
            store::get(tx, id)
        })
        .await
}

/// What a deletion does about the stacks that may run on the targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackCheck {
    /// Refuse while one may run ([`guard_stack`]).
    Guard,
    /// The person says they took it down on the target themselves (`?stack_removed=true`).
    Confirmed,
    /// Decided by the caller (src/operate/delete.rs took the stacks down through their agents,
    /// or an admin forced it): deleted, the audit entry ending with this note.
    Handled(String),
}

/// Refuse to forget an environment whose stack may still run on its target, unless the person
/// says they took it down (`stack_removed`): deleting it here would leave it running untracked,
/// its containers holding the secrets' values, with nothing to update or remove it.
fn guard_stack(
    c: &crate::db::Conn<'_>,
    project_id: Option<i64>,
    environment_id: Option<i64>,
    check: &StackCheck,
) -> Result<String, ProjectError> {
    if let StackCheck::Handled(note) = check {
        return Ok(note.clone());
    }
    match store::stack_in_use(c, project_id, environment_id)? {
        None => Ok(String::new()),
        Some(_) if *check == StackCheck::Confirmed => {
            Ok(" (its stack taken down on the target, as confirmed)".into())
        }
        Some((environment, compose_project, deployment_id)) => Err(ProjectError::StackRunning {
            environment,
            compose_project,
            deployment_id,
        }),
    }
}

/// Delete a project with its environments, secrets and agents; the agents' live connections
/// are closed. Refused while one of its stacks may be running (see [`guard_stack`]).
pub async fn delete_project(
    state: &AppState,
    who: &Principal,
    id: i64,
    check: StackCheck,
) -> Result<(), ProjectError> {
    let actor = who.actor.clone();
    let agents = state
        .db
        .write(move |tx| {
            let project = store::get(tx, id)?;
            let note = guard_stack(tx, Some(id), None, &check)?;
            let agents = agent_store::ids_for_project(tx, id)?;
            store::delete(tx, id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "project.delete", "project", Some(id))
                    .name(&project.name)
                    .project(id)
                    .detail(&format!("{}{note}", project.name)),
            )?;
            Ok::<_, ProjectError>(agents)
        })
        .await?;
    agent_ops::close_agents(state, agents);
    Ok(())
}

/// Add an environment to a project.
pub async fn create_environment(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: EnvironmentInput,
) -> Result<Environment, ProjectError> {
    let valid = input.validate()?;
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            let now = now_ms();
            let id = store::insert_environment(tx, project_id, &valid.name, valid.git_ref.as_deref(), now)?;
            if valid.retention != Retention::default() {
                store::set_retention(tx, id, valid.retention)?;
            }
            // Production-like names start protected (src/protect); an admin can change it.
            let protection = crate::protect::Protection::default_for(&valid.name);
            if protection != crate::protect::Protection::default() {
                crate::protect::store::set(tx, id, &protection)?;
            }
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "environment.create", "environment", Some(id)).detail(&valid.name),
            )?;
            store::get_environment(tx, id)
        })
        .await
}

/// How an audit entry describes an environment's retention: its two values, `default` for none.
fn describe_retention(r: Retention) -> (String, String) {
    let shown = |v: Option<u32>| v.map_or_else(|| "default".to_owned(), |n| n.to_string());
    (shown(r.keep_deployments), shown(r.keep_days))
}

/// Change an environment's settings (its log retention overrides and push triggers); validated
/// as a whole, audited `environment.update` with the old and new values.
pub async fn update_environment(
    state: &AppState,
    who: &Principal,
    id: i64,
    patch: EnvironmentPatch,
) -> Result<Environment, ProjectError> {
    let actor = who.actor.clone();
    // The protection is a global admin's: a maintainer who may not deploy an environment must
    // not be able to lift it. Checked before anything is written.
    if patch.touches_protection() && who.role != crate::users::Role::Admin {
        return Err(ProjectError::Forbidden(
            "changing an environment's protection (protected, deployers, require_approval) needs a global admin"
                .into(),
        ));
    }
    let who = who.clone();
    state
        .db
        .write(move |tx| {
            let current = store::get_environment(tx, id)?;
            let protection_before = current.protection();
            let protection = patch.apply_protection(tx, &protection_before)?;
            let before = current.retention();
            let after = patch.apply(before)?;
            let triggers_before = current.triggers();
            let triggers = patch.apply_triggers(&triggers_before)?;
            let auto_rollback = patch.apply_auto_rollback(current.auto_rollback)?;
            if auto_rollback != current.auto_rollback {
                store::set_auto_rollback(tx, id, auto_rollback)?;
                audit::record(
                    tx,
                    now_ms(),
                    &audit::Entry::new(&actor, "environment.update", "environment", Some(id)).detail(
                        &format!(
                            "{}: auto_rollback {auto_rollback} (was {})",
                            current.name, current.auto_rollback
                        ),
                    ),
                )?;
            }
            if triggers != triggers_before {
                // A push deploys a protected environment without a person (src/protect): so its
                // triggers are set only by someone who may deploy it (as the protection will be
                // after this change).
                let mut guarded = current.clone();
                guarded.protected = protection.protected;
                guarded.deployers = protection.deployers.clone();
                if guarded.protected && !crate::protect::rules::may_deploy(tx, &who, &guarded)? {
                    return Err(ProjectError::Forbidden(format!(
                        "environment {:?} is protected: only admins and {} may change what deploys it on a push",
                        current.name,
                        crate::protect::describe(&guarded.deployers)
                    )));
                }
                store::set_triggers(tx, id, &triggers)?;
                audit::record(
                    tx,
                    now_ms(),
                    &audit::Entry::new(&actor, "environment.update", "environment", Some(id)).detail(
                        &format!(
                            "{}: deploy_on_push {}, deploy_on_tag {} (was {}, {})",
                            current.name,
                            triggers.on_push,
                            triggers.on_tag.as_deref().unwrap_or("none"),
                            triggers_before.on_push,
                            triggers_before.on_tag.as_deref().unwrap_or("none"),
                        ),
                    ),
                )?;
            }
            if protection != protection_before {
                crate::protect::store::set(tx, id, &protection)?;
                audit::record(
                    tx,
                    now_ms(),
                    &audit::Entry::new(&actor, "environment.protection", "environment", Some(id))
                        .name(&current.name)
                        .project(current.project_id)
                        .detail(&format!(
                            "{}: {} (was {})",
                            current.name,
                            protection.summary(),
                            protection_before.summary()
                        )),
                )?;
            }
            if after != before {
                store::set_retention(tx, id, after)?;
                audit::record(
                    tx,
                    now_ms(),
                    &audit::Entry::new(&actor, "environment.update", "environment", Some(id)).detail(&{
                        let ((n, d), (n0, d0)) = (describe_retention(after), describe_retention(before));
                        format!(
                            "{}: log_keep_deployments {n}, log_keep_days {d} (was {n0}, {d0})",
                            current.name
                        )
                    }),
                )?;
            }
            store::get_environment(tx, id)
        })
        .await
}

/// Delete an environment with its secrets and agents; the agents' live connections are closed.
/// Refused while its stack may be running (see [`guard_stack`]).
pub async fn delete_environment(
    state: &AppState,
    who: &Principal,
    id: i64,
    check: StackCheck,
) -> Result<(), ProjectError> {
    let actor = who.actor.clone();
    let agents = state
        .db
        .write(move |tx| {
            let env = store::get_environment(tx, id)?;
            let env_project = store::get(tx, env.project_id)?.name;
            let note = guard_stack(tx, None, Some(id), &check)?;
            let agents = agent_store::ids_for_environment(tx, id)?;
            store::delete_environment(tx, id)?;
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "environment.delete", "environment", Some(id))
                    .name(&format!("{}/{}", env_project, env.name))
                    .project(env.project_id)
                    .detail(&format!("{}{note}", env.name)),
            )?;
            Ok::<_, ProjectError>(agents)
        })
        .await?;
    agent_ops::close_agents(state, agents);
    Ok(())
}
