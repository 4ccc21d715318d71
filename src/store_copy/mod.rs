//! `stagely migrate-store` (issue 17): copy the configured store (the SQLite file or
//! PostgreSQL) into an empty other one, every row and id kept.
//!
//! The order is what makes it safe to run on a real appliance: the source is opened (migrations
//! run) and the master key is checked against it before the target is touched; the target is
//! opened (migrated to the same version) and refused if any domain table holds a row; then every
//! table is copied in foreign-key order inside ONE write transaction of the target, the metric
//! counters replaced by the source's, the id sequences carried past every id the source ever
//! gave, and the row counts compared before the commit. A failure anywhere rolls the target back
//! to empty (a SQLite target this run created is removed again).
//!
//! The tables and columns come from the stores' catalogs at run time ([`schema`]), so a new
//! migration needs no change here.

mod copy;
pub mod schema;

use std::path::{Path, PathBuf};

use crate::db::{Db, DbError};
use crate::secrets::vault::{Vault, VaultError};

use schema::Schema;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("--to {0:?}: use postgres://… (or postgresql://…) or sqlite:PATH")]
    BadTarget(String),
    #[error("--to sqlite:{}: the file exists and is not empty; name a new file", .0.display())]
    TargetFileExists(PathBuf),
    #[error("the target is not empty: table {table} holds {rows} rows; migrate into an empty database")]
    TargetNotEmpty { table: String, rows: i64 },
    #[error("the target {0} is the source")]
    SameStore(String),
    #[error(
        "the schema versions differ: source {source_version}, target {target_version}; run the same Stagely on both"
    )]
    SchemaVersion {
        source_version: i64,
        target_version: i64,
    },
    #[error("the schemas differ at version {version}: {difference}")]
    SchemaDiffers { version: i64, difference: String },
    #[error("the tables' foreign keys form a cycle ({0}); cannot order the copy")]
    ForeignKeyCycle(String),
    #[error("table {table}: {source_rows} rows in the source, {target_rows} in the target after the copy")]
    CountMismatch {
        table: String,
        source_rows: i64,
        target_rows: i64,
    },
    #[error("table {table}: {source}")]
    Table { table: String, source: DbError },
    #[error("the master key does not open the source: {0}")]
    Vault(#[source] VaultError),
    #[error("source: {0}")]
    Source(#[source] DbError),
    #[error("target: {0}")]
    Target(#[source] DbError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<crate::db::SqlError> for CopyError {
    fn from(e: crate::db::SqlError) -> CopyError {
        CopyError::Db(e.into())
    }
}

/// Where `--to` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Target {
    pub fn parse(to: &str) -> Result<Target, CopyError> {
        if to.starts_with("postgres://") || to.starts_with("postgresql://") {
            return Ok(Target::Postgres(to.to_owned()));
        }
        match to.strip_prefix("sqlite:") {
            Some(path) if !path.is_empty() => Ok(Target::Sqlite(PathBuf::from(path))),
            // The URL may hold a password: never echo it.
            _ => Err(CopyError::BadTarget(if to.contains("://") {
                "<url>".to_owned()
            } else {
                to.to_owned()
            })),
        }
    }
}

/// The rows copied, per table in copy order.
#[derive(Debug)]
pub struct Report {
    pub tables: Vec<(String, i64)>,
    pub source: String,
    pub target: String,
}

/// Copy `source` into `to` (see the module documentation for the order).
pub fn migrate(source: &Db, key_file: &Path, to: &Target) -> Result<Report, CopyError> {
    let vault = Vault::open(key_file, source).map_err(|e| match e {
        VaultError::Db(e) => CopyError::Source(e),
        e => CopyError::Vault(e),
    })?;
    drop(vault);
    let source_schema = source.read_blocking(Schema::read).map_err(CopyError::Source)?;
    match to {
        Target::Postgres(url) => {
            let target = Db::open_postgres(url).map_err(CopyError::Target)?;
            copy::into(source, &source_schema, &target)
        }
        Target::Sqlite(path) => {
            if source.path().is_some_and(|p| same_file(p, path)) {
                return Err(CopyError::SameStore(path.display().to_string()));
            }
            if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                return Err(CopyError::TargetFileExists(path.clone()));
            }
            let existed = path.exists();
            let result = Db::open(path)
                .map_err(CopyError::Target)
                .and_then(|target| copy::into(source, &source_schema, &target));
            if result.is_err() && !existed {
                remove_sqlite_files(path);
            }
            result
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A failed copy into a new file leaves no file behind (the database and its WAL).
fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        // Best effort: a file that is not there is what we want.
        let _ = std::fs::remove_file(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_postgres_urls_or_sqlite_paths() {
        assert_eq!(
            Target::parse("postgres://u:p@h/db").unwrap(),
            Target::Postgres("postgres://u:p@h/db".to_owned())
        );
        assert!(matches!(
            Target::parse("postgresql://h/db").unwrap(),
            Target::Postgres(_)
        ));
        assert_eq!(
            Target::parse("sqlite:/tmp/x.db").unwrap(),
            Target::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        let bad = Target::parse("mysql://u:hunter2@h/db").unwrap_err().to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
        assert!(Target::parse("sqlite:").is_err());
        assert!(Target::parse("/tmp/x.db").is_err());
    }
}
