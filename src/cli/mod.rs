//! The `stagely` command line: `serve`, the admin commands on the data directory, and the
//! client commands for CI (`deploy`, `deployments`, `logs`: [`deploy`], over [`client`]) that
//! talk to an appliance's JSON API. CLI glue, so `anyhow` is fine here.

pub mod client;
pub mod deploy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{App, DataDirLock, shutdown_signal};
use crate::config::{Config, Overrides};
use crate::db::{Db, now_ms};
use crate::users::{Principal, Role, UserError, ops};

#[derive(Debug, Parser)]
#[command(
    name = "stagely",
    version,
    about = "Stagely appliance: deploy docker-compose projects onto your own servers"
)]
pub struct Cli {
    /// Config file (TOML). Without it, the embedded defaults apply (see stagely.toml.example).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (database, key file). Overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance: web UI, JSON API and agent hub.
    Serve {
        /// Address to listen on. Overrides `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// URL people and agents use to reach this appliance. Overrides `public_url`.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Administration on the data directory itself.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Write a consistent backup (database snapshot; the master key and the signing key only with
    /// --include-key) while the server runs.
    Backup {
        /// Archive to write (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Put the master key and the signing key in the archive too (then the archive alone
        /// decrypts every secret and can command every agent: keep it as safe as the keys).
        /// Default: left out; keep the key files apart.
        #[arg(long)]
        include_key: bool,
        /// The old opt-out, now the default: accepted and ignored.
        #[arg(long, hide = true, conflicts_with = "include_key")]
        no_key: bool,
    },
    /// Restore a backup into the data directory (the server must be stopped).
    Restore {
        /// Archive written by `stagely backup`.
        file: PathBuf,
        /// Replace an existing database (the old files are kept beside it).
        #[arg(long)]
        force: bool,
    },
    /// Copy the configured store (the SQLite file or PostgreSQL) into an empty other one, every
    /// row and id kept, in one transaction (stop the server first).
    ///
    /// Checks the master key against the source before touching the target, refuses a target
    /// holding any row, and compares every table's row count before committing.
    MigrateStore {
        /// postgres://user:password@host/db (or postgresql://…), or sqlite:PATH (a new file).
        /// Other users of the machine can read a command line: give a URL holding a password
        /// through STAGELY_MIGRATE_TO or --to-file instead.
        #[arg(
            long,
            value_name = "TARGET",
            env = "STAGELY_MIGRATE_TO",
            hide_env_values = true,
            required_unless_present = "to_file",
            conflicts_with = "to_file"
        )]
        to: Option<String>,
        /// A file holding the target (one line, as --to takes it).
        #[arg(long, value_name = "PATH")]
        to_file: Option<PathBuf>,
    },
    /// Exit 0 when the appliance answers /readyz on its listen address (for container HEALTHCHECKs).
    Healthcheck,
    /// Deploy an environment through an appliance's API (for CI; docs/ci.md).
    ///
    /// The API token comes from STAGELY_TOKEN or --token-file. With --wait the log streams to
    /// stdout; exit 0 success, 1 failed, 2 usage or auth error, 3 --timeout elapsed, 4 cancelled
    /// or superseded.
    Deploy(deploy::DeployArgs),
    /// Redeploy a release of an environment: its commit, secret versions and pinned images.
    ///
    /// Default: the successful release before the environment's latest one; --to picks a
    /// deployment. Waits like `deploy --wait` (exit codes alike) unless --no-wait.
    Rollback(deploy::RollbackArgs),
    /// List a project's deployments, newest first.
    Deployments(deploy::DeploymentsArgs),
    /// Print a deployment's log (masked, as stored); --follow until it ends.
    Logs(deploy::LogsArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print a new API token (shown once). Works while the server runs.
    CreateToken {
        /// A name to recognise the token by (e.g. "ci").
        #[arg(long)]
        name: String,
        /// admin, member or viewer.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Re-encrypt every secret under a new master key. Stop the server first.
    RotateKey,
    /// Print the fingerprint of the key that signs every frame sent to agents (and earlier ones).
    SigningKey,
    /// Make a new signing key; the old one signs the hand-over, which agents follow. Stop the
    /// server first.
    RotateSigningKey,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands have exit codes of their own (docs/ci.md) and no data directory.
    let code = match cli.command {
        Command::Deploy(args) => deploy::run(deploy::deploy(args)),
        Command::Rollback(args) => deploy::run(deploy::rollback(args)),
        Command::Deployments(args) => deploy::run(deploy::deployments(args)),
        Command::Logs(args) => deploy::run(deploy::logs(args)),
        command => match run(Cli { command, ..cli }) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("stagely: {e:#}");
                1
            }
        },
    };
    ExitCode::from(code)
}

fn load_config(cli: &Cli, listen: Option<SocketAddr>, public_url: Option<String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen,
        data_dir: cli.data_dir.clone(),
        public_url,
    };
    Ok(Config::load(cli.config.as_deref(), std::env::vars(), &overrides)?)
}

fn init_logging(config: &Config) {
    // RUST_LOG is optional: unset (or not a valid filter) means the configured level applies.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log_format == crate::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve { listen, public_url } => {
            let config = load_config(&cli, *listen, public_url.clone())?;
            init_logging(&config);
            crate::web::serve::raise_descriptor_limit();
            serve(config)
        }
        Command::Admin(AdminCommand::CreateToken { name, role }) => {
            let config = load_config(&cli, None, None)?;
            let role =
                Role::parse(role).with_context(|| format!("--role {role:?}: use admin, member or viewer"))?;
            let db = Db::connect(config.database_url(), &config.db_path())?;
            // The same operation (and name rule: characters, not bytes) as the Tokens page.
            let created = db
                .write_blocking(|tx| ops::create_token_in(tx, &Principal::cli(), name, role, now_ms()))
                .map_err(|e| match e {
                    UserError::Invalid { message, .. } => anyhow::anyhow!("--name: {message}"),
                    other => other.into(),
                })?;
            let token = &created.token;
            println!("{token}");
            Ok(())
        }
        Command::Backup { out, include_key, .. } => backup(&cli, out, *include_key),
        Command::Restore { file, force } => restore(&cli, file, *force),
        Command::Healthcheck => healthcheck(&cli),
        Command::MigrateStore { to, to_file } => {
            migrate_store(&cli, &migrate_target(to.as_deref(), to_file.as_deref())?)
        }
        // Dispatched in `main`, before any configuration is read.
        Command::Deploy(_) | Command::Rollback(_) | Command::Deployments(_) | Command::Logs(_) => {
            anyhow::bail!("not an admin command")
        }
        Command::Admin(AdminCommand::SigningKey) => {
            let config = load_config(&cli, None, None)?;
            let signer = crate::signing::Signer::load(&config.signing_key_path())?;
            println!("{}", signer.fingerprint());
            for old in signer.previous().iter().rev() {
                println!("replaced: {old}");
            }
            Ok(())
        }
        Command::Admin(AdminCommand::RotateSigningKey) => {
            let config = load_config(&cli, None, None)?;
            let _lock = DataDirLock::acquire(&config)?;
            let db = Db::connect(config.database_url(), &config.db_path())?;
            let report = crate::signing::rotate(&config.signing_key_path())?;
            db.write_blocking(|tx| {
                let detail = format!(
                    "{} replaced by {}",
                    report.old_fingerprint, report.new_fingerprint
                );
                crate::audit::record(
                    tx,
                    now_ms(),
                    &crate::audit::Entry::new("cli", "signing.rotate", "signing_key", None).detail(&detail),
                )
            })?;
            println!(
                "rotated the signing key\nold fingerprint: {}\nnew fingerprint: {}\nagents that pinned the old key follow the signed hand-over at their next connection; new agent tokens carry the new fingerprint",
                report.old_fingerprint, report.new_fingerprint
            );
            Ok(())
        }
        Command::Admin(AdminCommand::RotateKey) => {
            let config = load_config(&cli, None, None)?;
            let _lock = DataDirLock::acquire(&config)?;
            let db = Db::connect(config.database_url(), &config.db_path())?;
            let report = crate::secrets::vault::rotate_key(&config.key_file, &db)?;
            db.write_blocking(|tx| {
                let detail = format!(
                    "{} secrets re-encrypted to {}",
                    report.secrets, report.new_recipient
                );
                crate::audit::record(
                    tx,
                    now_ms(),
                    &crate::audit::Entry::new("cli", "vault.rotate", "vault", None).detail(&detail),
                )
            })?;
            println!(
                "rotated the master key: {} secrets re-encrypted\nold public key: {}\nnew public key: {}\nkey file: {}",
                report.secrets,
                report.old_recipient,
                report.new_recipient,
                config.key_file.display()
            );
            Ok(())
        }
    }
}

fn backup(cli: &Cli, out: &Path, include_key: bool) -> anyhow::Result<()> {
    let config = load_config(cli, None, None)?;
    let manifest = crate::backup::backup(&config, out, include_key)?;
    println!(
        "backup written to {} (schema {})",
        out.display(),
        manifest.schema_version
    );
    if manifest.includes_key {
        println!(
            "the master key and the signing key are included: this file alone decrypts every secret \
             and can command every agent, keep it as safe as the keys"
        );
    } else {
        println!(
            "the master key and the signing key are NOT included (only ciphertext): restoring needs \
             the key file {} (public key {}); keep a copy of it and of the signing key apart, or \
             pass --include-key",
            config.key_file.display(),
            manifest.recipient
        );
    }
    Ok(())
}

fn restore(cli: &Cli, file: &Path, force: bool) -> anyhow::Result<()> {
    let config = load_config(cli, None, None)?;
    let _lock = DataDirLock::acquire(&config)?;
    let manifest = crate::backup::restore(&config, file, force)?;
    println!(
        "restored the backup of {} into {} (master key {}: {}, public key {})",
        manifest.created_at,
        config.data_dir.display(),
        if manifest.includes_key {
            "restored from the backup"
        } else {
            "from the key file"
        },
        config.key_file.display(),
        manifest.recipient
    );
    Ok(())
}

/// The target of `migrate-store`: `--to` (or STAGELY_MIGRATE_TO), or the first line of `--to-file`.
/// A password on the command line is warned about (argv is readable by every local user).
fn migrate_target(to: Option<&str>, to_file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(path) = to_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--to-file: cannot read {}", path.display()))?;
        let target = text.lines().next().unwrap_or_default().trim();
        anyhow::ensure!(
            !target.is_empty(),
            "--to-file: {} is empty (expected postgres://… or sqlite:PATH on its first line)",
            path.display()
        );
        return Ok(target.to_owned());
    }
    let to = to.context("--to, STAGELY_MIGRATE_TO or --to-file is required")?;
    let from_env = std::env::var("STAGELY_MIGRATE_TO").is_ok_and(|v| v == to);
    if !from_env && url_has_password(to) {
        eprintln!(
            "warning: the password in --to is visible to every user of this machine (the process list); \
             give the URL through STAGELY_MIGRATE_TO or --to-file instead"
        );
    }
    Ok(to.to_owned())
}

/// `scheme://user:password@…`: a password before the host.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

fn migrate_store(cli: &Cli, to: &str) -> anyhow::Result<()> {
    let config = load_config(cli, None, None)?;
    let target = crate::store_copy::Target::parse(to)?;
    let _lock = DataDirLock::acquire(&config)?;
    let source = Db::connect(config.database_url(), &config.db_path())
        .map_err(crate::store_copy::CopyError::Source)?;
    let report = crate::store_copy::migrate(&source, &config.key_file, &target)?;
    let mut rows = 0;
    for (table, n) in &report.tables {
        println!("{table} {n} rows");
        rows += n;
    }
    let next = match target {
        crate::store_copy::Target::Postgres(_) => "set database_url to the target".to_owned(),
        crate::store_copy::Target::Sqlite(_) => format!(
            "move the file to {} and empty database_url",
            config.db_path().display()
        ),
    };
    println!(
        "copied {rows} rows in {} tables from {} to {}; to use it, stop the appliance, {next}, keep the \
         key file {} and start it again",
        report.tables.len(),
        report.source,
        report.target,
        config.key_file.display()
    );
    Ok(())
}

/// A dependency-free HTTP/1.0 probe of `/readyz` on the configured listen address.
fn healthcheck(cli: &Cli) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let config = load_config(cli, None, None)?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    stream.take(4096).read_to_string(&mut reply)?;
    // An empty reply has no status line: reported below as "not ready: ".
    let status = reply.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "not ready: {status}"
    );
    println!("ready");
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let mut opened = App::open(config)?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        opened.config.bound_to(addr);
        let app = opened.start()?;
        let shutdown = app.state.shutdown.clone();
        let signalled = shutdown_signal().context("cannot install signal handlers")?;
        tokio::spawn(async move {
            signalled.await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
        });
        tracing::info!(%addr, public_url = %app.state.config.public_url, data_dir = %app.state.config.data_dir.display(), "serving");
        // Issue 11: agents refuse ws:// off loopback, so say it here too, once, at start.
        let public = &app.state.config.public_url;
        let loopback = url::Url::parse(public.as_str()).ok().is_some_and(|u| match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        });
        if !public.url().is_https() && !loopback {
            tracing::warn!(public_url = %public, "public_url is http:// and not loopback: agents will refuse it unless started with --insecure-transport, and the agent token, every secret and every sign-in would cross the network in clear; put the appliance behind https");
        }
        // One line on stdout that scripts and tests can wait for.
        println!("stagely listening on http://{addr}");
        app.serve(listener).await.context("server error")
    })
}
