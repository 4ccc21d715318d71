//! A browser that stops reading must cost bounded memory (it lags or is dropped), never the
//! appliance. The same deploy stream (`log_lines` LOG frames) runs twice, each on a freshly
//! started appliance over the fixture: once with no browser, once with one signed-in viewer that
//! opens `/ws/deployments/{id}` (receive buffer shrunk to [`SLOW_RCVBUF`]), takes the first frame
//! and then reads nothing. The appliance's VmRSS is read from `/proc` before the stream, at its
//! peak (sampled every 10 ms) and after the ACK; what the viewer cost is
//! (peak − before with it) − (peak − before without it). Afterwards the viewer reads again, which
//! shows whether the server dropped it or kept it, lagging, and what it then received.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::agent::status_frame;
use crate::bench::Bench;
use crate::http::Http;
use crate::live::{self, Sampler, Tally};
use crate::logs::{log_frames, send_frames, start_deploy, wait_frame};
use crate::report::Results;

/// Receive buffer asked for the viewer that stops reading (the kernel doubles it, with a floor).
const SLOW_RCVBUF: u32 = 4096;
/// Quiet time before the baseline RSS and after the ACK, so the appliance settles.
const SETTLE: Duration = Duration::from_millis(500);
/// Longest the viewer may take to read what is left once it reads again.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// The appliance's VmRSS around one stream, in KB.
struct Case {
    before: u64,
    peak: u64,
    after_ack: u64,
    /// Once the slow viewer has read what was left and gone.
    end: u64,
    stream_ms: f64,
    /// What the slow viewer got once it read again.
    drained: Option<Tally>,
}

pub async fn run(b: &Bench, res: &mut Results) -> Result<()> {
    let base = stream_case(b, false)
        .await
        .context("the stream without a viewer")?;
    let slow = stream_case(b, true)
        .await
        .context("the stream with a slow viewer")?;
    let grew = |c: &Case| c.peak.saturating_sub(c.before) as f64 / 1024.0;
    let extra = grew(&slow) - grew(&base);
    res.add("slow_subscriber", extra);
    let n = b.sizes.log_lines;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let t = slow.drained.unwrap_or_default();
    res.note(
        "slow_subscriber",
        format!(
            "a run, {n} lines: without a viewer RSS {:.1} → peak {:.1} → {:.1} MB after the ACK \
             ({:.0} ms stream); with a viewer that stops reading {:.1} → peak {:.1} → {:.1} MB after \
             the ACK ({:.0} ms stream), {:.1} MB once it read the rest and left; the server {} it: \
             reading again it got {} lines ({} missing, {} twice), {} messages ({} resyncs from the store), \
             outcome shown: {}, end: {}",
            mb(base.before),
            mb(base.peak),
            mb(base.after_ack),
            base.stream_ms,
            mb(slow.before),
            mb(slow.peak),
            mb(slow.after_ack),
            slow.stream_ms,
            mb(slow.end),
            if t.end == "normal close" {
                "kept"
            } else {
                "dropped"
            },
            t.lines,
            (n as u64).saturating_sub(t.lines),
            t.repeated,
            t.messages,
            t.batches,
            t.outcome,
            t.end
        ),
    );
    Ok(())
}

/// One stream on a fresh appliance process, with or without a viewer that stops reading.
async fn stream_case(b: &Bench, slow: bool) -> Result<Case> {
    let fixture = b.fixture()?;
    let who = fixture
        .browser
        .as_ref()
        .context("the fixture has no browser account (no setup link was logged)")?;
    let a = fixture.agents.first().context("empty fixture")?.clone();
    let server = b.fixture_server().start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let outcome = async {
        let mut http = Http::new(addr, Some(&fixture.admin_token));
        // Signed in either way, so the two cases differ only by the open socket.
        let browser = live::sign_in(addr, who).await?;
        let (mut ws, id) = start_deploy(addr, &mut http, &a).await?;
        let mut viewer = match slow {
            true => Some(browser.subscribe(id, Some(SLOW_RCVBUF)).await?),
            false => None,
        };
        let frames = log_frames(id, b.sizes.log_lines);
        tokio::time::sleep(SETTLE).await;
        let before = server.rss_kb()?;
        let sampler = Sampler::start(server.pid);
        let started = Instant::now();
        send_frames(&mut ws, frames).await?;
        ws.send(Message::Text(status_frame(id).into())).await?;
        wait_frame(&mut ws, "ACK", id).await?;
        let stream_ms = started.elapsed().as_secs_f64() * 1000.0;
        // The server may still be trying to push to the viewer: give it time to grow, if it does.
        tokio::time::sleep(SETTLE).await;
        let after_ack = server.rss_kb()?;
        let peak = sampler.peak_kb().await?;
        let drained = match viewer.as_mut() {
            Some(v) => {
                let max = 2 * b.sizes.log_lines as u64 + 10_000;
                Some(live::read_all(v, DRAIN_LIMIT, max).await)
            }
            None => None,
        };
        drop(viewer);
        tokio::time::sleep(SETTLE).await;
        let end = server.rss_kb()?;
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(Case {
            before,
            peak,
            after_ack,
            end,
            stream_ms,
            drained,
        })
    }
    .await;
    server.stop().await?;
    outcome
}
