//! One SQL interface over the two stores: the embedded SQLite file and PostgreSQL.
//!
//! The domain's `store.rs` files speak this subset of rusqlite's API — [`Conn::execute`],
//! [`Conn::query_row`], [`Conn::prepare_cached`] and [`Statement::query_map`], [`Row::get`] — so
//! a query is written once, in the SQL both dialects share (`?N` placeholders, `RETURNING`,
//! `ON CONFLICT`, `COALESCE`; docs/design.md "Stores"). On PostgreSQL the placeholders become
//! `$N` and every statement is prepared once per connection.
//!
//! [`Tx`] is a write transaction (SQLite's single writer; on PostgreSQL one that first takes the
//! writers' advisory lock, so replicas write one at a time as one appliance does); a [`Conn`] a
//! read snapshot.

pub(crate) mod pg;
pub mod value;

use std::ops::Deref;

pub use pg::{PgError, PgPool};
pub use value::{ConvError, FromValue, OwnedValue, Params, ToValue, Value};

/// Which store a connection talks to (the few places that differ: backup, size, diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub type SqlResult<T> = Result<T, SqlError>;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    #[error("{0}")]
    Postgres(#[from] postgres::Error),
    #[error("{0}")]
    Pool(#[from] PgError),
    #[error("query returned no rows")]
    NoRows,
    #[error("column {idx}: {source}")]
    Column { idx: usize, source: ConvError },
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> SqlError {
        match e {
            rusqlite::Error::QueryReturnedNoRows => SqlError::NoRows,
            rusqlite::Error::FromSqlConversionFailure(idx, _, source) => SqlError::Column {
                idx,
                source: ConvError::Other(source),
            },
            e => SqlError::Sqlite(e),
        }
    }
}

impl SqlError {
    /// Column `idx` holds something this binary cannot read (`why` names the row and the value).
    pub fn column(idx: usize, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SqlError {
        SqlError::Column {
            idx,
            source: ConvError::Other(why.into()),
        }
    }

    /// True when the statement broke a UNIQUE, CHECK, NOT NULL or foreign key constraint.
    pub fn is_constraint(&self) -> bool {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            // SQLSTATE class 23: integrity constraint violation.
            SqlError::Postgres(e) => e.code().is_some_and(|c| c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// `.optional()` on a single-row result, as rusqlite's `OptionalExtension`.
pub trait OptionalExtension<T> {
    fn optional(self) -> SqlResult<Option<T>>;
}

impl<T> OptionalExtension<T> for SqlResult<T> {
    fn optional(self) -> SqlResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A connection (a read snapshot, or the inside of a [`Tx`]).
pub struct Conn<'a> {
    inner: ConnInner<'a>,
}

enum ConnInner<'a> {
    Sqlite(&'a rusqlite::Connection),
    Pg(&'a pg::Session),
}

/// A write transaction; everything of [`Conn`] through `Deref`.
pub struct Tx<'a>(Conn<'a>);

impl<'a> Tx<'a> {
    pub(crate) fn new(c: Conn<'a>) -> Tx<'a> {
        Tx(c)
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = Conn<'a>;
    fn deref(&self) -> &Conn<'a> {
        &self.0
    }
}

impl<'a> Conn<'a> {
    pub fn sqlite(c: &'a rusqlite::Connection) -> Conn<'a> {
        Conn {
            inner: ConnInner::Sqlite(c),
        }
    }

    pub(crate) fn pg(s: &'a pg::Session) -> Conn<'a> {
        Conn {
            inner: ConnInner::Pg(s),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            ConnInner::Sqlite(_) => Backend::Sqlite,
            ConnInner::Pg(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection underneath, for the SQLite-only paths (backup, pragmas).
    pub fn as_sqlite(&self) -> Option<&'a rusqlite::Connection> {
        match self.inner {
            ConnInner::Sqlite(c) => Some(c),
            ConnInner::Pg(_) => None,
        }
    }

    /// A statement prepared once per connection and kept (hot and fixed SQL).
    pub fn prepare_cached(&self, sql: &str) -> SqlResult<Statement<'a>> {
        Ok(Statement {
            inner: match self.inner {
                ConnInner::Sqlite(c) => StmtInner::Cached(c.prepare_cached(sql)?),
                ConnInner::Pg(s) => StmtInner::Pg(s, s.prepare(sql, true)?),
            },
        })
    }

    /// A statement for SQL built at run time (not kept in the cache).
    pub fn prepare(&self, sql: &str) -> SqlResult<Statement<'a>> {
        Ok(Statement {
            inner: match self.inner {
                ConnInner::Sqlite(c) => StmtInner::Plain(c.prepare(sql)?),
                ConnInner::Pg(s) => StmtInner::Pg(s, s.prepare(sql, false)?),
            },
        })
    }

    pub fn execute<P: Params>(&self, sql: &str, params: P) -> SqlResult<usize> {
        self.prepare(sql)?.execute(params)
    }

    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> SqlResult<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> SqlResult<T>,
    {
        self.prepare(sql)?.query_row(params, f)
    }

    /// Statements without parameters, separated by `;` (schema changes, pragmas).
    pub fn execute_batch(&self, sql: &str) -> SqlResult<()> {
        match self.inner {
            ConnInner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            ConnInner::Pg(s) => s.batch(sql),
        }
    }
}

/// A prepared statement.
pub struct Statement<'a> {
    inner: StmtInner<'a>,
}

enum StmtInner<'a> {
    Cached(rusqlite::CachedStatement<'a>),
    Plain(rusqlite::Statement<'a>),
    Pg(&'a pg::Session, postgres::Statement),
}

enum Target<'s, 'a> {
    Lite(&'s mut rusqlite::Statement<'a>),
    Pg(&'a pg::Session, &'s postgres::Statement),
}

impl<'a> Statement<'a> {
    fn target(&mut self) -> Target<'_, 'a> {
        match &mut self.inner {
            StmtInner::Cached(s) => Target::Lite(s),
            StmtInner::Plain(s) => Target::Lite(s),
            StmtInner::Pg(session, s) => Target::Pg(session, s),
        }
    }

    /// Run it; the number of rows changed.
    pub fn execute<P: Params>(&mut self, params: P) -> SqlResult<usize> {
        let values = params.values();
        match self.target() {
            Target::Lite(stmt) => Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?),
            Target::Pg(s, stmt) => s.execute(stmt, &values),
        }
    }

    /// The first row through `f`; [`SqlError::NoRows`] when there is none.
    pub fn query_row<T, P, F>(&mut self, params: P, f: F) -> SqlResult<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> SqlResult<T>,
    {
        let values = params.values();
        match self.target() {
            Target::Lite(stmt) => {
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let row = rows.next()?.ok_or(SqlError::NoRows)?;
                f(&Row {
                    inner: RowInner::Sqlite(row),
                })
            }
            Target::Pg(s, stmt) => {
                let rows = s.query(stmt, &values)?;
                let first = rows.first().ok_or(SqlError::NoRows)?;
                f(&Row {
                    inner: RowInner::Pg(first),
                })
            }
        }
    }

    /// The rows one at a time (SQLite streams them; PostgreSQL has them all by then).
    pub fn query<P: Params>(&mut self, params: P) -> SqlResult<Rows<'_>> {
        let values = params.values();
        Ok(match self.target() {
            Target::Lite(stmt) => Rows::Lite(stmt.query(rusqlite::params_from_iter(values.iter()))?),
            Target::Pg(s, stmt) => Rows::Pg(s.query(stmt, &values)?.into_iter(), None),
        })
    }

    /// Every row through `f`, in order; the iterator stops after the first error.
    pub fn query_map<T, P, F>(&mut self, params: P, mut f: F) -> SqlResult<std::vec::IntoIter<SqlResult<T>>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> SqlResult<T>,
    {
        let values = params.values();
        let mut out = Vec::new();
        let mut push = |v: SqlResult<T>| {
            let go_on = v.is_ok();
            out.push(v);
            go_on
        };
        match self.target() {
            Target::Lite(stmt) => {
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                while let Some(row) = rows.next()? {
                    if !push(f(&Row {
                        inner: RowInner::Sqlite(row),
                    })) {
                        break;
                    }
                }
            }
            Target::Pg(s, stmt) => {
                for row in &s.query(stmt, &values)? {
                    if !push(f(&Row {
                        inner: RowInner::Pg(row),
                    })) {
                        break;
                    }
                }
            }
        }
        Ok(out.into_iter())
    }
}

/// The rows of [`Statement::query`].
pub enum Rows<'s> {
    Lite(rusqlite::Rows<'s>),
    Pg(std::vec::IntoIter<postgres::Row>, Option<postgres::Row>),
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> SqlResult<Option<Row<'_>>> {
        match self {
            Rows::Lite(rows) => Ok(rows.next()?.map(|r| Row {
                inner: RowInner::Sqlite(r),
            })),
            Rows::Pg(rest, current) => {
                *current = rest.next();
                Ok(current.as_ref().map(|r| Row {
                    inner: RowInner::Pg(r),
                }))
            }
        }
    }
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(f) => ValueRef::Real(f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// One result row.
pub struct Row<'a> {
    inner: RowInner<'a>,
}

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

/// A column by position (`0`) or by name (`"id"`).
pub trait RowIndex {
    fn index_in(&self, row: &Row<'_>) -> SqlResult<usize>;
}

impl RowIndex for usize {
    fn index_in(&self, _: &Row<'_>) -> SqlResult<usize> {
        Ok(*self)
    }
}

impl RowIndex for &str {
    fn index_in(&self, row: &Row<'_>) -> SqlResult<usize> {
        let found = match row.inner {
            RowInner::Sqlite(r) => r.as_ref().column_index(self).ok(),
            RowInner::Pg(r) => r.columns().iter().position(|c| c.name() == *self),
        };
        found.ok_or_else(|| SqlError::Column {
            idx: usize::MAX,
            source: ConvError::Other(format!("no column named {self}").into()),
        })
    }
}

impl Row<'_> {
    /// Column `idx` as `T` (rusqlite's rules: see [`value`]).
    pub fn get<I: RowIndex, T: FromValue>(&self, idx: I) -> SqlResult<T> {
        let idx = idx.index_in(self)?;
        let value = match self.inner {
            RowInner::Sqlite(r) => {
                use rusqlite::types::ValueRef;
                match r.get_ref(idx)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => {
                        Value::Text(std::str::from_utf8(t).map_err(|e| SqlError::Column {
                            idx,
                            source: ConvError::Other(Box::new(e)),
                        })?)
                    }
                    ValueRef::Blob(b) => Value::Blob(b),
                }
            }
            RowInner::Pg(r) => r.try_get::<_, pg::PgValue<'_>>(idx)?.0,
        };
        T::from_value(value).map_err(|e| value::column_error(idx, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_side_reads_writes_and_maps_errors() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let conn = Conn::sqlite(&c);
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, b BLOB)")
            .unwrap();
        let id: i64 = conn
            .query_row(
                "INSERT INTO t (name, b) VALUES (?1, ?2) RETURNING id",
                crate::sql_params!["a", vec![1u8, 2]],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(id, 1);
        let dup = conn
            .execute("INSERT INTO t (name) VALUES (?1)", ["a"])
            .unwrap_err();
        assert!(dup.is_constraint(), "{dup}");
        let none = conn
            .query_row("SELECT name FROM t WHERE id = ?1", [9], |r| r.get::<_, String>(0))
            .optional()
            .unwrap();
        assert_eq!(none, None);
        let rows: Vec<(String, Vec<u8>)> = conn
            .prepare_cached("SELECT name, b FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get("name")?, r.get(1)?)))
            .unwrap()
            .collect::<SqlResult<_>>()
            .unwrap();
        assert_eq!(rows, [("a".to_owned(), vec![1, 2])]);
        let wrong = conn
            .query_row("SELECT name FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(
            wrong
                .to_string()
                .contains("column 0: expected an integer, found text"),
            "{wrong}"
        );
    }
}
