//! The embedded store: one SQLite file in WAL mode, one writer and a few readers.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. Writes run in
//! `BEGIN IMMEDIATE` transactions that roll back when dropped uncommitted. Migrations are
//! embedded from `migrations/` and run before the listener binds; a database written by a newer
//! binary is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

pub mod stored;
pub use stored::{Stored, StoredEnum, enum_at};

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot migrate the database: {0}")]
    Migration(String),
    #[error(
        "the database {path} was written by a newer Stagely (schema version {found}, this binary knows up to \
         {known}); upgrade the binary or restore a backup"
    )]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database task failed: {0}")]
    Task(String),
}

impl DbError {
    /// True when the statement broke a UNIQUE (or other) constraint.
    pub fn is_constraint(&self) -> bool {
        matches!(self, DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation)
    }
}

const READER_POOL: usize = 4;

#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
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

/// The newest schema version embedded in this binary.
pub fn known_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

impl Db {
    /// Open (creating if needed) the database file, switch to WAL and run pending migrations.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let mut conn = open_conn(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        refuse_newer_schema(&conn, path)?;
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction on the writer; commit when it returns `Ok`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write_blocking(f))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Run `f` on a reader connection (a consistent snapshot for its duration).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(f))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// A point read (a handful of rows found by an index) run on the calling thread when a
    /// pooled reader is free. Such a query takes microseconds, while a trip to the blocking pool
    /// and back costs ~100–250 µs on a small VM (BENCHMARKS.md, dispatch latency); every API
    /// call authenticates this way. WAL readers do not wait for the writer. Anything that may
    /// scan goes through [`Db::read`], and so does this when no pooled reader is free (opening
    /// a connection is slow).
    pub async fn lookup<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let pooled = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(conn) => {
                let out = f(&conn);
                self.inner.give_back(conn);
                out
            }
            None => self.read(f).await,
        }
    }

    /// Blocking write, for CLI commands that run without a runtime.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    {
        self.inner.write_blocking(f)
    }

    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        self.inner.read_blocking(f)
    }

    /// A cheap query that proves the file is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<i64, DbError> {
        self.read(|c| {
            Ok::<_, DbError>(c.query_row("SELECT count(*) FROM refinery_schema_history", [], |r| r.get(0))?)
        })
        .await
    }
}

impl Inner {
    fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Transaction<'_>) -> Result<T, E>,
    {
        // A panic while holding the lock leaves no half transaction (rollback on drop): reuse it.
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(DbError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(DbError::from)?;
        Ok(out)
    }

    fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        self.give_back(conn);
        out
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
    let known = known_schema_version();
    if found > known {
        return Err(DbError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    Ok(())
}

/// Create a directory (and parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DbError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

/// Milliseconds since the Unix epoch; the one clock read that callers pass down as "now".
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 text for an API response.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_into_wal_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/stagely.db");
        let db = Db::open(&path).unwrap();
        let mode: String = db
            .read_blocking(|c| Ok::<_, DbError>(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
        db.write_blocking(|tx| {
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
            tx.execute("INSERT INTO meta (key, value) VALUES ('a', x'00')", [])?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('a', x'00')", [])?;
            Ok(())
        });
        assert!(r.unwrap_err().is_constraint());
        let n: i64 = db
            .read_blocking(|c| Ok::<_, DbError>(c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?))
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
                ["deployments_environment", "deployments_log_kept", "deployments_one_active", "deployments_waiting"]
            );
            Ok::<_, DbError>(())
        })
        .unwrap();
    }

    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
