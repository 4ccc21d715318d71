//! Secret operations, shared by the JSON API and the project page: validate, encrypt, store,
//! and record the audit entry (never the value) in the same transaction.

use super::{
    NewValue, SecretError, SecretInfo, SecretInput, refuse_nul, store, validate_key, validate_scope,
    validate_value,
};
use crate::app::AppState;
use crate::audit;
use crate::db::now_ms;
use crate::users::Principal;

/// Validate, encrypt and store a new secret.
pub async fn create_secret(
    state: &AppState,
    who: &Principal,
    project_id: i64,
    input: SecretInput,
) -> Result<SecretInfo, SecretError> {
    let key = input.key.trim().to_owned();
    validate_key(&key)?;
    validate_value(&input.value)?;
    refuse_nul(&key, input.value.contains('\0'))?;
    let (scope, service) = validate_scope(&input.scope, input.service.as_deref())?;
    let ciphertext = state.vault.encrypt(&input.value)?;
    let environment = input
        .environment
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned);
    drop(input);
    let actor = who.actor.clone();
    state
        .db
        .write(move |tx| {
            if !store::project_exists(tx, project_id)? {
                return Err(SecretError::ProjectNotFound);
            }
            let environment_id = match &environment {
                Some(name) => Some(store::environment_id(tx, project_id, name)?),
                None => None,
            };
            let now = now_ms();
            let new = store::NewSecret {
                project_id,
                environment_id,
                key: &key,
                scope,
                service: service.as_deref(),
                ciphertext,
                actor: &actor,
            };
            let id = store::insert(tx, &new, now)?;
            store::record_version(tx, id)?;
            let warnings = match &service {
                Some(service) => service_warnings(tx, project_id, environment_id, service)?,
                None => Vec::new(),
            };
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "secret.create", "secret", Some(id)).detail(&describe(
                    &key,
                    service.as_deref(),
                    environment.as_deref(),
                )),
            )?;
            Ok(SecretInfo {
                warnings,
                ..store::get(tx, id)?
            })
        })
        .await
}

/// For a service secret: a warning for each environment it applies to whose last release is
/// known and has no such service (the compose file does not define it, or not yet). The secret is
/// still stored: the service may come with the next commit.
fn service_warnings(
    tx: &crate::db::Conn<'_>,
    project_id: i64,
    environment_id: Option<i64>,
    service: &str,
) -> Result<Vec<String>, SecretError> {
    let project = crate::projects::store::get(tx, project_id).map_err(|e| match e {
        crate::projects::ProjectError::Db(e) => SecretError::Db(e),
        _ => SecretError::ProjectNotFound,
    })?;
    let mut warnings = Vec::new();
    for env in project
        .environments
        .iter()
        .filter(|e| environment_id.is_none_or(|id| id == e.id))
    {
        let Some(release) = crate::releases::store::latest(tx, env.id)? else {
            continue;
        };
        if release.services.iter().any(|s| s.name == service) {
            continue;
        }
        let names: Vec<&str> = release.services.iter().map(|s| s.name.as_str()).collect();
        warnings.push(format!(
            "{}'s last release (deployment #{}) has no service {service} (it has: {}); the secret is stored \
             and applies once the compose file defines {service}",
            env.name,
            release.deployment_id,
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
    }
    Ok(warnings)
}

/// Replace a secret's value (its version goes up by one). The previous value stays in the
/// history as an older version; past `secrets.keep_versions` versions the oldest are pruned.
pub async fn update_secret(
    state: &AppState,
    who: &Principal,
    id: i64,
    new: NewValue,
) -> Result<SecretInfo, SecretError> {
    validate_value(&new.value)?;
    let has_nul = new.value.contains('\0');
    let ciphertext = state.vault.encrypt(&new.value)?;
    drop(new);
    let actor = who.actor.clone();
    let keep = state.config.secrets.keep_versions;
    state
        .db
        .write(move |tx| {
            let before = store::get(tx, id)?;
            refuse_nul(&before.key, has_nul)?;
            let now = now_ms();
            store::update_value(tx, id, &ciphertext, &actor, now)?;
            store::record_version(tx, id)?;
            store::prune_versions(tx, id, keep)?;
            let what = describe(
                &before.key,
                before.service.as_deref(),
                before.environment.as_deref(),
            );
            audit::record(
                tx,
                now,
                &audit::Entry::new(&actor, "secret.update", "secret", Some(id)).detail(&what),
            )?;
            let warnings = match &before.service {
                Some(service) => {
                    let env_id = match &before.environment {
                        Some(name) => Some(store::environment_id(tx, before.project_id, name)?),
                        None => None,
                    };
                    service_warnings(tx, before.project_id, env_id, service)?
                }
                None => Vec::new(),
            };
            Ok(SecretInfo {
                warnings,
                ..store::get(tx, id)?
            })
        })
        .await
}

/// Delete a secret. Its versions are marked deleted and stay while a redeployable release
/// (one of its environment's newest `secrets.keep_versions`) used them; the rest are pruned.
pub async fn delete_secret(state: &AppState, who: &Principal, id: i64) -> Result<(), SecretError> {
    let actor = who.actor.clone();
    let keep = state.config.secrets.keep_versions;
    state
        .db
        .write(move |tx| {
            let before = store::get(tx, id)?;
            store::delete(tx, id)?;
            store::mark_versions_deleted(tx, id, now_ms())?;
            store::prune_deleted_versions(tx, before.project_id, keep)?;
            let what = describe(
                &before.key,
                before.service.as_deref(),
                before.environment.as_deref(),
            );
            audit::record(
                tx,
                now_ms(),
                &audit::Entry::new(&actor, "secret.delete", "secret", Some(id))
                    .name(&before.key)
                    .project(before.project_id)
                    .detail(&what),
            )
            .map_err(SecretError::from)
        })
        .await
}

/// `KEY`, `KEY (service web)`, `KEY (staging)`: what the audit log says about a secret.
fn describe(key: &str, service: Option<&str>, environment: Option<&str>) -> String {
    match (service, environment) {
        (None, None) => key.to_owned(),
        (Some(s), None) => format!("{key} (service {s})"),
        (None, Some(e)) => format!("{key} ({e})"),
        (Some(s), Some(e)) => format!("{key} (service {s}, {e})"),
    }
}

/// A secret's kept versions, newest first (who wrote each and when, never a value).
pub async fn versions(state: &AppState, id: i64) -> Result<Vec<store::VersionInfo>, SecretError> {
    state
        .db
        .read(move |c| store::versions(c, id))
        .await?
        .ok_or(SecretError::NotFound)
}
