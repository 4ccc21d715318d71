//! Footprint: the appliance idle, the real agent idle and its shipped binary.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::Bench;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::Results;
use crate::server::{self, admin_token};
use crate::setup::Fixture;

/// How long after `/readyz` the idle appliance is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// Appliance RSS on a fresh data dir, no agents, once ready and settled.
pub async fn appliance(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let spec = b.fresh_server(&format!("appliance-{run}"))?;
    let server = spec.start().await?;
    server.wait_ready().await?;
    tokio::time::sleep(SETTLE).await;
    let kb = server.rss_kb()?;
    res.add("appliance_idle_rss", kb as f64 / 1024.0);
    res.note(
        "appliance_idle_rss",
        format!("VmRSS of `stagely serve` on a fresh data dir, {SETTLE:?} after /readyz answered"),
    );
    server.stop().await
}

/// Why the agent binary cannot be measured, if it cannot (the stub on the control-plane branch).
pub fn agent_unusable(agent: &Path) -> Option<String> {
    if !agent.exists() {
        return Some(format!("no agent binary at {}", agent.display()));
    }
    let help = std::process::Command::new(agent)
        .arg("--help")
        .stdin(Stdio::null())
        .output();
    match help {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("run") => None,
        Ok(_) => Some(format!(
            "{} is a stub in this build (no `run` subcommand: the agent branch is not merged)",
            agent.display()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", agent.display())),
    }
}

/// The real agent connected and idle: its RSS, CPU and wakeups over a window with heartbeats.
pub async fn agent_idle(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let spec = b
        .fresh_server(&format!("agent-{run}"))?
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
    let outcome = async {
        let token = admin_token(&b.stagely, &spec.data_dir)?;
        let fixture = Fixture::create(server.addr()?, &token, 1, 0).await?;
        let a = fixture.agents.first().context("no agent made")?;
        let dir = b.work.join(format!("agent-{run}-work"));
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, &a.token)?;
        let mut child = tokio::process::Command::new(&b.agent)
            .args(["run", "--server", &server.url, "--token-file"])
            .arg(&token_file)
            .arg("--work-dir")
            .arg(dir.join("work"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("agent.log"))?))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start stagely-agent")?;
        let pid = child.id().context("the agent exited at once")?;
        let mut http = Http::new(server.addr()?, Some(&token));
        wait_online(&mut http, 1, Duration::from_secs(30)).await?;
        // Let it finish starting (first ping/pong), then watch a window of several pings.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let window = Duration::from_secs(b.sizes.agent_window_secs);
        let (ticks0, wake0, t0) = (server::cpu_ticks(pid)?, server::wakeups(pid)?, Instant::now());
        tokio::time::sleep(window).await;
        let (ticks, wakes) = (server::cpu_ticks(pid)? - ticks0, server::wakeups(pid)? - wake0);
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        let rss = server::rss_kb(pid)?;
        if child.try_wait()?.is_some() {
            bail!("the agent exited during the measurement");
        }
        res.add("agent_idle_rss", rss as f64 / 1024.0);
        res.add(
            "agent_idle_cpu",
            ticks as f64 * 1000.0 / b.clk_tck as f64 / minutes,
        );
        res.add("agent_idle_wakeups", wakes as f64 / minutes);
        res.note(
            "agent_idle_cpu",
            format!(
                "window {window:?} with a ping every {} s; CPU from /proc/<agent>/stat (1 tick = {} ms)",
                b.sizes.ping_secs,
                1000 / b.clk_tck.max(1)
            ),
        );
        child.start_kill()?;
        child.wait().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    server.stop().await?;
    outcome
}

/// Size of the shipped agent (`dist/stagely-agent-linux-x86_64`, from packaging/build.sh).
pub fn agent_binary(b: &Bench, res: &mut Results) {
    let path = &b.agent_dist;
    let Ok(meta) = std::fs::metadata(path) else {
        res.not_measured(
            "agent_binary",
            format!("{} is not built (run packaging/build.sh)", path.display()),
        );
        return;
    };
    if let Some(why) = agent_unusable(path) {
        res.not_measured("agent_binary", why);
        return;
    }
    let kind = std::process::Command::new("file")
        .arg("-b")
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if kind.contains("dynamically linked") {
        res.note(
            "agent_binary",
            format!("WARNING: {} is dynamically linked", path.display()),
        );
    }
    // A file size: one reading is the value of every run.
    res.add("agent_binary", meta.len() as f64 / 1_048_576.0);
    res.note("agent_binary", format!("{}: {kind}", path.display()));
}
