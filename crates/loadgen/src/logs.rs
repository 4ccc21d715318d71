//! Log throughput of one deploy: an agent streams N LOG frames as fast as the socket takes them,
//! then a STATUS; the appliance ACKs only once the status and every earlier line are committed,
//! so N / (first LOG sent → ACK read) is lines/s *stored*. Meanwhile a read-only SQLite
//! connection watches how often this deployment's lines are committed (the batching target).
//!
//! In the same deploy, one signed-in browser subscriber (`/ws/deployments/{id}`, see `live.rs`)
//! connects before the lines flow and reads every frame: lines it received / (first LOG sent →
//! last line at the browser) is lines/s *pushed live*. Which seqs it got is checked and noted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::agent::{self, dial, hello_frame, log_frame, status_frame};
use crate::bench::Bench;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::live::{self, Credentials, Tally};
use crate::report::Results;
use crate::setup::FixtureAgent;

/// Frames fed to the socket between flushes.
const FLUSH_EVERY: usize = 256;
/// How often the observer looks for a new commit.
const OBSERVE_EVERY: Duration = Duration::from_millis(1);

pub async fn throughput(b: &Bench, res: &mut Results) -> Result<()> {
    let fixture = b.fixture()?;
    let a = fixture.agents.first().context("empty fixture")?.clone();
    let n = b.sizes.log_lines;
    // The deployment's log caps (100,000 lines and 64 MiB by default) would cut the stream
    // short, and the completeness check would fail: they are raised past what this run sends.
    let mut spec = b.fixture_server();
    let keep_lines = (n + 1_000).to_string();
    let keep_bytes = ((n as u64 + 1_000) * 256).max(64 << 20).to_string();
    spec.env
        .push(("STAGELY_DEPLOYS__LOG_MAX_LINES".into(), keep_lines));
    spec.env
        .push(("STAGELY_DEPLOYS__LOG_MAX_BYTES".into(), keep_bytes));
    let server = spec.start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let outcome = async {
        let mut http = Http::new(addr, Some(&fixture.admin_token));
        let (mut ws, id) = start_deploy(addr, &mut http, &a).await?;
        let frames = log_frames(id, n);
        // The browser subscriber connects before the lines flow and reads every frame.
        let who = fixture.browser.as_ref().filter(|_| b.live_viewer);
        let reader = match subscriber(addr, who, id).await {
            Ok(mut sub) => {
                let limit = Duration::from_secs(300);
                let max = 2 * n as u64 + 10_000;
                Some(tokio::spawn(
                    async move { live::read_all(&mut sub, limit, max).await },
                ))
            }
            Err(e) => {
                res.not_measured("log_live_push", format!("no browser subscriber: {e:#}"));
                None
            }
        };
        let watching = Arc::new(AtomicBool::new(true));
        let observer = {
            let (db, watching) = (b.fixture_db(), watching.clone());
            tokio::task::spawn_blocking(move || observe_commits(&db, id, &watching))
        };
        let started = Instant::now();
        send_frames(&mut ws, frames).await?;
        ws.send(Message::Text(status_frame(id).into())).await?;
        let sent = started.elapsed();
        wait_frame(&mut ws, "ACK", id).await?;
        let stored = started.elapsed();
        watching.store(false, Ordering::Relaxed);
        let commits = observer.await??;
        let rate = n as f64 / stored.as_secs_f64();
        res.add("log_lines_per_sec", rate);
        res.note(
            "log_lines_per_sec",
            format!(
                "{n} lines of ~80 chars, {} browser subscriber reading: sent in {:.0} ms, all \
                 stored (ACK) after {:.0} ms",
                if reader.is_some() { "one" } else { "no" },
                sent.as_secs_f64() * 1000.0,
                stored.as_secs_f64() * 1000.0
            ),
        );
        if let Some(reader) = reader {
            let t = reader.await?;
            report_live(res, &t, n as u64, started, stored);
        }
        // The last commit carries the STATUS: a deploy's end is written at once, by design, so the
        // ACK does not wait for the timer. It is left out of the per-100 ms count, and shown apart.
        let window = Duration::from_millis(100);
        let line_commits = &commits[..commits.len().saturating_sub(1)];
        let worst = max_in_window(line_commits, window).max(usize::from(!commits.is_empty()));
        res.add("log_commits_per_100ms", worst as f64);
        res.note(
            "log_commits_per_100ms",
            format!(
                "a run: {} commits held this deploy's lines; most in any 100 ms: {worst} without the final \
                 STATUS commit, {} with it (seen by polling max(seq) every {OBSERVE_EVERY:?}, read-only)",
                commits.len(),
                max_in_window(&commits, window)
            ),
        );
        // Every line must be there: the last one by seq.
        let last = http
            .get(&format!(
                "/api/deployments/{id}/logs?after={}&limit=1",
                n.saturating_sub(2)
            ))
            .await?;
        if last.body[0]["seq"].as_u64() != Some(n as u64 - 1) {
            bail!("line {} is missing from the stored log: {}", n - 1, last.body);
        }
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop().await?;
    outcome
}

/// Connect the agent, say HELLO, wait until it is online, deploy, and take the DEPLOY.
pub async fn start_deploy(addr: SocketAddr, http: &mut Http, a: &FixtureAgent) -> Result<(agent::Ws, i64)> {
    let mut ws = dial(addr, &a.token)
        .await
        .map_err(|e| anyhow::anyhow!("agent could not connect: {e:?}"))?;
    ws.send(Message::Text(hello_frame("log-agent").into())).await?;
    wait_online(http, 1, Duration::from_secs(30)).await?;
    let answer = http
        .post_ok(
            &format!("/api/deploy/{}", a.project_id),
            &json!({"environment": a.environment}),
            202,
        )
        .await?;
    let id = answer["deployment_id"].as_i64().context("deployment_id")?;
    wait_frame(&mut ws, "DEPLOY", id).await?;
    Ok((ws, id))
}

/// `n` LOG frames of ~80 characters for deployment `id`, seqs 0..n.
pub fn log_frames(id: i64, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let line = format!(
                "#{} [web 3/7] RUN npm ci --omit=dev  added {} packages, audited {} packages in 4s",
                i % 97,
                i,
                i + 1
            );
            log_frame(id, i as u64, &line)
        })
        .collect()
}

/// Feed the frames as fast as the socket takes them, flushing every [`FLUSH_EVERY`].
pub async fn send_frames(ws: &mut agent::Ws, frames: Vec<String>) -> Result<()> {
    for (i, f) in frames.into_iter().enumerate() {
        ws.feed(Message::Text(f.into())).await?;
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            ws.flush().await?;
        }
    }
    Ok(())
}

/// A signed-in browser's live-log socket for deployment `id`, already subscribed.
async fn subscriber(addr: SocketAddr, who: Option<&Credentials>, id: i64) -> Result<agent::Ws> {
    let who =
        who.context("--no-live-viewer, or the fixture has no browser account (no setup link logged)")?;
    live::sign_in(addr, who).await?.subscribe(id, None).await
}

/// `log_live_push`: lines the browser received / (first LOG sent → last line at the browser).
fn report_live(res: &mut Results, t: &Tally, n: u64, started: Instant, stored: Duration) {
    let (Some(first), Some(last)) = (t.first, t.last) else {
        res.not_measured("log_live_push", format!("the subscriber got no line ({})", t.end));
        return;
    };
    let e2e = last.duration_since(started);
    res.add("log_live_push", t.lines as f64 / e2e.as_secs_f64());
    let window = last.duration_since(first).as_secs_f64();
    res.note(
        "log_live_push",
        format!(
            "a run: {} of {n} lines at the browser ({} missing, {} twice or out of order) in {} \
             messages ({} of them several stored lines: a resync after lag), {:.1} MB of HTML; \
             first LOG sent → last line at the browser {:.0} ms ({:+.0} ms from the ACK); \
             first → last line received {:.0} ms ({:.0} lines/s); outcome shown: {}; end: {}",
            t.lines,
            n.saturating_sub(t.lines),
            t.repeated,
            t.messages,
            t.batches,
            t.bytes as f64 / 1e6,
            e2e.as_secs_f64() * 1000.0,
            (e2e.as_secs_f64() - stored.as_secs_f64()) * 1000.0,
            window * 1000.0,
            if window > 0.0 {
                t.lines as f64 / window
            } else {
                f64::NAN
            },
            t.outcome,
            t.end
        ),
    );
}

/// Read frames until `kind` for deployment `id` arrives (pings answered by tungstenite).
pub async fn wait_frame(ws: &mut agent::Ws, kind: &str, id: i64) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(t) = frame? {
                // Every server frame is a signed envelope (issue 11): open it, then read it.
                let Ok(opened) = stagely_protocol::signing::open(t.as_str()) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(opened.message()).unwrap_or_default();
                if v["type"] == kind && v["deployment_id"] == id {
                    return Ok(());
                }
                if v["type"] == "ERROR" {
                    bail!("the appliance answered ERROR: {v}");
                }
            }
        }
        bail!("the connection closed before {kind}")
    })
    .await
    .with_context(|| format!("no {kind} within 60 s"))?
}

/// Instants at which new lines of deployment `id` became visible to a reader.
fn observe_commits(db: &Path, id: i64, watching: &AtomicBool) -> Result<Vec<Instant>> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = conn.prepare("SELECT max(seq) FROM deployment_logs WHERE deployment_id = ?1")?;
    let mut last: Option<i64> = None;
    let mut seen = Vec::new();
    // Bounded: the caller stops it after the ACK; never longer than 10 minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stop = !watching.load(Ordering::Relaxed) || Instant::now() > deadline;
        let max: Option<i64> = stmt.query_row([id], |r| r.get(0))?;
        if max.is_some() && max != last {
            seen.push(Instant::now());
            last = max;
        }
        if stop {
            return Ok(seen);
        }
        std::thread::sleep(OBSERVE_EVERY);
    }
}

/// The most events in any half-open window of length `w`.
fn max_in_window(events: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in events.iter().enumerate() {
        while t.duration_since(events[start]) >= w {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}
