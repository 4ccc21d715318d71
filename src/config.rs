//! Appliance configuration, layered once at start into an immutable [`Config`].
//!
//! Precedence, lowest first: embedded defaults → `stagely.toml` (`--config FILE`) →
//! `STAGELY_*` environment variables (`__` nests: `STAGELY_AGENTS__PING_INTERVAL_SECS`) → flags.
//! Loading never writes files. Every key is documented in `stagely.toml.example`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::users::Role;

mod oidc;
mod types;
pub use oidc::{OidcProjectRole, OidcProvider};
pub use types::{Cidr, ClientAddressHeader, HttpUrl, LogFormat, PublicUrl, SecretString};

/// Where the appliance listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// A bad configuration: always names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Folder for the SQLite database (and, by default, the master key).
    pub data_dir: PathBuf,
    /// `postgres://user:password@host:5432/db?sslmode=require` to keep the data in PostgreSQL
    /// (several replicas may share it, docs/operations.md); empty: the SQLite file in `data_dir`.
    pub database_url: SecretString,
    /// URL users and agents reach this appliance at. Empty: derived from `listen`.
    pub public_url: PublicUrl,
    /// age identity file that encrypts every secret. Empty: `<data_dir>/master.key`.
    pub key_file: PathBuf,
    /// Folder holding `stagely-agent-linux-<arch>` binaries served at `/agent/download/…`.
    /// Empty: `/usr/lib/stagely/agents`, then next to the `stagely` binary.
    pub agent_binaries_dir: PathBuf,
    /// `tracing` filter, e.g. `info` or `stagely=debug,info`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Reverse proxies in front of the appliance (CIDR blocks or plain addresses). Only from
    /// these peers is the client address taken from `client_address_header` and `X-Request-Id`
    /// kept; from anyone else both are ignored.
    pub trusted_proxies: Vec<Cidr>,
    /// The header a trusted proxy names the client in: `x-forwarded-for` or `forwarded`.
    pub client_address_header: ClientAddressHeader,
    pub http: HttpConfig,
    pub agents: AgentsConfig,
    pub deploys: DeploysConfig,
    pub auth: AuthConfig,
    pub github: GithubConfig,
    /// OpenID Connect providers (`[[oidc]]` entries), besides GitHub.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oidc: Vec<OidcProvider>,
    pub notify: NotifyConfig,

    pub hooks: HooksConfig,
    pub metrics: MetricsConfig,

    pub secrets: SecretsConfig,
    /// Problems worth a warning once logging is up (unknown `STAGELY_` variables).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Bounds on every HTTP connection, so slow or idle clients cannot hold the descriptors that
/// `/healthz` and the agents need (src/web/serve.rs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A request's headers must have arrived this long after the connection became ready for
    /// them (also how long a keep-alive connection may wait for its next request).
    pub header_timeout_secs: u64,
    /// A connection still speaking HTTP that moves no byte either way for this long is closed
    /// (a stalled body or a client that stops reading its answer). WebSockets are exempt.
    pub idle_timeout_secs: u64,
    /// Connections still speaking HTTP (not upgraded to a WebSocket) per client address; past
    /// it a new connection is closed at once. IPv6 addresses count per /64.
    pub max_connections_per_ip: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections_per_ip: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// WebSocket ping period.
    pub ping_interval_secs: u64,
    /// An agent with no pong (or any frame) for this long is offline.
    pub offline_after_secs: u64,
    /// New agent WebSocket handshakes (with a valid agent token) accepted per second; the
    /// excess gets 503 + Retry-After.
    pub max_handshakes_per_sec: u32,
    /// Handshakes with a wrong agent token allowed per client address per minute (a burst of
    /// this many, refilled evenly); past it the address gets 429 without a database lookup.
    pub max_failed_handshakes_per_ip_per_min: u32,
    /// How long the appliance waits for an agent's ACTION_RESULT (restart/stop/start/down)
    /// before answering 504; the agent gives its compose command 110 s.
    pub action_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploysConfig {
    /// How long an agent that dropped mid-deploy has to reconnect and report before the
    /// deployment is failed with `agent_lost`.
    pub agent_lost_timeout_secs: u64,
    /// How long a deployment may run at all before it is failed with `timeout`.
    pub max_duration_secs: u64,
    /// How long a deployment may await approval before it ends `expired`.
    pub approval_ttl_secs: u64,
    /// How often buffered log lines are written to SQLite (one transaction per flush).
    pub log_flush_ms: u64,
    /// Longest stored log line, its cut marker included; a longer one is masked, then cut.
    pub log_max_line_bytes: usize,
    /// Lines stored per deployment; past either cap one "log truncated" line, the rest dropped.
    pub log_max_lines: u64,
    /// Bytes of log stored per deployment (see `log_max_lines`).
    pub log_max_bytes: u64,
    /// Retention: the logs of each environment's last this many deployments are kept...
    pub log_keep_deployments: u64,
    /// ...and those of deployments younger than this many days; other logs are pruned.
    pub log_keep_days: u64,
    /// How often the pruner runs; 0 turns retention off (every log is kept).
    pub log_prune_every_secs: u64,
}

/// Push webhooks (src/hooks).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Largest webhook body read; a longer one is answered 413 before any parsing.
    pub max_body_bytes: usize,
    /// Deliveries kept per project in the delivery log (older ones are pruned on insert).
    pub keep_deliveries: u32,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            keep_deliveries: 200,
        }
    }
}

/// `GET /metrics` (src/metrics): Prometheus text, behind a bearer token or on its own address.
/// Neither set: `/metrics` answers 404.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A file holding the bearer token a scraper sends (`Authorization: Bearer <token>`), read
    /// once at start: at least 16 characters, not readable by others (mode `o-rwx`).
    pub token_file: PathBuf,
    /// Serve `/metrics` only on this address (`host:port`), without a token unless `token_file`
    /// is set too; the main listener then answers 404 for it. Empty: the main listener.
    pub listen: String,
    /// The token read from `token_file`.
    #[serde(skip)]
    pub token: SecretString,
    /// `listen`, parsed.
    #[serde(skip)]
    pub listen_addr: Option<SocketAddr>,
}

/// Shortest metrics token accepted.
const MIN_METRICS_TOKEN_CHARS: usize = 16;

/// Secret history (src/secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Versions kept per secret, the current one included; older ones are pruned when a new
    /// one is written. Also how many of an environment's newest releases stay redeployable,
    /// which keeps a deleted secret's versions that those releases used.
    pub keep_versions: u32,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self { keep_versions: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A web session ends this long after sign-in (sign-out and admin revocation end it sooner).
    pub session_hours: u64,
    /// Failed sign-ins counted per client address, and per account and address, within this
    /// window (also the longest wait the per-account delay grows to).
    pub login_window_secs: u64,
    /// Failed sign-ins allowed per client address within the window; then that address waits.
    pub login_max_failures_per_ip: u32,
    /// Failed sign-ins for one account from one address before each further attempt from that
    /// address waits (5 s, doubling, up to the window). Never a lock of the account itself.
    pub login_max_failures_per_account: u32,
    /// Passwords checked (argon2id, 19 MiB each) at once, on threads of their own.
    pub password_hash_threads: u32,
    /// Sign-ins that may wait for a password thread; beyond them the answer is 429 at once.
    pub password_hash_queue: u32,
    /// How long an invitation link stays valid.
    pub invite_hours: u64,
    /// Admins who sign in with a password must have two-factor on: until they enrol, their
    /// session reaches only the account page (GitHub sign-ins are exempt: GitHub does it).
    pub require_admin_2fa: bool,
    /// How long the second sign-in step (the code after a correct password) stays open.
    pub second_factor_challenge_secs: u64,
    /// Wrong two-factor codes counted per account within this window.
    pub second_factor_window_secs: u64,
    /// Wrong two-factor codes allowed per account within the window; then 429 until it passes.
    pub second_factor_max_failures_per_account: u32,
}

/// Notifications (src/notify): retries of the outbox, timeouts, the offline check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The first retry of a failed delivery waits this long (seconds, fractions allowed); each
    /// further one twice as long as the one before.
    pub retry_base_secs: f64,
    /// Attempts per delivery before it is marked failed.
    pub max_attempts: u32,
    /// Timeout of one HTTP request (and of each SMTP step).
    pub timeout_secs: u64,
    /// How often agents are checked for `agent.offline` (seconds, fractions allowed).
    pub offline_check_secs: f64,
    /// A PEM file of extra CA certificates trusted for SMTP STARTTLS (a private relay's CA),
    /// on top of the system roots. Empty: the system roots only.
    pub smtp_extra_ca_file: PathBuf,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            retry_base_secs: 10.0,
            max_attempts: 6,
            timeout_secs: 10,
            offline_check_secs: 30.0,
            smtp_extra_ca_file: PathBuf::new(),
        }
    }
}

/// GitHub (or GitHub Enterprise) sign-in. Off while `client_id` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    /// A file holding the client secret (read once at start); alternative to `client_secret`.
    pub client_secret_file: PathBuf,
    pub auth_url: HttpUrl,
    pub token_url: HttpUrl,
    /// REST API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
    pub api_url: HttpUrl,
    /// GitHub logins that may sign in.
    pub allowed_logins: Vec<String>,
    /// Members of these organisations may sign in.
    pub allowed_orgs: Vec<String>,
    /// Role of an account created by a first GitHub sign-in.
    pub default_role: Role,
}

impl GithubConfig {
    pub fn enabled(&self) -> bool {
        !self.client_id.is_empty()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_hours: 12,
            login_window_secs: 900,
            login_max_failures_per_ip: 50,
            login_max_failures_per_account: 10,
            password_hash_threads: 2,
            password_hash_queue: 16,
            invite_hours: 72,
            require_admin_2fa: false,
            second_factor_challenge_secs: 300,
            second_factor_window_secs: 900,
            second_factor_max_failures_per_account: 10,
        }
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret: SecretString::default(),
            client_secret_file: PathBuf::new(),
            auth_url: github_url("https://github.com/login/oauth/authorize"),
            token_url: github_url("https://github.com/login/oauth/access_token"),
            api_url: github_url("https://api.github.com"),
            allowed_logins: Vec::new(),
            allowed_orgs: Vec::new(),
            default_role: Role::Viewer,
        }
    }
}

/// GitHub's own endpoints, the defaults: constants that parse.
fn github_url(s: &str) -> HttpUrl {
    #[allow(
        clippy::expect_used,
        reason = "a constant URL of this file; the tests parse every default"
    )]
    HttpUrl::parse(s).expect("a valid default URL")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            data_dir: PathBuf::from("./stagely-data"),
            database_url: SecretString::default(),
            public_url: PublicUrl::derived_from(DEFAULT_LISTEN),
            key_file: PathBuf::new(),
            agent_binaries_dir: PathBuf::new(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            trusted_proxies: [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
                .into_iter()
                .map(Cidr::host)
                .collect(),
            client_address_header: ClientAddressHeader::XForwardedFor,
            http: HttpConfig::default(),
            agents: AgentsConfig::default(),
            deploys: DeploysConfig::default(),
            auth: AuthConfig::default(),
            github: GithubConfig::default(),
            oidc: Vec::new(),
            notify: NotifyConfig::default(),

            hooks: HooksConfig::default(),
            metrics: MetricsConfig::default(),

            secrets: SecretsConfig::default(),
            warnings: Vec::new(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            ping_interval_secs: 20,
            offline_after_secs: 60,
            // 10,000 agents back within 30 s of a restart needs ~2x their bare rate once jitter
            // and Retry-After spread them; 1,000/s kept /healthz p99 near 30 ms (BENCHMARKS.md).
            max_handshakes_per_sec: 1000,
            max_failed_handshakes_per_ip_per_min: 60,
            action_timeout_secs: 120,
        }
    }
}

impl Default for DeploysConfig {
    fn default() -> Self {
        Self {
            agent_lost_timeout_secs: 600,
            max_duration_secs: 3600,
            approval_ttl_secs: 86_400,
            log_flush_ms: 100,
            log_max_line_bytes: 16 * 1024,
            log_max_lines: 100_000,
            log_max_bytes: 64 * 1024 * 1024,
            log_keep_deployments: 50,
            log_keep_days: 30,
            log_prune_every_secs: 3600,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
}

const ENV_PREFIX: &str = "STAGELY_";
/// The `stagely deploy` client's own variables (docs/ci.md): not config keys, not worth a warning
/// when a CI runner on the appliance's machine exports them.
const CLIENT_VARS: &[&str] = &["STAGELY_TOKEN", "STAGELY_SERVER"];

impl Config {
    /// Layer defaults, the optional file, the given environment and flags; then validate.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match toml::Table::try_from(Config::default()) {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigError::Invalid {
                    key: "<defaults>".into(),
                    message: e.to_string(),
                });
            }
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            merge(&mut table, from_file);
            // Deserialize the file's layer alone first so its errors name the file.
            toml::Value::Table(table.clone())
                .try_into::<Config>()
                .map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
        }
        let warnings = apply_env(&mut table, env)?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                key: "environment".into(),
                message: e.to_string(),
            })?;
        config.warnings = warnings;
        if let Some(listen) = flags.listen {
            config.listen = listen;
        }
        if let Some(dir) = &flags.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &flags.public_url {
            config.public_url =
                HttpUrl::parse(url)
                    .map(PublicUrl::set)
                    .map_err(|message| ConfigError::Invalid {
                        key: "public_url".into(),
                        message,
                    })?;
        }
        config.finish()
    }

    /// Fill derived values and check every rule that types alone do not express.
    fn finish(mut self) -> Result<Config, ConfigError> {
        let url = self.database_url.expose();
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return invalid(
                "database_url",
                "must be a postgres:// URL (or empty for the SQLite file in data_dir)",
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.key_file.as_os_str().is_empty() {
            self.key_file = self.data_dir.join("master.key");
        }
        if self.public_url.is_derived() {
            self.public_url = PublicUrl::derived_from(self.listen);
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return invalid(
                "log_level",
                "must be a tracing filter such as \"info\" or \"stagely=debug,info\"",
            );
        }
        if self.agents.ping_interval_secs == 0 {
            return invalid("agents.ping_interval_secs", "must be at least 1");
        }
        if self.agents.offline_after_secs <= self.agents.ping_interval_secs {
            return invalid(
                "agents.offline_after_secs",
                "must be greater than agents.ping_interval_secs",
            );
        }
        if self.agents.max_handshakes_per_sec == 0 {
            return invalid("agents.max_handshakes_per_sec", "must be at least 1");
        }
        if self.agents.max_failed_handshakes_per_ip_per_min == 0 {
            return invalid(
                "agents.max_failed_handshakes_per_ip_per_min",
                "must be at least 1",
            );
        }
        if self.agents.action_timeout_secs == 0 || self.agents.action_timeout_secs > 3600 {
            return invalid("agents.action_timeout_secs", "must be between 1 and 3600");
        }
        if self.http.header_timeout_secs == 0 || self.http.idle_timeout_secs == 0 {
            return invalid("http", "timeouts must be at least 1 second");
        }
        if self.http.max_connections_per_ip == 0 {
            return invalid("http.max_connections_per_ip", "must be at least 1");
        }
        if self.deploys.log_flush_ms == 0 || self.deploys.log_flush_ms > 10_000 {
            return invalid("deploys.log_flush_ms", "must be between 1 and 10000");
        }
        if !(256..=1024 * 1024).contains(&self.deploys.log_max_line_bytes) {
            return invalid("deploys.log_max_line_bytes", "must be between 256 and 1048576");
        }
        if self.deploys.log_max_lines == 0 {
            return invalid("deploys.log_max_lines", "must be at least 1");
        }
        if self.deploys.log_max_bytes < self.deploys.log_max_line_bytes as u64 {
            return invalid(
                "deploys.log_max_bytes",
                "must be at least deploys.log_max_line_bytes",
            );
        }
        if self.deploys.agent_lost_timeout_secs == 0
            || self.deploys.max_duration_secs == 0
            || self.deploys.approval_ttl_secs == 0
        {
            return invalid("deploys", "timeouts must be at least 1 second");
        }
        if self.auth.session_hours == 0 || self.auth.session_hours > 24 * 90 {
            return invalid("auth.session_hours", "must be between 1 and 2160 (90 days)");
        }
        if self.auth.login_window_secs == 0
            || self.auth.login_max_failures_per_ip == 0
            || self.auth.login_max_failures_per_account == 0
        {
            return invalid("auth", "login limits and window must be at least 1");
        }
        if self.auth.second_factor_challenge_secs == 0
            || self.auth.second_factor_window_secs == 0
            || self.auth.second_factor_max_failures_per_account == 0
        {
            return invalid(
                "auth",
                "second_factor limits, window and challenge time must be at least 1",
            );
        }
        if self.auth.password_hash_threads == 0 || self.auth.password_hash_threads > 64 {
            return invalid("auth.password_hash_threads", "must be between 1 and 64");
        }
        if self.auth.password_hash_queue > 10_000 {
            return invalid("auth.password_hash_queue", "must be at most 10000");
        }
        if self.auth.invite_hours == 0 {
            return invalid("auth.invite_hours", "must be at least 1");
        }
        let n = &self.notify;
        if !n.retry_base_secs.is_finite() || n.retry_base_secs <= 0.0 || n.retry_base_secs > 86_400.0 {
            return invalid("notify.retry_base_secs", "must be more than 0 and at most 86400");
        }
        if n.max_attempts == 0 || n.max_attempts > 100 {
            return invalid("notify.max_attempts", "must be between 1 and 100");
        }
        if n.timeout_secs == 0 || n.timeout_secs > 300 {
            return invalid("notify.timeout_secs", "must be between 1 and 300");
        }
        if !n.offline_check_secs.is_finite() || n.offline_check_secs < 0.1 || n.offline_check_secs > 3600.0 {
            return invalid("notify.offline_check_secs", "must be between 0.1 and 3600");
        }
        if !n.smtp_extra_ca_file.as_os_str().is_empty() && !n.smtp_extra_ca_file.is_file() {
            return invalid("notify.smtp_extra_ca_file", "is not a readable file");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.hooks.max_body_bytes) {
            return invalid("hooks.max_body_bytes", "must be between 1024 and 67108864");
        }
        if !(20..=100_000).contains(&self.hooks.keep_deliveries) {
            return invalid("hooks.keep_deliveries", "must be between 20 and 100000");
        }
        if !(1..=1000).contains(&self.secrets.keep_versions) {
            return invalid("secrets.keep_versions", "must be between 1 and 1000");
        }
        self.finish_github()?;
        oidc::finish(&mut self.oidc)?;
        self.finish_metrics()?;
        Ok(self)
    }

    fn finish_metrics(&mut self) -> Result<(), ConfigError> {
        let m = &mut self.metrics;
        let listen = m.listen.trim();
        m.listen_addr = if listen.is_empty() {
            None
        } else {
            Some(listen.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics.listen".into(),
                message: format!("{listen:?} is not an address such as 127.0.0.1:9100"),
            })?)
        };
        if m.token_file.as_os_str().is_empty() {
            return Ok(());
        }
        let key = "metrics.token_file";
        let path = m.token_file.display().to_string();
        let meta = std::fs::metadata(&m.token_file).map_err(|e| ConfigError::Invalid {
            key: key.into(),
            message: format!("cannot read {path}: {e}"),
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o007 != 0 {
                return invalid(
                    key,
                    &format!("{path} can be read or written by any user: chmod o-rwx (e.g. 0600 or 0640) it"),
                );
            }
        }
        let text = std::fs::read_to_string(&m.token_file).map_err(|e| ConfigError::Invalid {
            key: key.into(),
            message: format!("cannot read {path}: {e}"),
        })?;
        let token = text.trim();
        if token.chars().count() < MIN_METRICS_TOKEN_CHARS || token.chars().any(char::is_whitespace) {
            return invalid(
                key,
                &format!(
                    "{path} must hold one token of at least {MIN_METRICS_TOKEN_CHARS} characters, no spaces"
                ),
            );
        }
        m.token = SecretString::new(token);
        Ok(())
    }

    fn finish_github(&mut self) -> Result<(), ConfigError> {
        let gh = &mut self.github;
        if !gh.client_secret_file.as_os_str().is_empty() {
            if !gh.client_secret.is_empty() {
                return invalid(
                    "github.client_secret_file",
                    "set either github.client_secret or github.client_secret_file, not both",
                );
            }
            let text = std::fs::read_to_string(&gh.client_secret_file).map_err(|e| ConfigError::Invalid {
                key: "github.client_secret_file".into(),
                message: format!("cannot read {}: {e}", gh.client_secret_file.display()),
            })?;
            gh.client_secret = SecretString::new(text.trim());
        }
        for list in [&mut gh.allowed_logins, &mut gh.allowed_orgs] {
            *list = list
                .iter()
                .map(|l| l.trim().to_ascii_lowercase())
                .filter(|l| !l.is_empty())
                .collect();
        }
        if gh.enabled() {
            if gh.client_secret.is_empty() {
                return invalid(
                    "github.client_secret",
                    "is required when github.client_id is set (or use github.client_secret_file)",
                );
            }
            if gh.allowed_logins.is_empty() && gh.allowed_orgs.is_empty() {
                return invalid(
                    "github.allowed_logins",
                    "list at least one GitHub login or organisation (github.allowed_orgs) that may sign in",
                );
            }
        }
        Ok(())
    }

    /// Once the listener is bound (perhaps on port 0), a derived public URL names the real address.
    pub fn bound_to(&mut self, addr: SocketAddr) {
        if self.public_url.is_derived() {
            self.public_url = PublicUrl::derived_from(addr);
        }
    }

    /// The PostgreSQL URL, when the data lives there rather than in [`Self::db_path`].
    pub fn database_url(&self) -> Option<&str> {
        Some(self.database_url.expose()).filter(|u| !u.is_empty())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("stagely.db")
    }

    /// True when `ip` is one of `trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The Ed25519 key that signs every frame sent to agents (`crate::signing`).
    pub fn signing_key_path(&self) -> PathBuf {
        self.data_dir.join(crate::signing::FILE_NAME)
    }

    /// True when cookies must be `Secure`.
    pub fn is_https(&self) -> bool {
        self.public_url.url().is_https()
    }
}

fn invalid<T>(key: &str, message: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Overlay `STAGELY_*` variables onto keys that exist; warn about the ones that name no key.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if CLIENT_VARS.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let key = path.join(".");
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let slot = parents.iter().try_fold(&mut *table, |t, p| match t.get_mut(p) {
            Some(toml::Value::Table(inner)) => Some(inner),
            _ => None,
        });
        let Some((slot, existing)) = slot.and_then(|t| t.get(last.as_str()).cloned().map(|e| (t, e))) else {
            // Not ours (e.g. STAGELY_AGENT_* for the agent binary): say so, do not fail.
            warnings.push(format!(
                "unknown environment variable {name} ignored (no config key {key})"
            ));
            continue;
        };
        let value = match existing {
            toml::Value::Integer(_) => {
                raw.trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Invalid {
                        key: key.clone(),
                        message: format!("{name} must be a whole number"),
                    })?
            }
            toml::Value::Float(_) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(toml::Value::Float)
                .ok_or_else(|| ConfigError::Invalid {
                    key: key.clone(),
                    message: format!("{name} must be a number"),
                })?,
            // Lists from the environment are comma-separated: STAGELY_GITHUB__ALLOWED_LOGINS=alice,bob
            toml::Value::Array(_) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            toml::Value::Boolean(_) => match raw.trim() {
                "true" | "1" => toml::Value::Boolean(true),
                "false" | "0" => toml::Value::Boolean(false),
                _ => return invalid(&key, &format!("{name} must be true or false")),
            },
            _ => toml::Value::String(raw),
        };
        slot.insert(last.clone(), value);
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::load(None, vec![], &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./stagely-data"));
        assert_eq!(c.key_file, PathBuf::from("./stagely-data/master.key"));
        assert_eq!(c.public_url.as_str(), "http://127.0.0.1:8080");
        assert!(c.public_url.is_derived());
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.github.default_role, Role::Viewer);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stagely.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/from/file\"\n[agents]\nping_interval_secs = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("STAGELY_DATA_DIR", "/from/env"),
                ("STAGELY_AGENTS__OFFLINE_AFTER_SECS", "30"),
            ]),
            &Overrides {
                public_url: Some("https://deploy.example.com/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.agents.ping_interval_secs, 5);
        assert_eq!(c.agents.offline_after_secs, 30);
        assert_eq!(c.public_url.as_str(), "https://deploy.example.com");
        assert!(c.is_https());
    }

    #[test]
    fn bad_values_name_the_key() {
        let err =
            Config::load(None, env(&[("STAGELY_LISTEN", "nowhere")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::load(
            None,
            env(&[("STAGELY_PUBLIC_URL", "ftp://x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("public_url"), "{err}");
        let err = Config::load(
            None,
            env(&[("STAGELY_AGENTS__PING_INTERVAL_SECS", "soon")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("agents.ping_interval_secs"), "{err}");
        for (var, value, key) in [
            ("STAGELY_LOG_FORMAT", "xml", "log_format"),
            ("STAGELY_GITHUB__DEFAULT_ROLE", "owner", "default_role"),
            ("STAGELY_GITHUB__API_URL", "api.github.com", "api_url"),
            (
                "STAGELY_TRUSTED_PROXIES",
                "10.0.0.1,proxy.local",
                "trusted_proxies",
            ),
        ] {
            let err = Config::load(None, env(&[(var, value)]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "lissen = \"0.0.0.0:1\"\n").unwrap();
        let err = Config::load(Some(&file), vec![], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_cidr_blocks_from_file_or_environment() {
        let c = Config::load(None, vec![], &Overrides::default()).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c.is_trusted_proxy(ip("127.0.0.1")) && c.is_trusted_proxy(ip("::1")));
        assert!(!c.is_trusted_proxy(ip("10.0.0.1")), "loopback only by default");
        let c = Config::load(
            None,
            env(&[
                ("STAGELY_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7,fd00::/8"),
                ("STAGELY_CLIENT_ADDRESS_HEADER", "Forwarded"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        for (addr, trusted) in [
            ("10.20.30.40", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("fd12::1", true),
            ("127.0.0.1", false),
        ] {
            assert_eq!(c.is_trusted_proxy(ip(addr)), trusted, "{addr}");
        }
        assert_eq!(c.client_address_header, ClientAddressHeader::Forwarded);
        let err = Config::load(
            None,
            env(&[("STAGELY_CLIENT_ADDRESS_HEADER", "x-real-ip")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("client_address_header"), "{err}");
    }

    #[test]
    fn unknown_env_variables_are_ignored() {
        let c = Config::load(
            None,
            env(&[
                ("STAGELY_NOPE", "1"),
                ("PATH", "/bin"),
                ("STAGELY_TOKEN", "t"),
                ("STAGELY_SERVER", "http://x"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("STAGELY_NOPE"));
    }

    #[test]
    fn github_secret_is_redacted_and_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gh-secret");
        std::fs::write(&file, "s3cr3t-value\n").unwrap();
        let c = Config::load(
            None,
            env(&[
                ("STAGELY_GITHUB__CLIENT_ID", "abc"),
                ("STAGELY_GITHUB__CLIENT_SECRET_FILE", file.to_str().unwrap()),
                ("STAGELY_GITHUB__ALLOWED_LOGINS", "Alice, bob"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.github.client_secret.expose(), "s3cr3t-value");
        assert_eq!(c.github.allowed_logins, vec!["alice", "bob"]);
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
        assert!(!toml::to_string(&c).unwrap().contains("s3cr3t-value"));
        let err = Config::load(
            None,
            env(&[
                ("STAGELY_GITHUB__CLIENT_ID", "abc"),
                ("STAGELY_GITHUB__CLIENT_SECRET", "x"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("github.allowed_logins"), "{err}");
    }

    #[test]
    fn default_handshake_cap_lets_10000_agents_back_within_30_s() {
        let cap = u64::from(AgentsConfig::default().max_handshakes_per_sec);
        assert!(
            cap * 30 >= 2 * 10_000,
            "cap {cap}/s is too low for the reconnect-storm target"
        );
    }

    #[test]
    fn example_file_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("stagely.toml.example");
        Config::load(Some(&path), vec![], &Overrides::default()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            match value {
                toml::Value::Table(t) => {
                    assert!(text.contains(&format!("[{key}]")), "example lacks [{key}]");
                    for sub in t.keys() {
                        assert!(text.contains(&format!("{sub} =")), "example lacks {key}.{sub}");
                    }
                }
                _ => assert!(text.contains(&format!("{key} =")), "example lacks {key}"),
            }
        }
    }
}
