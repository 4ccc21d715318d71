//! The agent's settings. One precedence order: defaults → `/etc/stagely-agent/agent.toml` (or
//! `--config`) → `STAGELY_AGENT_*` environment → command-line flags.
//!
//! The token is never a flag (argv is readable by every user of the machine): it comes from
//! `token_file` or the `STAGELY_AGENT_TOKEN` variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroize;

use super::policy::{PolicyConfig, PolicyConfigError};
use stagely_protocol::AGENT_WS_PATH;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/stagely-agent/agent.toml";
pub const DEFAULT_WORK_DIR: &str = "/var/lib/stagely-agent";
pub const DEFAULT_VERIFY_WAIT_SECS: f64 = 5.0;
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_DEPLOY_TIMEOUT_SECS: u64 = 30 * 60;
/// The longest wait between two reconnect attempts (the backoff's cap).
pub const DEFAULT_RECONNECT_MAX_SECS: u64 = 60;

/// Every `STAGELY_AGENT_*` variable the agent reads; others get a warning (likely a typo).
const KNOWN_ENV: &[&str] = &[
    "STAGELY_AGENT_CONFIG",
    "STAGELY_AGENT_SERVER",
    "STAGELY_AGENT_TOKEN",
    "STAGELY_AGENT_TOKEN_FILE",
    "STAGELY_AGENT_WORK_DIR",
    "STAGELY_AGENT_CA_FILE",
    "STAGELY_AGENT_COMPOSE_COMMAND",
    "STAGELY_AGENT_VERIFY_WAIT_SECS",
    "STAGELY_AGENT_HEALTH_TIMEOUT_SECS",
    "STAGELY_AGENT_RUNTIME_DIR",
    "STAGELY_AGENT_DEPLOY_TIMEOUT_SECS",
    "STAGELY_AGENT_RECONNECT_MAX_SECS",
    "STAGELY_AGENT_LOG",
    "STAGELY_AGENT_INSECURE_TRANSPORT",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("no server given: set --server, STAGELY_AGENT_SERVER or `server` in the config file")]
    NoServer,
    #[error(
        "no token given: set --token-file, STAGELY_AGENT_TOKEN_FILE, STAGELY_AGENT_TOKEN or `token_file`"
    )]
    NoToken,
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("server URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("server {0} is given twice")]
    DuplicateServer(String),
    #[error("{0} must be a number of seconds between 0 and {1}")]
    BadDuration(&'static str, u64),
    #[error(
        "refusing to connect to {url}: it is not encrypted (ws:// or http://) and {host} is not a \
         loopback address, so anyone on the path would see the agent token and every secret. Use \
         https://, or start the agent with --insecure-transport (STAGELY_AGENT_INSECURE_TRANSPORT=1) \
         to accept that"
    )]
    InsecureTransport { url: String, host: String },
    #[error(transparent)]
    Policy(#[from] PolicyConfigError),
}

/// Flags of `stagely-agent run` (each also read from its `STAGELY_AGENT_*` variable).
#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// Config file [default: /etc/stagely-agent/agent.toml, when it exists].
    #[arg(long, env = "STAGELY_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The appliance's URL: https://stagely.example.com (or http://, ws://, wss://). Repeat it
    /// (or separate with commas) for replicas: the agent fails over between them in turn.
    #[arg(long, env = "STAGELY_AGENT_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// File holding the agent token (never pass the token itself as an argument).
    #[arg(long, env = "STAGELY_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Where checkouts and the deployments record live [default: /var/lib/stagely-agent].
    #[arg(long, env = "STAGELY_AGENT_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Extra PEM CA certificate(s) to trust, for a self-signed appliance.
    #[arg(long, env = "STAGELY_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How to run compose [default: `docker compose` if present, else `docker-compose`].
    #[arg(long, env = "STAGELY_AGENT_COMPOSE_COMMAND")]
    pub compose_command: Option<String>,
    /// Seconds between `up` and verification [default: 5].
    #[arg(long, env = "STAGELY_AGENT_VERIFY_WAIT_SECS")]
    pub verify_wait_secs: Option<f64>,
    /// Seconds to wait for healthchecks still `starting` [default: 60].
    #[arg(long, env = "STAGELY_AGENT_HEALTH_TIMEOUT_SECS")]
    pub health_timeout_secs: Option<u64>,
    /// Parent of the private directory for override files [default: $XDG_RUNTIME_DIR, /dev/shm].
    #[arg(long, env = "STAGELY_AGENT_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// A deployment still running after this many seconds is stopped and failed [default: 1800].
    #[arg(long, env = "STAGELY_AGENT_DEPLOY_TIMEOUT_SECS")]
    pub deploy_timeout_secs: Option<u64>,
    /// The longest wait between reconnect attempts, in seconds (1–3600) [default: 60].
    #[arg(long, env = "STAGELY_AGENT_RECONNECT_MAX_SECS")]
    pub reconnect_max_secs: Option<u64>,
    /// Allow an unencrypted ws:// (http://) server that is not on loopback; warned at every connect.
    #[arg(long, env = "STAGELY_AGENT_INSECURE_TRANSPORT")]
    pub insecure_transport: bool,
}

/// `agent.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `server = "https://…"` or, for replicas, `server = ["https://a…", "https://b…"]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub server: Vec<String>,
    pub token_file: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub compose_command: Option<String>,
    pub verify_wait_secs: Option<f64>,
    pub health_timeout_secs: Option<u64>,
    pub runtime_dir: Option<PathBuf>,
    pub deploy_timeout_secs: Option<u64>,
    pub reconnect_max_secs: Option<u64>,
    /// The file's form of `--insecure-transport` (install.sh writes it when told to).
    pub insecure_transport: Option<bool>,
    /// The compose policy's allowances (docs/agent.md). Only this file sets them: no flag, no
    /// variable, nothing the appliance sends.
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// The agent token. Never printed; zeroed on drop.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The WebSocket URLs, already normalised (`wss://host/…/ws/agent`), in the order given:
    /// one appliance, or its replicas (tried in turn, [`super::connection::ServerRing`]).
    pub servers: Vec<String>,
    pub token: Token,
    pub work_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub compose_command: Option<String>,
    pub verify_wait: Duration,
    pub health_timeout: Duration,
    pub runtime_dir: Option<PathBuf>,
    pub deploy_timeout: Duration,
    /// The reconnect backoff's cap.
    pub reconnect_max: Duration,
    /// `ws://` to a host that is not loopback was allowed with `--insecure-transport`.
    pub insecure_transport: bool,
    pub policy: PolicyConfig,
}

/// Merge file, environment (already in `args` through clap) and flags into [`Settings`].
pub fn load(args: RunArgs) -> Result<Settings, ConfigError> {
    warn_unknown_env();
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None if Path::new(DEFAULT_CONFIG_FILE).is_file() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
        None => FileConfig::default(),
    };
    let env_token = std::env::var("STAGELY_AGENT_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    merge(args, file, env_token)
}

/// The merge itself, without touching the process environment (testable).
pub fn merge(args: RunArgs, file: FileConfig, env_token: Option<String>) -> Result<Settings, ConfigError> {
    // The list as a whole: flags (or the variable) replace the file's, they do not add to it.
    let given = if args.server.is_empty() {
        file.server
    } else {
        args.server
    };
    let servers = normalize_servers(&given)?;
    let insecure_transport = args.insecure_transport || file.insecure_transport.unwrap_or(false);
    if !insecure_transport
        && let Some((url, host)) = servers
            .iter()
            .find_map(|url| insecure_host(url).map(|host| (url.clone(), host)))
    {
        return Err(ConfigError::InsecureTransport { url, host });
    }
    file.policy.validate()?;
    let token = match args.token_file.or(file.token_file) {
        Some(path) => read_token(&path)?,
        None => Token::new(env_token.ok_or(ConfigError::NoToken)?.trim()),
    };
    let verify = args
        .verify_wait_secs
        .or(file.verify_wait_secs)
        .unwrap_or(DEFAULT_VERIFY_WAIT_SECS);
    if !(0.0..=3600.0).contains(&verify) {
        return Err(ConfigError::BadDuration("verify_wait_secs", 3600));
    }
    let health = args
        .health_timeout_secs
        .or(file.health_timeout_secs)
        .unwrap_or(DEFAULT_HEALTH_TIMEOUT_SECS);
    if health > 3600 {
        return Err(ConfigError::BadDuration("health_timeout_secs", 3600));
    }
    let deploy_timeout = args
        .deploy_timeout_secs
        .or(file.deploy_timeout_secs)
        .unwrap_or(DEFAULT_DEPLOY_TIMEOUT_SECS);
    if !(1..=86_400).contains(&deploy_timeout) {
        return Err(ConfigError::BadDuration("deploy_timeout_secs", 86_400));
    }
    let reconnect_max = args
        .reconnect_max_secs
        .or(file.reconnect_max_secs)
        .unwrap_or(DEFAULT_RECONNECT_MAX_SECS);
    if !(1..=3600).contains(&reconnect_max) {
        return Err(ConfigError::BadDuration("reconnect_max_secs", 3600));
    }
    Ok(Settings {
        servers,
        token,
        work_dir: args
            .work_dir
            .or(file.work_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORK_DIR)),
        ca_file: args.ca_file.or(file.ca_file),
        compose_command: args.compose_command.or(file.compose_command),
        verify_wait: Duration::from_secs_f64(verify),
        health_timeout: Duration::from_secs(health),
        runtime_dir: args.runtime_dir.or(file.runtime_dir),
        deploy_timeout: Duration::from_secs(deploy_timeout),
        reconnect_max: Duration::from_secs(reconnect_max),
        insecure_transport,
        policy: file.policy,
    })
}

/// Every given server URL normalised, in order. Blank entries (a trailing comma) are skipped; a
/// bad URL is named; the same server twice is refused (scheme and host compared without case).
pub fn normalize_servers(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut servers: Vec<String> = Vec::with_capacity(given.len());
    for raw in given.iter().filter(|s| !s.trim().is_empty()) {
        let url = normalize_server_url(raw)?;
        if servers.iter().any(|seen| same_server(seen, &url)) {
            return Err(ConfigError::DuplicateServer(url));
        }
        servers.push(url);
    }
    if servers.is_empty() {
        return Err(ConfigError::NoServer);
    }
    Ok(servers)
}

/// Two normalised URLs name the same server: scheme and authority without case, path exactly.
fn same_server(a: &str, b: &str) -> bool {
    let split = |u: &str| {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        (
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase(),
            path.to_owned(),
        )
    };
    split(a) == split(b)
}

/// `server = "…"` or `server = ["…", …]` in `agent.toml`.
fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL or a list of URLs")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                out.push(url);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// For a `ws://` URL whose host is not a loopback address, that host. Decided on the URL alone,
/// before any name is resolved: `localhost` counts as loopback (it resolves locally by
/// definition, RFC 6761), any other name does not.
pub fn insecure_host(ws_url: &str) -> Option<String> {
    let rest = ws_url.strip_prefix("ws://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let lower = host.to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    let loopback = lower == "localhost"
        || lower.ends_with(".localhost")
        || lower.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_owned())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.message().to_owned(),
    })
}

fn read_token(path: &Path) -> Result<Token, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mut text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "the token file is readable by other users: chmod 600 it");
    }
    let token = Token::new(text.trim());
    text.zeroize();
    if token.expose().is_empty() {
        return Err(ConfigError::EmptyToken(path.to_owned()));
    }
    Ok(token)
}

fn warn_unknown_env() {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("STAGELY_AGENT_") && !KNOWN_ENV.contains(&name.as_ref()) {
            tracing::warn!(variable = %name, "unknown STAGELY_AGENT_ variable ignored (typo?)");
        }
    }
}

/// The appliance URL as users know it → the agent's WebSocket URL.
///
/// `https://` → `wss://`, `http://` → `ws://` (ws/wss kept); a path prefix is kept (an appliance
/// under `/stagely`); `/ws/agent` is appended unless already there.
pub fn normalize_server_url(input: &str) -> Result<String, ConfigError> {
    let bad = |reason| ConfigError::BadUrl {
        url: input.chars().take(200).collect(),
        reason,
    };
    let s = input.trim();
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| bad("it needs a scheme, e.g. https://"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        _ => return Err(bad("the scheme must be https, http, wss or ws")),
    };
    if rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
        return Err(bad("it must not contain a query, fragment or spaces"));
    }
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() {
        return Err(bad("it has no host"));
    }
    if authority.contains('@') {
        return Err(bad("it must not contain credentials (use the token file)"));
    }
    let path = path.trim_end_matches('/');
    let ws_path = AGENT_WS_PATH.trim_start_matches('/');
    let path = if path.is_empty() {
        ws_path.to_owned()
    } else if path == ws_path || path.ends_with(AGENT_WS_PATH) {
        path.to_owned()
    } else {
        format!("{path}/{ws_path}")
    };
    Ok(format!("{scheme}://{authority}/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised() {
        let n = |s| normalize_server_url(s).unwrap();
        assert_eq!(
            n("https://stagely.example.com"),
            "wss://stagely.example.com/ws/agent"
        );
        assert_eq!(
            n("https://stagely.example.com/"),
            "wss://stagely.example.com/ws/agent"
        );
        assert_eq!(n("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/ws/agent");
        assert_eq!(n("HTTPS://h/stagely/"), "wss://h/stagely/ws/agent");
        assert_eq!(n("wss://h/ws/agent"), "wss://h/ws/agent");
        assert_eq!(n("ws://h:1/x/ws/agent/"), "ws://h:1/x/ws/agent");
        for bad in [
            "h.example.com",
            "ftp://h",
            "https://",
            "https://h/?a=1",
            "https://u:p@h",
        ] {
            assert!(normalize_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_beat_file_and_token_never_comes_from_args() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "agt_secret\n").unwrap();
        let file: FileConfig = toml::from_str(
            "server = \"https://file.example\"\nwork_dir = \"/srv/file\"\nverify_wait_secs = 2.5\n",
        )
        .unwrap();
        let args = RunArgs {
            server: vec!["http://flag.example".into()],
            token_file: Some(token_file),
            insecure_transport: true,
            ..Default::default()
        };
        let s = merge(args, file, None).unwrap();
        assert_eq!(s.servers, ["ws://flag.example/ws/agent"]);
        assert_eq!(s.work_dir, PathBuf::from("/srv/file"));
        assert_eq!(s.verify_wait, Duration::from_millis(2500));
        assert_eq!(s.token.expose(), "agt_secret");
        assert!(!format!("{s:?}").contains("agt_secret"));

        let args = RunArgs {
            server: vec!["http://localhost".into()],
            ..Default::default()
        };
        assert!(matches!(
            merge(args, FileConfig::default(), None),
            Err(ConfigError::NoToken)
        ));
        let args = RunArgs {
            server: vec!["http://localhost".into()],
            ..Default::default()
        };
        let s = merge(args, FileConfig::default(), Some("from-env".into())).unwrap();
        assert_eq!(s.token.expose(), "from-env");
        assert_eq!(s.reconnect_max, Duration::from_secs(DEFAULT_RECONNECT_MAX_SECS));
        let file: FileConfig = toml::from_str("reconnect_max_secs = 3").unwrap();
        let args = RunArgs {
            server: vec!["http://localhost".into()],
            ..Default::default()
        };
        let s = merge(args, file, Some("t".into())).unwrap();
        assert_eq!(s.reconnect_max, Duration::from_secs(3), "the file sets the cap");
        let args = RunArgs {
            server: vec!["http://localhost".into()],
            reconnect_max_secs: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            merge(args, FileConfig::default(), Some("t".into())),
            Err(ConfigError::BadDuration("reconnect_max_secs", 3600))
        ));
        assert!(
            toml::from_str::<FileConfig>("tokn_file = \"x\"").is_err(),
            "unknown fields refused"
        );
    }
}

#[cfg(test)]
mod server_list_tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(argv: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("stagely-agent").chain(argv.iter().copied()))
            .unwrap()
            .run
    }

    fn servers(args: RunArgs, file: &str) -> Result<Vec<String>, ConfigError> {
        let file: FileConfig = toml::from_str(file).unwrap();
        merge(args, file, Some("t".into())).map(|s| s.servers)
    }

    #[test]
    fn server_is_one_url_or_a_list_in_every_form() {
        // The file: a string stays valid, a list is the replicas in order.
        assert_eq!(
            servers(RunArgs::default(), "server = \"https://a.example\"").unwrap(),
            ["wss://a.example/ws/agent"]
        );
        assert_eq!(
            servers(
                RunArgs::default(),
                "server = [\"https://a.example\", \"https://b.example/stagely\"]"
            )
            .unwrap(),
            ["wss://a.example/ws/agent", "wss://b.example/stagely/ws/agent"]
        );
        assert!(toml::from_str::<FileConfig>("server = 3").is_err());
        assert!(toml::from_str::<FileConfig>("server = [\"https://a\", 3]").is_err());
        assert!(matches!(
            servers(RunArgs::default(), "server = []"),
            Err(ConfigError::NoServer)
        ));
        // Flags: repeated, or comma-separated as STAGELY_AGENT_SERVER is (clap splits both).
        let args = parse(&[
            "--server",
            "https://a.example",
            "--server",
            "http://127.0.0.1:8080",
        ]);
        assert_eq!(
            servers(args, "server = \"https://file.example\"").unwrap(),
            ["wss://a.example/ws/agent", "ws://127.0.0.1:8080/ws/agent"],
            "flags replace the file's list"
        );
        let args = parse(&["--server", "https://a.example,https://b.example,"]);
        assert_eq!(
            servers(args, "").unwrap(),
            ["wss://a.example/ws/agent", "wss://b.example/ws/agent"],
            "a trailing comma is no server"
        );
    }

    #[test]
    fn a_bad_url_is_named_and_a_server_twice_is_refused() {
        let err = servers(parse(&["--server", "https://a.example,b.example"]), "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"b.example\"") && err.contains("scheme"), "{err}");
        for twice in [
            "https://a.example,https://a.example/",
            "https://A.example,wss://a.EXAMPLE/ws/agent",
        ] {
            let err = servers(parse(&["--server", twice]), "").unwrap_err();
            assert!(
                matches!(&err, ConfigError::DuplicateServer(u) if u.to_ascii_lowercase().contains("a.example")),
                "{twice}: {err}"
            );
        }
        // Another path on the same host is another appliance.
        assert_eq!(
            servers(parse(&["--server", "https://h/one,https://h/two"]), "")
                .unwrap()
                .len(),
            2
        );
        // The unencrypted check covers every server, naming the one it refuses.
        let err = servers(parse(&["--server", "https://a.example,http://10.0.0.2:8080"]), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.0.2") && err.contains("--insecure-transport"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod transport_tests {
    use super::*;

    #[test]
    fn ws_is_for_loopback_only_unless_insecure() {
        for ok in [
            "ws://127.0.0.1:8080/ws/agent",
            "ws://127.9.9.9/ws/agent",
            "ws://[::1]:80/ws/agent",
            "ws://localhost:1/ws/agent",
            "ws://LOCALHOST./ws/agent",
            "wss://stagely.example.com/ws/agent",
        ] {
            assert_eq!(insecure_host(ok), None, "{ok}");
        }
        assert_eq!(
            insecure_host("ws://stagely.example.com/ws/agent").as_deref(),
            Some("stagely.example.com")
        );
        assert_eq!(
            insecure_host("ws://10.0.0.1:8080/ws/agent").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            insecure_host("ws://[2001:db8::1]:8080/ws/agent").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            insecure_host("ws://127.0.0.1.evil.example/ws/agent").as_deref(),
            Some("127.0.0.1.evil.example")
        );

        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "agt_x\n").unwrap();
        let args = |insecure| RunArgs {
            server: vec!["http://stagely.example.com".into()],
            token_file: Some(token_file.clone()),
            insecure_transport: insecure,
            ..Default::default()
        };
        let err = merge(args(false), FileConfig::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--insecure-transport") && err.contains("stagely.example.com"),
            "{err}"
        );
        let s = merge(args(true), FileConfig::default(), None).unwrap();
        assert!(insecure_host(&s.servers[0]).is_some());
    }

    #[test]
    fn the_policy_is_read_from_the_file_and_validated() {
        let file: FileConfig = toml::from_str(
            "server = \"https://h\"\n[policy]\nallow_cap_add = [\"NET_ADMIN\"]\n[policy.project.shop]\nallow_bind = [\"/srv/shop\"]\n",
        )
        .unwrap();
        assert_eq!(
            file.policy.project["shop"].allow_bind,
            [PathBuf::from("/srv/shop")]
        );
        assert!(toml::from_str::<FileConfig>("[policy]\nallow_everything = true\n").is_err());
        let bad: FileConfig =
            toml::from_str("server = \"https://h\"\n[policy]\nallow_bind = [\"relative\"]\n").unwrap();
        assert!(matches!(
            merge(RunArgs::default(), bad, Some("t".into())),
            Err(ConfigError::Policy(_))
        ));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example parses and validates, and has every policy key.
    #[test]
    fn the_example_config_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../packaging/agent/agent.toml.example"
        );
        let file = read_file(Path::new(path)).unwrap();
        file.policy.validate().unwrap();
        assert_eq!(
            file.policy.project["traefik/production"].allow_shared_namespaces,
            ["network"]
        );
        let text = std::fs::read_to_string(path).unwrap();
        for key in [
            "allow_bind",
            "allow_read",
            "allow_cap_add",
            "allow_devices",
            "allow_device_cgroup_rules",
            "allow_shared_namespaces",
            "allow_security_opt",
            "allow_privileged",
            "allow_volumes_from",
            "insecure_transport",
        ] {
            assert!(text.contains(key), "{key} is not in the example");
        }
    }
}
