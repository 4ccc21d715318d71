//! Many simulated agents in child processes (`stagely-loadgen swarm`), and the driver's handle on them.
//!
//! One process may hold 20,000 open files, so 10,000 agents run in several children of a few
//! thousand each. A child prints a JSON stats line to stdout every 200 ms and answers commands on
//! stdin (one JSON object a line): `report` (when each connected agent connected, epoch ms) and
//! `quit`. A closed stdin also ends it, so a child never outlives its driver.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSpec, Stats};
use crate::setup::Fixture;

/// Agents one child process runs at most (each holds one socket; the limit is 20,000 files).
pub const PER_CHILD: usize = 2_500;
/// Handshakes one child has in flight at once while filling up.
const DIAL_CONCURRENCY: usize = 64;

/// Arguments of the `swarm` child.
#[derive(Debug, clap::Args)]
pub struct SwarmArgs {
    /// The appliance, `http://127.0.0.1:PORT`; more than once: the replicas, dialed in turn.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Fixture file written by the driver (tokens of every agent).
    #[arg(long)]
    pub fixture: PathBuf,
    /// First agent of the fixture this child runs.
    #[arg(long)]
    pub start: usize,
    /// How many agents.
    #[arg(long)]
    pub count: usize,
    /// Hard limit on this child's life.
    #[arg(long, default_value_t = 900)]
    pub max_secs: u64,
    /// Offer `runtime`; the `runtime` command makes every watching agent send a RUNTIME.
    #[arg(long)]
    pub runtime: bool,
}

/// Entry point of the child process.
pub async fn child_main(args: SwarmArgs) -> Result<()> {
    let fixture = Fixture::load(&args.fixture)?;
    let servers: Arc<[std::net::SocketAddr]> = args
        .url
        .iter()
        .map(|u| crate::http::addr_of(u))
        .collect::<Result<_>>()?;
    let agents = fixture
        .agents
        .get(args.start..args.start + args.count)
        .context("agent range outside the fixture")?;
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let since: Vec<Arc<AtomicU64>> = (0..agents.len()).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let to: Vec<Arc<AtomicU64>> = (0..agents.len()).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // The first dial of each agent goes through a small window so a child does not open 2,500
    // handshakes in the same millisecond; reconnects afterwards follow the agents' own backoff.
    let gate = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
    let (rounds_tx, rounds_rx) = tokio::sync::watch::channel(0u64);
    for (i, a) in agents.iter().enumerate() {
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let spec = AgentSpec {
            index: args.start + i,
            token: a.token.clone(),
            servers: servers.clone(),
            stats: stats.clone(),
            connected_since: since[i].clone(),
            connected_to: to[i].clone(),
            events: None,
            on_first_connect: Some(connected_tx),
            hold: std::time::Duration::ZERO,
            runtime: args.runtime.then(|| rounds_rx.clone()),
        };
        let (stop, gate) = (stop.clone(), gate.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let runner = tokio::spawn(agent::run(spec, stop, deadline));
            // Hold the slot until this agent's first connection is up (or 20 s passed).
            let _ = tokio::time::timeout(Duration::from_secs(20), connected_rx).await;
            drop(permit);
            let _ = runner.await;
        });
    }

    // tokio's stdin needs a feature the package does not enable: read it on a plain thread.
    let (cmd_tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let emit = |v: Value| -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{v}")?;
        out.flush()?;
        Ok(())
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => emit(json!({"t": "stats", "stats": stats.snapshot()}))?,
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                let cmd: Value = serde_json::from_str(&cmd).unwrap_or_default();
                match cmd["cmd"].as_str() {
                    Some("report") => {
                        let load = |v: &[Arc<AtomicU64>]| -> Vec<u64> {
                            v.iter().map(|s| s.load(Ordering::Relaxed)).collect()
                        };
                        emit(json!({"t": "report", "connected_since": load(&since),
                            "connected_to": load(&to), "stats": stats.snapshot()}))?;
                    }
                    Some("runtime") => {
                        rounds_tx.send_modify(|r| *r += 1);
                    }
                    Some("quit") => break,
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    stop.cancel();
    Ok(())
}

/// Counters summed over every child.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub connected: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub busy_503: u64,
    pub dial_errors: u64,
}

impl Totals {
    fn add(&mut self, v: &Value) {
        let get = |k: &str| v[k].as_u64().unwrap_or(0);
        self.connected += get("connected");
        self.connects += get("connects");
        self.disconnects += get("disconnects");
        self.busy_503 += get("busy_503");
        self.dial_errors += get("dial_errors");
    }
}

/// Every agent of a swarm, in the groups' order.
pub struct Report {
    /// When its current connection started, epoch ms; 0 while disconnected.
    pub since: Vec<u64>,
    /// Which of its group's servers it is connected to, from 1 (`urls[0]` is 1); 0 while
    /// disconnected.
    pub to: Vec<u64>,
    pub totals: Totals,
}

struct ChildHandle {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    latest: Arc<Mutex<Value>>,
    reports: mpsc::UnboundedReceiver<Value>,
}

/// The driver's handle on all children of one swarm.
pub struct Swarm {
    children: Vec<ChildHandle>,
    pub size: usize,
}

/// Agents `start..start + count` of the fixture, dialing `urls` in turn (the first one first).
pub struct Group<'a> {
    pub urls: &'a [&'a str],
    pub start: usize,
    pub count: usize,
}

impl Swarm {
    /// Start `count` agents of the fixture (from the first) in children of at most [`PER_CHILD`].
    pub async fn start(exe: &Path, url: &str, fixture: &Path, count: usize, max_secs: u64) -> Result<Swarm> {
        Self::start_with(exe, url, fixture, count, max_secs, &[]).await
    }

    /// [`Swarm::start`] with extra arguments for the children (`--runtime`).
    pub async fn start_with(
        exe: &Path,
        url: &str,
        fixture: &Path,
        count: usize,
        max_secs: u64,
        extra: &[&str],
    ) -> Result<Swarm> {
        let group = Group {
            urls: &[url],
            start: 0,
            count,
        };
        Self::start_groups(exe, &[group], fixture, max_secs, extra)
    }

    /// Start every group's agents in children of at most [`PER_CHILD`]; [`Swarm::report`] lists
    /// them in the groups' order. Inside a tokio runtime (each child's stdout is read by a task).
    pub fn start_groups(
        exe: &Path,
        groups: &[Group<'_>],
        fixture: &Path,
        max_secs: u64,
        extra: &[&str],
    ) -> Result<Swarm> {
        let mut children = Vec::new();
        for g in groups {
            Self::spawn_group(exe, g, fixture, max_secs, extra, &mut children)?;
        }
        Ok(Swarm {
            children,
            size: groups.iter().map(|g| g.count).sum(),
        })
    }

    fn spawn_group(
        exe: &Path,
        group: &Group<'_>,
        fixture: &Path,
        max_secs: u64,
        extra: &[&str],
        children: &mut Vec<ChildHandle>,
    ) -> Result<()> {
        let urls = group.urls.iter().flat_map(|u| ["--url", u]);
        let (mut start, end) = (group.start, group.start + group.count);
        while start < end {
            let n = PER_CHILD.min(end - start);
            let mut child = tokio::process::Command::new(exe)
                .arg("swarm")
                .args(urls.clone())
                .arg("--fixture")
                .arg(fixture)
                .args(["--start", &start.to_string(), "--count", &n.to_string()])
                .args(["--max-secs", &max_secs.to_string()])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot run {} swarm", exe.display()))?;
            let stdin = child.stdin.take().context("child stdin")?;
            let stdout = child.stdout.take().context("child stdout")?;
            let latest = Arc::new(Mutex::new(Value::Null));
            let (tx, reports) = mpsc::unbounded_channel();
            let l = latest.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    match v["t"].as_str() {
                        Some("stats") => *l.lock().unwrap_or_else(|p| p.into_inner()) = v["stats"].clone(),
                        Some("report") => {
                            let _ = tx.send(v);
                        }
                        _ => {}
                    }
                }
            });
            children.push(ChildHandle {
                child,
                stdin,
                latest,
                reports,
            });
            start += n;
        }
        Ok(())
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.children {
            t.add(&c.latest.lock().unwrap_or_else(|p| p.into_inner()));
        }
        t
    }

    /// Wait (polling the children's stats) until `n` agents are connected.
    pub async fn wait_connected(&self, n: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.totals();
            if t.connected >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {n} agents connected after {timeout:?} ({} 503s, {} dial errors)",
                    t.connected,
                    t.busy_503,
                    t.dial_errors
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When each agent's current connection started (epoch ms; 0 = not connected), and totals.
    pub async fn report(&mut self) -> Result<(Vec<u64>, Totals)> {
        let r = self.report_where().await?;
        Ok((r.since, r.totals))
    }

    /// [`Swarm::report`], and which of its servers each agent is connected to.
    pub async fn report_where(&mut self) -> Result<Report> {
        let mut all = Vec::with_capacity(self.size);
        let mut to = Vec::with_capacity(self.size);
        let mut totals = Totals::default();
        for c in &mut self.children {
            c.stdin.write_all(b"{\"cmd\":\"report\"}\n").await?;
            c.stdin.flush().await?;
            let v = tokio::time::timeout(Duration::from_secs(20), c.reports.recv())
                .await
                .context("a swarm child did not report in time")?
                .context("a swarm child exited")?;
            totals.add(&v["stats"]);
            all.extend(
                v["connected_since"]
                    .as_array()
                    .context("report without connected_since")?
                    .iter()
                    .map(|x| x.as_u64().unwrap_or(0)),
            );
            to.extend(
                v["connected_to"]
                    .as_array()
                    .context("report without connected_to")?
                    .iter()
                    .map(|x| x.as_u64().unwrap_or(0)),
            );
        }
        Ok(Report {
            since: all,
            to,
            totals,
        })
    }

    /// Send one command line (`{"cmd": …}`) to every child.
    pub async fn command(&mut self, cmd: &str) -> Result<()> {
        for c in &mut self.children {
            c.stdin
                .write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())
                .await?;
            c.stdin.flush().await?;
        }
        Ok(())
    }

    /// RUNTIME reports sent by every child so far.
    pub fn runtime_sent(&self) -> u64 {
        self.children
            .iter()
            .map(|c| {
                c.latest.lock().unwrap_or_else(|p| p.into_inner())["runtime_sent"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Ask every child to close its agents and exit; killed if they take longer than 20 s.
    pub async fn stop(mut self) -> Result<()> {
        for c in &mut self.children {
            let _ = c.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
            let _ = c.stdin.flush().await;
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(20), c.child.wait())
                .await
                .is_err()
            {
                c.child.start_kill()?;
                c.child.wait().await?;
            }
        }
        Ok(())
    }
}
