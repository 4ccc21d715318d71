//! Dispatch latency and SQLite deployment records/s, with simulated agents inside the driver so
//! "POST sent" and "agent holds the DEPLOY" are read off the same process clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSpec, Event, Stats};
use crate::bench::Bench;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::{Results, quantile};
use crate::setup::FixtureAgent;

/// HTTP connections the dispatcher sends deploys on (a few busy UI users / CI jobs).
const DISPATCH_CONNECTIONS: usize = 8;

/// Simulated agents running inside this process.
pub struct LocalAgents {
    pub stats: Arc<Stats>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalAgents {
    /// Start one fast-acking agent per fixture agent; `events(i)` gives agent i's event sink.
    pub fn start(
        addr: SocketAddr,
        agents: &[FixtureAgent],
        events: impl FnMut(usize) -> Option<mpsc::UnboundedSender<Event>>,
    ) -> LocalAgents {
        Self::start_holding(addr, agents, events, Duration::ZERO)
    }

    /// As [`Self::start`], each deploy reporting only `hold` after its DEPLOY arrived.
    pub fn start_holding(
        addr: SocketAddr,
        agents: &[FixtureAgent],
        mut events: impl FnMut(usize) -> Option<mpsc::UnboundedSender<Event>>,
        hold: Duration,
    ) -> LocalAgents {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(900);
        let tasks = agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let spec = AgentSpec {
                    index: i,
                    token: a.token.clone(),
                    servers: Arc::from([addr]),
                    stats: stats.clone(),
                    connected_since: Arc::new(AtomicU64::new(0)),
                    connected_to: Arc::new(AtomicU64::new(0)),
                    events: events(i),
                    on_first_connect: None,
                    hold,
                    runtime: None,
                };
                tokio::spawn(agent::run(spec, stop.clone(), deadline))
            })
            .collect();
        LocalAgents { stats, stop, tasks }
    }

    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.stats.connected.load(Ordering::Relaxed) < n as u64 {
            if Instant::now() >= deadline {
                bail!("local agents did not all connect within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub async fn dispatch(b: &Bench, res: &mut Results) -> Result<()> {
    let fixture = b.fixture()?;
    let n = b.sizes.dispatch_agents;
    let agents = fixture.agents.get(..n).context("fixture too small")?;
    let server = b.fixture_server().start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let local = LocalAgents::start(addr, agents, |_| Some(tx.clone()));
    drop(tx);
    let outcome = async {
        local.wait_connected(n, Duration::from_secs(120)).await?;
        let mut http = Http::new(addr, Some(&fixture.admin_token));
        wait_online(&mut http, n, Duration::from_secs(120)).await?;

        let total = b.sizes.dispatch_deploys;
        let Paced { lat, api, refused, missing } =
            paced_deploys(b, &fixture.admin_token, agents, addr, &mut rx, total).await?;
        res.add("dispatch_p50", quantile(&lat, 0.5).unwrap_or(f64::NAN));
        res.add("dispatch_p99", quantile(&lat, 0.99).unwrap_or(f64::NAN));
        res.add("dispatch_api_p50", quantile(&api, 0.5).unwrap_or(f64::NAN));
        res.note(
            "dispatch_p50",
            format!(
                "{n} agents connected, {total} deploys at {}/s over {DISPATCH_CONNECTIONS} kept-alive connections; \
                 each project has {} secrets (decrypted per deploy)",
                b.sizes.dispatch_rate, b.secrets
            ),
        );
        // The floor under the same load: an authenticated GET of one project (a token lookup
        // and one read), paced like the deploys, on a kept-alive connection.
        let mut floor = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / b.sizes.dispatch_rate));
        for i in 0..total.min(500) {
            tick.tick().await;
            let a = http.get(&format!("/api/projects/{}", agents[i % n].project_id)).await?;
            if a.status == 200 {
                floor.push(a.done_at.duration_since(a.sent_at).as_secs_f64() * 1000.0);
            }
        }
        floor.sort_by(f64::total_cmp);
        res.add("dispatch_floor_p50", quantile(&floor, 0.5).unwrap_or(f64::NAN));
        if refused > 0 || missing > 0 {
            res.note(
                "dispatch_p99",
                format!("a run had {refused} refused POSTs and {missing} DEPLOYs never seen"),
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    local.stop().await;
    server.stop().await?;
    outcome
}

/// What [`paced_deploys`] saw, latencies sorted, in ms.
pub struct Paced {
    /// POST sent → the agent holds the DEPLOY.
    pub lat: Vec<f64>,
    /// POST sent → its 202 read.
    pub api: Vec<f64>,
    pub refused: usize,
    /// Accepted deploys whose DEPLOY never reached an agent (within 20 s).
    pub missing: usize,
}

/// `total` deploys POSTed to `api_addr` at `b.sizes.dispatch_rate`/s, round robin over `agents`
/// (connected wherever they are), on a few kept-alive connections; the agents' receipts are read
/// from `rx`.
pub async fn paced_deploys(
    b: &Bench,
    admin_token: &str,
    agents: &[FixtureAgent],
    api_addr: SocketAddr,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    total: usize,
) -> Result<Paced> {
    let n = agents.len();
    // Paced deploys: one every 1/rate s, round robin over the agents, on a few connections.
    let (job_tx, job_rx) = async_channel(total);
    let mut workers = Vec::new();
    for _ in 0..DISPATCH_CONNECTIONS {
        let jobs = job_rx.clone();
        let token = admin_token.to_owned();
        workers.push(tokio::spawn(async move {
            let mut http = Http::new(api_addr, Some(&token));
            let mut sent = Vec::new();
            while let Some((project_id, env)) = next_job(&jobs).await {
                let a = http
                    .post(&format!("/api/deploy/{project_id}"), &json!({"environment": env}))
                    .await?;
                sent.push((a.status, a.body["deployment_id"].as_i64(), a.sent_at, a.done_at));
            }
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / b.sizes.dispatch_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let a = &agents[i % n];
        job_tx
            .send((a.project_id, a.environment.clone()))
            .await
            .context("dispatcher workers stopped")?;
    }
    drop(job_tx);
    let mut sent = Vec::new();
    for w in workers {
        sent.extend(w.await??);
    }
    let accepted: Vec<_> = sent
        .iter()
        .filter_map(|(status, id, s, d)| (*status == 202).then_some((*id, *s, *d)))
        .filter_map(|(id, s, d)| id.map(|id| (id, s, d)))
        .collect();
    let refused = sent.len() - accepted.len();
    // Collect the agents' receipts of every accepted deploy.
    let mut held: HashMap<i64, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < accepted.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(Event::Deploy {
                deployment_id, at, ..
            })) => {
                held.insert(deployment_id, at);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let mut lat: Vec<f64> = Vec::new();
    let mut api: Vec<f64> = Vec::new();
    for (id, sent_at, done_at) in &accepted {
        api.push(done_at.duration_since(*sent_at).as_secs_f64() * 1000.0);
        if let Some(at) = held.get(id) {
            lat.push(at.saturating_duration_since(*sent_at).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    api.sort_by(f64::total_cmp);
    if lat.is_empty() {
        bail!("no deploy reached an agent ({refused} refused)");
    }
    let missing = accepted.len() - lat.len();
    Ok(Paced {
        lat,
        api,
        refused,
        missing,
    })
}

/// A multi-consumer job queue out of tokio's mpsc (one receiver behind a mutex).
type Jobs = Arc<tokio::sync::Mutex<mpsc::Receiver<(i64, String)>>>;

fn async_channel(cap: usize) -> (mpsc::Sender<(i64, String)>, Jobs) {
    let (tx, rx) = mpsc::channel(cap.max(1));
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn next_job(jobs: &Jobs) -> Option<(i64, String)> {
    jobs.lock().await.recv().await
}

/// Full deploy cycles (POST → DEPLOY → STATUS → ACK), one worker per agent/environment.
pub async fn sqlite(b: &Bench, res: &mut Results) -> Result<()> {
    let fixture = b.fixture()?;
    let n = b.sizes.sqlite_agents;
    let agents = fixture.agents.get(..n).context("fixture too small")?;
    let server = b.fixture_server().start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let mut receivers = Vec::new();
    let local = LocalAgents::start(addr, agents, |_| {
        let (tx, rx) = mpsc::unbounded_channel();
        receivers.push(rx);
        Some(tx)
    });
    let outcome = async {
        local.wait_connected(n, Duration::from_secs(120)).await?;
        let mut http = Http::new(addr, Some(&fixture.admin_token));
        wait_online(&mut http, n, Duration::from_secs(120)).await?;
        let total = b.sizes.sqlite_deploys;
        let remaining = Arc::new(AtomicU64::new(total as u64));
        let started = Instant::now();
        let mut workers = Vec::new();
        for (a, mut rx) in agents.iter().cloned().zip(receivers.drain(..)) {
            let (token, remaining) = (fixture.admin_token.clone(), remaining.clone());
            workers.push(tokio::spawn(async move {
                let mut http = Http::new(addr, Some(&token));
                let mut done = 0u64;
                while remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_ok()
                {
                    let answer = http
                        .post(
                            &format!("/api/deploy/{}", a.project_id),
                            &json!({"environment": a.environment}),
                        )
                        .await?;
                    let id = answer.body["deployment_id"]
                        .as_i64()
                        .with_context(|| format!("deploy refused: {} {}", answer.status, answer.body))?;
                    let acked = tokio::time::timeout(Duration::from_secs(30), async {
                        while let Some(ev) = rx.recv().await {
                            if matches!(ev, Event::Ack { deployment_id, .. } if deployment_id == id) {
                                return true;
                            }
                        }
                        false
                    })
                    .await;
                    if acked != Ok(true) {
                        bail!("deployment {id} was not acknowledged within 30 s");
                    }
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            }));
        }
        let mut done = 0;
        for w in workers {
            done += w.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        res.add("sqlite_deploys_per_sec", done as f64 / secs);
        res.note(
            "sqlite_deploys_per_sec",
            format!(
                "{done} deployments in {secs:.1} s, {n} environments in parallel; each: row + secret \
                 versions + audit entry + final status, ACKed only once committed"
            ),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    local.stop().await;
    server.stop().await?;
    outcome
}
