//! The embedded store: one SQLite file in WAL mode, one writer and a few readers.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool (see [`super::Db`]). Writes
//! run in `BEGIN IMMEDIATE` transactions that roll back when dropped uncommitted. Migrations are
//! embedded from `migrations/` and run before the listener binds; a database written by a newer
//! binary is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::sql::{Conn, Tx};
use super::{DbError, create_private_dir};

pub(super) mod embedded {
    refinery::embed_migrations!("migrations");
}

const READER_POOL: usize = 4;

pub(super) struct SqliteStore {
    pub(super) path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// Pragmas every connection gets (vaultwarden's `get_init_stmts`).
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Hot statements (token and session lookups, the deploy's inserts) are prepared once per
    // connection: parsing them on every request was ~10 % of the appliance's CPU under load.
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    Ok(())
}

fn open_conn(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// Run the pending migrations with foreign keys off, then check them and switch them on again:
/// SQLite's procedure for schema changes (a table rebuilt by create, copy, drop, rename must not
/// cascade its drop into its children). Refinery runs each migration in a transaction, where the
/// pragma cannot change, so it is set around the runner. Start fails when the check finds a row
/// pointing at nothing.
fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    conn.execute_batch("PRAGMA foreign_keys = OFF;")?;
    let ran = embedded::migrations::runner()
        .run(conn)
        .map_err(|e| DbError::Migration(e.to_string()));
    let broken = ran.and_then(|_| foreign_key_violations(conn));
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    let broken = broken?;
    if !broken.is_empty() {
        return Err(DbError::ForeignKeys(broken.join("; ")));
    }
    Ok(())
}

/// `PRAGMA foreign_key_check`, as "table rowid → parent" lines (at most 10).
fn foreign_key_violations(conn: &Connection) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check LIMIT 10")?;
    let rows = stmt.query_map([], |r| {
        let table: String = r.get(0)?;
        let rowid: Option<i64> = r.get(1)?;
        let parent: String = r.get(2)?;
        Ok(format!(
            "{table} row {} points at a missing {parent}",
            rowid.map_or("?".to_owned(), |i| i.to_string())
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl SqliteStore {
    /// Open (creating if needed) the database file, switch to WAL and run pending migrations.
    pub(super) fn open(path: &Path) -> Result<SqliteStore, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let mut conn = open_conn(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        refuse_newer_schema(&conn, path)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
    {
        // A panic while holding the lock leaves no half transaction (rollback on drop): reuse it.
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(DbError::from)?;
        let out = f(&Tx::new(Conn::sqlite(&tx)))?;
        tx.commit().map_err(DbError::from)?;
        Ok(out)
    }

    pub(super) fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Conn<'_>) -> Result<T, E>,
    {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&Conn::sqlite(&conn));
        self.give_back(conn);
        out
    }

    /// [`Self::read_blocking`] when a pooled reader is free; `None` (and `f` back) when not.
    pub(super) fn try_lookup<T, E, F>(&self, f: F) -> Result<Result<T, E>, F>
    where
        F: FnOnce(&Conn<'_>) -> Result<T, E>,
    {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(conn) => {
                let out = f(&Conn::sqlite(&conn));
                self.give_back(conn);
                Ok(out)
            }
            None => Err(f),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
    }
}

fn refuse_newer_schema(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let has_history: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refinery_schema_history')",
        [],
        |r| r.get(0),
    )?;
    if !has_history {
        return Ok(());
    }
    let found: i64 = conn.query_row(
        "SELECT IFNULL(MAX(version), 0) FROM refinery_schema_history",
        [],
        |r| r.get(0),
    )?;
    let known = super::known_schema_version();
    if found > known {
        return Err(DbError::TooNew {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, rfc3339};

    #[test]
    fn migrates_into_wal_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/stagely.db");
        let db = Db::open(&path).unwrap();
        let mode: String = db
            .read_blocking(|c| {
                Ok::<_, DbError>(c.as_sqlite().expect("sqlite").query_row(
                    "PRAGMA journal_mode",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(mode, "wal");
        db.write_blocking(|tx| {
            let tx = tx.as_sqlite().expect("sqlite");
            tx.execute(
                "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (999, 'future', '', '0')",
                [],
            )?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        drop(db);
        let err = Db::open(&path).err().unwrap();
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
        assert!(err.to_string().contains("newer Stagely"));
    }

    #[test]
    fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let r: Result<(), DbError> = db.write_blocking(|tx| {
            let tx = tx.as_sqlite().expect("sqlite");
            tx.execute("INSERT INTO meta (key, value) VALUES ('a', x'00')", [])?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('a', x'00')", [])?;
            Ok(())
        });
        assert!(r.unwrap_err().is_constraint());
        let n: i64 = db
            .read_blocking(|c| {
                Ok::<_, DbError>(c.as_sqlite().expect("sqlite").query_row(
                    "SELECT count(*) FROM meta",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn v9_keeps_each_stack_name_and_parts_two_that_joined_alike() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_conn(&path).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(4))
            .run(&mut conn)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO projects VALUES (1, 'a-b', NULL, 'main', 'compose.yaml', 'never', 0, 0);
             INSERT INTO projects VALUES (2, 'a', NULL, 'main', 'compose.yaml', 'never', 0, 0);
             INSERT INTO environments (id, project_id, name, created_at) VALUES (10, 1, 'c', 0);
             INSERT INTO environments (id, project_id, name, created_at) VALUES (11, 2, 'b-c', 0);
             INSERT INTO environments (id, project_id, name, created_at) VALUES (12, 2, 'prod', 0);",
        )
        .unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        let names: Vec<(i64, String)> = db
            .read_blocking(|c| {
                let c = c.as_sqlite().expect("sqlite");
                let mut stmt = c.prepare("SELECT id, compose_project FROM environments ORDER BY id")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok::<_, DbError>(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert_eq!(
            names,
            [
                (10, "a-b-c".to_owned()),
                (11, "a-b-c-11".to_owned()),
                (12, "a-prod".to_owned())
            ]
        );
    }

    #[test]
    fn v11_keeps_every_row_and_passes_the_foreign_key_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_conn(&path).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(10))
            .run(&mut conn)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO projects VALUES (1, 'shop', NULL, 'main', 'compose.yaml', 'never', 0, 0);
             INSERT INTO environments (id, project_id, name, created_at, compose_project) VALUES (10, 1, 'prod', 0, 'shop-prod');
             INSERT INTO agents (id, environment_id, name, token_hash, created_at) VALUES (5, 10, 'a', x'01', 0);
             INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at, finished_at)
                 VALUES (1, 1, 10, 5, 'success', 'main', 'admin', 100, 200);
             INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at, log_pruned_at)
                 VALUES (2, 1, 10, 5, 'running', 'main', 'admin', 300, NULL);
             INSERT INTO deployment_secrets (deployment_id, secret_id, key, scope, service, version) VALUES (1, 7, 'B', 'global', NULL, 2);
             INSERT INTO deployment_secrets (deployment_id, secret_id, key, scope, service, version) VALUES (1, 8, 'A', 'service', 'web', 1);
             INSERT INTO deployment_logs VALUES (1, 0, 'stdout', 'hello', 150);
             INSERT INTO deployment_logs VALUES (2, 0, 'agent', 'going', 310);",
        )
        .unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        db.read_blocking(|c| {
            let c = c.as_sqlite().expect("sqlite");
            let violations: i64 = c.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
            assert_eq!(violations, 0);
            let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
            assert_eq!(count("SELECT count(*) FROM deployments")?, 2);
            assert_eq!(count("SELECT count(*) FROM deployment_logs")?, 2);
            assert_eq!(count("SELECT count(*) FROM deployment_secrets")?, 2);
            // The secrets keep their order (rowid) and the children still cascade.
            let keys: Vec<String> = c
                .prepare("SELECT key FROM deployment_secrets WHERE deployment_id = 1 ORDER BY rowid")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            assert_eq!(keys, ["B", "A"]);
            assert_eq!(count("SELECT queued_at FROM deployments WHERE id = 2")?, 300);
            // The new states are accepted; one queued/running per environment still holds.
            c.execute(
                "INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                 VALUES (3, 1, 10, 'waiting', 'main', 'admin', 400)",
                [],
            )?;
            let second_active = c.execute(
                "INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                 VALUES (4, 1, 10, 'queued', 'main', 'admin', 400)",
                [],
            );
            assert!(second_active.is_err());
            assert!(c.execute("UPDATE deployments SET status = 'bogus' WHERE id = 3", []).is_err());
            c.execute("DELETE FROM deployments WHERE id = 1", [])?;
            assert_eq!(count("SELECT count(*) FROM deployment_logs")?, 1);
            assert_eq!(count("SELECT count(*) FROM deployment_secrets")?, 0);
            let indexes: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deployments' AND sql IS NOT NULL ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            assert_eq!(
                indexes,
                [
                    "deployments_awaiting",
                    "deployments_environment",
                    "deployments_log_kept",
                    "deployments_one_active",
                    "deployments_waiting"
                ]
            );
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    /// A V15 database with rows in every rebuilt table, two objects deleted before the upgrade
    /// (project 7 and agent 9, which only the audit log remembers) and a finished deployment.
    fn v15_database(path: &Path) {
        let mut conn = open_conn(path).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(15))
            .run(&mut conn)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, role, created_at) VALUES (1, 'ada', 'admin', 0), (2, 'bob', 'member', 0);
             INSERT INTO sessions VALUES (x'aa', 2, 'c', 0, 9999999999999);
             INSERT INTO api_tokens (id, name, token_hash, user_id, role, created_at) VALUES (4, 'ci', x'04', 2, 'member', 0);
             INSERT INTO signup_links (id, token_hash, kind, role, created_by, created_at, expires_at, used_by)
                 VALUES (3, x'03', 'invite', 'member', 'ada', 0, 1, 2);
             INSERT INTO projects VALUES (1, 'shop', NULL, 'main', 'compose.yaml', 'always', 0, 0);
             INSERT INTO projects VALUES (2, 'blog', NULL, 'main', 'compose.yaml', 'never', 0, 0);
             INSERT INTO environments (id, project_id, name, created_at, compose_project, log_keep_days)
                 VALUES (10, 1, 'prod', 0, 'shop-prod', 30), (11, 2, 'staging', 0, 'blog-staging', NULL);
             INSERT INTO agents (id, environment_id, name, token_hash, created_at, capabilities)
                 VALUES (5, 10, 'a', x'01', 0, 'release'), (6, 11, 'b', x'02', 0, '');
             INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at, queued_at, finished_at)
                 VALUES (1, 1, 10, 5, 'success', 'main', 'ada', 100, 100, 2100);
             INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at, redeploy_of)
                 VALUES (2, 1, 10, 5, 'running', 'main', 'ada', 300, 1);
             INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at)
                 VALUES (3, 2, 11, 6, 'failed', 'main', 'ada', 300);
             INSERT INTO deployment_secrets (deployment_id, secret_id, key, scope, service, version) VALUES (1, 7, 'B', 'global', NULL, 2);
             INSERT INTO deployment_logs VALUES (1, 0, 'stdout', 'hello', 150), (2, 0, 'agent', 'going', 310);
             INSERT INTO releases VALUES (1, 10, 5, 'a', NULL, 'h', '[]', 0);
             INSERT INTO environment_runtime (environment_id, agent_id, reported_at, containers) VALUES (10, 5, 0, '[]');
             INSERT INTO webhook_deliveries (id, project_id, provider, event, result, at) VALUES (8, 1, 'github', 'push', 'deployed', 0);
             INSERT INTO notify_channels (id, project_id, kind, name, events, target_hint, encrypted_target, created_by, created_at)
                 VALUES (2, 1, 'slack', 'ops', 'deploy.failed', 'h', x'00', 'ada', 0);
             INSERT INTO notify_outbox (id, channel_id, event, subject, payload, status, next_attempt_at, created_at, updated_at)
                 VALUES (3, 2, 'deploy.failed', 's', '{}', 'pending', 0, 0, 0);
             INSERT INTO secrets (id, project_id, key, scope, encrypted_value, updated_by, updated_at)
                 VALUES (12, 1, 'DB', 'global', x'00', 'ada', 0);
             INSERT INTO password_resets (id, token_hash, user_id, created_by, created_at, expires_at) VALUES (1, x'05', 2, 'ada', 0, 1);
             INSERT INTO audit_log (at, actor, action, target_type, target_id, detail) VALUES
                 (0, 'ada', 'project.create', 'project', 7, 'old'), (0, 'ada', 'project.delete', 'project', 7, 'old'),
                 (0, 'ada', 'agent.create', 'agent', 9, 'gone'), (0, 'ada', 'project.create', 'project', 1, 'shop');",
        )
        .unwrap();
    }

    #[test]
    fn v16_keeps_every_row_id_index_and_trigger_and_passes_the_foreign_key_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        v15_database(&path);
        let before = |c: &Connection| -> Vec<(String, String)> {
            c.prepare("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != 'refinery_schema_history' ORDER BY type, name")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let schema_before = before(&open_conn(&path).unwrap());
        let db = Db::open(&path).unwrap();
        db.write_blocking(|tx| {
            let tx = tx.as_sqlite().expect("sqlite");
            let fk: i64 = tx.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
            assert_eq!(fk, 1, "foreign keys are on again after the migrations");
            let violations: i64 = tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
            assert_eq!(violations, 0);
            let mut schema_after = before(tx);
            schema_after.retain(|(kind, name)| !name.starts_with("audit_log_") || kind != "index" || name == "audit_log_at");
            // What V17 to V21 add.
            schema_after.retain(|(_, name)| {
                !name.starts_with("project_members")
                    && !name.starts_with("environment_deployers")
                    && name != "deployments_awaiting"
                    && !name.starts_with("oidc_identities")
                    && name != "two_factor"
                    && !name.starts_with("recovery_codes")
                    && !name.starts_with("agent_commands")
            });
            assert_eq!(schema_after, schema_before, "every table, index and trigger is still there");
            let ids = |sql: &str| -> rusqlite::Result<Vec<i64>> {
                tx.prepare(sql)?.query_map([], |r| r.get(0))?.collect()
            };
            assert_eq!(ids("SELECT id FROM users ORDER BY id")?, [1, 2]);
            assert_eq!(ids("SELECT id FROM api_tokens")?, [4]);
            assert_eq!(ids("SELECT id FROM signup_links")?, [3]);
            assert_eq!(ids("SELECT id FROM projects ORDER BY id")?, [1, 2]);
            assert_eq!(ids("SELECT id FROM environments ORDER BY id")?, [10, 11]);
            assert_eq!(ids("SELECT id FROM agents ORDER BY id")?, [5, 6]);
            assert_eq!(ids("SELECT id FROM deployments ORDER BY id")?, [1, 2, 3]);
            assert_eq!(ids("SELECT redeploy_of FROM deployments WHERE id = 2")?, [1]);
            assert_eq!(ids("SELECT log_keep_days FROM environments WHERE id = 10")?, [30]);
            assert_eq!(ids("SELECT id FROM webhook_deliveries")?, [8]);
            assert_eq!(ids("SELECT id FROM notify_channels")?, [2]);
            assert_eq!(ids("SELECT id FROM notify_outbox")?, [3]);
            assert_eq!(ids("SELECT count(*) FROM audit_log")?, [4]);
            assert_eq!(ids("SELECT count(*) FROM sessions")?, [1]);
            assert_eq!(ids("SELECT count(*) FROM deployment_logs")?, [2]);
            assert_eq!(ids("SELECT count(*) FROM releases")?, [1]);
            assert_eq!(ids("SELECT count(*) FROM environment_runtime")?, [1]);
            assert_eq!(ids("SELECT project_id FROM audit_log WHERE target_type = 'project' AND target_id = 1")?, [1]);
            // The CHECKs hold.
            assert!(tx.execute("UPDATE projects SET pull = 'sometimes' WHERE id = 1", []).is_err());
            assert!(tx.execute("UPDATE environments SET log_keep_days = -1 WHERE id = 10", []).is_err());
            assert!(tx.execute("UPDATE deployments SET status = 'bogus' WHERE id = 1", []).is_err());
            // The metric triggers still fire.
            let count = |metric: &str, label: &str| -> rusqlite::Result<i64> {
                tx.query_row("SELECT value FROM metric_counts WHERE metric = ?1 AND label = ?2", [metric, label], |r| r.get(0))
            };
            let running = count("deployments", "running")?;
            tx.execute("UPDATE deployments SET status = 'failed', finished_at = 5000 WHERE id = 2", [])?;
            assert_eq!(count("deployments", "running")?, running - 1);
            let lines = count("log_lines", "")?;
            tx.execute("INSERT INTO deployment_logs VALUES (2, 1, 'agent', 'more', 320)", [])?;
            assert_eq!(count("log_lines", "")?, lines + 1);
            tx.execute("INSERT INTO webhook_deliveries (project_id, provider, event, result, at) VALUES (1, 'gitea', 'push', 'ignored', 0)", [])?;
            assert_eq!(count("webhook_deliveries", "ignored")?, 1);
            // The foreign keys still cascade and set null.
            tx.execute("DELETE FROM users WHERE id = 2", [])?;
            assert_eq!(ids("SELECT count(*) FROM sessions")?, [0]);
            assert_eq!(ids("SELECT count(*) FROM api_tokens")?, [0]);
            assert_eq!(ids("SELECT count(*) FROM password_resets")?, [0]);
            assert_eq!(ids("SELECT count(*) FROM signup_links WHERE used_by IS NULL")?, [1]);
            tx.execute("DELETE FROM projects WHERE id = 2", [])?;
            assert_eq!(ids("SELECT count(*) FROM deployments")?, [2]);
            assert_eq!(ids("SELECT count(*) FROM agents")?, [1]);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    #[test]
    fn v16_never_gives_an_id_again_not_even_one_only_the_audit_log_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        v15_database(&path);
        let db = Db::open(&path).unwrap();
        db.write_blocking(|tx| {
            let tx = tx.as_sqlite().expect("sqlite");
            // Project 7 was deleted before the upgrade; only the audit log knows it.
            tx.execute("INSERT INTO projects VALUES (NULL, 'next', NULL, 'main', 'c.yaml', 'never', 0, 0)", [])?;
            assert_eq!(tx.last_insert_rowid(), 8);
            tx.execute("DELETE FROM projects WHERE id = 8", [])?;
            tx.execute("INSERT INTO projects VALUES (NULL, 'again', NULL, 'main', 'c.yaml', 'never', 0, 0)", [])?;
            assert_eq!(tx.last_insert_rowid(), 9, "a deleted project's id is not given again");
            // Agent 9 likewise; and the newest agent's id after a delete.
            tx.execute("INSERT INTO agents (environment_id, name, token_hash, created_at) VALUES (10, 'c', x'09', 0)", [])?;
            assert_eq!(tx.last_insert_rowid(), 10);
            tx.execute("DELETE FROM agents WHERE id = 10", [])?;
            tx.execute("INSERT INTO agents (environment_id, name, token_hash, created_at) VALUES (10, 'd', x'0a', 0)", [])?;
            assert_eq!(tx.last_insert_rowid(), 11, "a deleted agent's id is not given again");
            tx.execute("DELETE FROM deployments WHERE id = 3", [])?;
            tx.execute(
                "INSERT INTO deployments (project_id, environment_id, status, git_ref, triggered_by, created_at) VALUES (1, 10, 'waiting', 'main', 'ada', 0)",
                [],
            )?;
            assert_eq!(tx.last_insert_rowid(), 4);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    #[test]
    fn v18_protects_production_environments_and_accepts_the_approval_states() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        v15_database(&path);
        let db = Db::open(&path).unwrap();
        db.write_blocking(|tx| {
            let tx = tx.as_sqlite().expect("sqlite");
            let row = |sql: &str| tx.query_row(sql, [], |r| r.get::<_, i64>(0));
            assert_eq!(row("SELECT protected FROM environments WHERE id = 10")?, 1, "prod is protected");
            assert_eq!(row("SELECT protected FROM environments WHERE id = 11")?, 0, "staging is not");
            assert_eq!(row("SELECT require_approval FROM environments WHERE id = 10")?, 0);
            let deployers: Vec<(i64, String)> = tx
                .prepare("SELECT environment_id, role FROM environment_deployers")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            assert_eq!(deployers, [(10, "maintainer".to_owned())]);
            assert_eq!(row("SELECT count(*) FROM deployments")?, 3);
            for status in ["awaiting_approval", "expired"] {
                tx.execute("UPDATE deployments SET status = ?1 WHERE id = 3", [status])?;
            }
            assert!(tx.execute("UPDATE deployments SET status = 'approved' WHERE id = 3", []).is_err());
            assert!(
                tx.execute("INSERT INTO environment_deployers (environment_id, kind, role) VALUES (11, 'role', 'viewer')", [])
                    .is_err()
            );
            assert!(
                tx.execute("INSERT INTO environment_deployers (environment_id, kind, user_id) VALUES (11, 'role', 1)", [])
                    .is_err()
            );
            tx.execute("INSERT INTO environment_deployers (environment_id, kind, user_id) VALUES (11, 'user', 2)", [])?;
            tx.execute("DELETE FROM users WHERE id = 2", [])?;
            assert_eq!(row("SELECT count(*) FROM environment_deployers WHERE environment_id = 11")?, 0);
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    #[test]
    fn v16_refuses_to_run_with_foreign_keys_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        v15_database(&path);
        let mut conn = open_conn(&path).unwrap();
        let err = embedded::migrations::runner().run(&mut conn).unwrap_err();
        assert!(err.to_string().contains("foreign_keys_must_be_off"), "{err}");
        let projects: i64 = conn
            .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
            .unwrap();
        assert_eq!(projects, 2, "nothing was dropped");
    }

    #[test]
    fn a_broken_foreign_key_fails_start_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        v15_database(&path);
        let conn = open_conn(&path).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF; INSERT INTO agents (id, environment_id, name, token_hash, created_at) VALUES (40, 999, 'x', x'40', 0);")
            .unwrap();
        drop(conn);
        let err = Db::open(&path).err().expect("start fails");
        assert!(matches!(err, DbError::ForeignKeys(_)), "{err}");
        assert!(
            err.to_string()
                .contains("agents row 40 points at a missing environments"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
