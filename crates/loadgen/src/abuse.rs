//! Under abuse (issue 12). (1) A tokenless `/ws/agent` flood from one client while the fixture's
//! agents reconnect and deploys are dispatched to them: how many agents are back online, and
//! the dispatch p99 (POST sent → agent holds the DEPLOY) during the flood. (2) `/healthz` p99
//! for another client (its own loopback address, a new connection per probe) while one address
//! tries to hold 1,000 half-open connections (a request line, no end of headers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::agent::Event;
use crate::bench::Bench;
use crate::deploys::LocalAgents;
use crate::http::Http;
use crate::report::{Results, quantile};

/// Concurrent flooding connections (each a new TCP connection per request).
const FLOODERS: usize = 16;
/// Half-open connections attempted from one address.
const HALF_OPEN: usize = 1_000;

/// One tokenless upgrade request on a new connection; the status (0: no answer).
async fn tokenless(addr: SocketAddr) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let req = "GET /ws/agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).await.unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub async fn run(b: &Bench, res: &mut Results) -> Result<()> {
    flood(b, res).await?;
    half_open(b, res).await
}

async fn flood(b: &Bench, res: &mut Results) -> Result<()> {
    let fixture = b.fixture()?;
    let n = b.sizes.dispatch_agents;
    let agents = fixture.agents.get(..n).context("fixture too small")?;
    let server = b.fixture_server().start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let unavailable = Arc::new(AtomicU64::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, sent, unavailable) = (stop.clone(), sent.clone(), unavailable.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if tokenless(addr).await == 503 {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let flood_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The agents connect (as after a restart) while the flood runs.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let local = LocalAgents::start(addr, agents, |_| Some(tx.clone()));
    drop(tx);
    let outcome = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while local.stats.connected.load(Ordering::Relaxed) < n as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let online = local.stats.connected.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss, reason = "a percentage")]
        res.add("flood_agents_online", online as f64 * 100.0 / n as f64);

        // Deploys one after another, round robin, while the flood goes on.
        let mut http = Http::new(addr, Some(&fixture.admin_token));
        let mut lat = Vec::new();
        let mut refused = Vec::new();
        let deploys = b.sizes.dispatch_deploys.min(200);
        for i in 0..deploys {
            let a = &agents[i % n];
            let answer = http
                .post(&format!("/api/deploy/{}", a.project_id), &json!({"environment": a.environment}))
                .await?;
            let Some(id) = answer.body["deployment_id"].as_i64().filter(|_| answer.status == 202) else {
                refused.push(format!("{} {}", answer.status, answer.body));
                continue;
            };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                    Ok(Some(Event::Deploy { deployment_id, at })) if deployment_id == id => {
                        lat.push(at.saturating_duration_since(answer.sent_at).as_secs_f64() * 1000.0);
                        break;
                    }
                    Ok(None) => break,
                    _ => {}
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        if lat.is_empty() {
            bail!("no deploy reached an agent during the flood");
        }
        res.add("flood_dispatch_p99", quantile(&lat, 0.99).unwrap_or(f64::NAN));
        let elapsed = flood_started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "a rate")]
        let rate = sent.load(Ordering::Relaxed) as f64 / elapsed;
        res.note(
            "flood_agents_online",
            format!(
                "{n} agents connecting within 30 s while {FLOODERS} connections sent {rate:.0} tokenless handshakes/s \
                 ({} of them answered 503)",
                unavailable.load(Ordering::Relaxed)
            ),
        );
        res.note(
            "flood_dispatch_p99",
            format!(
                "{} deploys one after another during the flood, {} refused{}",
                lat.len(),
                refused.len(),
                refused.first().map(|r| format!(" (first: {r})")).unwrap_or_default()
            ),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    local.stop().await;
    server.stop().await?;
    outcome
}

/// `GET /healthz` on a new connection from `from`; the time to the whole answer, if 200.
async fn healthz_from(from: std::net::IpAddr, addr: SocketAddr) -> Result<f64> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let started = Instant::now();
    let mut s = socket.connect(addr).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await?;
    if !reply.starts_with("HTTP/1.1 200") {
        bail!("healthz answered {:?}", reply.lines().next());
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn half_open(b: &Bench, res: &mut Results) -> Result<()> {
    let server = b.fresh_server("half-open")?.start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let held: Vec<TcpStream> = futures_util::future::join_all((0..HALF_OPEN).map(|_| async move {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.1:0".parse().ok()?).ok()?;
        let mut s = tokio::time::timeout(Duration::from_secs(3), socket.connect(addr))
            .await
            .ok()?
            .ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.ok()?;
        Some(s)
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    // The ones over the per-address cap were closed at accept; count those still open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut open = 0;
    for s in &held {
        let mut probe = [0u8; 1];
        if matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
    }
    let other: std::net::IpAddr = "127.0.0.2".parse()?;
    let mut lat = Vec::new();
    let mut failed = 0;
    for _ in 0..b.sizes.dispatch_deploys.clamp(20, 500) {
        match tokio::time::timeout(Duration::from_secs(5), healthz_from(other, addr)).await {
            Ok(Ok(ms)) => lat.push(ms),
            _ => failed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    res.add("halfopen_healthz_p99", quantile(&lat, 0.99).unwrap_or(f64::NAN));
    res.note(
        "halfopen_healthz_p99",
        format!(
            "{HALF_OPEN} half-open connections tried from 127.0.0.1, {open} held open by the appliance (the \
             per-address cap), {} probes from 127.0.0.2, {failed} failed",
            lat.len()
        ),
    );
    drop(held);
    server.stop().await?;
    Ok(())
}
