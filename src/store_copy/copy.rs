//! The copy itself: one read snapshot of the source, one write transaction of the target.

use crate::db::{Backend, Conn, Db, DbError, OptionalExtension, OwnedValue, SqlError, Tx, params};

use super::schema::{Schema, Table};
use super::{CopyError, Report};

/// The most parameters one INSERT binds (SQLite's historical limit; PostgreSQL allows more).
const MAX_PARAMS: usize = 999;

/// Tables the metric triggers keep (src/metrics): seeded by the migrations, bumped by every row
/// the copy inserts, so they are left out of the emptiness check and replaced by the source's
/// values after everything else.
fn is_metric(table: &Table) -> bool {
    table.name.starts_with("metric_")
}

/// Copy every table of `source` (whose schema is `schema`) into the freshly opened `target`.
pub(super) fn into(source: &Db, schema: &Schema, target: &Db) -> Result<Report, CopyError> {
    let target_schema = target.read_blocking(Schema::read).map_err(CopyError::Target)?;
    if schema.version != target_schema.version {
        return Err(CopyError::SchemaVersion {
            source_version: schema.version,
            target_version: target_schema.version,
        });
    }
    if let Some(difference) = schema.difference(&target_schema) {
        return Err(CopyError::SchemaDiffers {
            version: schema.version,
            difference,
        });
    }
    let mut order = schema.in_foreign_key_order()?;
    // Stable: the metric tables reference nothing, so moving them last keeps the order valid.
    order.sort_by_key(|t| is_metric(t));
    // The one place two stores' transactions nest (a CLI command: no runtime on this thread).
    let tables = source.read_here(|src| {
        target.write_here(|tx| {
            refuse_rows(tx, &target_schema)?;
            let mut copied = Vec::with_capacity(order.len());
            for table in &order {
                let rows = copy_table(src, tx, table).map_err(|source| CopyError::Table {
                    table: table.name.clone(),
                    source,
                })?;
                copied.push((table.name.clone(), rows));
            }
            for table in &target_schema.tables {
                let source_table = schema.tables.iter().find(|t| t.name == table.name);
                carry_sequence(src, tx, source_table, table).map_err(|source| CopyError::Table {
                    table: table.name.clone(),
                    source,
                })?;
            }
            verify(src, tx, &copied)?;
            Ok::<_, CopyError>(copied)
        })
    })?;
    Ok(Report {
        tables,
        source: source.describe(),
        target: target.describe(),
    })
}

fn count(c: &Conn<'_>, table: &str) -> Result<i64, DbError> {
    Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

/// Refuse a target holding any row outside the metric tables (refinery's history is not in the
/// schema's tables).
fn refuse_rows(tx: &Tx<'_>, schema: &Schema) -> Result<(), CopyError> {
    for table in schema.tables.iter().filter(|t| !is_metric(t)) {
        let rows = count(tx, &table.name).map_err(CopyError::Target)?;
        if rows > 0 {
            return Err(CopyError::TargetNotEmpty {
                table: table.name.clone(),
                rows,
            });
        }
    }
    Ok(())
}

/// Copy one table's rows in order, in INSERTs of as many rows as fit; columns pointing at the
/// same table are written NULL and set afterwards (their row may come later). Returns the rows.
fn copy_table(src: &Conn<'_>, tx: &Tx<'_>, table: &Table) -> Result<i64, DbError> {
    if is_metric(table) {
        // What the triggers counted during the copy goes; the source's counts replace it.
        tx.execute(&format!("DELETE FROM {}", table.name), [])?;
    }
    let columns = table.copied_columns();
    let self_refs: Vec<usize> = table
        .self_references()
        .iter()
        .filter_map(|c| columns.iter().position(|x| x == c))
        .collect();
    let key: Vec<usize> = table
        .primary_key
        .iter()
        .filter_map(|c| columns.iter().position(|x| x == c))
        .collect();
    if !self_refs.is_empty() && key.len() != table.primary_key.len() {
        return Err(SqlError::column(usize::MAX, "a table referencing itself needs a primary key").into());
    }
    let per_insert = (MAX_PARAMS / columns.len().max(1)).max(1);
    let mut select = src.prepare(&format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        table.name,
        table.order_by()
    ))?;
    let mut rows = select.query([])?;
    let mut batch: Vec<OwnedValue> = Vec::with_capacity(per_insert * columns.len());
    let mut later: Vec<Vec<OwnedValue>> = Vec::new();
    let mut total = 0i64;
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(row.get::<_, OwnedValue>(i)?);
        }
        if self_refs.iter().any(|&i| values[i] != OwnedValue::Null) {
            let mut fix: Vec<OwnedValue> = self_refs.iter().map(|&i| values[i].clone()).collect();
            fix.extend(key.iter().map(|&i| values[i].clone()));
            later.push(fix);
            for &i in &self_refs {
                values[i] = OwnedValue::Null;
            }
        }
        batch.extend(values);
        total += 1;
        if batch.len() == per_insert * columns.len() {
            insert(tx, table, &columns, &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        insert(tx, table, &columns, &batch)?;
    }
    if !later.is_empty() {
        let mut n = 0;
        let mut placeholder = || {
            n += 1;
            format!("?{n}")
        };
        let set: Vec<String> = self_refs
            .iter()
            .map(|&i| format!("{} = {}", columns[i], placeholder()))
            .collect();
        let by: Vec<String> = key
            .iter()
            .map(|&i| format!("{} = {}", columns[i], placeholder()))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            table.name,
            set.join(", "),
            by.join(" AND ")
        );
        let mut update = tx.prepare(&sql)?;
        for fix in &later {
            update.execute(fix.as_slice())?;
        }
    }
    Ok(total)
}

/// One INSERT of the rows in `values` (`columns.len()` values a row).
fn insert(tx: &Tx<'_>, table: &Table, columns: &[String], values: &[OwnedValue]) -> Result<(), DbError> {
    let width = columns.len();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", table.name, columns.join(", "));
    for (r, _) in values.chunks(width).enumerate() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * width + c + 1));
        }
        sql.push(')');
    }
    // Full batches repeat the same text: keep that statement prepared.
    tx.prepare_cached(&sql)?.execute(values)?;
    Ok(())
}

/// The highest id the source's sequence for `column` ever handed out (a deleted row's too).
fn source_high_water(src: &Conn<'_>, table: &Table, column: &str) -> Result<i64, DbError> {
    let seq: Option<i64> = match src.backend() {
        Backend::Sqlite if table.serial.as_deref() == Some(column) => src
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [&table.name],
                |r| r.get(0),
            )
            .optional()?,
        Backend::Sqlite => None,
        Backend::Postgres => src.query_row(
            "SELECT pg_sequence_last_value(CAST(pg_get_serial_sequence(?1, ?2) AS regclass))",
            [&table.name, column],
            |r| r.get(0),
        )?,
    };
    Ok(seq.unwrap_or(0))
}

/// Set the target's sequence for `table` past the highest id the source gave or holds, so a
/// deleted object's id is never given again.
fn carry_sequence(src: &Conn<'_>, tx: &Tx<'_>, source: Option<&Table>, table: &Table) -> Result<(), DbError> {
    let Some(column) = table.serial.as_deref() else {
        return Ok(());
    };
    let held: i64 = tx.query_row(
        &format!("SELECT COALESCE(MAX({column}), 0) FROM {}", table.name),
        [],
        |r| r.get(0),
    )?;
    let gave = match source {
        Some(s) if s.copied_columns().iter().any(|c| c == column) => source_high_water(src, s, column)?,
        _ => 0,
    };
    let high = held.max(gave);
    match tx.backend() {
        Backend::Postgres => {
            // setval(…, 1, false): the next id is 1, as in a fresh table.
            tx.query_row(
                "SELECT setval(CAST(pg_get_serial_sequence(?1, ?2) AS regclass), ?3, ?4)",
                params![table.name, column, high.max(1), high > 0],
                |r| r.get::<_, i64>(0),
            )?;
        }
        Backend::Sqlite => {
            tx.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [&table.name])?;
            if high > 0 {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                    params![table.name, high],
                )?;
            }
        }
    }
    Ok(())
}

/// Every table holds as many rows in the target as in the source snapshot, and as were copied.
fn verify(src: &Conn<'_>, tx: &Tx<'_>, copied: &[(String, i64)]) -> Result<(), CopyError> {
    for (table, rows) in copied {
        let source_rows = count(src, table).map_err(CopyError::Source)?;
        let target_rows = count(tx, table).map_err(CopyError::Target)?;
        if source_rows != target_rows || *rows != target_rows {
            return Err(CopyError::CountMismatch {
                table: table.clone(),
                source_rows,
                target_rows,
            });
        }
    }
    Ok(())
}
