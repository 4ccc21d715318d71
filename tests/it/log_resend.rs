//! Nothing lost under kill -9 (issue 12): a real `stagely serve` is SIGKILLed while a real
//! `stagely-agent run` streams a deployment's lines, and restarted on the same data dir. The
//! agent keeps every line until the appliance acknowledges it (LOG_ACK) and resends the rest
//! after reconnecting, before its STATUS; the appliance drops what it already has by seq. The
//! deployment's stored log is then contiguous from 0 to its last line, every line exactly once.
//!
//! The lines come from a compose wrapper (`--compose-command`) that prints numbered lines before
//! handing `up` to the real `docker compose`, so this needs the engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, ServerProcess, admin_token, file_contains, wait_for};
use crate::prereq;

const TICKS: u32 = 600;

/// `docker compose`, but `up` first prints `tick 1` … `tick TICKS` over a few seconds.
fn compose_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("compose-ticking");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = up ]; then\n    i=1\n    while [ $i -le {TICKS} ]; do\n      \
             echo \"tick $i\"\n      i=$((i+1))\n      sleep 0.01\n    done\n    break\n  fi\ndone\nexec docker compose \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Every stored line of a deployment, paging through the logs API: seq → line.
async fn stored_log(api: &Api, id: i64) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    let mut after = -1;
    loop {
        let (status, page) = api
            .get(&format!(
                "/api/deployments/{id}/logs?after_seq={after}&limit=1000"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let page = page.as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().unwrap();
        for l in page {
            let dup = out.insert(l["seq"].as_i64().unwrap(), l["line"].as_str().unwrap().to_owned());
            assert!(dup.is_none(), "a seq twice in the logs API");
        }
    }
    out
}

struct Cleanup {
    label: String,
    runtime: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=stagely.test={}", self.label),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_lines_stream_loses_none_and_stores_none_twice() {
    if !prereq::docker() {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let data = root.join("data");
    let label = format!("logresend-{}", std::process::id());
    let cleanup = Cleanup {
        label: label.clone(),
        runtime: PathBuf::from("/dev/shm").join(format!("stagely-test-{label}")),
    };
    // A long flush period: at the kill, seconds of lines are received but not yet committed.
    let server = ServerProcess::spawn(
        &data,
        "127.0.0.1:0",
        &[
            ("STAGELY_DEPLOYS__LOG_FLUSH_MS", "3000"),
            ("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS", "60"),
        ],
        &root.join("server.log"),
    )
    .await;
    let api = Api::new(&server.url, &admin_token(&data));
    let project_dir = root.join("project");
    std::fs::create_dir_all(&project_dir).unwrap();
    std::fs::write(
        project_dir.join("compose.yaml"),
        format!(
            "services:\n  web:\n    image: stagely-test-busybox:latest\n    command: [\"sleep\", \"3600\"]\n    \
             labels:\n      stagely.test: \"{label}\"\n"
        ),
    )
    .unwrap();
    let p = api
        .ok(
            "/api/projects",
            json!({"name": label, "compose_path": project_dir.join("compose.yaml"), "pull": "never"}),
            201,
        )
        .await;
    let pid = p["id"].as_i64().unwrap();
    let env = api
        .ok(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": "staging"}),
            201,
        )
        .await;
    let (agent_id, token) = api.agent(env["id"].as_i64().unwrap(), "a1").await;
    let token_file = root.join("agent.token");
    std::fs::write(&token_file, token).unwrap();
    std::fs::create_dir_all(&cleanup.runtime).unwrap();
    let agent_log = root.join("agent.log");
    let _agent = tokio::process::Command::new(crate::bins::agent())
        .args(["run", "--server", &server.url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(root.join("work"))
        .arg("--runtime-dir")
        .arg(&cleanup.runtime)
        .args(["--verify-wait-secs", "1", "--compose-command"])
        .arg(compose_wrapper(&root))
        .env("STAGELY_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&agent_log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    api.wait_online(agent_id).await;

    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    // The first batch of ticks is committed: the next one is seconds away, the ticks go on.
    wait_for("ticks stored", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let (_, page) = api.get(&format!("/api/deployments/{id}/logs?limit=1000")).await;
            page.as_array()?
                .iter()
                .any(|l| l["line"].as_str().is_some_and(|s| s.starts_with("tick ")))
                .then_some(())
        }
    })
    .await;
    // Well inside the next flush period: many lines are received but not committed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let port = server.port();
    server.kill().await;
    let before_restart = file_contains(&agent_log, "resent the log lines");
    let server = ServerProcess::spawn(
        &data,
        &format!("127.0.0.1:{port}"),
        &[("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS", "60")],
        &root.join("server.log"),
    )
    .await;
    let api = Api::new(&server.url, &admin_token(&data));
    let d: Value = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");

    let log = stored_log(&api, id).await;
    let last = *log.keys().last().unwrap();
    assert_eq!(
        log.keys().copied().collect::<Vec<_>>(),
        (0..=last).collect::<Vec<_>>(),
        "the stored log is contiguous from 0 to its last line"
    );
    for i in 1..=TICKS {
        let want = format!("tick {i}");
        let n = log.values().filter(|l| **l == want).count();
        assert_eq!(n, 1, "{want} stored {n} times");
    }
    assert!(
        log.values().last().unwrap().contains("all services are up"),
        "the log runs to the deployment's end: {:?}",
        log.values().last()
    );
    assert!(
        !before_restart,
        "nothing was resent before the appliance went away"
    );
    assert!(
        file_contains(&agent_log, "resent the log lines"),
        "the agent resent what the killed appliance had not committed: {}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );
    // Acknowledged (the STATUS, after every line): no spill file is left behind.
    let spill: Vec<PathBuf> = walk(&cleanup.runtime)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert!(spill.is_empty(), "{spill:?}");
    drop(cleanup);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
