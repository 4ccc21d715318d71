//! What runs, for a whole fleet (issue 14): the appliance's added RSS for every environment's
//! runtime state.
//!
//! A fresh `stagely serve` on the fixture (one environment per agent); `idle_agents` simulated
//! agents connect offering `runtime`, each is sent WATCH with its environment's compose project.
//! With all connected, the baseline RSS is taken; then every agent sends one RUNTIME (four
//! containers: db, web ×2, worker), the driver waits until every environment's runtime is stored
//! (`GET /api/environments/{id}/runtime` answers a `reported_at`), lets it settle, and reads
//! the RSS again. Added = after − before: the stored reports, the drift computation and the
//! database's cache for them; the connections are in both figures.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::bench::Bench;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::Results;
use crate::server::free_port;
use crate::swarm::Swarm;

pub async fn run(b: &Bench, res: &mut Results) -> Result<()> {
    let n = b.sizes.idle_agents;
    let port = free_port()?;
    let server = b
        .fixture_server()
        .on(&format!("127.0.0.1:{port}"))
        .with_env(
            "STAGELY_AGENTS__MAX_HANDSHAKES_PER_SEC",
            &b.fill_handshakes.to_string(),
        )
        .start()
        .await?;
    server.wait_ready().await?;
    let fixture = b.fixture()?;
    let mut http = Http::new(server.addr()?, Some(&fixture.admin_token));
    let mut swarm = Swarm::start_with(&b.exe, &server.url, &b.fixture_path(), n, 900, &["--runtime"]).await?;
    let result = async {
        swarm.wait_connected(n as u64, Duration::from_secs(300)).await?;
        wait_online(&mut http, n, Duration::from_secs(120)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss_before = server.rss_kb()?;
        let started = Instant::now();
        swarm.command("runtime").await?;
        // Every environment's report stored.
        let envs: Vec<i64> = fixture.agents.iter().take(n).map(|a| a.environment_id).collect();
        let mut pending = envs;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !pending.is_empty() {
            let mut still = Vec::new();
            for id in pending {
                let r = http.get(&format!("/api/environments/{id}/runtime")).await?;
                if r.body["reported_at"].is_null() {
                    still.push(id);
                }
            }
            pending = still;
            if Instant::now() >= deadline {
                bail!("{} of {n} environments never had their runtime stored", pending.len());
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let stored_in = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_after = server.rss_kb()?;
        let added_kb = rss_after.saturating_sub(rss_before) as f64;
        res.add("runtime_rss_added", added_kb / 1024.0);
        res.add("runtime_rss_per_env", added_kb / n as f64);
        let note = format!(
            "{n} environments, one RUNTIME each (4 containers), {} sent, all stored in {stored_in:.1} s; RSS {rss_before} → {rss_after} KB",
            swarm.runtime_sent()
        );
        res.note("runtime_rss_added", note.clone());
        res.note("runtime_rss_per_env", note);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = swarm.stop().await;
    server.stop().await?;
    result
}
