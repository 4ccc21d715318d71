//! The agent given several servers (issue 17): a real `stagely-agent run` with two `--server`s
//! and real `stagely serve` processes. The first server is a closed port, so the agent fails
//! over to the second; that one is stopped and started again on the first one's address (same
//! data dir, as a second replica would be), and the agent finds it there; a deploy then reaches
//! the agent through that connection and its result comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::common::{Api, ServerProcess, admin_token, file_contains, wait_for};

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn connected_to(log: &Path, port: u16) -> bool {
    file_contains(log, &format!("connected server=ws://127.0.0.1:{port}/ws/agent"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_to_the_live_server_and_back_to_the_first_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let first = closed_port();
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let second = server.port();
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("failover", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "a").await;

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent_log = dir.path().join("agent.log");
    let mut agent = tokio::process::Command::new(crate::bins::agent())
        .arg("run")
        .args(["--server", &format!("http://127.0.0.1:{first}")])
        .args(["--server", &server.url])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        // A short backoff cap: the test waits through a few failed attempts.
        .args(["--reconnect-max-secs", "2"])
        .env("STAGELY_AGENT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    api.wait_online(agent_id).await;
    let text = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        text.contains(&format!("server=ws://127.0.0.1:{first}/ws/agent"))
            && text.contains("cannot connect to the server"),
        "the first attempt went to the closed port: {text}"
    );
    assert!(connected_to(&agent_log, second), "{text}");
    assert!(!connected_to(&agent_log, first), "{text}");
    let pinned = || std::fs::read_to_string(dir.path().join("work/appliance-key.pin")).unwrap();
    let pin = pinned();

    // The live one moves to the first address (a replica there, the same data).
    server.terminate().await;
    let server = ServerProcess::spawn(&data, &format!("127.0.0.1:{first}"), &[], &log).await;
    let api = Api::new(&server.url, &api.token);
    wait_for(
        "the agent connected to the first address",
        Duration::from_secs(60),
        || {
            let found = connected_to(&agent_log, first);
            async move { found.then_some(()) }
        },
    )
    .await;
    api.wait_online(agent_id).await;

    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let d = api
        .wait_finished(body["deployment_id"].as_i64().unwrap(), Duration::from_secs(60))
        .await;
    // It ran on the agent (and failed there: the compose file is not on this machine), so the
    // DEPLOY, its signature check against the one pin, and the STATUS all went over the new link.
    let error = d["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not exist") && !error.contains("refused"),
        "{d}"
    );
    assert_eq!(
        pinned(),
        pin,
        "the same pin for every server (they share the signing key)"
    );

    agent.kill().await.unwrap();
    server.terminate().await;
}

#[tokio::test]
async fn the_server_list_from_the_environment_is_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "agt_x\n").unwrap();
    let run = |servers: &str| {
        std::process::Command::new(crate::bins::agent())
            .arg("run")
            .arg("--token-file")
            .arg(&token_file)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .env("STAGELY_AGENT_SERVER", servers)
            .output()
            .unwrap()
    };
    let out = run("http://127.0.0.1:1,http://127.0.0.1:1/");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is given twice"),
        "{stderr}"
    );
    let out = run("http://127.0.0.1:1,127.0.0.1:2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("\"127.0.0.1:2\""),
        "the bad one is named: {stderr}"
    );
    assert!(!dir.path().join("work").exists(), "nothing was created");
}
