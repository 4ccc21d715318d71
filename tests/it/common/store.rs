//! The store the suite's appliances keep their data in: the SQLite file in the data dir (the
//! default), or with `STAGELY_TEST_STORE=postgres` a fresh PostgreSQL database of its own per
//! data dir, on the test server `STAGELY_TEST_DATABASE_URL` names (the admin URL
//! `scripts/pg-test-server.sh start` prints; scripts/test.sh sets it).
//!
//! One data dir, one database: [`database_url`] creates it on first use and remembers its URL in
//! a file next to the data dir (`<data dir>.database_url`), so a restarted appliance, the CLI run
//! on the same data dir and the test's own [`open_db`] all find the same data.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use stagely::db::sql::Params;
use stagely::db::{Conn, Db, Row, SqlResult, ToValue, Tx, Value};

/// True when the suite runs on PostgreSQL.
pub fn postgres() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("STAGELY_TEST_STORE").as_deref() {
        Ok("postgres") => {
            if admin_url().is_some() {
                return true;
            }
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "STAGELY_TEST_STORE=postgres without STAGELY_TEST_DATABASE_URL: run scripts/test.sh \
                 (it starts PostgreSQL) or scripts/pg-test-server.sh start"
            );
            eprintln!(
                "!!! STAGELY_TEST_STORE=postgres without STAGELY_TEST_DATABASE_URL: the suite runs on \
                 SQLite (scripts/pg-test-server.sh start) !!!"
            );
            false
        }
        Ok("sqlite" | "") | Err(_) => false,
        Ok(other) => panic!("STAGELY_TEST_STORE={other}: say sqlite or postgres"),
    })
}

fn admin_url() -> Option<String> {
    std::env::var("STAGELY_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Run `f` on a thread of its own: the blocking PostgreSQL client cannot run on a thread that
/// drives tokio tasks (every `#[tokio::test]`).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// The file next to the data dir that holds its database's URL.
fn url_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".database_url");
    PathBuf::from(name)
}

/// The PostgreSQL database of this data dir (made on first use); `None` on SQLite.
pub fn database_url(data_dir: &Path) -> Option<String> {
    if !postgres() {
        return None;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let file = url_file(data_dir);
    if let Ok(url) = std::fs::read_to_string(&file) {
        // Empty: a SQLite-only test's data dir ([`sqlite_only`]).
        return Some(url.trim().to_owned()).filter(|u| !u.is_empty());
    }
    let admin = admin_url().unwrap();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "it_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    off_runtime(|| {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("admin connection");
        drop_old_databases(&mut c);
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
    });
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let url = match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    };
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

/// Keep this data dir on SQLite whatever the suite's store: for the tests only SQLite can run
/// (each says why where it calls this). Call before anything starts on the data dir.
pub fn sqlite_only(data_dir: &Path) {
    let file = url_file(data_dir);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(file, "").unwrap();
}

/// Once per test process: drop the databases earlier runs (processes no longer alive) left.
fn drop_old_databases(c: &mut postgres::Client) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let names: Vec<String> = c
            .query("SELECT datname FROM pg_database WHERE datname LIKE 'it\\_%'", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for name in names {
            let pid = name.split('_').nth(1).unwrap_or_default();
            if !Path::new("/proc").join(pid).exists() {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    });
}

/// The `STAGELY_*` variables a `stagely` process on this data dir needs for its store (none on
/// SQLite): pass to `Command::envs` of every `serve` and CLI command run with `--data-dir`.
pub fn store_env(data_dir: &Path) -> Vec<(&'static str, String)> {
    database_url(data_dir)
        .map(|url| vec![("STAGELY_DATABASE_URL", url)])
        .unwrap_or_default()
}

/// The store of this data dir, as the appliance opens it.
pub fn open_db(data_dir: &Path) -> StoreDb {
    let url = database_url(data_dir);
    let path = data_dir.join("stagely.db");
    StoreDb(off_runtime(|| Db::connect(url.as_deref(), &path).unwrap()))
}

/// A [`Db`] for tests: blocking reads and writes that run off the runtime's thread, so they
/// borrow freely and work on both stores from sync and async tests alike.
pub struct StoreDb(pub Db);

impl StoreDb {
    pub fn read<T: Send>(&self, f: impl FnOnce(&Conn<'_>) -> SqlResult<T> + Send) -> T {
        let db = &self.0;
        off_runtime(|| {
            db.read_blocking(|c| f(c).map_err(stagely::db::DbError::from))
                .unwrap()
        })
    }

    pub fn write<T: Send>(&self, f: impl FnOnce(&Tx<'_>) -> SqlResult<T> + Send) -> T {
        let db = &self.0;
        off_runtime(|| {
            db.write_blocking(|tx| f(tx).map_err(stagely::db::DbError::from))
                .unwrap()
        })
    }

    /// [`Db::read_blocking`], off the runtime's thread.
    pub fn read_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<stagely::db::DbError> + Send,
        F: FnOnce(&Conn<'_>) -> Result<T, E> + Send,
    {
        let db = &self.0;
        off_runtime(|| db.read_blocking(f))
    }

    /// [`Db::write_blocking`], off the runtime's thread.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send,
        E: From<stagely::db::DbError> + Send,
        F: FnOnce(&Tx<'_>) -> Result<T, E> + Send,
    {
        let db = &self.0;
        off_runtime(|| db.write_blocking(f))
    }

    /// rusqlite's `query_row`: on a read snapshot for a SELECT, in a write transaction for
    /// anything else (`INSERT … RETURNING`).
    pub fn query_row<T: Send, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> SqlResult<T> + Send,
    ) -> SqlResult<T> {
        let values = params.values();
        let run = |c: &Conn<'_>| c.query_row(sql, as_params(&values).as_slice(), f);
        let db = &self.0;
        off_runtime(|| {
            if is_read(sql) {
                db.read_blocking(|c| run(c).map_err(Wrapped))
            } else {
                db.write_blocking(|tx| run(tx).map_err(Wrapped))
            }
        })
        .map_err(|Wrapped(e)| e)
    }

    /// rusqlite's `execute`, in a write transaction of its own.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> SqlResult<usize> {
        let values = params.values();
        let db = &self.0;
        off_runtime(|| {
            db.write_blocking(|tx| tx.execute(sql, as_params(&values).as_slice()).map_err(Wrapped))
        })
        .map_err(|Wrapped(e)| e)
    }

    /// Every row through `f` (rusqlite's `prepare` + `query_map` + `collect`).
    pub fn rows<T: Send, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> SqlResult<T> + Send,
    ) -> SqlResult<Vec<T>> {
        let values = params.values();
        let db = &self.0;
        off_runtime(|| {
            db.read_blocking(|c| {
                c.prepare(sql)
                    .and_then(|mut s| s.query_map(as_params(&values).as_slice(), f))
                    .and_then(|rows| rows.collect::<SqlResult<Vec<T>>>())
                    .map_err(Wrapped)
            })
        })
        .map_err(|Wrapped(e)| e)
    }

    /// One value of one row.
    pub fn one<T: stagely::db::FromValue + Send>(&self, sql: &str) -> T {
        self.read(|c| c.query_row(sql, [], |r| r.get(0)))
    }

    /// Statements on a connection of its own to the SQLite file (pragmas a test needs).
    pub fn as_sqlite_batch(&self, sql: &str) {
        let path = self.0.path().expect("a SQLite store");
        let c = rusqlite::Connection::open(path).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c.execute_batch(sql).unwrap();
    }

    /// Statements without results (a test setting up or breaking rows).
    pub fn batch(&self, sql: &str) {
        self.write(|tx| tx.execute_batch(sql));
    }
}

/// A statement's own error through `read_blocking` / `write_blocking`, which want an error
/// type a `DbError` converts into.
struct Wrapped(stagely::db::SqlError);

impl From<stagely::db::DbError> for Wrapped {
    fn from(e: stagely::db::DbError) -> Wrapped {
        match e {
            stagely::db::DbError::Sql(e) => Wrapped(e),
            other => panic!("{other}"),
        }
    }
}

fn as_params<'a>(values: &'a [Value<'a>]) -> Vec<&'a dyn ToValue> {
    values.iter().map(|v| v as &dyn ToValue).collect()
}

fn is_read(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    head.starts_with("SELECT") || head.starts_with("WITH")
}

impl std::ops::Deref for StoreDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.0
    }
}

/// Every byte the store keeps for this data dir, for a canary search: the SQLite file and its
/// WAL; on PostgreSQL a full `pg_dump` of the database followed by every bytea value in it
/// decoded from the hex pg_dump writes (so a secret stored in clear as bytes is found too).
pub fn store_bytes(data_dir: &Path) -> Vec<u8> {
    match database_url(data_dir) {
        None => ["stagely.db", "stagely.db-wal"]
            .iter()
            .flat_map(|f| std::fs::read(data_dir.join(f)).unwrap_or_default())
            .collect(),
        Some(url) => {
            let mut dump = pg_dump(&url);
            let decoded = decode_bytea(&dump);
            dump.push(b'\n');
            dump.extend(decoded);
            dump
        }
    }
}

/// True when `needle` occurs anywhere in [`store_bytes`].
pub fn store_contains(data_dir: &Path, needle: &str) -> bool {
    let bytes = store_bytes(data_dir);
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The bytes of every `\x0a1b…` (pg_dump's bytea) in `dump`, each followed by a newline.
fn decode_bytea(dump: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < dump.len() {
        if dump[i] == b'\\' && dump[i + 1] == b'x' {
            let mut j = i + 2;
            while j + 1 < dump.len() {
                match (hex(dump[j]), hex(dump[j + 1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => break,
                }
                j += 2;
            }
            out.push(b'\n');
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The rows of every table of the database at `url`, as `pg_dump --data-only` writes them
/// (plain text), without its own lines (`COPY t (columns…)` headers, comments, settings): the
/// values and nothing else, so a search finds what the appliance stored, not a column's name.
pub fn pg_dump(url: &str) -> Vec<u8> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pg_dump"))
        .filter(|p| p.exists())
        .max_by_key(|p| {
            p.parent()
                .and_then(Path::parent)
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .expect("pg_dump");
    let out = std::process::Command::new(bin)
        .args(["--data-only", "--no-owner", "--dbname", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("COPY public.deployments "),
        "a dump without the deployments table"
    );
    let mut rows = Vec::with_capacity(dump.len());
    for line in dump.lines() {
        let own = ["COPY ", "--", "SET ", "SELECT pg_catalog."]
            .iter()
            .any(|p| line.starts_with(p));
        if !own && line != "\\." {
            rows.extend_from_slice(line.as_bytes());
            rows.push(b'\n');
            // And as stored: COPY writes a tab, a newline or a backslash in a value escaped.
            rows.extend_from_slice(unescape_copy(line).as_bytes());
            rows.push(b'\n');
        }
    }
    rows
}

/// A COPY text line with its escapes (`\\t`, `\\n`, `\\\\` …) undone.
fn unescape_copy(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
