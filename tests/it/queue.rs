//! The queue per environment and cancel (issue 13), against a protocol-level TestAgent: a
//! trigger while one runs waits; only the newest waiting one runs, the others are superseded;
//! cancel of a waiting, running, offline and finished deployment; the queue across a restart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer, WAIT, cli_token, wait_for};

/// Trigger a deploy of the project's only environment with `ref`; (id, status).
async fn trigger(api: &Api, pid: i64, git_ref: &str) -> (i64, String) {
    let body = api
        .ok(&format!("/api/deploy/{pid}"), json!({"ref": git_ref}), 202)
        .await;
    (
        body["deployment_id"].as_i64().unwrap(),
        body["status"].as_str().unwrap().to_owned(),
    )
}

async fn deployment(api: &Api, id: i64) -> Value {
    let (status, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

/// The agent's next frame, which must be a DEPLOY; its deployment id.
async fn next_deploy(agent: &mut TestAgent) -> (i64, Value) {
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "DEPLOY", "{frame}");
    (frame["deployment_id"].as_i64().unwrap(), frame)
}

async fn finish(agent: &mut TestAgent, id: i64, outcome: &str) {
    agent.status(id, outcome).await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
}

/// How many audit entries of `action` the appliance's database holds.
fn audited(server: &TestServer, action: &str) -> i64 {
    let db = crate::common::open_db(&server.data_dir());
    db.query_row(
        "SELECT count(*) FROM audit_log WHERE action = ?1",
        [action],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_while_one_runs_waits_and_only_the_newest_waiting_one_runs_with_todays_secrets() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("queue", &["prod"]).await;
    let secret = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "TOKEN", "value": "canary-v1-7f3a", "scope": "global"}),
            201,
        )
        .await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    let (first, status) = trigger(api, pid, "r1").await;
    assert_eq!(status, "queued");
    let (sent, _) = next_deploy(&mut agent).await;
    assert_eq!(sent, first);
    let mut waiting = Vec::new();
    for r in ["r2", "r3", "r4"] {
        let (id, status) = trigger(api, pid, r).await;
        assert_eq!(status, "waiting", "{r}");
        waiting.push(id);
    }
    let d = deployment(api, waiting[0]).await;
    assert_eq!(
        (d["status"].as_str(), d["agent_id"].as_i64()),
        (Some("waiting"), None)
    );
    assert_eq!(
        d["secrets"],
        json!([]),
        "a waiting deployment has read no secret yet"
    );
    // Nothing is sent while the first runs.
    assert!(agent.recv_within(Duration::from_millis(300)).await.is_none());

    // The secret changes while they wait: the one that runs gets the value of its dispatch.
    let sid = secret["id"].as_i64().unwrap();
    let (status, body) = api
        .put(&format!("/api/secrets/{sid}"), json!({"value": "canary-v2-9c1e"}))
        .await;
    assert_eq!(status, 200, "{body}");

    finish(&mut agent, first, "SUCCESS").await;
    let (next, frame) = next_deploy(&mut agent).await;
    let newest = *waiting.last().unwrap();
    assert_eq!(next, newest, "the newest waiting deployment runs");
    assert_eq!(frame["project"]["git_ref"], "r4");
    let secrets = agent.secrets(&frame);
    assert_eq!(secrets[0]["value"], "canary-v2-9c1e");
    let d = deployment(api, newest).await;
    assert_eq!(
        (d["status"].as_str(), d["agent_id"].as_i64()),
        (Some("queued"), Some(agent_id))
    );
    assert_eq!(
        d["secrets"][0]["version"], 2,
        "the version recorded is the one sent: {d}"
    );
    for old in &waiting[..2] {
        let d = deployment(api, *old).await;
        assert_eq!(d["status"], "superseded", "{d}");
        assert_eq!(d["superseded_by"], newest, "{d}");
        assert!(d["finished_at"].is_string(), "{d}");
    }
    finish(&mut agent, newest, "SUCCESS").await;
    assert!(agent.recv_within(Duration::from_millis(300)).await.is_none());

    assert_eq!(audited(&server, "deploy.supersede"), 2);
    let (_, body) = api.get(&format!("/api/deployments/{}", waiting[0])).await;
    assert!(!body.to_string().contains("canary-v"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_triggers_in_a_burst_run_at_most_two_deployments_the_last_the_newest() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("burst", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    // All 20 at once, as pushes arrive: the agent holds the first DEPLOY meanwhile.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let api = api.clone();
        tasks.push(tokio::spawn(
            async move { trigger(&api, pid, &format!("r{i}")).await },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().0);
    }
    let newest = *ids.iter().max().unwrap();
    let (first, _) = next_deploy(&mut agent).await;
    finish(&mut agent, first, "SUCCESS").await;
    let mut ran = vec![first];
    if first != newest {
        let (second, _) = next_deploy(&mut agent).await;
        assert_eq!(second, newest, "the last to run is the newest trigger");
        finish(&mut agent, second, "SUCCESS").await;
        ran.push(second);
    }
    assert!(agent.recv_within(Duration::from_millis(500)).await.is_none());
    let (_, list) = api
        .get(&format!("/api/deployments?environment_id={}", envs[0]))
        .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 20);
    let success: Vec<i64> = list
        .iter()
        .filter(|d| d["status"] == "success")
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert!(success.len() <= 2, "{list:?}");
    assert_eq!(success.len(), ran.len());
    for d in list.iter().filter(|d| d["status"] != "success") {
        assert_eq!(d["status"], "superseded", "{d}");
        assert_eq!(d["superseded_by"], newest, "{d}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_waiting_running_and_finished_deployments() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("cancel", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    let (running, _) = trigger(api, pid, "r1").await;
    next_deploy(&mut agent).await;
    let (waiting, status) = trigger(api, pid, "r2").await;
    assert_eq!(status, "waiting");

    // A viewer may look but not cancel.
    let viewer = api.with_token(&cli_token(&server.data_dir(), "viewer-1", "viewer"));
    let (status, body) = viewer
        .post(&format!("/api/deployments/{waiting}/cancel"), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");

    // Waiting: cancelled at once.
    let body = api
        .ok(&format!("/api/deployments/{waiting}/cancel"), json!({}), 202)
        .await;
    assert_eq!(body, json!({"deployment_id": waiting, "status": "cancelled"}));
    assert_eq!(deployment(api, waiting).await["status"], "cancelled");
    let (third, status) = trigger(api, pid, "r3").await;
    assert_eq!(status, "waiting");

    // Running: the agent is sent a signed CANCEL (TestAgent::recv checks the signature) and
    // the deployment ends as the agent reports; then the next waiting one runs.
    agent.log(running, 0, "working").await;
    let body = api
        .ok(&format!("/api/deployments/{running}/cancel"), json!({}), 202)
        .await;
    assert_eq!(body["deployment_id"], running);
    assert!(
        matches!(body["status"].as_str(), Some("queued" | "running")),
        "{body}"
    );
    let cancel = agent.recv().await;
    assert_eq!(cancel, json!({"type": "CANCEL", "deployment_id": running}));
    finish(&mut agent, running, "CANCELLED").await;
    let d = api.wait_finished(running, WAIT).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    let (next, _) = next_deploy(&mut agent).await;
    assert_eq!(next, third);

    // Finished: 409 naming its state.
    let (status, body) = api
        .post(&format!("/api/deployments/{running}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_finished");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    let (status, _) = api.post("/api/deployments/999999/cancel", json!({})).await;
    assert_eq!(status, 404);

    assert_eq!(audited(&server, "deploy.cancel"), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agent_keeps_the_queue_waiting_and_hears_of_a_cancel_when_it_returns() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("offline", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;

    let (running, _) = trigger(api, pid, "r1").await;
    next_deploy(&mut agent).await;
    let (waiting, _) = trigger(api, pid, "r2").await;
    drop(agent);
    api.wait_offline(agent_id).await;

    // Running while its agent is away: cancelled on the appliance's authority. The waiting one
    // is not sent (nobody to send it to): it stays waiting.
    let body = api
        .ok(&format!("/api/deployments/{running}/cancel"), json!({}), 202)
        .await;
    assert_eq!(body["status"], "cancelled");
    assert_eq!(deployment(api, running).await["status"], "cancelled");
    assert_eq!(deployment(api, waiting).await["status"], "waiting");
    // A new trigger while the agent is offline is refused, as before the queue.
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("agent_offline")),
        "{body}"
    );

    // The agent returns still holding the cancelled one: it is told to stop it, then the
    // waiting one is dispatched.
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![running])).await;
    let cancel = agent.recv().await;
    assert_eq!(cancel, json!({"type": "CANCEL", "deployment_id": running}));
    let (next, _) = next_deploy(&mut agent).await;
    assert_eq!(next, waiting);
    // Its CANCELLED report for the one already ended is acknowledged and changes nothing.
    finish(&mut agent, running, "CANCELLED").await;
    finish(&mut agent, waiting, "SUCCESS").await;
    assert_eq!(deployment(api, waiting).await["status"], "success");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_deployments_survive_a_restart_and_the_newest_runs_when_the_agent_returns() {
    let server = TestServer::start().await;
    let (pid, envs) = server.api.project("restart", &["prod"]).await;
    let (agent_id, token) = server.api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&server.api.url, &token, Some(vec![])).await;
    server.api.wait_online(agent_id).await;
    let (running, _) = trigger(&server.api, pid, "r1").await;
    next_deploy(&mut agent).await;
    let (older, _) = trigger(&server.api, pid, "r2").await;
    let (newest, _) = trigger(&server.api, pid, "r3").await;
    drop(agent);

    let server = server.restart().await;
    let api = &server.api;
    for id in [older, newest] {
        assert_eq!(deployment(api, id).await["status"], "waiting");
    }
    // The agent comes back, finishes the one it was running, and the newest waiting one runs.
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![running])).await;
    finish(&mut agent, running, "SUCCESS").await;
    let (next, frame) = next_deploy(&mut agent).await;
    assert_eq!((next, frame["project"]["git_ref"].as_str()), (newest, Some("r3")));
    let d = deployment(api, older).await;
    assert_eq!(
        (d["status"].as_str(), d["superseded_by"].as_i64()),
        (Some("superseded"), Some(newest))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_page_shows_the_new_states_and_a_members_cancel_button() {
    let server = crate::web_support::WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut viewer = server.user(&mut admin, "watcher", "viewer").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "page-admin", "admin"));
    let (pid, envs) = api.project("page", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let (running, _) = trigger(&api, pid, "r1").await;
    next_deploy(&mut agent).await;
    let (waiting, _) = trigger(&api, pid, "r2").await;

    let (status, page) = admin.get(&format!("/deployments/{waiting}")).await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"class="badge waiting""#), "{page}");
    assert!(
        page.contains(&format!(r#"action="/deployments/{waiting}/cancel""#)),
        "{page}"
    );
    let (_, page) = viewer.get(&format!("/deployments/{waiting}")).await;
    assert!(
        !page.contains("Cancel deployment"),
        "a viewer gets no Cancel button"
    );
    let (status, _) = viewer
        .post_form(&format!("/deployments/{waiting}/cancel"), &[])
        .await;
    assert_eq!(status, 403);
    // Without the CSRF token the form is refused, as every other form.
    let (status, _, _) = admin
        .post_form_raw(&format!("/deployments/{waiting}/cancel"), &[])
        .await;
    assert_eq!(status, 403);
    assert_eq!(deployment(&api, waiting).await["status"], "waiting");

    let (status, _) = admin
        .post_form(&format!("/deployments/{waiting}/cancel"), &[])
        .await;
    assert!(status == 303 || status == 200, "{status}");
    let (_, page) = admin.get(&format!("/deployments/{waiting}")).await;
    assert!(page.contains(r#"class="badge cancelled""#), "{page}");
    assert!(!page.contains("Cancel deployment"), "{page}");
    let (_, page) = admin.get(&format!("/deployments/{running}")).await;
    assert!(page.contains("Cancel deployment"), "{page}");

    // Two more wait; when the running one ends, the older is superseded and its page links to
    // the one that replaced it.
    let (older, _) = trigger(&api, pid, "r3").await;
    let (newer, _) = trigger(&api, pid, "r4").await;
    finish(&mut agent, running, "SUCCESS").await;
    wait_for("the older one superseded", WAIT, || {
        let api = api.clone();
        async move { (deployment(&api, older).await["status"] == "superseded").then_some(()) }
    })
    .await;
    let (_, page) = admin.get(&format!("/deployments/{older}")).await;
    assert!(page.contains(r#"class="badge superseded""#), "{page}");
    assert!(
        page.contains(&format!(r#"href="/deployments/{newer}""#)),
        "{page}"
    );
    server.stop().await;
}
