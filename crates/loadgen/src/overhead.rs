//! Deploy overhead on a real engine: `POST /api/deploy` sent → the real agent starts
//! `docker compose up`. The agent's compose command is pointed at a shim that writes the wall
//! clock (ns) when it is called with `up`, then runs what the agent would have detected itself
//! (the compose plugin binary, directly); the POST's wall
//! clock is taken just before its bytes are written. No repository (no git fetch), `pull = never`.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::bench::Bench;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::Results;
use crate::server::admin_token;

/// The image the compose project runs: built by scripts/test-deps.sh from Debian's busybox-static.
const IMAGE: &str = "stagely-test-busybox:latest";

/// Why this metric cannot run here, if it cannot.
pub fn unavailable(b: &Bench) -> Option<String> {
    if let Some(why) = crate::footprint::agent_unusable(&b.agent) {
        return Some(why);
    }
    let ok = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&["compose", "version"]) {
        return Some("no Docker engine with Compose v2 here".into());
    }
    if !ok(&["image", "inspect", IMAGE]) {
        return Some(format!("image {IMAGE} missing (scripts/test-deps.sh builds it)"));
    }
    None
}

/// What the agent runs without a configured command (the plugin binary itself where the docker
/// CLI would find it), as the shim's `exec` target, single-quoted for sh.
async fn detected_compose() -> String {
    stagely_agent::compose::Compose::detect()
        .await
        .argv()
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn run(b: &Bench, res: &mut Results, run: usize) -> Result<()> {
    let dir = b.work.join(format!("overhead-{run}"));
    std::fs::create_dir_all(&dir)?;
    let stamp = dir.join("up.stamp");
    let shim = dir.join("compose-shim");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = up ] && date +%s%N >> '{}' && break; done\nexec {} \"$@\"\n",
            stamp.display(),
            detected_compose().await
        ),
    )?;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    let compose = dir.join("compose.yaml");
    std::fs::write(
        &compose,
        format!("services:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n"),
    )?;

    let spec = b.fresh_server(&format!("overhead-{run}-data"))?;
    let server = spec.start().await?;
    server.wait_ready().await?;
    let token = admin_token(&b.stagely, &spec.data_dir)?;
    let mut http = Http::new(server.addr()?, Some(&token));
    let name = format!("benchoverhead{run}");
    let outcome = async {
        let p = http
            .post_ok(
                "/api/projects",
                &json!({"name": name, "compose_path": compose.display().to_string(), "pull": "never"}),
                201,
            )
            .await?;
        let pid = p["id"].as_i64().context("project id")?;
        let e = http
            .post_ok(
                &format!("/api/projects/{pid}/environments"),
                &json!({"name": "bench"}),
                201,
            )
            .await?;
        let eid = e["id"].as_i64().context("environment id")?;
        let a = http
            .post_ok(
                &format!("/api/environments/{eid}/agents"),
                &json!({"name": "real"}),
                201,
            )
            .await?;
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, a["token"].as_str().context("agent token")?)?;
        let mut agent = tokio::process::Command::new(&b.agent)
            .args(["run", "--server", &server.url, "--token-file"])
            .arg(&token_file)
            .arg("--work-dir")
            .arg(dir.join("work"))
            .env("STAGELY_AGENT_COMPOSE_COMMAND", shim.display().to_string())
            .env("STAGELY_AGENT_VERIFY_WAIT_SECS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("agent.log"))?))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start stagely-agent")?;
        wait_online(&mut http, 1, Duration::from_secs(30)).await?;
        let posted = wall_ns();
        let answer = http
            .post_ok(
                &format!("/api/deploy/{pid}"),
                &json!({"environment": "bench"}),
                202,
            )
            .await?;
        let id = answer["deployment_id"].as_i64().context("deployment_id")?;
        let up =
            crate::server::poll_until("the agent to run compose up", Duration::from_secs(60), || async {
                std::fs::read_to_string(&stamp)
                    .ok()
                    .and_then(|s| s.lines().next()?.trim().parse::<u128>().ok())
            })
            .await?;
        let overhead_ms = up.saturating_sub(posted) as f64 / 1e6;
        // Let the deploy finish so the engine is left clean for the next run.
        crate::server::poll_until("the deployment to finish", Duration::from_secs(120), || {
            let mut h = Http::new(http_addr(&server.url), Some(&token));
            async move {
                let d = h.get(&format!("/api/deployments/{id}")).await.ok()?;
                matches!(d.body["status"].as_str(), Some("success" | "failed")).then_some(())
            }
        })
        .await?;
        res.add("deploy_overhead", overhead_ms);
        res.note(
            "deploy_overhead",
            "real agent + Docker engine, no repository, pull = never; wall clock of the POST vs the \
             compose shim's `date +%s%N` at `up`",
        );
        agent.start_kill()?;
        agent.wait().await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Remove what the deploy started, whatever happened.
    let _ = std::process::Command::new("docker")
        .args(["compose", "-p", &format!("{name}-bench"), "-f"])
        .arg(&compose)
        .args(["down", "--timeout", "0", "--remove-orphans"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    server.stop().await?;
    if outcome.is_ok() && !stamp.exists() {
        bail!("compose up was never run");
    }
    outcome
}

fn http_addr(url: &str) -> std::net::SocketAddr {
    crate::http::addr_of(url).unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}
