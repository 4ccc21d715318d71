//! SQL for secrets. Values go in and come out only as age ciphertext.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

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

fn info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretInfo> {
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
    })
}

pub fn get(c: &Connection, id: i64) -> Result<SecretInfo, SecretError> {
    c.query_row(&format!("{INFO_SELECT} WHERE s.id = ?1"), [id], info_from_row)
        .optional()?
        .ok_or(SecretError::NotFound)
}

pub fn project_exists(c: &Connection, project_id: i64) -> Result<bool, DbError> {
    Ok(c.query_row(
        "SELECT EXISTS(SELECT 1 FROM projects WHERE id = ?1)",
        [project_id],
        |r| r.get(0),
    )?)
}

pub fn list(c: &Connection, project_id: i64) -> Result<Vec<SecretInfo>, SecretError> {
    if !project_exists(c, project_id)? {
        return Err(SecretError::ProjectNotFound);
    }
    let mut stmt = c.prepare(&format!(
        "{INFO_SELECT} WHERE s.project_id = ?1 ORDER BY IFNULL(e.name, ''), s.scope, IFNULL(s.service, ''), s.key"
    ))?;
    Ok(stmt
        .query_map([project_id], info_from_row)?
        .collect::<Result<_, _>>()?)
}

/// The id of a project's environment by name, or a 422 naming the field.
pub fn environment_id(c: &Connection, project_id: i64, name: &str) -> Result<i64, SecretError> {
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

pub fn insert(tx: &Transaction<'_>, s: &NewSecret<'_>, now: i64) -> Result<i64, SecretError> {
    tx.execute(
        "INSERT INTO secrets (project_id, environment_id, key, scope, service, encrypted_value, version, updated_by, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8)",
        params![s.project_id, s.environment_id, s.key, Stored(s.scope), s.service, s.ciphertext, s.actor, now],
    )
    .map_err(|e| {
        let e = DbError::from(e);
        if e.is_constraint() { SecretError::Exists(s.key.to_owned()) } else { SecretError::Db(e) }
    })?;
    Ok(tx.last_insert_rowid())
}

pub fn update_value(
    tx: &Transaction<'_>,
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

pub fn delete(tx: &Transaction<'_>, id: i64) -> Result<(), SecretError> {
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
    c: &Connection,
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

// --- the vault's rows --------------------------------------------------------------------------

/// The `meta` key of the check value the vault's key must decrypt.
const VAULT_CHECK: &str = "vault_check";

/// The vault's check value (age ciphertext), if one was stored.
pub fn vault_check(c: &Connection) -> Result<Option<Vec<u8>>, DbError> {
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = ?1", [VAULT_CHECK], |r| {
            r.get(0)
        })
        .optional()?,
    )
}

/// Store the check value unless one is already there.
pub fn init_vault_check(tx: &Transaction<'_>, sealed: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
        params![VAULT_CHECK, sealed],
    )?;
    Ok(())
}

/// Replace the check value (key rotation).
pub fn set_vault_check(tx: &Transaction<'_>, sealed: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "UPDATE meta SET value = ?2 WHERE key = ?1",
        params![VAULT_CHECK, sealed],
    )?;
    Ok(())
}

/// Every secret's id and ciphertext (key rotation).
pub fn all_ciphertexts(c: &Connection) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
    let mut stmt = c.prepare("SELECT id, encrypted_value FROM secrets")?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Replace one secret's ciphertext without a new version (key rotation: same value).
pub fn set_ciphertext(tx: &Transaction<'_>, id: i64, ciphertext: &[u8]) -> Result<(), DbError> {
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
}
