//! The store: the embedded SQLite file (the default) or PostgreSQL (`database_url`), behind one
//! interface. Domain code runs its SQL in [`Db::write`] (a [`Tx`]) and [`Db::read`] /
//! [`Db::lookup`] (a [`Conn`]); `src/db/sql/` is the SQL both stores accept.
//!
//! Both drivers are blocking, so every call runs on tokio's blocking pool. Migrations run before
//! the listener binds; a database written by a newer binary is refused rather than guessed at.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod postgres;
pub mod sql;
mod sqlite;
pub mod stored;

pub use crate::sql_params as params;
pub use sql::{
    Backend, Conn, FromValue, OptionalExtension, OwnedValue, Row, SqlError, SqlResult, ToValue, Tx, Value,
};
pub use stored::{Stored, StoredEnum, enum_at};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] SqlError),
    #[error("cannot migrate the database: {0}")]
    Migration(String),
    #[error(
        "the database {path} was written by a newer Stagely (schema version {found}, this binary knows up to \
         {known}); upgrade the binary or restore a backup"
    )]
    TooNew { path: String, found: i64, known: i64 },
    #[error("the database's foreign keys are broken after migrating ({0}); restore a backup or report it")]
    ForeignKeys(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sql(e.into())
    }
}

impl DbError {
    /// True when the statement broke a UNIQUE (or other) constraint.
    pub fn is_constraint(&self) -> bool {
        matches!(self, DbError::Sql(e) if e.is_constraint())
    }
}

#[derive(Clone)]
pub struct Db {
    inner: Arc<Store>,
}

enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The newest schema version embedded in this binary.
pub fn known_schema_version() -> i64 {
    sqlite::embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

impl Db {
    /// Open (creating if needed) the SQLite file, switch to WAL and run pending migrations.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        Ok(Db {
            inner: Arc::new(Store::Sqlite(sqlite::SqliteStore::open(path)?)),
        })
    }

    /// Connect to PostgreSQL at `url` and run pending migrations (once across replicas).
    pub fn open_postgres(url: &str) -> Result<Db, DbError> {
        // The blocking client runs a runtime of its own, which cannot start on a thread that
        // drives tokio tasks (`App::start` inside `#[tokio::main]`, a test): connect and migrate
        // on a thread of their own then.
        Ok(Db {
            inner: Arc::new(Store::Postgres(off_runtime(|| postgres::PgStore::open(url))?)),
        })
    }

    /// The store `database_url` names: PostgreSQL for `postgres://…`, else the SQLite file at
    /// `sqlite_path`.
    pub fn connect(database_url: Option<&str>, sqlite_path: &Path) -> Result<Db, DbError> {
        match database_url {
            Some(url) => Db::open_postgres(url),
            None => Db::open(sqlite_path),
        }
    }

    pub fn backend(&self) -> Backend {
        match &*self.inner {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &*self.inner {
            Store::Sqlite(s) => Some(&s.path),
            Store::Postgres(_) => None,
        }
    }

    /// A PostgreSQL connection of its own, outside the pool, for a session that must last (a
    /// session advisory lock, LISTEN): `None` on SQLite.
    pub fn dedicated_connection(&self) -> Option<Result<::postgres::Client, DbError>> {
        match &*self.inner {
            Store::Sqlite(_) => None,
            Store::Postgres(p) => Some(p.dedicated()),
        }
    }

    /// Where the data lives, for logs: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match &*self.inner {
            Store::Sqlite(s) => s.path.display().to_string(),
            Store::Postgres(p) => p.shown().to_owned(),
        }
    }

    /// Run `f` in one write transaction; commit when it returns `Ok`, roll back otherwise.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.write_here(f))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Run `f` on a read connection (a consistent snapshot for its duration).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_here(f))
            .await
            .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// A point read (a handful of rows found by an index) run on the calling thread when a
    /// pooled SQLite reader is free. Such a query takes microseconds, while a trip to the
    /// blocking pool and back costs ~100–250 µs on a small VM (BENCHMARKS.md, dispatch latency);
    /// every API call authenticates this way. WAL readers do not wait for the writer. Anything
    /// that may scan goes through [`Db::read`], and so does this when no pooled reader is free
    /// (opening a connection is slow) and always on PostgreSQL (a network round trip).
    pub async fn lookup<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send + 'static,
    {
        let f = match &*self.inner {
            Store::Sqlite(s) => match s.try_lookup(f) {
                Ok(out) => return out,
                Err(f) => f,
            },
            Store::Postgres(_) => f,
        };
        self.read(f).await
    }

    /// Blocking write, for CLI commands and the start (a tokio task's thread is fine too: on
    /// PostgreSQL the transaction then runs on a thread of its own, see [`off_runtime`]).
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<DbError> + Send,
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send,
    {
        match &*self.inner {
            Store::Sqlite(s) => s.write_blocking(f),
            Store::Postgres(p) => off_runtime(|| p.write_blocking(f)),
        }
    }

    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<DbError> + Send,
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send,
    {
        match &*self.inner {
            Store::Sqlite(s) => s.read_blocking(f),
            Store::Postgres(p) => off_runtime(|| p.read_blocking(f)),
        }
    }

    /// [`Db::write_blocking`] on a thread that drives no tokio task (the blocking pool's, a CLI
    /// command's), with no `Send` bound: one store's transaction may nest in another's (the
    /// copy of `stagely migrate-store`).
    pub(crate) fn write_here<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
    {
        match &*self.inner {
            Store::Sqlite(s) => s.write_blocking(f),
            Store::Postgres(p) => p.write_blocking(f),
        }
    }

    /// [`Db::read_blocking`] on a thread that drives no tokio task; see [`Db::write_here`].
    pub(crate) fn read_here<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Conn<'_>) -> Result<T, E>,
    {
        match &*self.inner {
            Store::Sqlite(s) => s.read_blocking(f),
            Store::Postgres(p) => p.read_blocking(f),
        }
    }

    /// A cheap query that proves the store is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<i64, DbError> {
        self.read(|c| {
            Ok::<_, DbError>(c.query_row("SELECT count(*) FROM refinery_schema_history", [], |r| r.get(0))?)
        })
        .await
    }

    /// The bytes the store takes: the SQLite file and its WAL, or PostgreSQL's database size.
    pub async fn size_bytes(&self) -> Result<u64, DbError> {
        match &*self.inner {
            Store::Sqlite(s) => {
                let mut bytes = 0;
                for suffix in ["", "-wal"] {
                    let mut name = s.path.clone().into_os_string();
                    name.push(suffix);
                    bytes += std::fs::metadata(&name).map_or(0, |m| m.len());
                }
                Ok(bytes)
            }
            Store::Postgres(_) => {
                self.read(|c| {
                    let n: i64 =
                        c.query_row("SELECT pg_database_size(current_database())", [], |r| r.get(0))?;
                    Ok::<_, DbError>(u64::try_from(n).unwrap_or(0))
                })
                .await
            }
        }
    }
}

/// Run `f` where the blocking PostgreSQL client can: it drives a runtime of its own, which
/// cannot start on a thread inside tokio's (`App::open` under `#[tokio::main]` or a test), so
/// there `f` runs on a thread of its own; elsewhere (the blocking pool, a CLI command) right here.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
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
