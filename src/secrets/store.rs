//! SQL for secrets. Values go in and come out only as age ciphertext.

use std::collections::BTreeMap;

use crate::db::{Conn, OptionalExtension, Tx, params};

use super::{SecretError, SecretInfo};
use crate::db::{DbError, Stored, StoredEnum, enum_at, rfc3339};
use stagely_protocol::Scope;

impl StoredEnum for Scope {
    const WHAT: &'static str = "secret scope";
    fn from_stored(s: &str) -> Option<Self> {
        Scope::parse(s)
    }
    fn as_stored(&self) -> &'static str {
        self.as_str()
    }
}

const INFO_SELECT: &str =
    "SELECT s.id, s.project_id, s.key, s.scope, s.service, e.name, s.version, s.updated_by, s.updated_at
     FROM secrets s LEFT JOIN environments e ON e.id = s.environment_id";

fn info_from_row(r: &crate::db::Row<'_>) -> crate::db::SqlResult<SecretInfo> {
    let id = r.get(0)?;
    Ok(SecretInfo {
        id,
        project_id: r.get(1)?,
        key: r.get(2)?,
        // An unknown scope is an error naming the row: falling back to `global` would widen a
        // service secret to every service.
        scope: enum_at(r, 3, "secrets", id)?,
        service: r.get(4)?,
        environment: r.get(5)?,
        version: r.get(6)?,
        updated_by: r.get(7)?,
        updated_at: rfc3339(r.get(8)?),
        warnings: Vec::new(),
    })
}

pub fn get(c: &Conn<'_>, id: i64) -> Result<SecretInfo, SecretError> {
    c.query_row(&format!("{INFO_SELECT} WHERE s.id = ?1"), [id], info_from_row)
        .optional()?
        .ok_or(SecretError::NotFound)
}

pub fn project_exists(c: &Conn<'_>, project_id: i64) -> Result<bool, DbError> {
    Ok(c.query_row(
        "SELECT EXISTS(SELECT 1 FROM projects WHERE id = ?1)",
        [project_id],
        |r| r.get(0),
    )?)
}

pub fn list(c: &Conn<'_>, project_id: i64) -> Result<Vec<SecretInfo>, SecretError> {
    if !project_exists(c, project_id)? {
        return Err(SecretError::ProjectNotFound);
    }
    let mut stmt = c.prepare(&format!(
        "{INFO_SELECT} WHERE s.project_id = ?1 ORDER BY COALESCE(e.name, ''), s.scope, COALESCE(s.service, ''), s.key"
    ))?;
    Ok(stmt
        .query_map([project_id], info_from_row)?
        .collect::<Result<_, _>>()?)
}

/// The id of a project's environment by name, or a 422 naming the field.
pub fn environment_id(c: &Conn<'_>, project_id: i64, name: &str) -> Result<i64, SecretError> {
    c.query_row(
        "SELECT id FROM environments WHERE project_id = ?1 AND name = ?2",
        params![project_id, name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| SecretError::Invalid {
        field: "environment",
        message: format!("this project has no environment named {name:?}"),
    })
}

pub struct NewSecret<'a> {
    pub project_id: i64,
    pub environment_id: Option<i64>,
    pub key: &'a str,
    pub scope: Scope,
    pub service: Option<&'a str>,
    pub ciphertext: Vec<u8>,
    pub actor: &'a str,
}

pub fn insert(tx: &Tx<'_>, s: &NewSecret<'_>, now: i64) -> Result<i64, SecretError> {
    tx.query_row(
        "INSERT INTO secrets (project_id, environment_id, key, scope, service, encrypted_value, version, updated_by, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8) RETURNING id",
        params![s.project_id, s.environment_id, s.key, Stored(s.scope), s.service, s.ciphertext, s.actor, now],
        |r| r.get(0),
    )
    .map_err(|e| {
        let e = DbError::from(e);
        if e.is_constraint() { SecretError::Exists(s.key.to_owned()) } else { SecretError::Db(e) }
    })
}

pub fn update_value(
    tx: &Tx<'_>,
    id: i64,
    ciphertext: &[u8],
    actor: &str,
    now: i64,
) -> Result<(), SecretError> {
    let n = tx.execute(
        "UPDATE secrets SET encrypted_value = ?2, version = version + 1, updated_by = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, ciphertext, actor, now],
    )?;
    if n == 0 {
        return Err(SecretError::NotFound);
    }
    Ok(())
}

pub fn delete(tx: &Tx<'_>, id: i64) -> Result<(), SecretError> {
    match tx.execute("DELETE FROM secrets WHERE id = ?1", [id])? {
        0 => Err(SecretError::NotFound),
        _ => Ok(()),
    }
}

/// A stored secret on its way to a deploy: still encrypted.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub id: i64,
    pub key: String,
    pub scope: Scope,
    pub service: Option<String>,
    pub environment_specific: bool,
    pub version: i64,
    pub ciphertext: Vec<u8>,
}

/// Every secret that applies to one environment, after precedence: for the same key, scope and
/// service, the environment's own secret beats the project-wide one. (Service beats global is
/// applied where both meet, in the agent's override.) Sorted: globals first, then by service, key.
pub fn for_environment(
    c: &Conn<'_>,
    project_id: i64,
    environment_id: i64,
) -> Result<Vec<SealedSecret>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, key, scope, service, environment_id IS NOT NULL, version, encrypted_value FROM secrets
         WHERE project_id = ?1 AND (environment_id IS NULL OR environment_id = ?2)",
    )?;
    let rows = stmt.query_map(params![project_id, environment_id], |r| {
        let id = r.get(0)?;
        Ok(SealedSecret {
            id,
            key: r.get(1)?,
            scope: enum_at(r, 2, "secrets", id)?,
            service: r.get(3)?,
            environment_specific: r.get(4)?,
            version: r.get(5)?,
            ciphertext: r.get(6)?,
        })
    })?;
    let rows: Vec<SealedSecret> = rows.collect::<Result<_, _>>()?;
    Ok(resolve(rows))
}

// --- secret history (`secret_versions`) --------------------------------------------------------

/// Record the secret's current value as its version row (after an insert or a new value).
pub fn record_version(tx: &Tx<'_>, id: i64) -> Result<(), DbError> {
    tx.prepare_cached(
        "INSERT INTO secret_versions (secret_id, version, project_id, environment_id, key, scope, service,
             encrypted_value, created_by, created_at)
         SELECT id, version, project_id, environment_id, key, scope, service, encrypted_value, updated_by, updated_at
         FROM secrets WHERE id = ?1",
    )?
    .execute([id])?;
    Ok(())
}

/// Keep a live secret's newest `keep` versions (the current one included); the number pruned.
pub fn prune_versions(tx: &Tx<'_>, id: i64, keep: u32) -> Result<usize, DbError> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM secret_versions WHERE secret_id = ?1 AND deleted_at IS NULL
               AND version <= (SELECT MAX(version) FROM secret_versions WHERE secret_id = ?1) - ?2",
        )?
        .execute(params![id, keep])?)
}

/// A secret is deleted: its versions stay, marked, for the releases that may still use them.
pub fn mark_versions_deleted(tx: &Tx<'_>, id: i64, now: i64) -> Result<(), DbError> {
    tx.prepare_cached(
        "UPDATE secret_versions SET deleted_at = ?2 WHERE secret_id = ?1 AND deleted_at IS NULL",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// Prune the versions of a project's deleted secrets that no redeployable release uses. A
/// release is redeployable while it is one of its environment's newest `keep` releases (`keep`
/// is `secrets.keep_versions`); once it ages out of them, what only it held goes. Only the
/// project's rows are read (by index): a project's releases use only its own secrets. The
/// number pruned.
pub fn prune_deleted_versions(tx: &Tx<'_>, project_id: i64, keep: u32) -> Result<usize, DbError> {
    Ok(tx
        .prepare_cached(PRUNE_DELETED)?
        .execute(params![keep, project_id])?)
}

/// The versions the project's redeployable releases use are read once, by index from each
/// environment's newest releases (`deployment_secrets` has no index by secret: never scanned).
const PRUNE_DELETED: &str = "DELETE FROM secret_versions AS v
     WHERE v.project_id = ?2 AND v.deleted_at IS NOT NULL
       AND (v.secret_id, v.version) NOT IN (
           SELECT ds.secret_id, ds.version FROM environments e
           JOIN releases r ON r.deployment_id IN (SELECT r2.deployment_id FROM releases r2
               WHERE r2.environment_id = e.id ORDER BY r2.deployment_id DESC LIMIT ?1)
           JOIN deployment_secrets ds ON ds.deployment_id = r.deployment_id
           WHERE e.project_id = ?2)";

/// One version of a secret, as anyone may see it (no value).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version: i64,
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// The value deployments get now.
    pub current: bool,
    /// When the secret was deleted (its versions kept for the releases that used them).
    pub deleted_at: Option<String>,
}

/// A secret's kept versions, newest first; `None` when neither the secret nor any version of it
/// exists.
pub fn versions(c: &Conn<'_>, id: i64) -> Result<Option<Vec<VersionInfo>>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT v.version, v.created_by, v.created_at, v.version = s.version, v.deleted_at
         FROM secret_versions v LEFT JOIN secrets s ON s.id = v.secret_id
         WHERE v.secret_id = ?1 ORDER BY v.version DESC",
    )?;
    let rows: Vec<VersionInfo> = stmt
        .query_map([id], |r| {
            Ok(VersionInfo {
                version: r.get(0)?,
                created_by: r.get(1)?,
                created_at: rfc3339(r.get(2)?),
                current: r.get::<_, Option<bool>>(3)?.unwrap_or(false),
                deleted_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
            })
        })?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        let exists: bool = c.query_row("SELECT EXISTS(SELECT 1 FROM secrets WHERE id = ?1)", [id], |r| {
            r.get(0)
        })?;
        return Ok(exists.then(Vec::new));
    }
    Ok(Some(rows))
}

/// The kept versions of a project's live secrets, newest first, by secret id (the secrets page).
pub fn versions_of_project(
    c: &Conn<'_>,
    project_id: i64,
) -> Result<std::collections::HashMap<i64, Vec<VersionInfo>>, DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT v.secret_id, v.version, v.created_by, v.created_at, v.version = s.version
         FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
         WHERE v.project_id = ?1 ORDER BY v.secret_id, v.version DESC",
    )?;
    let mut out: std::collections::HashMap<i64, Vec<VersionInfo>> = std::collections::HashMap::new();
    let mut rows = stmt.query([project_id])?;
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().push(VersionInfo {
            version: r.get(1)?,
            created_by: r.get(2)?,
            created_at: rfc3339(r.get(3)?),
            current: r.get(4)?,
            deleted_at: None,
        });
    }
    Ok(out)
}

/// The exact secret versions a deployment was sent, still encrypted, from the history, in the
/// order they were recorded; and the keys (`KEY`, `KEY (service web)`) of those no longer kept.
pub fn versions_of_deployment(
    c: &Conn<'_>,
    deployment_id: i64,
) -> Result<(Vec<SealedSecret>, Vec<String>), DbError> {
    let mut stmt = c.prepare_cached(
        "SELECT ds.secret_id, ds.key, ds.scope, ds.service, ds.version, v.environment_id IS NOT NULL, v.encrypted_value
         FROM deployment_secrets ds
         LEFT JOIN secret_versions v ON v.secret_id = ds.secret_id AND v.version = ds.version
         WHERE ds.deployment_id = ?1 ORDER BY ds.rowid",
    )?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut rows = stmt.query([deployment_id])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let key: String = r.get(1)?;
        let service: Option<String> = r.get(3)?;
        match r.get::<_, Option<Vec<u8>>>(6)? {
            Some(ciphertext) => found.push(SealedSecret {
                id,
                key,
                scope: enum_at(&r, 2, "deployment_secrets", id)?,
                service,
                environment_specific: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
                version: r.get(4)?,
                ciphertext,
            }),
            None => missing.push(match service {
                Some(s) => format!("{key} (service {s})"),
                None => key,
            }),
        }
    }
    Ok((found, missing))
}

/// Every kept version's ciphertext (key rotation).
pub fn all_version_ciphertexts(c: &Conn<'_>) -> Result<Vec<(i64, i64, Vec<u8>)>, DbError> {
    let mut stmt = c.prepare("SELECT secret_id, version, encrypted_value FROM secret_versions")?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?)
}

/// Replace one version's ciphertext (key rotation: same value).
pub fn set_version_ciphertext(
    tx: &Tx<'_>,
    secret_id: i64,
    version: i64,
    ciphertext: &[u8],
) -> Result<(), DbError> {
    tx.prepare_cached(
        "UPDATE secret_versions SET encrypted_value = ?3 WHERE secret_id = ?1 AND version = ?2",
    )?
    .execute(params![secret_id, version, ciphertext])?;
    Ok(())
}

// --- the vault's rows --------------------------------------------------------------------------

/// The `meta` key of the check value the vault's key must decrypt.
const VAULT_CHECK: &str = "vault_check";

/// The vault's check value (age ciphertext), if one was stored.
pub fn vault_check(c: &Conn<'_>) -> Result<Option<Vec<u8>>, DbError> {
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = ?1", [VAULT_CHECK], |r| {
            r.get(0)
        })
        .optional()?,
    )
}

/// Store the check value unless one is already there.
pub fn init_vault_check(tx: &Tx<'_>, sealed: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
        params![VAULT_CHECK, sealed],
    )?;
    Ok(())
}

/// Replace the check value (key rotation).
pub fn set_vault_check(tx: &Tx<'_>, sealed: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "UPDATE meta SET value = ?2 WHERE key = ?1",
        params![VAULT_CHECK, sealed],
    )?;
    Ok(())
}

/// Every secret's id and ciphertext (key rotation).
pub fn all_ciphertexts(c: &Conn<'_>) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
    let mut stmt = c.prepare("SELECT id, encrypted_value FROM secrets")?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Replace one secret's ciphertext without a new version (key rotation: same value).
pub fn set_ciphertext(tx: &Tx<'_>, id: i64, ciphertext: &[u8]) -> Result<(), DbError> {
    tx.prepare_cached("UPDATE secrets SET encrypted_value = ?2 WHERE id = ?1")?
        .execute(params![id, ciphertext])?;
    Ok(())
}

fn resolve(rows: Vec<SealedSecret>) -> Vec<SealedSecret> {
    let mut chosen: BTreeMap<(Scope, String, String), SealedSecret> = BTreeMap::new();
    for s in rows {
        let slot = (s.scope, s.service.clone().unwrap_or_default(), s.key.clone());
        match chosen.get(&slot) {
            Some(existing) if existing.environment_specific && !s.environment_specific => {}
            _ => {
                chosen.insert(slot, s);
            }
        }
    }
    chosen.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(id: i64, key: &str, scope: Scope, service: Option<&str>, env: bool) -> SealedSecret {
        SealedSecret {
            id,
            key: key.into(),
            scope,
            service: service.map(Into::into),
            environment_specific: env,
            version: 1,
            ciphertext: vec![],
        }
    }

    #[test]
    fn an_unknown_stored_scope_is_an_error_naming_the_row_never_global() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("s.db")).unwrap();
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                     VALUES (1, 'p', 'main', '/c.yml', 'always', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at) VALUES (1, 1, 'staging', 0);",
            )?;
            let new = NewSecret {
                project_id: 1,
                environment_id: None,
                key: "K",
                scope: Scope::Service,
                service: Some("web"),
                ciphertext: vec![1],
                actor: "t",
            };
            let id = insert(tx, &new, 0)?;
            assert_eq!(get(tx, id)?.scope, Scope::Service);
            // What a newer Stagely or a hand edit could leave: bypass the CHECK to write it.
            tx.execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE secrets SET scope = 'team' WHERE id = 1;
                 PRAGMA ignore_check_constraints = OFF;",
            )?;
            Ok::<_, SecretError>(())
        })
        .unwrap();
        let errors = [
            db.read_blocking(|c| get(c, 1)).unwrap_err().to_string(),
            db.read_blocking(|c| list(c, 1)).unwrap_err().to_string(),
            db.read_blocking(|c| for_environment(c, 1, 1))
                .unwrap_err()
                .to_string(),
        ];
        for err in errors {
            assert!(
                err.contains("secrets row 1") && err.contains("\"team\"") && err.contains("secret scope"),
                "{err}"
            );
        }
    }

    #[test]
    fn environment_specific_beats_project_wide_in_either_order() {
        for rows in [
            vec![
                sealed(1, "A", Scope::Global, None, false),
                sealed(2, "A", Scope::Global, None, true),
            ],
            vec![
                sealed(2, "A", Scope::Global, None, true),
                sealed(1, "A", Scope::Global, None, false),
            ],
        ] {
            let out = resolve(rows);
            assert_eq!(out.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2]);
        }
        let out = resolve(vec![
            sealed(3, "A", Scope::Service, Some("web"), false),
            sealed(1, "A", Scope::Global, None, false),
            sealed(4, "A", Scope::Service, Some("db"), true),
        ]);
        assert_eq!(out.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 4, 3]);
    }

    #[test]
    fn deleted_versions_are_pruned_by_index_never_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("s.db")).unwrap();
        let plan: Vec<String> = db
            .read_blocking(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {PRUNE_DELETED}"))?;
                let rows = stmt.query_map(params![10, 1], |r| r.get::<_, String>(3))?;
                Ok::<_, DbError>(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .unwrap();
        assert!(plan.iter().all(|p| !p.starts_with("SCAN")), "{plan:?}");
        // What it keeps: a deleted secret's version a release of the newest `keep` uses.
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO projects (id, name, git_ref, compose_path, pull, created_at, updated_at)
                     VALUES (1, 'p', 'main', '/c.yml', 'always', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at) VALUES (1, 1, 'prod', 0);
                 INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                     VALUES (1, 1, 1, 'success', 'main', 't', 0), (2, 1, 1, 'success', 'main', 't', 0);
                 INSERT INTO releases (deployment_id, environment_id, agent_id, agent_name, compose_hash, services, created_at)
                     VALUES (1, 1, NULL, 'a', 'h', '[]', 0), (2, 1, NULL, 'a', 'h', '[]', 0);
                 INSERT INTO deployment_secrets (deployment_id, secret_id, key, scope, version)
                     VALUES (1, 7, 'K', 'global', 1), (2, 7, 'K', 'global', 2);
                 INSERT INTO secret_versions (secret_id, version, project_id, key, scope, encrypted_value, created_by, created_at, deleted_at)
                     VALUES (7, 1, 1, 'K', 'global', x'00', 't', 0, 5), (7, 2, 1, 'K', 'global', x'00', 't', 0, 5),
                            (7, 3, 1, 'K', 'global', x'00', 't', 0, 5);",
            )?;
            // keep = 1: only deployment 2's release is redeployable.
            assert_eq!(prune_deleted_versions(tx, 1, 1)?, 2);
            let left: i64 = tx.query_row("SELECT version FROM secret_versions", [], |r| r.get(0))?;
            assert_eq!(left, 2);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }
}
