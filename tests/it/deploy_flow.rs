//! The server half of the deploy sequence over a real WebSocket, with a protocol-level agent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestAgent, TestServer};

fn secret_keys(secrets: &Value) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = secrets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["value"].as_str().unwrap().to_owned(),
                s["scope"].as_str().unwrap().to_owned(),
                s["service"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn q(k: &str, v: &str, scope: &str, svc: &str) -> (String, String, String, String) {
    (k.into(), v.into(), scope.into(), svc.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_delivers_the_right_secrets_and_stores_logs_in_order() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging", "production"]).await;
    let secrets = format!("/api/projects/{pid}/secrets");
    for body in [
        json!({"key": "DB_HOST", "value": "db.internal", "scope": "global"}),
        json!({"key": "DB_HOST", "value": "staging-db", "scope": "global", "environment": "staging"}),
        json!({"key": "API_KEY", "value": "web-key", "scope": "service", "service": "web"}),
        json!({"key": "API_KEY", "value": "prod-web-key", "scope": "service", "service": "web", "environment": "production"}),
        json!({"key": "PROD_ONLY", "value": "p", "scope": "global", "environment": "production"}),
        json!({"key": "HARD", "value": "multi\nline $HOME \"q\" 'q' ünï 🚀", "scope": "service", "service": "worker"}),
        json!({"key": "EMPTY", "value": "", "scope": "global"}),
    ] {
        api.ok(&secrets, body, 201).await;
    }
    let (agent_id, token) = api.agent(envs[0], "staging-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();

    let deploy = agent.recv().await;
    assert_eq!(deploy["type"], "DEPLOY");
    assert_eq!(deploy["deployment_id"], id);
    assert_eq!(deploy["project"]["name"], "shop");
    assert_eq!(deploy["project"]["environment"], "staging");
    assert_eq!(deploy["project"]["compose_path"], "/srv/shop/compose.yaml");
    assert_eq!(deploy["project"]["pull"], "always");
    assert_eq!(
        secret_keys(&agent.secrets(&deploy)),
        vec![
            q("API_KEY", "web-key", "service", "web"),
            q("DB_HOST", "staging-db", "global", ""),
            q("EMPTY", "", "global", ""),
            q("HARD", "multi\nline $HOME \"q\" 'q' ünï 🚀", "service", "worker"),
        ]
    );

    for seq in 1..=50u64 {
        agent.log(id, seq, &format!("line {seq}")).await;
    }
    agent.status(id, "SUCCESS").await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));

    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["services"][0]["name"], "web");
    assert_eq!(d["triggered_by"], "token:test-admin");
    assert_eq!(
        d["secrets"].as_array().unwrap().len(),
        4,
        "secret versions recorded: {d}"
    );
    assert!(
        !d.to_string().contains("staging-db"),
        "no values in the deployment record"
    );
    let (_, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
    let lines: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, (1..=50).map(|i| format!("line {i}")).collect::<Vec<_>>());

    // The audit log has the story, without values.
    let audit: Vec<String> = server_audit(&server).await;
    for action in ["project.create", "secret.create", "agent.create", "deploy.start"] {
        assert!(
            audit.iter().any(|a| a == action),
            "{action} missing from {audit:?}"
        );
    }
    server.stop().await;
}

async fn server_audit(server: &TestServer) -> Vec<String> {
    let db = crate::common::open_db(&server.data_dir());
    db.read_blocking(|c| {
        let mut stmt = c.prepare("SELECT action FROM audit_log ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, stagely::db::DbError>(rows)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_and_speaks_only_for_its_own_environment() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("scoped", &["a", "b"]).await;
    let (a_id, a_token) = api.agent(envs[0], "agent-a").await;
    let (b_id, b_token) = api.agent(envs[1], "agent-b").await;
    let mut a = TestAgent::connect(&api.url, &a_token, None).await;
    let mut b = TestAgent::connect(&api.url, &b_token, None).await;
    api.wait_online(a_id).await;
    api.wait_online(b_id).await;

    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "b"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(b.recv().await["deployment_id"], id);
    assert_eq!(
        a.recv_within(Duration::from_millis(500)).await,
        None,
        "A must not receive B's deploy"
    );

    // A cannot report for B's deployment.
    a.log(id, 1, "forged line").await;
    let err = a.recv().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("ERROR"), Some("not_assigned"))
    );
    a.status(id, "FAIL").await;
    assert_eq!(a.recv().await["code"], "not_assigned");
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "queued", "A's forged STATUS changed nothing: {d}");
    let (_, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
    assert_eq!(logs, json!([]));

    b.log(id, 1, "real line").await;
    b.status(id, "SUCCESS").await;
    assert_eq!(b.recv().await["type"], "ACK");
    assert_eq!(
        api.wait_finished(id, Duration::from_secs(10)).await["status"],
        "success"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_offline_agents_and_concurrent_deploys_are_refused_clearly() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("refusals", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;

    // Unknown token: 401 before any upgrade.
    let err = TestAgent::dial(&api.url, "stga_not-a-real-token")
        .await
        .unwrap_err();
    assert!(
        matches!(err, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401),
        "{err:?}"
    );
    // An API token is not an agent token.
    assert!(TestAgent::dial(&api.url, &api.token).await.is_err());

    // Never connected: 409 agent_offline naming when it was last seen (never).
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_offline");
    assert!(body["error"].as_object().unwrap().contains_key("last_seen"));

    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(
        status, 202,
        "environment may be omitted when there is one: {body}"
    );
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    // A second trigger while the first runs waits in the environment's queue (tests/it/queue.rs).
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("waiting")),
        "{body}"
    );

    // Revoking closes the live connection with a reason, and the token stops working.
    let (status, _) = api.delete(&format!("/api/agents/{agent_id}")).await;
    assert_eq!(status, 204);
    assert_eq!(agent.closed_reason().await, stagely_protocol::CLOSE_REVOKED);
    let err = TestAgent::dial(&api.url, &token).await.unwrap_err();
    assert!(
        matches!(err, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401),
        "{err:?}"
    );

    // Now offline, with a last-seen time.
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let _ = id;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_do_not_hurt_other_agents() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("robust", &["x", "y"]).await;
    let (_, bad_token) = api.agent(envs[0], "bad").await;
    let (good_id, good_token) = api.agent(envs[1], "good").await;
    let mut good = TestAgent::connect(&api.url, &good_token, None).await;
    api.wait_online(good_id).await;

    let mut bad = TestAgent::connect(&api.url, &bad_token, None).await;
    bad.send_raw("this is not json".into()).await.unwrap();
    assert_eq!(bad.recv().await["code"], "bad_message");
    bad.send_raw(r#"{"type":"LOG","deployment_id":"nope"}"#.into())
        .await
        .unwrap();
    assert_eq!(bad.recv().await["code"], "bad_message");
    bad.send_raw(r#"{"type":"TELEPORT"}"#.into()).await.unwrap();
    assert_eq!(bad.recv().await["code"], "unknown_type");
    let huge = format!(
        r#"{{"type":"LOG","deployment_id":1,"seq":1,"stream":"stdout","line":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let _ = bad.send_raw(huge).await;
    let _ = bad.closed_reason().await;

    // A HELLO of a future protocol is told to upgrade.
    let (_, z_token) = api.agent(envs[0], "future").await;
    let mut future = TestAgent::raw(&api.url, &z_token).await;
    future
        .send(json!({"type": "HELLO", "protocol": 99, "agent_version": "9", "hostname": "h"}))
        .await;
    let err = future.recv().await;
    assert_eq!(err["code"], "protocol_unsupported");
    assert!(err["message"].as_str().unwrap().contains("upgrade"));

    // The good agent is still there and deploys.
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "y"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(good.recv().await["type"], "DEPLOY");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_closes_its_agents() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("doomed", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "a").await;
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    api.wait_online(agent_id).await;
    assert_eq!(api.delete(&format!("/api/projects/{pid}")).await.0, 204);
    assert_eq!(agent.closed_reason().await, stagely_protocol::CLOSE_REVOKED);
    assert!(
        TestAgent::dial(&api.url, &token).await.is_err(),
        "its token is gone with it"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_environment_whose_stack_runs_is_refused_until_it_is_taken_down() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("kept", &["prod", "spare"]).await;
    let (agent_id, token) = api.agent(envs[0], "a").await;
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    api.wait_online(agent_id).await;
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "prod"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    agent.status(id, "SUCCESS").await;
    assert_eq!(agent.recv().await["type"], "ACK");

    // An environment that never ran a stack goes at once.
    assert_eq!(api.delete(&format!("/api/environments/{}", envs[1])).await.0, 204);
    // One whose stack may be running is refused, saying what runs and how to proceed.
    for path in [
        format!("/api/environments/{}", envs[0]),
        format!("/api/projects/{pid}"),
    ] {
        let (status, body) = api.delete(&path).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert_eq!(body["error"]["code"], "stack_running", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("kept-prod")
                && message.contains(&format!("#{id}"))
                && message.contains("stack_removed=true"),
            "{message}"
        );
    }
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    assert_eq!(
        p["environments"].as_array().unwrap().len(),
        1,
        "nothing deleted: {p}"
    );
    // Confirmed taken down by hand: deleted, and the audit log says so.
    assert_eq!(
        api.delete(&format!("/api/environments/{}?stack_removed=true", envs[0]))
            .await
            .0,
        204
    );
    let db = crate::common::open_db(&server.data_dir());
    let detail: String = db
        .read_blocking(|c| {
            Ok::<_, stagely::db::DbError>(c.query_row(
                "SELECT detail FROM audit_log WHERE action = 'environment.delete' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(detail, "prod (its stack taken down on the target, as confirmed)");
    assert_eq!(api.delete(&format!("/api/projects/{pid}")).await.0, 204);
}
