//! The values that cross the store boundary: SQLite's five storage classes, which every column
//! of the schema fits (PostgreSQL stores them as BIGINT, DOUBLE PRECISION, TEXT and BYTEA).
//!
//! [`ToValue`] turns a Rust value into a parameter, [`FromValue`] a column into a Rust value,
//! with rusqlite's rules: an integer is never read as text, a NULL only into an `Option`.

use super::SqlError;

/// One SQL value, borrowed from the parameter or the row it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Value<'_> {
    /// The storage class, for errors ("expected an integer, found text").
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// An owned [`Value`]: a column read without knowing its type, to be written elsewhere (the
/// generic copy of `stagely migrate-store`, src/store_copy).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl FromValue for OwnedValue {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        Ok(match v {
            Value::Null => OwnedValue::Null,
            Value::Int(i) => OwnedValue::Int(i),
            Value::Real(f) => OwnedValue::Real(f),
            Value::Text(s) => OwnedValue::Text(s.to_owned()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        })
    }
}

impl ToValue for OwnedValue {
    fn to_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Int(i) => Value::Int(*i),
            OwnedValue::Real(f) => Value::Real(*f),
            OwnedValue::Text(s) => Value::Text(s),
            OwnedValue::Blob(b) => Value::Blob(b),
        }
    }
}

/// A Rust value usable as a SQL parameter.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

/// A Rust value readable from a column.
pub trait FromValue: Sized {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError>;
}

/// Why a column could not be read as the asked type.
#[derive(Debug, thiserror::Error)]
pub enum ConvError {
    #[error("expected {expected}, found {found}")]
    Type {
        expected: &'static str,
        found: &'static str,
    },
    #[error("integer {0} out of range")]
    Range(i64),
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

fn mismatch<T>(expected: &'static str, v: Value<'_>) -> Result<T, ConvError> {
    Err(ConvError::Type {
        expected,
        found: v.kind(),
    })
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        *self
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}

macro_rules! small_ints {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Int(i64::from(*self))
            }
        }
        impl FromValue for $t {
            fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| ConvError::Range(i))
            }
        }
    )*};
}
small_ints!(i32, u32, u16, u8);

impl ToValue for usize {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for u64 {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for i64 {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            Value::Int(i) => Ok(i),
            v => mismatch("an integer", v),
        }
    }
}

impl FromValue for usize {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        let i = i64::from_value(v)?;
        usize::try_from(i).map_err(|_| ConvError::Range(i))
    }
}

impl FromValue for u64 {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        let i = i64::from_value(v)?;
        u64::try_from(i).map_err(|_| ConvError::Range(i))
    }
}

impl FromValue for bool {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(i as f64),
            Value::Real(f) => Ok(f),
            v => mismatch("a real", v),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            v => mismatch("text", v),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            v => mismatch("a blob", v),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(v: Value<'_>) -> Result<Self, ConvError> {
        match v {
            Value::Blob(b) => b.try_into().map_err(|_| ConvError::Type {
                expected: "a blob of the stored length",
                found: "a blob of another length",
            }),
            v => mismatch("a blob", v),
        }
    }
}

/// A set of parameters: `[]`, `[a, b]` (one type), `params![a, "b", c]`, or `()`.
pub trait Params {
    fn values(&self) -> Vec<Value<'_>>;
}

impl Params for () {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value<'_>> {
        Vec::new()
    }
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

/// A row built at run time (the generic copy's batches).
impl Params for &[OwnedValue] {
    fn values(&self) -> Vec<Value<'_>> {
        self.iter().map(ToValue::to_value).collect()
    }
}

macro_rules! array_params {
    ($($n:literal)*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
        impl<T: ToValue> Params for &[T; $n] {
            fn values(&self) -> Vec<Value<'_>> {
                self.iter().map(ToValue::to_value).collect()
            }
        }
    )*};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);

/// Parameters of mixed types, as rusqlite's `params!`.
#[macro_export]
macro_rules! sql_params {
    () => {
        &[] as &[&dyn $crate::db::ToValue]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::db::ToValue),+] as &[&dyn $crate::db::ToValue]
    };
}

/// A conversion error for column `idx`.
pub(crate) fn column_error(idx: usize, e: ConvError) -> SqlError {
    SqlError::Column { idx, source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_follow_rusqlites_rules() {
        assert_eq!(i64::from_value(Value::Int(3)).unwrap(), 3);
        assert!(
            i64::from_value(Value::Text("3")).is_err(),
            "text is never an integer"
        );
        assert!(
            String::from_value(Value::Int(3)).is_err(),
            "an integer is never text"
        );
        assert!(i64::from_value(Value::Null).is_err(), "NULL only into an Option");
        assert_eq!(Option::<i64>::from_value(Value::Null).unwrap(), None);
        assert!((f64::from_value(Value::Int(2)).unwrap() - 2.0).abs() < f64::EPSILON);
        assert!(u8::from_value(Value::Int(300)).is_err());
        assert!(bool::from_value(Value::Int(1)).unwrap());
        assert!(<[u8; 2]>::from_value(Value::Blob(&[1, 2, 3])).is_err());
    }

    #[test]
    fn an_owned_value_keeps_every_storage_class() {
        let borrowed = [
            Value::Null,
            Value::Int(-7),
            Value::Real(1e308),
            Value::Text("é"),
            Value::Blob(&[0, 255]),
        ];
        let owned: Vec<OwnedValue> = borrowed
            .iter()
            .map(|v| OwnedValue::from_value(*v).unwrap())
            .collect();
        assert_eq!(owned[3], OwnedValue::Text("é".to_owned()));
        assert_eq!(owned.as_slice().values(), borrowed);
        assert_eq!(
            Option::<OwnedValue>::from_value(Value::Null).unwrap(),
            None,
            "NULL is still None in an Option"
        );
    }

    #[test]
    fn params_take_arrays_and_mixed_lists() {
        assert_eq!([1i64, 2].values(), [Value::Int(1), Value::Int(2)]);
        let name = String::from("a");
        let none: Option<i64> = None;
        let mixed = crate::sql_params![7i64, name, none, true];
        assert_eq!(
            mixed.values(),
            [Value::Int(7), Value::Text("a"), Value::Null, Value::Int(1)]
        );
        assert!([].values().is_empty());
    }
}
