//! `stagely-agent`: runs on a target server, dials the appliance, deploys what it is told to.
//! See docs/agent.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stagely_agent::compose::Compose;
use stagely_agent::config::{self, RunArgs};
use stagely_agent::override_file;
use stagely_protocol::SecretEntry;

#[derive(Parser)]
#[command(
    name = "stagely-agent",
    version,
    about = "The Stagely agent: deploys compose projects pushed by a Stagely appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the appliance and deploy what it sends, until stopped (SIGTERM/SIGINT).
    Run(RunArgs),
    /// Print the override file the agent would write for these secrets (nothing is started).
    RenderOverride {
        /// The project's compose file.
        #[arg(long)]
        compose_file: PathBuf,
        /// A JSON array of {key, value, scope: "global"|"service", service?} (the DEPLOY's shape).
        #[arg(long)]
        secrets_file: PathBuf,
        /// How to run compose (default: `docker compose` if present, else `docker-compose`).
        #[arg(long, env = "STAGELY_AGENT_COMPOSE_COMMAND")]
        compose_command: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // One thread is plenty for one socket and one deploy at a time, and it keeps an idle agent
    // small (no worker threads and their allocator arenas; BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stagely-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::RenderOverride {
                compose_file,
                secrets_file,
                compose_command,
            } => render_override(compose_file, secrets_file, compose_command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagely-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STAGELY_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = config::load(args)?;
    stagely_agent::connection::run_agent(settings, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

async fn render_override(
    compose_file: PathBuf,
    secrets_file: PathBuf,
    compose_command: Option<String>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&secrets_file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", secrets_file.display()))?;
    // serde_json's errors name the position, never the value: safe to show.
    let secrets: Vec<SecretEntry> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a JSON array of {{key, value, scope, service?}}: {}",
            secrets_file.display(),
            e.classify_message()
        )
    })?;
    if !compose_file.is_file() {
        anyhow::bail!("compose file {} does not exist", compose_file.display());
    }
    let compose = match compose_command {
        Some(c) => Compose::configured(&c).await?,
        None => Compose::detect().await,
    };
    let rendered = override_file::render_for_file(&compose, &compose_file, &secrets).await?;
    print!("{rendered}");
    Ok(())
}

/// serde_json's messages can quote the input (a secret): keep the category and position only.
trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        let what = match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong shape (a field is missing or of the wrong type)",
            serde_json::error::Category::Eof => "unexpected end of file",
        };
        format!("{what} at line {} column {}", self.line(), self.column())
    }
}
