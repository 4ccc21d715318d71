//! Stored enums (scope, role, status, pull policy…): text in SQLite, a closed set in Rust.
//!
//! Reading goes through [`FromValue`] (the [`Stored`] wrapper, or [`enum_at`] when the row's id is
//! at hand): a value this binary does not know is an error that names the table, the row and the
//! value — never a default. A scope that fell back to `global` would widen a service secret to
//! every service.

use super::sql::{ConvError, FromValue, Row, SqlError, SqlResult, ToValue, Value};

/// An enum stored as text. `WHAT` names it in errors ("secret scope", "role").
pub trait StoredEnum: Sized {
    const WHAT: &'static str;
    fn from_stored(s: &str) -> Option<Self>;
    fn as_stored(&self) -> &'static str;
}

/// A stored value this binary does not know.
#[derive(Debug, thiserror::Error)]
#[error("{table} row {id}: unknown stored {what} {value:?} (written by a newer Stagely, or edited by hand)")]
pub struct UnknownStored {
    pub what: &'static str,
    pub value: String,
    pub table: &'static str,
    pub id: i64,
}

/// The bare conversion error, when the row is not known (see [`enum_at`] for the one that is).
#[derive(Debug, thiserror::Error)]
#[error("unknown stored {what} {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

/// `T` as a SQL parameter or column: `Stored(role)` in `params![…]`, `row.get::<_, Stored<Role>>(3)?.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<T>(pub T);

impl<T: StoredEnum> FromValue for Stored<T> {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        let text = String::from_value(v)?;
        T::from_stored(&text).map(Stored).ok_or_else(|| {
            ConvError::Other(Box::new(UnknownValue {
                what: T::WHAT,
                value: text.chars().take(64).collect(),
            }))
        })
    }
}

impl<T: StoredEnum> ToValue for Stored<T> {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.0.as_stored())
    }
}

/// Column `idx` of a row of `table` whose id is `id`, as `T`; an unknown value names the row.
pub fn enum_at<T: StoredEnum>(row: &Row<'_>, idx: usize, table: &'static str, id: i64) -> SqlResult<T> {
    let raw: String = row.get(idx)?;
    T::from_stored(&raw).ok_or_else(|| {
        SqlError::column(
            idx,
            UnknownStored {
                what: T::WHAT,
                value: raw.chars().take(64).collect(),
                table,
                id,
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Colour {
        Red,
    }

    impl StoredEnum for Colour {
        const WHAT: &'static str = "colour";
        fn from_stored(s: &str) -> Option<Self> {
            (s == "red").then_some(Colour::Red)
        }
        fn as_stored(&self) -> &'static str {
            "red"
        }
    }

    #[test]
    fn unknown_values_are_errors_that_name_the_row() {
        let lite = rusqlite::Connection::open_in_memory().unwrap();
        let c = crate::db::Conn::sqlite(&lite);
        c.execute_batch("CREATE TABLE t (id INTEGER, c TEXT); INSERT INTO t VALUES (7, 'red'), (8, 'blue');")
            .unwrap();
        let read = |id: i64| {
            c.query_row("SELECT id, c FROM t WHERE id = ?1", [id], |r| {
                enum_at::<Colour>(r, 1, "t", r.get(0)?)
            })
        };
        assert_eq!(read(7).unwrap(), Colour::Red);
        let err = read(8).unwrap_err().to_string();
        assert!(err.contains("t row 8") && err.contains("\"blue\""), "{err}");
        let wrapped: SqlResult<Stored<Colour>> =
            c.query_row("SELECT c FROM t WHERE id = 8", [], |r| r.get(0));
        assert!(wrapped.unwrap_err().to_string().contains("unknown stored colour"));
        c.execute("INSERT INTO t VALUES (9, ?1)", [Stored(Colour::Red)])
            .unwrap();
        assert_eq!(read(9).unwrap(), Colour::Red);
    }
}
