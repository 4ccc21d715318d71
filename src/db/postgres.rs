//! PostgreSQL as the store (`database_url = "postgres://…"`), for several replicas sharing one
//! database.
//!
//! Writes behave as on SQLite, one at a time: each write transaction first takes the writers'
//! transaction-scoped advisory lock, so a check-then-write (the last admin, one active deployment
//! per environment, a queue claim) holds across replicas exactly as it does in one process.
//! Reads run in REPEATABLE READ, READ ONLY transactions: a consistent snapshot, like a WAL reader.
//!
//! Migrations run at start under a session advisory lock, so replicas starting together migrate
//! once: version 20 is `migrations/postgres/baseline.sql` (the schema SQLite's V1..V20 build),
//! every later version the same file SQLite runs, with [`translate`] applied.

use refinery::Migration;

use super::sql::pg::{PgClient, Session};
use super::sql::{Conn, PgPool, SqlError, Tx};
use super::{DbError, known_schema_version, sqlite};

/// The advisory lock every write transaction holds (ASCII "STAGELYW").
pub const WRITE_LOCK: i64 = 0x5354_4147_454C_5957;
/// The advisory lock migrations run under (ASCII "STAGELYM").
pub const MIGRATE_LOCK: i64 = 0x5354_4147_454C_594D;

/// The version the baseline stands for: SQLite's V1..V20 in one file.
pub const BASELINE_VERSION: i64 = 20;
const BASELINE: &str = include_str!("../../migrations/postgres/baseline.sql");

pub(super) struct PgStore {
    pool: PgPool,
    /// One write transaction at a time per replica, as SQLite's single writer: the others wait
    /// here rather than each holding a connection while queued on the advisory lock.
    writer: std::sync::Mutex<()>,
}

impl PgStore {
    pub(super) fn open(url: &str) -> Result<PgStore, DbError> {
        let pool = PgPool::new(url).map_err(SqlError::from)?;
        let mut client = pool.get().map_err(SqlError::from)?;
        migrate(&mut client, pool.shown())?;
        pool.put(client);
        Ok(PgStore {
            pool,
            writer: std::sync::Mutex::new(()),
        })
    }

    pub(super) fn shown(&self) -> &str {
        self.pool.shown()
    }

    /// A connection of its own, outside the pool (a session advisory lock, LISTEN).
    pub(super) fn dedicated(&self) -> Result<postgres::Client, DbError> {
        Ok(self.pool.connect_dedicated().map_err(SqlError::from)?)
    }

    pub(super) fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
    {
        let _turn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.transaction(
            &format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"),
            |session| f(&Tx::new(Conn::pg(session))),
        )
    }

    pub(super) fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Conn<'_>) -> Result<T, E>,
    {
        self.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", |session| {
            f(&Conn::pg(session))
        })
    }

    /// `begin`, then `f`, then COMMIT (or ROLLBACK on an error). A connection whose transaction
    /// did not end cleanly is dropped, never pooled; a panic in `f` drops it too, and the server
    /// rolls back when it closes.
    fn transaction<T, E, F>(&self, begin: &str, f: F) -> Result<T, E>
    where
        E: From<DbError>,
        F: FnOnce(&Session) -> Result<T, E>,
    {
        let sql_err = |e: postgres::Error| E::from(DbError::Sql(SqlError::Postgres(e)));
        let pool_err = |e: super::sql::PgError| E::from(DbError::Sql(e.into()));
        let mut client = self.pool.get().map_err(pool_err)?;
        if client.batch(begin).is_err() {
            // An idle connection the server closed meanwhile (a restart, a failover): once more
            // on a new one.
            drop(client);
            client = self.pool.get().map_err(pool_err)?;
            client.batch(begin).map_err(sql_err)?;
        }
        let session = Session::new(client);
        let out = f(&session);
        let mut client = session.into_client();
        match out {
            Ok(v) => {
                client.batch("COMMIT").map_err(sql_err)?;
                self.pool.put(client);
                Ok(v)
            }
            Err(e) => {
                if client.batch("ROLLBACK").is_ok() {
                    self.pool.put(client);
                }
                Err(e)
            }
        }
    }
}

/// Run the pending migrations under [`MIGRATE_LOCK`]; refuse a schema newer than this binary.
fn migrate(client: &mut PgClient, shown: &str) -> Result<(), DbError> {
    let pg = |e: postgres::Error| DbError::Sql(SqlError::Postgres(e));
    client
        .client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .map_err(pg)?;
    let ran = run_migrations(client, shown);
    let unlocked = client
        .client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .map_err(pg);
    ran?;
    unlocked?;
    Ok(())
}

fn run_migrations(client: &mut PgClient, shown: &str) -> Result<(), DbError> {
    let pg = |e: postgres::Error| DbError::Sql(SqlError::Postgres(e));
    let has_history: bool = client
        .client
        .query_one("SELECT to_regclass('refinery_schema_history') IS NOT NULL", &[])
        .map_err(pg)?
        .get(0);
    if has_history {
        let found: i32 = client
            .client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM refinery_schema_history",
                &[],
            )
            .map_err(pg)?
            .get(0);
        let known = known_schema_version();
        if i64::from(found) > known {
            return Err(DbError::TooNew {
                path: shown.to_owned(),
                found: i64::from(found),
                known,
            });
        }
    }
    refinery::Runner::new(&migrations()?)
        .run(&mut client.client)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(())
}

/// The baseline as version 20, then every SQLite migration after it, translated.
fn migrations() -> Result<Vec<Migration>, DbError> {
    let err = |e: refinery::Error| DbError::Migration(e.to_string());
    let mut out =
        vec![Migration::unapplied(&format!("V{BASELINE_VERSION}__baseline"), BASELINE).map_err(err)?];
    for m in sqlite::embedded::migrations::runner().get_migrations() {
        if i64::from(m.version()) <= BASELINE_VERSION {
            continue;
        }
        let sql = translate(m.sql().unwrap_or_default());
        out.push(Migration::unapplied(&format!("V{}__{}", m.version(), m.name()), &sql).map_err(err)?);
    }
    Ok(out)
}

/// A migration written for both stores, as PostgreSQL runs it. Each file after V20 is SQL both
/// accept, where the types are written as SQLite's (`INTEGER`, `REAL`, `BLOB`, `TEXT`) and become
/// the baseline's; what must differ sits in marked blocks:
///
/// ```sql
/// -- sqlite-only begin
/// CREATE TABLE t_new (…); INSERT INTO t_new SELECT …; DROP TABLE t; ALTER TABLE t_new RENAME TO t;
/// -- sqlite-only end
/// -- postgres: ALTER TABLE t ALTER COLUMN c DROP NOT NULL;
/// ```
pub fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut skipping = false;
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed == "-- sqlite-only begin" {
            skipping = true;
            continue;
        }
        if trimmed == "-- sqlite-only end" {
            skipping = false;
            continue;
        }
        if skipping {
            continue;
        }
        if let Some(pg) = trimmed.strip_prefix("-- postgres:") {
            out.push_str(pg.trim_start());
            out.push('\n');
            continue;
        }
        out.push_str(&translate_types(line));
        out.push('\n');
    }
    out
}

fn translate_types(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "INTEGER" => "BIGINT",
            "REAL" => "DOUBLE PRECISION",
            "BLOB" => "BYTEA",
            "TEXT" => "TEXT COLLATE \"C\"",
            "AUTOINCREMENT" => "GENERATED BY DEFAULT AS IDENTITY",
            "STRICT" => "",
            w => w,
        });
        word.clear();
    };
    let code = line.split("--").next().unwrap_or(line);
    let comment = &line[code.len()..];
    let mut in_quote = false;
    for c in code.chars() {
        if c == '\'' {
            in_quote = !in_quote;
        }
        if !in_quote && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.push_str(comment);
    out
}

/// A fresh, empty database on the test server `STAGELY_TEST_DATABASE_URL` names (the admin URL
/// `scripts/pg-test-server.sh start` prints; scripts/test.sh sets it). `None` without one, which
/// fails under `CI=true` and skips loudly elsewhere.
#[cfg(test)]
pub(crate) fn test_database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("STAGELY_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "STAGELY_TEST_DATABASE_URL is not set: run scripts/test.sh (it starts PostgreSQL)"
        );
        eprintln!("!!! SKIPPED {name}: no STAGELY_TEST_DATABASE_URL (scripts/pg-test-server.sh start) !!!");
        return None;
    };
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let db = format!(
        "u_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(20)
            .collect::<String>()
    );
    let pool = PgPool::new(&admin).expect("admin URL");
    let mut c = pool.get().expect("admin connection");
    c.batch(&format!("CREATE DATABASE {db}"))
        .expect("create database");
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    Some(match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_migration_becomes_postgres() {
        let sql = "CREATE TABLE t (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,\n    b BLOB, -- a TEXT\n    s TEXT DEFAULT 'INTEGER'\n) STRICT;\n\
                   -- sqlite-only begin\nPRAGMA x;\n-- sqlite-only end\n-- postgres: SELECT 1;\n";
        assert_eq!(
            translate(sql),
            "CREATE TABLE t (\n    id BIGINT PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,\n    b BYTEA, -- a TEXT\n    \
             s TEXT COLLATE \"C\" DEFAULT 'INTEGER'\n) ;\nSELECT 1;\n"
        );
    }

    use crate::db::{Db, DbError, params};

    /// (table, column, type, not null).
    type Column = (String, String, String, bool);

    /// The columns of the SQLite schema V1..V20 build, and the names of the indexes made by
    /// CREATE INDEX.
    fn sqlite_schema() -> (Vec<Column>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        db.read_blocking(|c| {
            let c = c.as_sqlite().expect("sqlite");
            let mut cols = Vec::new();
            let tables: Vec<String> = c
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table'
                     AND name NOT IN ('sqlite_sequence', 'refinery_schema_history') ORDER BY name",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for t in tables {
                let rows: Vec<(String, String, bool)> = c
                    .prepare("SELECT name, type, \"notnull\" OR pk FROM pragma_table_info(?1) ORDER BY cid")?
                    .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                for (name, ty, not_null) in rows {
                    let ty = match ty.as_str() {
                        "INTEGER" => "bigint",
                        "TEXT" => "text",
                        "BLOB" => "bytea",
                        "REAL" => "double precision",
                        other => panic!("{t}.{name}: type {other}"),
                    };
                    cols.push((t.clone(), name, ty.to_owned(), not_null));
                }
            }
            let indexes: Vec<String> = c
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok::<_, DbError>((cols, indexes))
        })
        .unwrap()
    }

    #[test]
    fn the_baseline_matches_what_the_sqlite_migrations_build() {
        let Some(url) = test_database("baseline") else {
            return;
        };
        let db = Db::open_postgres(&url).unwrap();
        let (lite_cols, lite_indexes) = sqlite_schema();
        let (pg_cols, pg_indexes) = db
            .read_blocking(|c| {
                let mut cols: Vec<Column> = c
                    .prepare(
                        "SELECT table_name, column_name, data_type, is_nullable = 'NO'
                         FROM information_schema.columns
                         WHERE table_schema = 'public' AND table_name != 'refinery_schema_history'
                           AND NOT (table_name = 'deployment_secrets' AND column_name = 'rowid')
                         ORDER BY table_name, ordinal_position",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                cols.sort_by(|a, b| a.0.cmp(&b.0));
                let indexes: Vec<String> = c
                    .prepare(
                        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'
                         AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key' ORDER BY indexname",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok::<_, DbError>((cols, indexes))
            })
            .unwrap();
        assert_eq!(
            pg_cols, lite_cols,
            "every table and column, with its type and NOT NULL"
        );
        assert_eq!(pg_indexes, lite_indexes, "every index");
        // The collation is SQLite's: bytes, not the server's locale.
        let order: Vec<String> = db
            .read_blocking(|c| {
                c.prepare(
                    "SELECT x FROM (VALUES (CAST('b' AS TEXT) COLLATE \"C\"), ('B'), ('a')) v(x) ORDER BY x",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()
                .map_err(DbError::from)
            })
            .unwrap();
        assert_eq!(order, ["B", "a", "b"]);
    }

    #[test]
    fn values_round_trip_and_a_failed_write_rolls_back() {
        let Some(url) = test_database("values") else {
            return;
        };
        let db = Db::open_postgres(&url).unwrap();
        db.write_blocking(|tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params!["k", vec![0u8, 1, 255]],
            )?;
            let (blob, exists, sum, ratio): (Vec<u8>, bool, i64, f64) = tx.query_row(
                "SELECT value, EXISTS(SELECT 1 FROM meta WHERE key = ?1), (SELECT SUM(x) FROM (VALUES (CAST(100 AS BIGINT)), (6)) v(x)), 3 / 2.0 FROM meta WHERE key = ?1",
                ["k"],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            assert_eq!(blob, [0, 1, 255]);
            assert!(exists);
            assert_eq!(sum, 106);
            assert!((ratio - 1.5).abs() < 1e-9);
            Ok::<_, DbError>(())
        })
        .unwrap();
        let dup: Result<(), DbError> = db.write_blocking(|tx| {
            tx.execute("INSERT INTO meta (key, value) VALUES ('other', ?1)", [vec![1u8]])?;
            tx.execute("INSERT INTO meta (key, value) VALUES ('k', ?1)", [vec![1u8]])?;
            Ok(())
        });
        assert!(dup.unwrap_err().is_constraint());
        let keys: Vec<String> = db
            .read_blocking(|c| {
                c.prepare("SELECT key FROM meta ORDER BY key")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()
                    .map_err(DbError::from)
            })
            .unwrap();
        assert_eq!(keys, ["k"], "the failed transaction left nothing");
        // A read is read-only.
        let write_in_read: Result<usize, DbError> =
            db.read_blocking(|c| Ok(c.execute("DELETE FROM meta", [])?));
        assert!(write_in_read.is_err());
    }

    #[test]
    fn two_replicas_write_one_at_a_time_and_migrate_once() {
        let Some(url) = test_database("replicas") else {
            return;
        };
        // Two appliances start together on an empty database: one migrates, the other waits.
        let opened: Vec<Db> = std::thread::scope(|s| {
            let a = s.spawn(|| Db::open_postgres(&url).unwrap());
            let b = s.spawn(|| Db::open_postgres(&url).unwrap());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let versions: Vec<i64> = opened[0]
            .read_blocking(|c| {
                c.prepare("SELECT version FROM refinery_schema_history ORDER BY version")?
                    .query_map([], |r| r.get::<_, i64>(0))?
                    .collect::<Result<_, _>>()
                    .map_err(DbError::from)
            })
            .unwrap();
        assert_eq!(versions.first(), Some(&BASELINE_VERSION));
        assert_eq!(
            versions.len(),
            usize::try_from(known_schema_version() - BASELINE_VERSION + 1).unwrap()
        );
        // A read-then-write on both at once loses no increment: writers take turns.
        opened[0]
            .write_blocking(|tx| {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('n', ?1)",
                    [0i64.to_be_bytes()],
                )?;
                Ok::<_, DbError>(())
            })
            .unwrap();
        std::thread::scope(|s| {
            for db in &opened {
                s.spawn(move || {
                    for _ in 0..25 {
                        db.write_blocking(|tx| {
                            let n: [u8; 8] =
                                tx.query_row("SELECT value FROM meta WHERE key = 'n'", [], |r| r.get(0))?;
                            let next = (i64::from_be_bytes(n) + 1).to_be_bytes();
                            tx.execute("UPDATE meta SET value = ?1 WHERE key = 'n'", [next])?;
                            Ok::<_, DbError>(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let n: [u8; 8] = opened[1]
            .read_blocking(|c| {
                Ok::<_, DbError>(c.query_row("SELECT value FROM meta WHERE key = 'n'", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(i64::from_be_bytes(n), 50);
    }

    #[test]
    fn a_newer_schema_is_refused_naming_the_database_without_its_password() {
        let Some(url) = test_database("newer") else { return };
        let db = Db::open_postgres(&url).unwrap();
        db.write_blocking(|tx| {
            tx.execute(
                "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (999, 'future', '', '0')",
                [],
            )?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        drop(db);
        let err = Db::open_postgres(&url).err().unwrap();
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
    }
}
