//! Container logs (issue 15) against protocol-level agents on a real socket, no engine: the
//! LOGS frame the appliance sends (the watched project, the service, the tail, secrets sealed to
//! the agent for this request only); its lines masked again on the appliance; an answer from
//! another agent for the request id ignored; an agent without `operate` → 409; none online →
//! 409; a failing agent → 502 with its error; a slow one → 504; tail and service checked before
//! anything is sent; `service.logs` audited without line content.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer};

const CANARY: &str = "logs-canary-5c1e9a77";

async fn connect(api: &Api, token: &str, capabilities: &[&str]) -> (TestAgent, String) {
    let mut agent = TestAgent::raw(&api.url, token).await;
    let recipient = agent.identity.recipient().to_owned();
    agent
        .send(
            json!({"type": "HELLO", "protocol": 1, "agent_version": "test", "hostname": "test-host",
            "docker_version": "0", "compose_version": "0", "recipient": recipient,
            "capabilities": capabilities}),
        )
        .await;
    let watch = agent.recv().await;
    assert_eq!(watch["type"], "WATCH", "{watch}");
    (agent, watch["project"].as_str().unwrap().to_owned())
}

fn audited(server: &TestServer) -> Vec<String> {
    let db = crate::common::open_db(&server.data_dir());
    db.rows(
        "SELECT actor || ' ' || detail FROM audit_log WHERE action = 'service.logs' ORDER BY id",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// The next frame that is not RUNTIME-related noise, within `t`.
async fn next_logs(agent: &mut TestAgent, t: Duration) -> Option<Value> {
    agent.recv_within(t).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_masked_on_both_ends_and_only_the_asked_agent_is_heard() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, envs) = api.project("shop", &["staging", "prod"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let env = envs[0];
    let logs = format!("/api/environments/{env}/services/web/logs");

    // Nothing online yet: 409 naming the environment.
    let (status, body) = api.get(&logs).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no agent of staging is online"),
        "{body}"
    );

    // An agent that does not offer `operate`: 409 saying to upgrade it.
    let (old_id, old_token) = api.agent(env, "old-1").await;
    let (mut old, _) = connect(&api, &old_token, &["releases", "runtime"]).await;
    api.wait_online(old_id).await;
    let (status, body) = api.get(&logs).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("upgrade"),
        "{body}"
    );
    assert!(
        next_logs(&mut old, Duration::from_millis(300)).await.is_none(),
        "nothing sent to it"
    );
    drop(old);

    let (agent_id, token) = api.agent(env, "staging-1").await;
    let (mut agent, project) = connect(&api, &token, &["releases", "runtime", "operate"]).await;
    api.wait_online(agent_id).await;
    // Another environment's agent, to forge answers.
    let (other_id, other_token) = api.agent(envs[1], "prod-1").await;
    let (mut other, _) = connect(&api, &other_token, &["releases", "runtime", "operate"]).await;
    api.wait_online(other_id).await;

    // Hostile service names and tails: 400, and nothing reaches the agent.
    for bad in ["web;id", "..%2Fx", "--help"] {
        let (status, body) = api
            .get(&format!("/api/environments/{env}/services/{bad}/logs"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "service", "{body}");
    }
    for bad in ["0", "-3", "5001", "lots"] {
        let (status, body) = api.get(&format!("{logs}?tail={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("5000"),
            "{body}"
        );
    }
    let (status, _) = api.get("/api/environments/999999/services/web/logs").await;
    assert_eq!(status, 404);
    assert!(
        next_logs(&mut agent, Duration::from_millis(300)).await.is_none(),
        "nothing was sent"
    );

    let asked = tokio::spawn({
        let api = api.clone();
        let logs = logs.clone();
        async move { api.get(&format!("{logs}?tail=20")).await }
    });
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "LOGS", "{frame}");
    assert_eq!(frame["project"], project.as_str());
    assert_eq!(frame["service"], "web");
    assert_eq!(frame["tail"], 20);
    assert_eq!(frame["follow"], false);
    let sealed = frame["sealed_secrets"].as_str().unwrap();
    assert!(!frame.to_string().contains(CANARY), "no value in clear");
    let request_id = frame["request_id"].as_u64().unwrap();
    let secrets = agent.identity.open_logs(sealed, request_id, &project).unwrap();
    assert!(secrets.iter().any(|s| s.value == CANARY));
    assert!(
        agent
            .identity
            .open_logs(sealed, request_id + 1, &project)
            .is_err(),
        "bound to the request"
    );

    // Another agent answering that request id is not heard.
    other
        .send(json!({"type": "CONTAINER_LOG", "request_id": request_id,
            "lines": [{"container": "web-1", "line": "forged line"}]}))
        .await;
    other
        .send(json!({"type": "CONTAINER_LOG_END", "request_id": request_id, "reason": "done"}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!asked.is_finished(), "the forged end did not answer the request");
    // The agent "forgets" to mask: the appliance masks again.
    agent
        .send(json!({"type": "CONTAINER_LOG", "request_id": request_id,
            "lines": [{"container": "web-1", "at": "2026-01-02T03:04:05.000000000Z", "line": format!("db={CANARY}")},
                      {"container": "web-1", "line": "second-line-of-web-1"}], "dropped": 3}))
        .await;
    agent
        .send(json!({"type": "CONTAINER_LOG_END", "request_id": request_id, "reason": "done"}))
        .await;
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["environment_id"], env);
    assert_eq!(body["service"], "web");
    assert_eq!(body["dropped"], 3);
    let lines = body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(lines[0]["container"], "web-1");
    assert_eq!(lines[0]["at"], "2026-01-02T03:04:05.000000000Z");
    assert!(lines[0]["line"].as_str().unwrap().starts_with("db="), "{body}");
    assert!(!body.to_string().contains(CANARY), "{body}");
    assert!(!body.to_string().contains("forged"), "{body}");

    // The agent fails it: 502 with its (masked) error.
    let asked = tokio::spawn({
        let (api, logs) = (api.clone(), logs.clone());
        async move { api.get(&logs).await }
    });
    let frame = agent.recv().await;
    assert_eq!(frame["tail"], 100, "the default tail");
    let request_id = frame["request_id"].as_u64().unwrap();
    agent
        .send(
            json!({"type": "CONTAINER_LOG_END", "request_id": request_id, "reason": "failed",
            "error": format!("compose said {CANARY}")}),
        )
        .await;
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("compose said"),
        "{body}"
    );
    assert!(!body.to_string().contains(CANARY), "{body}");

    // Audited: who viewed which service, no line content.
    let audit = audited(&server);
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit[0].contains("shop/staging") && audit[0].contains("web"),
        "{audit:?}"
    );
    assert!(
        audit.iter().all(|a| !a.contains("db=") && !a.contains(CANARY)),
        "{audit:?}"
    );
    // Nothing of the lines is stored anywhere in the database (a marker no schema holds: the
    // WAL and a dump hold column names such as second_connection_at).
    let db = crate::common::store::store_bytes(&server.data_dir());
    assert!(
        !String::from_utf8_lossy(&db).contains("second-line-of-web-1"),
        "no line in the DB file"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_is_a_504_and_a_gone_one_a_502() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (_, envs) = api.project("shop", &["staging"]).await;
    let env = envs[0];
    let (agent_id, token) = api.agent(env, "staging-1").await;
    let (mut agent, _) = connect(&api, &token, &["releases", "runtime", "operate"]).await;
    api.wait_online(agent_id).await;
    let logs = format!("/api/environments/{env}/services/web/logs");

    let asked = tokio::spawn({
        let (api, logs) = (api.clone(), logs.clone());
        async move { api.get(&logs).await }
    });
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "LOGS");
    // Lines, but never the end.
    agent
        .send(json!({"type": "CONTAINER_LOG", "request_id": frame["request_id"],
            "lines": [{"container": "web-1", "line": "slow"}]}))
        .await;
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{body}"
    );
    // The appliance gave up: it told the agent to stop.
    let stop = agent.recv().await;
    assert_eq!(
        stop,
        json!({"type": "LOGS_STOP", "request_id": frame["request_id"]})
    );

    // The agent goes away mid-request: 502.
    let asked = tokio::spawn({
        let (api, logs) = (api.clone(), logs.clone());
        async move { api.get(&logs).await }
    });
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "LOGS");
    drop(agent);
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("went away"),
        "{body}"
    );
    server.stop().await;
}
