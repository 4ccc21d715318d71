//! The backup's one statement: a consistent snapshot of the live database.

use crate::db::Conn;

use crate::db::DbError;

/// Write a consistent copy of the database to `target` (`VACUUM INTO`: safe while the server
/// writes; `target` must not exist yet).
pub fn snapshot_into(c: &Conn<'_>, target: &str) -> Result<(), DbError> {
    c.execute("VACUUM INTO ?1", [target])?;
    Ok(())
}
