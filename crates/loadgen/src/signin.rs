//! Sign-in under attack (issue 12): 200 clients post wrong passwords to `/login` at once, each
//! again as soon as it is answered, for a while; the appliance's peak RSS is sampled from
//! `/proc` every 10 ms. Each client names its own address in `X-Forwarded-For` (the loadgen is
//! on loopback, a trusted proxy by default), so the per-address limit does not cut the flood
//! short: this measures what the password threads cost, not the limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::Bench;
use crate::report::Results;

/// Concurrent clients (the figure).
pub const CLIENTS: usize = 200;

/// How long the flood lasts.
fn flood_for(b: &Bench) -> Duration {
    Duration::from_secs(b.sizes.signin_secs)
}

#[derive(Default)]
struct Tally {
    refused: AtomicU64,
    busy: AtomicU64,
    limited_other: AtomicU64,
    failed: AtomicU64,
}

/// One `POST /login` on its own connection; answers the status.
async fn sign_in(addr: std::net::SocketAddr, client: usize, n: u64) -> Result<u16> {
    let body = format!("username=bench-{client}-{n}&password=wrong-password-{n}");
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nX-Forwarded-For: 10.{}.{}.1\r\nConnection: close\r\n\r\n{body}",
        body.len(),
        client / 256,
        client % 256
    );
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .context("no answer within 60 s")??;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")
}

pub async fn run(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let spec = b.fresh_server(&format!("signin-{run}"))?;
    let server = spec.start().await?;
    server.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_kb = server.rss_kb()?;
    let addr = server.addr()?;
    let pid_rss = {
        let pid = server.pid;
        move || crate::server::rss_kb(pid).unwrap_or(0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline_kb));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                peak.fetch_max(pid_rss(), Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + flood_for(b);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let counter = match sign_in(addr, client, n).await {
                        Ok(401) => &tally.refused,
                        Ok(429) => &tally.busy,
                        Ok(_) => &tally.limited_other,
                        Err(_) => &tally.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.await?;
    }
    stop.store(true, Ordering::Release);
    sampler.await?;
    let after_kb = server.rss_kb()?;
    let peak_kb = peak.load(Ordering::Acquire).max(after_kb);
    let mb = |kb: u64| kb as f64 / 1024.0;
    res.add("signin_peak_rss", mb(peak_kb));
    res.add("signin_rss_added", mb(peak_kb.saturating_sub(baseline_kb)));
    let (refused, busy) = (
        tally.refused.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
    );
    let (other, failed) = (
        tally.limited_other.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let answered = refused + busy + other;
    res.add(
        "signin_busy_share",
        if answered == 0 {
            0.0
        } else {
            busy as f64 * 100.0 / answered as f64
        },
    );
    res.note(
        "signin_peak_rss",
        format!(
            "run {}: {CLIENTS} clients for {:?}: {refused} checked and refused (401), {busy} answered 429, \
             {other} other, {failed} without an answer; RSS {:.1} MB before, {:.1} MB peak, {:.1} MB after",
            run + 1,
            flood_for(b),
            mb(baseline_kb),
            mb(peak_kb),
            mb(after_kb)
        ),
    );
    server.stop().await
}
