//! Two replicas on one PostgreSQL and a real agent on the real engine (issue 17): the agent is
//! given both (`--server B --server A`) and connects to B. A deploy triggered on A runs on the
//! engine through B, with its secret in the container and compose's output read through A. Then
//! B is SIGKILLed in the middle of a slow deploy: the agent moves to A, and the deployment ends
//! explained (the agent finishes it and reports to A, its log whole); the next deploy runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, file_contains, wait_for};
use crate::engine_support::{git_repo, sh, take_down};
use crate::prereq;
use crate::replica_support::Replicas;

const CANARY: &str = "replica-canary-7f3e9a21";

/// Slow enough to kill a replica in the middle: the healthcheck passes after ~6 s.
const SLOW: &str = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo web starting; sleep 6; touch /tmp/ready; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 60
"#;

/// Takes the stack down and the runtime dir away, whatever the test's outcome.
struct Cleanup {
    compose_project: String,
    runtime: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        take_down(&self.compose_project, &self.runtime);
    }
}

/// The replica's "agent connected" events (its log also holds the migrations' SQL, whose
/// comments may say the same words).
fn connections(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("agents::api::socket") && l.contains("agent connected"))
        .count()
}

fn web_env(compose_project: &str) -> String {
    let id = sh(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={compose_project}"),
        "--filter",
        "label=com.docker.compose.service=web",
    ]));
    let id = id.trim();
    assert!(!id.is_empty(), "no running web container");
    sh(Command::new("docker").args(["exec", id, "cat", "/proc/1/environ"])).replace('\0', "\n")
}

async fn deploy(api: &Api, pid: i64) -> i64 {
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    body["deployment_id"].as_i64().unwrap()
}

async fn log_text(api: &Api, id: i64) -> String {
    let (status, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
    assert_eq!(status, 200, "{logs}");
    logs.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_on_b_deploys_what_a_triggers_and_moves_to_a_when_b_is_killed() {
    if !prereq::docker() {
        return;
    }
    let env = [("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS", "30")];
    let Some(mut r) = Replicas::start("engine", &env).await else {
        return;
    };
    let (a, b) = (r.api("a"), r.api("b"));
    let root = r.dir.path().to_owned();
    let repo = git_repo(&root.join("repo"), SLOW);
    let name = format!("replicas-engine-{}", std::process::id());
    let p = a
        .ok(
            "/api/projects",
            json!({"name": name, "repo_url": repo, "compose_path": "compose.yaml", "pull": "never"}),
            201,
        )
        .await;
    let pid = p["id"].as_i64().unwrap();
    let e = a
        .ok(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": "staging"}),
            201,
        )
        .await;
    let cleanup = Cleanup {
        compose_project: e["compose_project"].as_str().unwrap().to_owned(),
        runtime: PathBuf::from("/dev/shm").join(format!("stagely-test-{}-replicas", std::process::id())),
    };
    a.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "CANARY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = a.agent(e["id"].as_i64().unwrap(), "engine").await;
    let token_file = root.join("agent.token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(&cleanup.runtime).unwrap();
    let agent_log = root.join("agent.log");
    let mut agent = tokio::process::Command::new(crate::bins::agent())
        .args(["run", "--server", &b.url, "--server", &a.url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(root.join("work"))
        .arg("--runtime-dir")
        .arg(&cleanup.runtime)
        .args(["--verify-wait-secs", "1"])
        .env("STAGELY_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&agent_log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    a.wait_online(agent_id).await;
    let (log_a, log_b) = (r.log("a"), r.log("b"));
    assert_eq!(
        connections(&log_b),
        1,
        "the agent connects to the first --server, B"
    );
    assert_eq!(connections(&log_a), 0, "and not to A");

    // 1. Triggered on A, run by the agent on B, read through A.
    let first = deploy(&a, pid).await;
    let done = a.wait_finished(first, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert!(web_env(&cleanup.compose_project).contains(&format!("CANARY={CANARY}")));
    let text = log_text(&a, first).await;
    assert!(text.contains("web"), "compose's output through A: {text}");
    assert!(!text.contains(CANARY), "the stored log is masked");

    // 2. B dies in the middle of the next deploy.
    let second = deploy(&a, pid).await;
    wait_for(
        "the second deploy running with output stored",
        Duration::from_secs(60),
        || {
            let a = a.clone();
            async move {
                let (_, d) = a.get(&format!("/api/deployments/{second}")).await;
                let (_, logs) = a.get(&format!("/api/deployments/{second}/logs")).await;
                (d["status"] == "running" && logs.as_array().is_some_and(|l| !l.is_empty())).then_some(())
            }
        },
    )
    .await;
    r.b.take().unwrap().kill().await;
    wait_for("the agent reconnected to A", Duration::from_secs(60), || {
        let log_a = log_a.clone();
        async move { (connections(&log_a) >= 1).then_some(()) }
    })
    .await;
    let done: Value = a.wait_finished(second, Duration::from_secs(120)).await;
    assert_eq!(
        done["status"], "success",
        "the agent finished the deploy and reported to A: {done}"
    );
    let text = log_text(&a, second).await;
    assert!(
        !text.contains("ends early"),
        "the lines sent while B died were sent again to A: {text}"
    );

    // 3. The agent stays on A: the next deploy runs there.
    let third = deploy(&a, pid).await;
    let done = a.wait_finished(third, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(connections(&log_a), 1, "one connection to A, kept");

    agent.kill().await.unwrap();
    r.a.take().unwrap().terminate().await;
    for log in [&log_a, &log_b, &agent_log] {
        assert!(!file_contains(log, CANARY), "the canary in {}", log.display());
    }
    drop(cleanup);
}
