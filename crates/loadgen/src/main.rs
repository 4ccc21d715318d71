//! `stagely-loadgen`: benchmarks of a real `stagely serve` process with simulated agents.
//!
//! `stagely-loadgen bench --quick|--full` runs every metric of BENCHMARKS.md (each the median of
//! `--runs`), prints the table and writes JSON. Simulated agents are real WebSocket clients on
//! loopback with real tokens speaking protocol v1; large fleets run in `swarm` child processes
//! (the open-file limit is per process). The appliance's memory and CPU are read from its own
//! `/proc/<pid>`, never from the generator. CLI glue: errors are `anyhow` with context.

mod abuse;
mod agent;
mod bench;
mod deploys;
mod fleet;
mod footprint;
mod history;
mod http;
mod live;
mod logs;
mod overhead;
mod replicas;
mod replicas_fleet;
mod report;
mod runtime;
mod server;
mod setup;
mod signin;
mod slow;
mod swarm;
mod webhooks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stagely-loadgen",
    about = "Benchmarks of the Stagely appliance with simulated agents (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmarks and print the table.
    Bench(bench::BenchArgs),
    /// Internal: run simulated agents for a `bench` driver (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Swarm(swarm::SwarmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stagely-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Bench(args) => bench::main(args).await,
            Command::Swarm(args) => swarm::child_main(args).await,
        }
    });
    // Agents still sleeping in their backoff must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stagely-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
