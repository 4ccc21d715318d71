//! The driver: sizes per mode, the shared fixture, every benchmark group run `--runs` times, the
//! table and the JSON report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::report::{GROUPS, Results, machine, table};
use crate::server::{ServerSpec, admin_token};
use crate::setup::Fixture;

/// Arguments of `stagely-loadgen bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Small counts; finishes in well under a minute (what the test suite runs).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// The counts: 10,000 agents, 1,000 for dispatch, 200,000 log lines.
    #[arg(long)]
    pub full: bool,
    /// The appliance binary [default: `stagely` next to this one].
    #[arg(long)]
    pub stagely: Option<PathBuf>,
    /// The agent binary [default: `stagely-agent` next to this one].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// The shipped static agent whose size is reported.
    #[arg(long, default_value = "dist/stagely-agent-linux-x86_64")]
    pub agent_dist: PathBuf,
    /// Secrets per project in the fixture (each DEPLOY decrypts and carries them).
    #[arg(long, default_value_t = crate::setup::SECRETS_PER_PROJECT)]
    pub secrets: usize,
    /// Override the number of agents of the idle and storm groups.
    #[arg(long)]
    pub agents: Option<usize>,
    /// Runs of each benchmark; each figure is the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Run only these groups (comma-separated): appliance, agent, idle, dispatch, logs, slow,
    /// storm, overhead, sqlite, abuse, signin, history, webhooks, runtime, replicas and
    /// replicas_fleet (both need PostgreSQL: `STAGELY_BENCH_DATABASE_URL`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Handshakes/s the restarted appliance allows in the storm [default: the appliance's own
    /// default, `agents.max_handshakes_per_sec`].
    #[arg(long)]
    pub storm_handshakes: Option<u32>,
    /// Handshakes/s the appliance allows while a swarm is filled before the idle and storm
    /// measurements (the storm's restarted appliance uses --storm-handshakes).
    #[arg(long, default_value_t = 5000)]
    pub fill_handshakes: u32,
    /// Override the LOG frames of the logs and slow groups' deploy.
    #[arg(long)]
    pub log_lines: Option<usize>,
    /// No browser subscriber in the log-throughput deploy (`log_live_push` is then not measured):
    /// the stored rate and the batching as they are with nobody watching.
    #[arg(long)]
    pub no_live_viewer: bool,
    /// Extra environment for every appliance process, `KEY=VALUE` (repeatable), e.g. to try
    /// `MALLOC_ARENA_MAX=2` or `STAGELY_DEPLOYS__LOG_FLUSH_MS=50`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,
    /// Write the results here as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Work directory (data dirs, logs) [default: a new temporary one, removed at the end].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// Counts and windows of one mode.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub idle_agents: usize,
    /// Ping period of the appliance in the idle measurements (its default is 20 s).
    pub ping_secs: u64,
    /// Ping rounds the idle CPU window covers.
    pub idle_rounds: u64,
    pub agent_window_secs: u64,
    pub dispatch_agents: usize,
    pub dispatch_rate: f64,
    pub dispatch_deploys: usize,
    pub log_lines: usize,
    pub storm_agents: usize,
    /// How long the storm is watched from the kill.
    pub storm_limit_secs: u64,
    pub sqlite_agents: usize,
    pub sqlite_deploys: usize,
    /// Idle agents each of the two replicas holds in the replicas_fleet group.
    pub replicas_agents: usize,
    /// How long 200 clients flood `/login` in the signin group.
    pub signin_secs: u64,
}

impl Sizes {
    pub fn quick() -> Sizes {
        Sizes {
            idle_agents: 50,
            ping_secs: 1,
            idle_rounds: 2,
            agent_window_secs: 3,
            dispatch_agents: 50,
            dispatch_rate: 50.0,
            dispatch_deploys: 20,
            log_lines: 200,
            storm_agents: 50,
            storm_limit_secs: 30,
            sqlite_agents: 10,
            sqlite_deploys: 50,
            replicas_agents: 40,
            signin_secs: 2,
        }
    }

    pub fn full() -> Sizes {
        Sizes {
            idle_agents: 10_000,
            ping_secs: 20,
            idle_rounds: 2,
            agent_window_secs: 60,
            dispatch_agents: 1_000,
            dispatch_rate: 50.0,
            dispatch_deploys: 1_000,
            log_lines: 200_000,
            storm_agents: 10_000,
            storm_limit_secs: 95,
            sqlite_agents: 200,
            sqlite_deploys: 5_000,
            replicas_agents: 10_000,
            signin_secs: 15,
        }
    }

    /// Agents the fixture needs for `groups` (the replicas_fleet group's two replicas hold twice
    /// its count).
    fn fixture_agents(&self, groups: &[&str]) -> usize {
        let fleet = if groups.contains(&"replicas_fleet") {
            2 * self.replicas_agents
        } else {
            0
        };
        self.idle_agents
            .max(self.storm_agents)
            .max(self.dispatch_agents)
            .max(self.sqlite_agents)
            .max(fleet)
    }
}

/// Everything a benchmark needs.
pub struct Bench {
    /// This binary (the swarm children run it).
    pub exe: PathBuf,
    pub stagely: PathBuf,
    pub agent: PathBuf,
    pub agent_dist: PathBuf,
    pub work: PathBuf,
    pub sizes: Sizes,
    pub clk_tck: u64,
    pub storm_handshakes: Option<u32>,
    pub server_env: Vec<(String, String)>,
    pub fill_handshakes: u32,
    pub secrets: usize,
    pub live_viewer: bool,
    /// The history group's seeded size.
    pub history: crate::history::HistorySize,
    /// The webhooks group's pushes.
    pub webhooks: crate::webhooks::WebhookSize,
    fixture: Option<Fixture>,
}

impl Bench {
    /// A server spec on a new data dir under the work dir.
    pub fn fresh_server(&self, name: &str) -> Result<ServerSpec> {
        let data_dir = self.work.join(name);
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir)?;
        }
        Ok(ServerSpec {
            bin: self.stagely.clone(),
            data_dir,
            listen: "127.0.0.1:0".into(),
            env: self.server_env.clone(),
            log: self.work.join(format!("{name}.log")),
        })
    }

    /// The appliance on the shared fixture's data dir (every agent of the fixture exists there).
    pub fn fixture_server(&self) -> ServerSpec {
        ServerSpec {
            bin: self.stagely.clone(),
            data_dir: self.work.join("fixture"),
            listen: "127.0.0.1:0".into(),
            env: self.server_env.clone(),
            log: self.work.join("fixture.log"),
        }
    }

    pub fn fixture_path(&self) -> PathBuf {
        self.work.join("fixture.json")
    }

    pub fn fixture_db(&self) -> PathBuf {
        self.work.join("fixture").join("stagely.db")
    }

    pub fn fixture(&self) -> Result<&Fixture> {
        self.fixture.as_ref().context("the fixture was not made")
    }

    async fn make_fixture(&mut self, groups: &[&str]) -> Result<()> {
        let started = Instant::now();
        let n = self.sizes.fixture_agents(groups);
        let server = self.fixture_server().start().await?;
        server.wait_ready().await?;
        let token = admin_token(&self.stagely, &self.work.join("fixture"))?;
        let fixture = Fixture::create(server.addr()?, &token, n, self.secrets).await;
        // A fresh data dir has no users: the appliance logged a one-time first-admin link.
        let browser = crate::live::create_first_admin(server.addr()?, &self.work.join("fixture.log")).await;
        server.stop().await?;
        let mut fixture = fixture?;
        match browser {
            Ok(who) => fixture.browser = Some(who),
            Err(e) => eprintln!("loadgen: no browser account, live-log metrics not measured: {e:#}"),
        }
        fixture.save(&self.fixture_path())?;
        eprintln!(
            "loadgen: fixture of {n} agents made through the API in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        self.fixture = Some(fixture);
        Ok(())
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(name))
}

pub async fn main(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut sizes = if args.full { Sizes::full() } else { Sizes::quick() };
    if let Some(n) = args.log_lines {
        sizes.log_lines = n;
    }
    if let Some(n) = args.agents {
        sizes.idle_agents = n;
        sizes.storm_agents = n;
    }
    let mode = if args.full { "full" } else { "quick" };
    let groups: Vec<&str> = if args.only.is_empty() {
        GROUPS.to_vec()
    } else {
        for g in &args.only {
            if !GROUPS.contains(&g.as_str()) {
                bail!("--only {g}: the groups are {}", GROUPS.join(", "));
            }
        }
        GROUPS
            .iter()
            .copied()
            .filter(|g| args.only.iter().any(|o| o == g))
            .collect()
    };
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("stagely-bench-").tempdir()?),
    };
    let work = match (&args.work_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => bail!("no work directory"),
    };
    std::fs::create_dir_all(&work)?;
    let mut bench = Bench {
        exe: std::env::current_exe()?,
        stagely: match args.stagely.clone() {
            Some(p) => p,
            None => sibling("stagely")?,
        },
        agent: match args.agent.clone() {
            Some(p) => p,
            None => sibling("stagely-agent")?,
        },
        agent_dist: args.agent_dist.clone(),
        work,
        sizes,
        clk_tck: crate::server::clock_ticks_per_sec(),
        storm_handshakes: args.storm_handshakes,
        server_env: args
            .server_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("--server-env {kv:?}: expected KEY=VALUE"))
            })
            .collect::<Result<_>>()?,
        fill_handshakes: args.fill_handshakes,
        secrets: args.secrets,
        live_viewer: !args.no_live_viewer,
        history: if args.full {
            crate::history::HistorySize::full()
        } else {
            crate::history::HistorySize::quick()
        },
        webhooks: if args.full {
            crate::webhooks::WebhookSize::full()
        } else {
            crate::webhooks::WebhookSize::quick()
        },
        fixture: None,
    };
    if !bench.stagely.exists() {
        bail!(
            "no appliance binary at {} (use --stagely)",
            bench.stagely.display()
        );
    }
    let started = Instant::now();
    let load_before = machine()["loadavg"].as_str().unwrap_or_default().to_owned();
    let mut res = Results::default();
    let needs_fixture = groups.iter().any(|g| {
        matches!(
            *g,
            "idle"
                | "dispatch"
                | "logs"
                | "slow"
                | "storm"
                | "sqlite"
                | "abuse"
                | "runtime"
                | "replicas"
                | "replicas_fleet"
        )
    });
    if needs_fixture {
        bench.make_fixture(&groups).await?;
    }
    let runs = args.runs;
    for group in &groups {
        let group_started = Instant::now();
        run_group(&bench, &mut res, group, runs, &groups).await;
        eprintln!(
            "loadgen: {group} done in {:.1} s",
            group_started.elapsed().as_secs_f64()
        );
    }
    let rows = res.rows(&groups);
    let machine = machine();
    println!(
        "\nStagely benchmarks ({mode}, median of {runs} runs) on {} cores, {} MB, {}, Linux {}; \
         load average {load_before} before, {} after\n",
        machine["nproc"],
        machine["mem_total_mb"],
        machine["cpu"].as_str().unwrap_or_default(),
        machine["kernel"].as_str().unwrap_or_default(),
        machine["loadavg"].as_str().unwrap_or_default()
    );
    println!("{}", table(&rows));
    for r in &rows {
        for n in &r.notes {
            println!("- {}: {n}", r.key);
        }
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    if let Some(out) = &args.out {
        let report = serde_json::json!({
            "mode": mode,
            "runs": runs,
            "machine": machine,
            "loadavg_before": load_before,
            "seconds": started.elapsed().as_secs_f64(),
            "metrics": rows,
        });
        write_json(out, &report)?;
    }
    drop(temp);
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Run one group `runs` times; a failed run is noted, and a metric no run measured says why.
async fn run_group(b: &Bench, res: &mut Results, group: &str, runs: usize, groups: &[&str]) {
    let not_measured_reason = match group {
        "agent" => crate::footprint::agent_unusable(&b.agent),
        "overhead" => crate::overhead::unavailable(b),
        "replicas" | "replicas_fleet" => crate::replicas::unavailable(),
        _ => None,
    };
    if let Some(why) = &not_measured_reason {
        res.group_not_measured(group, why);
        if group == "agent" {
            crate::footprint::agent_binary(b, res);
        }
        return;
    }
    if group == "storm" && groups.contains(&"idle") {
        // Already measured together with the idle agents (one swarm fill per run).
        return;
    }
    // The history group seeds one big data dir; its p99s are over many requests already.
    let runs = if group == "history" { 1 } else { runs };
    for run in 0..runs {
        let outcome = match group {
            "appliance" => crate::footprint::appliance(b, res, run).await,
            "agent" => crate::footprint::agent_idle(b, res, run).await,
            "idle" => crate::fleet::run(b, res, true, groups.contains(&"storm")).await,
            "storm" => crate::fleet::run(b, res, false, true).await,
            "dispatch" => crate::deploys::dispatch(b, res).await,
            "logs" => crate::logs::throughput(b, res).await,
            "slow" => crate::slow::run(b, res).await,
            "overhead" => crate::overhead::run(b, res, run).await,
            "sqlite" => crate::deploys::sqlite(b, res).await,
            "abuse" => crate::abuse::run(b, res).await,

            "signin" => crate::signin::run(b, res, run).await,
            "history" => crate::history::run(b, res).await,
            "webhooks" => crate::webhooks::run(b, res).await,
            "runtime" => crate::runtime::run(b, res).await,
            "replicas" => crate::replicas::run(b, res, run).await,
            "replicas_fleet" => crate::replicas_fleet::run(b, res, run).await,
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            eprintln!("loadgen: {group} run {} failed: {e:#}", run + 1);
            for s in crate::report::CATALOGUE.iter().filter(|s| s.group == group) {
                res.note(s.key, format!("run {} failed: {e:#}", run + 1));
                res.not_measured(s.key, format!("a run failed: {e:#}"));
            }
            if group == "idle" && groups.contains(&"storm") {
                for s in crate::report::CATALOGUE.iter().filter(|s| s.group == "storm") {
                    res.not_measured(s.key, format!("a run failed: {e:#}"));
                }
            }
        }
    }
    if group == "agent" {
        crate::footprint::agent_binary(b, res);
    }
}
