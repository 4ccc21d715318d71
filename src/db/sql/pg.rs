//! The PostgreSQL side: a small pool of blocking clients (the `postgres` crate, run on tokio's
//! blocking pool like rusqlite), TLS through rustls, `?N` placeholders rewritten to `$N`, and
//! [`Value`] mapped onto the column types of the PostgreSQL schema (BIGINT, DOUBLE PRECISION,
//! TEXT, BYTEA; whatever an expression yields, such as BOOLEAN or NUMERIC, is read too).

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{SqlResult, Value};

type BoxError = Box<dyn StdError + Sync + Send>;

/// Why the pool cannot hand out a connection.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database_url is not a valid PostgreSQL URL: {0}")]
    Url(String),
    #[error("cannot read sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("TLS setup for PostgreSQL failed: {0}")]
    Tls(String),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(postgres::Error),
    #[error("no PostgreSQL connection free after {} s (all {MAX_CONNECTIONS} busy)", WAIT_FOR_CONNECTION.as_secs())]
    Exhausted,
}

/// Open connections counted against [`MAX_CONNECTIONS`], and the idle ones.
#[derive(Default)]
struct Slots {
    open: usize,
    idle: Vec<PgClient>,
}

/// Most connections one replica opens (a request waits for one beyond that: PostgreSQL's own
/// default limit is 100 for every replica and tool together).
const MAX_CONNECTIONS: usize = 16;
/// How long a request waits for a free connection before it is an error.
const WAIT_FOR_CONNECTION: Duration = Duration::from_secs(10);
/// Most statements one connection keeps prepared.
const CACHED_STATEMENTS: usize = 256;

/// Where and how to connect; idle connections to reuse.
pub struct PgPool {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    slots: Arc<(Mutex<Slots>, Condvar)>,
    /// The URL without its password, for logs and errors.
    shown: String,
}

impl PgPool {
    /// Parse `url` (`postgres://user:pass@host:port/db?sslmode=require&sslrootcert=/ca.pem`).
    /// `sslmode` is PostgreSQL's `disable`, `prefer` (the default) or `require`; the server's
    /// certificate is verified against the system's roots plus `sslrootcert`.
    pub fn new(url: &str) -> Result<PgPool, PgError> {
        let (url, root_cert) = take_param(url, "sslrootcert");
        let mut config = postgres::Config::from_str(&url).map_err(|e| PgError::Url(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("stagely");
        }
        Ok(PgPool {
            shown: redact(&url),
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(root_cert.map(PathBuf::from))?),
            config,
            slots: Arc::default(),
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// An idle connection, or a new one while fewer than [`MAX_CONNECTIONS`] are open; else wait
    /// for one to come back.
    pub fn get(&self) -> Result<PgClient, PgError> {
        let (lock, freed) = &*self.slots;
        let deadline = std::time::Instant::now() + WAIT_FOR_CONNECTION;
        let mut slots = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(c) = slots.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                // Dropped after the lock is released (its Drop takes it).
                slots.open -= 1;
                c.forget_slot();
            }
            if slots.open < MAX_CONNECTIONS {
                slots.open += 1;
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(PgError::Exhausted);
            }
            slots = freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(slots);
        match self.config.connect(self.tls.clone()) {
            Ok(client) => Ok(PgClient {
                client,
                statements: HashMap::new(),
                slots: Some(Arc::clone(&self.slots)),
            }),
            Err(e) => {
                Slot(Arc::clone(&self.slots)).release();
                Err(PgError::Connect(e))
            }
        }
    }

    /// A connection outside the pool's count, held for as long as its user lives (a session
    /// advisory lock, LISTEN): it never waits for a slot and takes none.
    pub fn connect_dedicated(&self) -> Result<postgres::Client, PgError> {
        self.config.connect(self.tls.clone()).map_err(PgError::Connect)
    }

    /// Give a connection back after a finished transaction (a closed one is let go).
    pub fn put(&self, c: PgClient) {
        if c.client.is_closed() {
            return;
        }
        let (lock, freed) = &*self.slots;
        lock.lock().unwrap_or_else(|p| p.into_inner()).idle.push(c);
        freed.notify_one();
    }
}

/// A connection's claim on one of the pool's slots.
struct Slot(Arc<(Mutex<Slots>, Condvar)>);

impl Slot {
    fn release(self) {
        let (lock, freed) = &*self.0;
        let mut slots = lock.lock().unwrap_or_else(|p| p.into_inner());
        slots.open = slots.open.saturating_sub(1);
        freed.notify_one();
    }
}

impl Drop for PgPool {
    /// A blocking client closes through a runtime of its own, which cannot run on a thread that
    /// drives tokio tasks (the last `Db` dropped as an appliance's tasks end): close the idle
    /// connections on a thread of their own then.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.slots.0.lock().unwrap_or_else(|p| p.into_inner()).idle);
        if !idle.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop(idle));
        }
    }
}

/// The value of query parameter `key` taken out of `url`.
fn take_param(url: &str, key: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut found = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == key => {
                found = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, found)
}

/// `postgres://user:***@host/db`: a URL fit for a log line.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://…".to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let host = host.split('?').next().unwrap_or(host);
    match auth.map(|a| a.split_once(':').map_or(a, |(user, _)| user)) {
        Some(user) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://{host}"),
    }
}

fn tls_config(root_cert: Option<PathBuf>) -> Result<rustls::ClientConfig, PgError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = root_cert {
        let err = |reason: String| PgError::RootCert {
            path: path.clone(),
            reason,
        };
        let mut count = 0;
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| err(e.to_string()))? {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(err("it holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One connection and the statements it has prepared. Dropping it (a broken connection, a
/// transaction that did not end cleanly) closes it and frees its slot.
pub struct PgClient {
    pub(crate) client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    slots: Option<Arc<(Mutex<Slots>, Condvar)>>,
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            Slot(slots).release();
        }
    }
}

impl PgClient {
    /// Already uncounted (the pool did it under its lock).
    fn forget_slot(mut self) {
        self.slots = None;
    }

    pub fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }
}

/// A connection lent to one transaction's closure.
pub struct Session {
    client: RefCell<PgClient>,
}

impl Session {
    pub fn new(client: PgClient) -> Session {
        Session {
            client: RefCell::new(client),
        }
    }

    pub fn into_client(self) -> PgClient {
        self.client.into_inner()
    }

    pub fn prepare(&self, sql: &str, cache: bool) -> SqlResult<postgres::Statement> {
        let mut c = self.client.borrow_mut();
        if let Some(s) = c.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = c.client.prepare(&placeholders(sql))?;
        if cache {
            if c.statements.len() >= CACHED_STATEMENTS {
                c.statements.clear();
            }
            c.statements.insert(sql.to_owned(), stmt.clone());
        }
        Ok(stmt)
    }

    pub fn execute(&self, stmt: &postgres::Statement, values: &[Value<'_>]) -> SqlResult<usize> {
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = self.client.borrow_mut().client.execute(stmt, &params)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn query(&self, stmt: &postgres::Statement, values: &[Value<'_>]) -> SqlResult<Vec<postgres::Row>> {
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        Ok(self.client.borrow_mut().client.query(stmt, &params)?)
    }

    pub fn batch(&self, sql: &str) -> SqlResult<()> {
        Ok(self.client.borrow_mut().client.batch_execute(sql)?)
    }
}

/// SQLite's `?N` and `?` placeholders as PostgreSQL's `$N`, outside quotes and comments.
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    next
                } else {
                    digits.parse().unwrap_or(next)
                };
                next = next.max(n + 1);
                out.push('$');
                out.push_str(&n.to_string());
            }
            c => out.push(c),
        }
    }
    out
}

impl ToSql for Value<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (*self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (i != 0).to_sql(ty, out),
            #[allow(clippy::cast_precision_loss)]
            (Value::Int(i), &Type::FLOAT8) => (i as f64).to_sql(ty, out),
            (Value::Int(i), t) if is_text(t) => i.to_string().as_str().to_sql(&Type::TEXT, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            #[allow(clippy::cast_possible_truncation)]
            (Value::Real(f), &Type::FLOAT4) => (f as f32).to_sql(ty, out),
            (Value::Text(s), t) if is_text(t) => s.to_sql(&Type::TEXT, out),
            (Value::Blob(b), &Type::BYTEA) => b.to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {} to a {ty} parameter", v.kind()).into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn is_text(t: &Type) -> bool {
    matches!(
        *t,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    )
}

/// A column of any type the schema or an expression yields, as a [`Value`].
pub struct PgValue<'a>(pub Value<'a>);

impl<'a> FromSql<'a> for PgValue<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let v = match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::OID => Value::Int(i64::from(u32::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(<&[u8]>::from_sql(ty, raw)?),
            ref t if is_text(t) => Value::Text(<&str>::from_sql(&Type::TEXT, raw)?),
            ref t => return Err(format!("a {t} column is not read by Stagely").into()),
        };
        Ok(PgValue(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// NUMERIC's binary form (`sum()` and `avg()` of BIGINT answer it): an integer when it has no
/// fraction and fits, else a real.
fn numeric(raw: &[u8]) -> Result<Value<'static>, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a short NUMERIC".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)?.cast_signed());
    let sign = word(4)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut int: Option<i128> = Some(0);
    let mut real = 0f64;
    let mut fraction = false;
    for i in 0..ndigits {
        let digit = word(8 + 2 * i)?;
        let power = weight - i32::try_from(i)?;
        real += f64::from(digit) * 10_000f64.powi(power);
        if power < 0 {
            fraction |= digit != 0;
        } else {
            int = int.and_then(|n| {
                let scale = 10_000i128.checked_pow(u32::try_from(power).ok()?)?;
                n.checked_add(i128::from(digit).checked_mul(scale)?)
            });
        }
    }
    let negative = sign == 0x4000;
    match int.and_then(|n| i64::try_from(if negative { -n } else { n }).ok()) {
        Some(n) if !fraction => Ok(Value::Int(n)),
        _ => Ok(Value::Real(if negative { -real } else { real })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_rewritten_outside_quotes_and_comments() {
        assert_eq!(
            placeholders("SELECT ?1, '?2', \"a?\" -- what?\n FROM t WHERE a = ?2 AND b = ?"),
            "SELECT $1, '?2', \"a?\" -- what?\n FROM t WHERE a = $2 AND b = $3"
        );
        assert_eq!(placeholders("VALUES (?, ?)"), "VALUES ($1, $2)");
    }

    #[test]
    fn a_url_is_shown_without_its_password_and_loses_our_own_parameter() {
        assert_eq!(
            redact("postgres://st:s3cret@db:5432/stagely?sslmode=require"),
            "postgres://st:***@db:5432/stagely"
        );
        assert_eq!(redact("postgres://db/stagely"), "postgres://db/stagely");
        assert_eq!(
            take_param(
                "postgres://db/s?sslmode=require&sslrootcert=/ca.pem",
                "sslrootcert"
            ),
            (
                "postgres://db/s?sslmode=require".to_owned(),
                Some("/ca.pem".to_owned())
            )
        );
    }

    fn numeric_bytes(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight.cast_unsigned(), sign, dscale] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_read_as_integers_or_reals() {
        // 123456789 = 1·10000² + 2345·10000 + 6789
        let n = numeric_bytes(3, 2, 0, 0, &[1, 2345, 6789]);
        assert_eq!(numeric(&n).unwrap(), Value::Int(123_456_789));
        let neg = numeric_bytes(1, 0, 0x4000, 0, &[42]);
        assert_eq!(numeric(&neg).unwrap(), Value::Int(-42));
        // 1.5 = 1 + 5000·10000⁻¹
        let half = numeric_bytes(2, 0, 0, 1, &[1, 5000]);
        assert_eq!(numeric(&half).unwrap(), Value::Real(1.5));
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, 0, &[])).unwrap(), Value::Int(0));
    }

    #[test]
    fn a_replica_opens_at_most_its_connections_and_a_waiter_gets_one_back() {
        let Some(url) = crate::db::postgres::test_database("pool") else {
            return;
        };
        let pool = Arc::new(PgPool::new(&url).unwrap());
        let held: Vec<PgClient> = (0..MAX_CONNECTIONS).map(|_| pool.get().unwrap()).collect();
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.get().map(|mut c| c.batch("SELECT 1").is_ok()))
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "a 17th connection was opened");
        let mut held = held.into_iter();
        pool.put(held.next().unwrap());
        assert!(
            waiter.join().unwrap().unwrap(),
            "the waiter got the connection given back"
        );
        // A dropped (broken) connection frees its slot too.
        drop(held.next());
        let mut again = pool.get().unwrap();
        assert!(again.batch("SELECT 1").is_ok());
        let open: i64 = {
            let row = again
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'stagely'",
                    &[],
                )
                .unwrap();
            row.get(0)
        };
        assert!(
            usize::try_from(open).unwrap() <= MAX_CONNECTIONS,
            "{open} connections open"
        );
    }
}
