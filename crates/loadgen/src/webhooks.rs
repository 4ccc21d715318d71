//! Push to deploy: a GitHub-signed push webhook → the DEPLOY frame at the agent (p50/p99), and a
//! burst of pushes to one environment (how many deployments ran, and whether the last is the
//! newest commit). The simulated agent runs in this process, so "request written" and "DEPLOY
//! read" are on one clock.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::agent::Event;
use crate::bench::Bench;
use crate::deploys::LocalAgents;
use crate::fleet::wait_online;
use crate::http::Http;
use crate::report::{Results, quantile};
use crate::server::admin_token;
use crate::setup::FixtureAgent;

/// The sizes of this group in one mode.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSize {
    /// Sequential pushes timed to their DEPLOY.
    pub latency_pushes: usize,
    /// Pushes of the burst, sent evenly over `burst_window`.
    pub burst_pushes: usize,
    pub burst_window: Duration,
    /// How long each burst deploy "runs" at the agent (a real `up` takes seconds).
    pub burst_hold: Duration,
}

impl WebhookSize {
    pub fn quick() -> WebhookSize {
        WebhookSize {
            latency_pushes: 20,
            burst_pushes: 20,
            burst_window: Duration::from_millis(500),
            burst_hold: Duration::from_millis(500),
        }
    }

    pub fn full() -> WebhookSize {
        WebhookSize {
            latency_pushes: 1_000,
            burst_pushes: 100,
            burst_window: Duration::from_secs(1),
            burst_hold: Duration::from_secs(2),
        }
    }
}

/// One project with one environment that deploys on push, its agent, and the webhook secret.
struct Target {
    project_id: i64,
    agent: FixtureAgent,
    secret: String,
}

async fn make_target(http: &mut Http, name: &str) -> Result<Target> {
    let project = http
        .post_ok(
            "/api/projects",
            &json!({"name": name, "compose_path": "/srv/bench/compose.yaml", "pull": "never", "git_ref": "main"}),
            201,
        )
        .await?;
    let project_id = project["id"].as_i64().context("project id")?;
    http.post_ok(
        &format!("/api/projects/{project_id}/secrets"),
        &json!({"key": "BENCH_SECRET", "value": "bench-value-0123456789abcdef", "scope": "global"}),
        201,
    )
    .await?;
    let env = http
        .post_ok(
            &format!("/api/projects/{project_id}/environments"),
            &json!({"name": "prod"}),
            201,
        )
        .await?;
    let environment_id = env["id"].as_i64().context("environment id")?;
    let patched = http
        .request(
            "PATCH",
            &format!("/api/environments/{environment_id}"),
            Some(&json!({"deploy_on_push": true})),
        )
        .await?;
    if patched.status != 200 {
        bail!("PATCH deploy_on_push: {} {}", patched.status, patched.body);
    }
    let hook = http
        .post(&format!("/api/projects/{project_id}/webhook"), &json!({}))
        .await?;
    if !matches!(hook.status, 200 | 201) {
        bail!("POST webhook: {} {}", hook.status, hook.body);
    }
    let secret = hook.body["secret"].as_str().context("webhook secret")?.to_owned();
    let agent = http
        .post_ok(
            &format!("/api/environments/{environment_id}/agents"),
            &json!({"name": "sim-hook"}),
            201,
        )
        .await?;
    Ok(Target {
        project_id,
        agent: FixtureAgent {
            agent_id: agent["id"].as_i64().context("agent id")?,
            project_id,
            environment_id,
            environment: "prod".into(),
            token: agent["token"].as_str().context("agent token")?.to_owned(),
        },
        secret,
    })
}

/// A push of `sha` to `main`, signed exactly as GitHub signs it.
async fn push(http: &mut Http, t: &Target, n: usize, sha: &str) -> Result<crate::http::Answer> {
    let body = json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": sha, "deleted": false,
        "pusher": {"name": "bench"}, "repository": {"full_name": "bench/app"},
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(t.secret.as_bytes()).context("hmac key")?;
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex(&mac.finalize().into_bytes()));
    let delivery = format!("bench-{n}-{sha}");
    http.request_raw(
        "POST",
        &format!("/api/hooks/github/{}", t.project_id),
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body.as_bytes(),
    )
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A commit id unique to this push (never all zeros: that means a deleted branch).
fn sha(n: usize) -> String {
    format!("{:040x}", n + 1)
}

pub async fn run(b: &Bench, res: &mut Results) -> Result<()> {
    let size = b.webhooks;
    let spec = b.fresh_server("webhooks")?;
    let server = spec.start().await?;
    server.wait_ready().await?;
    let addr = server.addr()?;
    let token = admin_token(&b.stagely, &spec.data_dir)?;
    let mut http = Http::new(addr, Some(&token));
    let latency = make_target(&mut http, "hook-latency").await?;
    let burst = make_target(&mut http, "hook-burst").await?;

    // Latency: one push at a time, each timed from its request's first byte to its DEPLOY.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let fast = LocalAgents::start(addr, std::slice::from_ref(&latency.agent), |_| Some(tx.clone()));
    drop(tx);
    let mut hooks = Http::new(addr, None);
    let outcome = async {
        fast.wait_connected(1, Duration::from_secs(60)).await?;
        wait_online(&mut http, 1, Duration::from_secs(60)).await?;
        let mut lat = Vec::with_capacity(size.latency_pushes);
        for n in 0..size.latency_pushes {
            let answer = push(&mut hooks, &latency, n, &sha(n)).await?;
            if answer.status != 202 {
                bail!("push {n}: {} {}", answer.status, answer.body);
            }
            let id = answer.body["deployments"][0]["deployment_id"]
                .as_i64()
                .context("the push answered no deployment")?;
            // Its DEPLOY, then the ACK of its STATUS: the environment is idle for the next push.
            let mut deploy_at = None;
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                match event {
                    Event::Deploy { deployment_id, at } if deployment_id == id => deploy_at = Some(at),
                    Event::Ack { deployment_id } if deployment_id == id => break,
                    _ => {}
                }
            }
            let at = deploy_at.with_context(|| format!("push {n}: no DEPLOY for deployment {id}"))?;
            lat.push(at.duration_since(answer.sent_at).as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        res.add("webhook_deploy_p50", quantile(&lat, 0.5).unwrap_or(f64::NAN));
        res.add("webhook_deploy_p99", quantile(&lat, 0.99).unwrap_or(f64::NAN));
        res.note(
            "webhook_deploy_p99",
            format!(
                "{} sequential GitHub-signed pushes, each timed from the request's first byte to the DEPLOY \
                 frame read by a simulated agent (signature checked, secrets decrypted and sealed)",
                lat.len()
            ),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    fast.stop().await;
    outcome?;

    // Burst: pushes spread evenly over the window at one environment whose deploys take a while.
    let holding = LocalAgents::start_holding(
        addr,
        std::slice::from_ref(&burst.agent),
        |_| None,
        size.burst_hold,
    );
    let outcome = async {
        holding.wait_connected(1, Duration::from_secs(60)).await?;
        wait_online(&mut http, 1, Duration::from_secs(60)).await?;
        let gap = size.burst_window / u32::try_from(size.burst_pushes.max(1)).unwrap_or(1);
        let mut tick = tokio::time::interval(gap);
        let mut refused = 0;
        for n in 0..size.burst_pushes {
            tick.tick().await;
            let answer = push(&mut hooks, &burst, n, &sha(1_000_000 + n)).await?;
            if answer.status != 202 {
                refused += 1;
            }
        }
        let newest = sha(1_000_000 + size.burst_pushes - 1);
        // Wait until nothing of the environment is unfinished, then count what ran.
        let path = format!(
            "/api/deployments?environment_id={}&limit=500",
            burst.agent.environment_id
        );
        let deadline = Instant::now() + size.burst_hold * 4 + Duration::from_secs(60);
        let list = loop {
            let list = http.get(&path).await?.body;
            let unfinished = list.as_array().map_or(0, |l| {
                l.iter()
                    .filter(|d| matches!(d["status"].as_str(), Some("waiting" | "queued" | "running")))
                    .count()
            });
            if unfinished == 0 {
                break list;
            }
            if Instant::now() > deadline {
                bail!("burst deployments still unfinished after {:?}", size.burst_hold * 4);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let all = list.as_array().cloned().unwrap_or_default();
        let ran: Vec<&Value> = all.iter().filter(|d| d["status"] == "success").collect();
        let superseded = all.iter().filter(|d| d["status"] == "superseded").count();
        // The list is newest first: the last deployment that ran is the first of `ran`.
        let last_is_newest = ran.first().is_some_and(|d| d["commit"] == newest.as_str());
        res.add("webhook_burst_ran", ran.len() as f64);
        res.add("webhook_burst_newest", if last_is_newest { 1.0 } else { 0.0 });
        res.note(
            "webhook_burst_ran",
            format!(
                "{} pushes in {:?} to one environment whose deploys take {:?}: {} ran, {superseded} superseded, \
                 {refused} refused, {} recorded",
                size.burst_pushes,
                size.burst_window,
                size.burst_hold,
                ran.len(),
                all.len()
            ),
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    holding.stop().await;
    server.stop().await?;
    outcome
}
