//! Many idle agents (memory and heartbeat CPU they cost the appliance) and the reconnect storm
//! (the appliance SIGKILLed under them and restarted on the same port).
//!
//! Both need a full swarm connected first, so one run fills the swarm once, measures the idle
//! figures, then kills the appliance for the storm.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent::epoch_ms;
use crate::bench::Bench;
use crate::http::Http;
use crate::report::{Results, quantile};
use crate::server::{Server, free_port};
use crate::swarm::Swarm;

/// How often `/healthz` is probed during the storm.
const PROBE_EVERY: Duration = Duration::from_millis(100);

pub async fn run(b: &Bench, res: &mut Results, idle: bool, storm: bool) -> Result<()> {
    let n = if storm && !idle {
        b.sizes.storm_agents
    } else {
        b.sizes.idle_agents
    };
    let port = free_port()?;
    let spec = b
        .fixture_server()
        .on(&format!("127.0.0.1:{port}"))
        // Filling 10,000 agents at the default 200/s would cost 50 s a run for nothing: the
        // fill has its own cap (--fill-handshakes); the storm's restarted appliance keeps its own.
        .with_env(
            "STAGELY_AGENTS__MAX_HANDSHAKES_PER_SEC",
            &b.fill_handshakes.to_string(),
        )
        .with_env(
            "STAGELY_AGENTS__PING_INTERVAL_SECS",
            &b.sizes.ping_secs.to_string(),
        )
        .with_env(
            "STAGELY_AGENTS__OFFLINE_AFTER_SECS",
            &(b.sizes.ping_secs * 3).to_string(),
        );
    let server = spec.start().await?;
    server.wait_ready().await?;
    let token = b.fixture()?.admin_token.clone();
    let mut http = Http::new(server.addr()?, Some(&token));
    // Let start-up work settle (migrations, first ticks), then take the baseline.
    settle(Duration::from_secs(2)).await;
    let rss_before = server.rss_kb()?;

    let fill_started = Instant::now();
    let swarm = Swarm::start(&b.exe, &server.url, &b.fixture_path(), n, 900).await?;
    let result = async {
        swarm.wait_connected(n as u64, Duration::from_secs(300)).await?;
        wait_online(&mut http, n, Duration::from_secs(120)).await?;
        res.note(
            "idle_rss_added",
            format!(
                "{n} agents; filled in {:.1} s at up to {} handshakes/s",
                fill_started.elapsed().as_secs_f64(),
                b.fill_handshakes
            ),
        );
        if idle {
            measure_idle(b, res, &server, rss_before, n).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = swarm.stop().await;
        let _ = server.kill().await;
        return Err(e);
    }
    if !storm {
        swarm.stop().await?;
        server.stop().await?;
        return Ok(());
    }
    reconnect_storm(b, res, server, swarm, n).await
}

/// How many agents `/api/agents` shows online.
pub async fn online_count(http: &mut Http) -> Result<usize> {
    let a = http.get("/api/agents").await?;
    Ok(a.body
        .as_array()
        .map(|v| v.iter().filter(|a| a["online"] == true).count())
        .unwrap_or(0))
}

/// A measurement window: the appliance is left alone while it runs.
async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Poll `/api/agents` until `n` agents are online on the appliance's side.
pub async fn wait_online(http: &mut Http, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let online = online_count(http).await?;
        if online >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("only {online} of {n} agents online on the appliance after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn measure_idle(
    b: &Bench,
    res: &mut Results,
    server: &Server,
    rss_before: u64,
    n: usize,
) -> Result<()> {
    // Cover several ping rounds (and the heartbeat flush to SQLite that follows each).
    let window = Duration::from_secs(b.sizes.ping_secs * b.sizes.idle_rounds);
    let ticks0 = server.cpu_ticks()?;
    let t0 = Instant::now();
    settle(window).await;
    let ticks = server.cpu_ticks()? - ticks0;
    let secs = t0.elapsed().as_secs_f64();
    let rss_after = server.rss_kb()?;
    let added_kb = rss_after.saturating_sub(rss_before) as f64;
    res.add("idle_rss_added", added_kb / 1024.0);
    res.add("idle_rss_per_agent", added_kb / n as f64);
    let cpu = ticks as f64 / b.clk_tck as f64 / secs * 100.0;
    res.add("idle_heartbeat_cpu", cpu);
    let note = format!(
        "{n} agents, ping every {} s, CPU over {secs:.0} s; RSS {} → {} KB, {} threads",
        b.sizes.ping_secs,
        rss_before,
        rss_after,
        crate::server::threads(server.pid).unwrap_or(0)
    );
    res.note("idle_heartbeat_cpu", note.clone());
    res.note("idle_rss_per_agent", note);
    Ok(())
}

/// Kill the appliance under a connected swarm, restart it on the same port, watch them come back.
async fn reconnect_storm(
    b: &Bench,
    res: &mut Results,
    server: Server,
    mut swarm: Swarm,
    n: usize,
) -> Result<()> {
    let mut spec = b.fixture_server().on(&server.addr()?.to_string());
    if let Some(cap) = b.storm_handshakes {
        spec = spec.with_env("STAGELY_AGENTS__MAX_HANDSHAKES_PER_SEC", &cap.to_string());
    }
    let before = swarm.totals();
    let killed_at = epoch_ms();
    server.kill().await?;
    let restarted = spec.start().await.context("restarting the appliance")?;
    let restart_ms = epoch_ms() - killed_at;
    let addr = restarted.addr()?;

    let probe = HealthzProbe::start(addr);
    // Watch until every agent holds a connection made after the kill, or the limit passes.
    let limit = Duration::from_secs(b.sizes.storm_limit_secs);
    let deadline = Instant::now() + limit.saturating_sub(Duration::from_millis(restart_ms));
    let (since, totals) = watch_until_back(&mut swarm, n, killed_at, deadline).await?;
    let (lat, failures) = probe.stop().await?;
    let keys = StormKeys {
        within_30s: "storm_30s",
        within_90s: "storm_90s",
        t99: "storm_t99",
        busy: "storm_503",
    };
    report_storm(
        res,
        &keys,
        &since,
        killed_at,
        (totals.busy_503 - before.busy_503) as f64,
    );
    report_healthz(res, ("storm_healthz_p99", "storm_healthz_max"), lat, failures);
    res.note(
        "storm_30s",
        format!(
            "{n} agents; appliance back {restart_ms} ms after SIGKILL; handshake cap {}; times from the kill",
            b.storm_handshakes
                .map_or_else(|| "the appliance's default".to_owned(), |c| format!("{c}/s"))
        ),
    );
    // Agents first, so none of them dials the appliance while it shuts down.
    swarm.stop().await?;
    restarted.stop().await?;
    Ok(())
}

/// `/healthz` probed the way a browser would (one kept-alive connection) until stopped.
pub struct HealthzProbe {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<(Vec<f64>, u64)>,
}

impl HealthzProbe {
    pub fn start(addr: std::net::SocketAddr) -> HealthzProbe {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut http = Http::new(addr, None);
            let (mut lat, mut failures) = (Vec::new(), 0u64);
            while !token.is_cancelled() {
                let t = Instant::now();
                match http.get("/healthz").await {
                    Ok(a) if a.status == 200 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => failures += 1,
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            (lat, failures)
        });
        HealthzProbe { stop, task }
    }

    /// The latencies (ms) of the probes answered 200, and how many were not.
    pub async fn stop(self) -> Result<(Vec<f64>, u64)> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

/// `keys`: the p99's and the max's.
pub fn report_healthz(
    res: &mut Results,
    keys: (&'static str, &'static str),
    mut lat: Vec<f64>,
    failures: u64,
) {
    lat.sort_by(f64::total_cmp);
    if let Some(p99) = quantile(&lat, 0.99) {
        res.add(keys.0, p99);
    }
    if let Some(max) = lat.last() {
        res.add(keys.1, *max);
    }
    res.note(
        keys.0,
        format!(
            "{} probes, {failures} failed, one kept-alive connection, every {PROBE_EVERY:?}",
            lat.len()
        ),
    );
}

/// Report `swarm` every 500 ms until each of its `n` agents holds a connection made after
/// `killed_at` (epoch ms), or `deadline` passes; when each one's connection started, and totals.
pub async fn watch_until_back(
    swarm: &mut Swarm,
    n: usize,
    killed_at: u64,
    deadline: Instant,
) -> Result<(Vec<u64>, crate::swarm::Totals)> {
    loop {
        let (since, totals) = swarm.report().await?;
        let back = since.iter().filter(|&&s| s > killed_at).count();
        if back >= n || Instant::now() >= deadline {
            return Ok((since, totals));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The metrics of one reconnect storm.
pub struct StormKeys {
    pub within_30s: &'static str,
    pub within_90s: &'static str,
    pub t99: &'static str,
    pub busy: &'static str,
}

/// How many of the agents (`since`: when each one's connection started) were back within 30 and
/// 90 s of `killed_at`, when 99 % were, and the 503s they were answered.
pub fn report_storm(res: &mut Results, keys: &StormKeys, since: &[u64], killed_at: u64, busy_503: f64) {
    let n = since.len();
    let mut delays: Vec<f64> = since
        .iter()
        .filter(|&&s| s > killed_at)
        .map(|&s| (s - killed_at) as f64 / 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    let within = |secs: f64| delays.iter().filter(|&&d| d <= secs).count() as f64 / n as f64 * 100.0;
    res.add(keys.within_30s, within(30.0));
    res.add(keys.within_90s, within(90.0));
    if delays.len() as f64 >= 0.99 * n as f64 {
        let k = ((0.99 * n as f64).ceil() as usize).clamp(1, delays.len());
        res.add(keys.t99, delays[k - 1]);
    } else {
        res.note(keys.t99, "a run did not reach 99 %");
    }
    res.add(keys.busy, busy_503);
}
