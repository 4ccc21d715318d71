//! The tables of a store as its catalog describes them at run time (SQLite's `sqlite_master` and
//! pragmas, PostgreSQL's `information_schema` and `pg_constraint`): names, columns, primary key,
//! foreign keys, the id column a sequence hands out. The copy is derived from this, not from a
//! list of tables that would rot with the next migration.

use std::collections::{BTreeMap, BTreeSet};

use crate::db::{Backend, Conn, DbError, SqlResult};

use super::CopyError;

/// What two stores' tables must agree on: name, columns, key, rowid, foreign keys.
type Shape<'a> = (
    &'a str,
    &'a [String],
    &'a [String],
    bool,
    BTreeSet<(String, String)>,
);

/// One table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// In the catalog's order, without SQLite's implicit `rowid` (see [`Table::rowid`]).
    pub columns: Vec<String>,
    pub primary_key: Vec<String>,
    /// The row order kept by a `rowid`: PostgreSQL's explicit column standing for SQLite's
    /// implicit one (tables without a primary key; `deployment_secrets`).
    pub rowid: bool,
    /// (column, referenced table) of each foreign key.
    pub references: Vec<(String, String)>,
    /// The column a sequence fills (SQLite AUTOINCREMENT, a PostgreSQL identity).
    pub serial: Option<String>,
}

impl Table {
    /// The columns a copy reads and writes, `rowid` first where the table keeps one.
    pub fn copied_columns(&self) -> Vec<String> {
        let mut cols = Vec::with_capacity(self.columns.len() + 1);
        if self.rowid {
            cols.push("rowid".to_owned());
        }
        cols.extend(self.columns.iter().cloned());
        cols
    }

    /// A stable order to copy rows in: the primary key, else the rowid.
    pub fn order_by(&self) -> String {
        if self.primary_key.is_empty() {
            "rowid".to_owned()
        } else {
            self.primary_key.join(", ")
        }
    }

    /// Columns pointing at this same table (a deployment superseded by a later one): written
    /// NULL first and set once every row is in.
    pub fn self_references(&self) -> Vec<String> {
        self.references
            .iter()
            .filter(|(_, t)| *t == self.name)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// The SQL to compare a table across stores: everything but the sequence's kind.
    fn shape(&self) -> Shape<'_> {
        (
            &self.name,
            &self.columns,
            &self.primary_key,
            self.rowid,
            self.references.iter().cloned().collect(),
        )
    }
}

/// A store's schema: version and tables (refinery's history and SQLite's own tables left out).
#[derive(Debug, Clone)]
pub struct Schema {
    pub version: i64,
    pub tables: Vec<Table>,
}

impl Schema {
    pub fn read(c: &Conn<'_>) -> Result<Schema, DbError> {
        let version: i64 = c.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM refinery_schema_history",
            [],
            |r| r.get(0),
        )?;
        let tables = match c.backend() {
            Backend::Sqlite => sqlite_tables(c)?,
            Backend::Postgres => postgres_tables(c)?,
        };
        Ok(Schema { version, tables })
    }

    /// The first difference between two schemas of the same version, if any.
    pub fn difference(&self, other: &Schema) -> Option<String> {
        let mine: BTreeMap<&str, &Table> = self.tables.iter().map(|t| (t.name.as_str(), t)).collect();
        let theirs: BTreeMap<&str, &Table> = other.tables.iter().map(|t| (t.name.as_str(), t)).collect();
        for name in mine.keys().chain(theirs.keys()) {
            match (mine.get(name), theirs.get(name)) {
                (Some(a), Some(b)) if a.shape() == b.shape() => {}
                (Some(a), Some(b)) => {
                    return Some(format!(
                        "table {name}: columns ({}) against ({})",
                        a.copied_columns().join(", "),
                        b.copied_columns().join(", ")
                    ));
                }
                (Some(_), None) => return Some(format!("table {name} is missing from the target")),
                (None, _) => return Some(format!("table {name} is missing from the source")),
            }
        }
        None
    }

    /// The tables in an order where each comes after every table it references.
    pub fn in_foreign_key_order(&self) -> Result<Vec<&Table>, CopyError> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::with_capacity(self.tables.len());
        let mut left: Vec<&Table> = self.tables.iter().collect();
        while !left.is_empty() {
            let (ready, waiting): (Vec<&Table>, Vec<&Table>) = left.into_iter().partition(|t| {
                t.references
                    .iter()
                    .all(|(_, r)| *r == t.name || done.contains(r.as_str()))
            });
            if ready.is_empty() {
                return Err(CopyError::ForeignKeyCycle(
                    waiting
                        .iter()
                        .map(|t| t.name.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            for t in ready {
                done.insert(&t.name);
                out.push(t);
            }
            left = waiting;
        }
        Ok(out)
    }
}

fn strings(c: &Conn<'_>, sql: &str, param: &str) -> SqlResult<Vec<String>> {
    c.prepare(sql)?.query_map([param], |r| r.get(0))?.collect()
}

fn sqlite_tables(c: &Conn<'_>) -> Result<Vec<Table>, DbError> {
    let names: Vec<(String, String)> = c
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             AND name != 'refinery_schema_history' ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<SqlResult<_>>()?;
    let mut tables = Vec::with_capacity(names.len());
    for (name, sql) in names {
        let cols: Vec<(String, i64)> = c
            .prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<SqlResult<_>>()?;
        let mut pk: Vec<(i64, String)> = cols
            .iter()
            .filter(|(_, k)| *k > 0)
            .map(|(n, k)| (*k, n.clone()))
            .collect();
        pk.sort();
        let primary_key: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();
        let references: Vec<(String, String)> = c
            .prepare("SELECT \"from\", \"table\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq")?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<SqlResult<_>>()?;
        let serial = (sql.to_ascii_uppercase().contains("AUTOINCREMENT") && primary_key.len() == 1)
            .then(|| primary_key[0].clone());
        tables.push(Table {
            name,
            columns: cols.into_iter().map(|(n, _)| n).collect(),
            // A table without a primary key is a rowid table (WITHOUT ROWID needs one).
            rowid: primary_key.is_empty(),
            primary_key,
            references,
            serial,
        });
    }
    Ok(tables)
}

fn postgres_tables(c: &Conn<'_>) -> Result<Vec<Table>, DbError> {
    let names: Vec<String> = c
        .prepare(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
               AND table_name != 'refinery_schema_history' ORDER BY table_name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<SqlResult<_>>()?;
    let mut tables = Vec::with_capacity(names.len());
    for name in names {
        let cols: Vec<(String, bool)> = c
            .prepare(
                "SELECT column_name, is_identity = 'YES' FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
            )?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<SqlResult<_>>()?;
        let primary_key = strings(
            c,
            "SELECT k.column_name FROM information_schema.table_constraints t
             JOIN information_schema.key_column_usage k
               ON k.constraint_name = t.constraint_name AND k.table_schema = t.table_schema
              AND k.table_name = t.table_name
             WHERE t.table_schema = current_schema() AND t.table_name = ?1
               AND t.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
            &name,
        )?;
        let references: Vec<(String, String)> = c
            .prepare(
                "SELECT a.attname, CAST(f.relname AS TEXT) FROM pg_constraint k
                 JOIN pg_class t ON t.oid = k.conrelid
                 JOIN pg_class f ON f.oid = k.confrelid
                 JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
                 WHERE k.contype = 'f' AND t.relnamespace = CAST(current_schema() AS regnamespace)
                   AND t.relname = ?1
                 ORDER BY a.attnum",
            )?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<SqlResult<_>>()?;
        let rowid = primary_key.is_empty() && cols.iter().any(|(n, _)| n == "rowid");
        let serial = cols
            .iter()
            .find(|(n, identity)| *identity && (primary_key == [n.clone()] || (rowid && n == "rowid")))
            .map(|(n, _)| n.clone());
        tables.push(Table {
            name,
            columns: cols
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !(rowid && n == "rowid"))
                .collect(),
            primary_key,
            rowid,
            references,
            serial,
        });
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn the_sqlite_schema_is_read_and_ordered_by_its_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        let schema = db.read_blocking(Schema::read).unwrap();
        assert_eq!(schema.version, crate::db::known_schema_version());
        let table = |n: &str| schema.tables.iter().find(|t| t.name == n).unwrap();
        let secrets = table("deployment_secrets");
        assert!(secrets.rowid && secrets.primary_key.is_empty());
        assert_eq!(secrets.copied_columns()[0], "rowid");
        assert_eq!(table("projects").serial.as_deref(), Some("id"));
        assert_eq!(table("deployment_logs").order_by(), "deployment_id, seq");
        let mut self_refs = table("deployments").self_references();
        self_refs.sort();
        assert_eq!(self_refs, ["redeploy_of", "rollback_of", "superseded_by"]);
        let order: Vec<&str> = schema
            .in_foreign_key_order()
            .unwrap()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let at = |n: &str| order.iter().position(|t| *t == n).unwrap();
        assert!(at("projects") < at("environments") && at("environments") < at("agents"));
        assert!(at("agents") < at("deployments") && at("deployments") < at("deployment_logs"));
        assert!(at("users") < at("api_tokens"));
        assert!(!order.contains(&"refinery_schema_history") && !order.contains(&"sqlite_sequence"));
    }

    #[test]
    fn the_postgres_schema_is_the_sqlite_one() {
        let Some(url) = crate::db::postgres::test_database("copyschema") else {
            return;
        };
        let pg = Db::open_postgres(&url).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lite = Db::open(&dir.path().join("s.db")).unwrap();
        let a = lite.read_blocking(Schema::read).unwrap();
        let b = pg.read_blocking(Schema::read).unwrap();
        assert_eq!(a.version, b.version);
        assert_eq!(a.difference(&b), None);
        let serial = |s: &Schema| -> Vec<(String, Option<String>)> {
            s.tables
                .iter()
                .map(|t| (t.name.clone(), t.serial.clone()))
                .collect()
        };
        // Every SQLite AUTOINCREMENT is a PostgreSQL identity (PostgreSQL also has the rowid's).
        for ((name, lite), (_, pg)) in serial(&a).into_iter().zip(serial(&b)) {
            if lite.is_some() {
                assert_eq!(lite, pg, "{name}");
            }
        }
    }
}
