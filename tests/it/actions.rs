//! Lifecycle actions and deleting through agents (issue 15), against protocol-level agents on
//! real sockets: the cheap rules. No agent / no `operate` → 409, a deployment in flight → 409, a
//! hostile service name → 400 with nothing sent, an ACTION_RESULT from another agent ignored, a
//! failure → 502 masked, no answer → 504; deleting takes the stack down first, an offline agent
//! refuses it unless an admin forces it; a revoked agent can be deleted. The real agent and
//! Docker: `actions_engine`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer, cli_token};
use crate::releases::{audited, connect};

const CANARY: &str = "canary-Zq81-action-secret";

/// An agent offering `operate` (and `runtime`, so it is told what to WATCH first).
async fn operating(api: &Api, token: &str) -> TestAgent {
    let mut agent = connect(api, token, &["releases", "runtime", "operate"]).await;
    assert_eq!(agent.recv().await["type"], "WATCH");
    agent
}

/// The next ACTION the agent is sent.
async fn next_action(agent: &mut TestAgent) -> Value {
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "ACTION", "{frame}");
    frame
}

async fn answer(agent: &mut TestAgent, request_id: &Value, ok: bool, error: Option<&str>) {
    agent
        .send(json!({"type": "ACTION_RESULT", "request_id": request_id, "ok": ok, "error": error}))
        .await;
}

fn post(api: &Api, path: String) -> tokio::task::JoinHandle<(u16, Value)> {
    let api = api.clone();
    tokio::spawn(async move { api.post(&path, json!({})).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_refused_without_an_operating_agent_with_a_hostile_name_or_while_deploying() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("ops", &["staging"]).await;
    let env = envs[0];

    let (status, body) = api
        .post(
            &format!("/api/environments/{env}/services/web/restart"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "no agent: {body}");
    assert_eq!(body["error"]["code"], "no_agent");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("no agent"),
        "{body}"
    );
    assert_eq!(api.post("/api/environments/999999/down", json!({})).await.0, 404);

    // An agent of issue 14 (no `operate`): refused, saying so; nothing is sent to it.
    let (old_id, old_token) = api.agent(env, "old").await;
    let mut old = connect(api, &old_token, &["releases", "runtime"]).await;
    assert_eq!(old.recv().await["type"], "WATCH");
    api.wait_online(old_id).await;
    let (status, body) = api
        .post(&format!("/api/environments/{env}/down"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("operate") && message.contains("old"),
        "{message}"
    );
    assert!(
        old.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing sent"
    );

    let (agent_id, token) = api.agent(env, "web-1").await;
    let mut agent = operating(api, &token).await;
    api.wait_online(agent_id).await;
    for hostile in ["web%3Bid", "--help", "..%2Fx", "a%20b"] {
        let (status, body) = api
            .post(
                &format!("/api/environments/{env}/services/{hostile}/restart"),
                json!({}),
            )
            .await;
        assert_eq!(status, 400, "{hostile}: {body}");
        assert_eq!(body["error"]["code"], "invalid_service");
    }
    assert!(
        agent.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing ran"
    );

    // A deployment waiting for its agent: no action until it ends.
    let d = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    let id = d["deployment_id"].as_i64().unwrap();
    let (status, body) = api
        .post(&format!("/api/environments/{env}/services/web/stop"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "deployment_in_progress");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("#{id}")),
        "{body}"
    );
    assert!(
        audited(&server, "service.stop").is_empty(),
        "a refusal is not audited as run"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_goes_to_the_environments_agent_and_only_its_answer_counts() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging", "other"]).await;
    let (status, body) = api
        .post(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (agent_id, token) = api.agent(envs[0], "web-1").await;
    let (other_id, other_token) = api.agent(envs[1], "intruder").await;
    let mut agent = operating(api, &token).await;
    let mut other = operating(api, &other_token).await;
    api.wait_online(agent_id).await;
    api.wait_online(other_id).await;
    let (_, env) = api.get(&format!("/api/environments/{}", envs[0])).await;

    let call = post(api, format!("/api/environments/{}/services/web/restart", envs[0]));
    let action = next_action(&mut agent).await;
    assert_eq!(action["project"], env["compose_project"], "{action}");
    assert_eq!(action["action"], "restart");
    assert_eq!(action["service"], "web");
    // Another environment's agent answering the same request id is ignored.
    answer(&mut other, &action["request_id"], false, Some("forged")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    answer(&mut agent, &action["request_id"], true, None).await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["action"], "restart");
    assert_eq!(body["service"], "web");
    assert_eq!(body["environment_id"], envs[0]);
    assert_eq!(body["agents"][0]["name"], "web-1");
    assert_eq!(body["agents"][0]["result"], "done");
    assert_eq!(
        audited(&server, "service.restart"),
        ["shop/staging web: done (web-1 done)"]
    );

    // A failure is 502 with the agent's reason, masked with the environment's secrets.
    let call = post(api, format!("/api/environments/{}/down", envs[0]));
    let action = next_action(&mut agent).await;
    assert_eq!(action["action"], "down");
    assert!(action.get("service").is_none_or(Value::is_null), "{action}");
    answer(
        &mut agent,
        &action["request_id"],
        false,
        Some(&format!("down failed: {CANARY} x")),
    )
    .await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "agent_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("web-1") && message.contains("down failed"),
        "{message}"
    );
    assert!(!message.contains(CANARY), "masked: {message}");
    let entries = audited(&server, "environment.down");
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].starts_with("shop/staging: failed") && !entries[0].contains(CANARY),
        "{entries:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_answer_is_a_504() {
    let server = TestServer::start_with(|c| c.agents.action_timeout_secs = 1).await;
    let api = &server.api;
    let (_, envs) = api.project("slow", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "web-1").await;
    let mut agent = operating(api, &token).await;
    api.wait_online(agent_id).await;
    let call = post(api, format!("/api/environments/{}/services/web/start", envs[0]));
    next_action(&mut agent).await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "agent_timeout");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("web-1"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_takes_the_stack_down_first_and_an_offline_agent_needs_an_admins_force() {
    let server = TestServer::start().await;
    let api = &server.api;
    let member = Api::new(&api.url, &cli_token(&server.data_dir(), "maria", "member"));
    let (pid, envs) = api.project("gone", &["staging", "prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "web-1").await;
    let mut agent = operating(api, &token).await;
    api.wait_online(agent_id).await;

    // The environment: `down` first, then deleted.
    let api2 = api.clone();
    let env0 = envs[0];
    let call = tokio::spawn(async move { api2.delete(&format!("/api/environments/{env0}")).await });
    let action = next_action(&mut agent).await;
    assert_eq!(action["action"], "down");
    answer(&mut agent, &action["request_id"], true, None).await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        audited(&server, "environment.down"),
        ["gone/staging: done (web-1 done)"]
    );
    assert_eq!(
        audited(&server, "environment.delete"),
        ["staging (staging taken down through web-1)"]
    );

    // A failed down deletes nothing.
    let (b_id, b_token) = api.agent(envs[1], "prod-1").await;
    let mut b = operating(api, &b_token).await;
    api.wait_online(b_id).await;
    let api2 = api.clone();
    let call = tokio::spawn(async move { api2.delete(&format!("/api/projects/{pid}")).await });
    let action = next_action(&mut b).await;
    answer(&mut b, &action["request_id"], false, Some("down failed: boom")).await;
    let (status, body) = call.await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was deleted"),
        "{body}"
    );
    assert_eq!(api.get(&format!("/api/projects/{pid}")).await.0, 200);

    // Its agent offline: refused, naming it; a member cannot force; an admin can.
    drop(b);
    api.wait_offline(b_id).await;
    let (status, body) = api.delete(&format!("/api/projects/{pid}")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "agent_offline");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("prod-1") && message.contains("left running"),
        "{message}"
    );
    assert_eq!(
        member.delete(&format!("/api/projects/{pid}?force=true")).await.0,
        403
    );
    assert_eq!(
        api.delete(&format!("/api/projects/{pid}?force=true")).await.0,
        204
    );
    let deleted = audited(&server, "project.delete");
    assert!(
        deleted[0].contains("forced") && deleted[0].contains("prod-1"),
        "{deleted:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_can_be_deleted() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, envs) = api.project("agents", &["staging"]).await;
    let (id, _) = api.agent(envs[0], "old").await;
    assert_eq!(api.delete(&format!("/api/agents/{id}")).await.0, 204, "revoked");
    let (_, agents) = api.get("/api/agents").await;
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id && a["revoked"] == true)
    );
    assert_eq!(api.delete(&format!("/api/agents/{id}")).await.0, 204, "deleted");
    let (_, agents) = api.get("/api/agents").await;
    assert!(
        !agents.as_array().unwrap().iter().any(|a| a["id"] == id),
        "{agents}"
    );
    assert_eq!(api.delete(&format!("/api/agents/{id}")).await.0, 404);
    assert_eq!(audited(&server, "agent.delete"), ["old (agents/staging)"]);
    // Its name is free again.
    api.agent(envs[0], "old").await;
    server.stop().await;
}
