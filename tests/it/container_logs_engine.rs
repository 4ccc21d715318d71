//! Container logs end to end (issue 15): `stagely serve` and `stagely-agent run` as real
//! processes, a real container printing a canary secret and a line every 0.5 s. The GET shows
//! the canary masked and it is in no response, log or DB; tail limits and hostile service names
//! are refused with nothing run; following over the WebSocket gets a line printed after it
//! opened; closing the socket ends the agent's `docker compose logs`; a viewer and no token are
//! refused.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, cli_token, wait_for};
use crate::engine_support::{Stack, compose_processes, sh};
use crate::prereq;

const CANARY: &str = "clogs-canary-0e3b55d1";

const COMPOSE: &str = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo db=$$DB_PASSWORD; i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.5; done"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_masked_limited_followed_and_stopped_with_the_viewer() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("clogs", COMPOSE, "staging").await;
    stack
        .secret(json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}))
        .await;
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    let pid = stack.project_id().await;
    let (_, p) = stack.api.get(&format!("/api/projects/{pid}")).await;
    let env = p["environments"][0]["id"].as_i64().unwrap();
    let logs = format!("/api/environments/{env}/services/web/logs");
    let project = stack.compose_project();

    // The tail: the canary line is there, masked.
    let body = wait_for("the canary line in the log", Duration::from_secs(30), || {
        let (api, logs) = (stack.api.clone(), logs.clone());
        async move {
            let (status, body) = api.get(&format!("{logs}?tail=5000")).await;
            assert_eq!(status, 200, "{body}");
            let has = body["lines"]
                .as_array()?
                .iter()
                .any(|l| l["line"].as_str().is_some_and(|s| s.starts_with("db=")));
            has.then_some(body)
        }
    })
    .await;
    assert!(!body.to_string().contains(CANARY), "{body}");
    let lines = body["lines"].as_array().unwrap();
    let db = lines
        .iter()
        .find(|l| l["line"].as_str().unwrap().starts_with("db="))
        .unwrap();
    assert_eq!(db["container"], "web-1", "{db}");
    assert!(db["at"].as_str().unwrap().starts_with("20"), "{db}");
    let (status, body) = stack.api.get(&format!("{logs}?tail=3")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lines"].as_array().unwrap().len(), 3, "{body}");

    // Limits and hostile names: 400, and no compose logs runs.
    for bad in ["0", "5001", "-1", "x"] {
        let (status, body) = stack.api.get(&format!("{logs}?tail={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    for bad in ["web;id", "..%2Fx", "--help"] {
        let (status, body) = stack
            .api
            .get(&format!("/api/environments/{env}/services/{bad}/logs"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(compose_processes(&project, Some("logs")).is_empty());
    }
    // A viewer (no member rights) and no token at all are refused.
    let viewer = Api::new(
        &stack.api.url,
        &cli_token(&stack.root.join("data"), "vic", "viewer"),
    );
    assert_eq!(viewer.get(&logs).await.0, 403);
    assert_eq!(Api::new(&stack.api.url, "nope").get(&logs).await.0, 401);

    // Follow over the WebSocket: a line printed after it opened comes through.
    let ws_url = format!(
        "{}/ws/environments/{env}/services/web/logs?tail=5",
        stack.api.url.replacen("http", "ws", 1)
    );
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", stack.api.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    wait_for("compose logs --follow runs", Duration::from_secs(20), || async {
        (!compose_processes(&project, Some("--follow")).is_empty()).then_some(())
    })
    .await;
    let marker = format!("followed-{}", std::process::id());
    let cid = stack.container_id("web").unwrap();
    sh(Command::new("docker").args(["exec", &cid, "sh", "-c", &format!("echo {marker} > /proc/1/fd/1")]));
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                seen.push_str(&t);
                if t.contains(&marker) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "the followed line: {seen:.2000}");
    assert!(!seen.contains(CANARY));
    // The viewer leaves: the agent's compose logs ends.
    drop(ws);
    wait_for("no compose logs left", Duration::from_secs(20), || async {
        compose_processes(&project, Some("logs")).is_empty().then_some(())
    })
    .await;
    // The canary is in no log and not in the DB.
    assert!(!stack.logs_contain(CANARY), "a log holds the canary");
    assert!(!crate::common::store_contains(&stack.root.join("data"), CANARY));
    assert!(
        !crate::common::store_contains(&stack.root.join("data"), &marker),
        "no line stored"
    );
    let audit: i64 = crate::common::open_db(&stack.root.join("data"))
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'service.logs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(audit >= 3, "{audit}");
}
