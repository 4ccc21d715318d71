//! Fixtures made through the real API: projects (with a few secrets, so every DEPLOY carries
//! decrypted values like a real one), one environment per simulated agent, and the agents' tokens,
//! saved to a JSON file the swarm children read.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::Http;

/// Environments per project (each environment gets one agent).
const ENVS_PER_PROJECT: usize = 100;
/// Secrets per project by default: a DEPLOY decrypts and carries these.
pub const SECRETS_PER_PROJECT: usize = 3;
/// Parallel API connections used to build the fixture.
const WORKERS: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixtureAgent {
    pub agent_id: i64,
    pub project_id: i64,
    pub environment_id: i64,
    pub environment: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fixture {
    pub admin_token: String,
    pub agents: Vec<FixtureAgent>,
    /// The first admin, made through the setup link: the browser that watches live logs.
    #[serde(default)]
    pub browser: Option<crate::live::Credentials>,
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Fixture> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("bad fixture {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Create `count` agents, each alone in its environment, through the API.
    pub async fn create(
        addr: SocketAddr,
        admin_token: &str,
        count: usize,
        secrets: usize,
    ) -> Result<Fixture> {
        let projects = count.div_ceil(ENVS_PER_PROJECT);
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let token = admin_token.to_owned();
            tasks.push(tokio::spawn(async move {
                let mut http = Http::new(addr, Some(&token));
                let mut out = Vec::new();
                for p in (w..projects).step_by(WORKERS) {
                    let envs = ENVS_PER_PROJECT.min(count - p * ENVS_PER_PROJECT);
                    out.extend(make_project(&mut http, p, envs, secrets).await?);
                }
                Ok::<_, anyhow::Error>(out)
            }));
        }
        let mut agents = Vec::with_capacity(count);
        for t in tasks {
            agents.extend(t.await??);
        }
        agents.sort_by_key(|a| a.agent_id);
        Ok(Fixture {
            admin_token: admin_token.to_owned(),
            agents,
            browser: None,
        })
    }
}

async fn make_project(http: &mut Http, p: usize, envs: usize, secrets: usize) -> Result<Vec<FixtureAgent>> {
    let project = http
        .post_ok(
            "/api/projects",
            &json!({"name": format!("bench-{p}"), "compose_path": "/srv/bench/compose.yaml", "pull": "never"}),
            201,
        )
        .await?;
    let project_id = project["id"].as_i64().context("project id")?;
    for s in 0..secrets {
        http.post_ok(
            &format!("/api/projects/{project_id}/secrets"),
            &json!({"key": format!("BENCH_SECRET_{s}"), "value": format!("bench-value-{p}-{s}-0123456789abcdef"),
                "scope": "global"}),
            201,
        )
        .await?;
    }
    let mut out = Vec::with_capacity(envs);
    for e in 0..envs {
        let name = format!("e{e}");
        let env = http
            .post_ok(
                &format!("/api/projects/{project_id}/environments"),
                &json!({"name": name}),
                201,
            )
            .await?;
        let environment_id = env["id"].as_i64().context("environment id")?;
        let agent = http
            .post_ok(
                &format!("/api/environments/{environment_id}/agents"),
                &json!({"name": format!("sim-{p}-{e}")}),
                201,
            )
            .await?;
        out.push(FixtureAgent {
            agent_id: agent["id"].as_i64().context("agent id")?,
            project_id,
            environment_id,
            environment: name,
            token: agent["token"].as_str().context("agent token")?.to_owned(),
        });
    }
    Ok(out)
}
