//! Releases, redeploy and automatic rollback (issue 14), against a protocol-level agent on a
//! real socket: a successful STATUS records its release; a redeploy is sent the old secret
//! values and each service's image pin; a release whose secret versions were pruned refuses
//! (409) and never half-restores; an agent without the `releases` capability is refused;
//! `auto_rollback` answers a failure after `up` with a linked deployment of the last release.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer};

pub const DIGEST_A: &str = "shop/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const ID_A: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
pub const ID_DB: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
pub const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A release as an agent reports it: `web` from a registry (a digest), `db` built on the target
/// (an image id only).
pub fn release(tag: &str) -> Value {
    json!({
        "compose_hash": "c".repeat(64),
        "services": [
            {"name": "db", "image": "shop-db", "image_id": ID_DB, "config_hash": "d".repeat(64)},
            {"name": "web", "image": format!("shop/web:{tag}"), "image_id": ID_A,
             "repo_digest": DIGEST_A, "config_hash": "e".repeat(64)},
        ],
    })
}

/// Connect offering `capabilities` (an agent of issue 14 offers `releases`).
pub async fn connect(api: &Api, token: &str, capabilities: &[&str]) -> TestAgent {
    let mut agent = TestAgent::raw(&api.url, token).await;
    let hello = json!({"type": "HELLO", "protocol": 1, "agent_version": "test", "hostname": "test-host",
        "docker_version": "0", "compose_version": "0", "active_deployments": [],
        "recipient": agent.identity.recipient(), "capabilities": capabilities});
    agent.send(hello).await;
    agent
}

pub async fn next_deploy(agent: &mut TestAgent) -> (i64, Value) {
    let mut frame = agent.recv().await;
    // An agent offering `runtime` is first told which project to watch.
    while frame["type"] == "WATCH" {
        frame = agent.recv().await;
    }
    assert_eq!(frame["type"], "DEPLOY", "{frame}");
    (frame["deployment_id"].as_i64().unwrap(), frame)
}

/// Report the end of a deployment and wait for its ACK.
pub async fn report(agent: &mut TestAgent, id: i64, outcome: &str, extra: Value) {
    let mut status = json!({"type": "STATUS", "deployment_id": id, "status": outcome,
        "services": [{"name": "web", "state": "running", "health": "", "exit_code": 0}], "error": null});
    if let (Some(s), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    agent.send(status).await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
}

pub async fn deployment(api: &Api, id: i64) -> Value {
    let (status, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

pub async fn deploy(api: &Api, pid: i64) -> i64 {
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    body["deployment_id"].as_i64().unwrap()
}

/// The audit entries of `action`: their details.
pub fn audited(server: &TestServer, action: &str) -> Vec<String> {
    let db = crate::common::open_db(&server.data_dir());
    db.rows(
        "SELECT detail FROM audit_log WHERE action = ?1 ORDER BY id",
        [action],
        |r| r.get(0),
    )
    .unwrap()
}

/// Secret values by key, as a DEPLOY carries them sealed.
fn values(agent: &TestAgent, frame: &Value) -> Vec<(String, String)> {
    agent
        .secrets(frame)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_sends_the_release_s_secret_values_commit_and_image_pins() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["prod"]).await;
    let secret = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "S", "value": "canary-s1-4d7e", "scope": "global"}),
            201,
        )
        .await;
    let sid = secret["id"].as_i64().unwrap();
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases", "runtime"]).await;
    api.wait_online(agent_id).await;

    // A: S=1, commit A, its release.
    let a = deploy(api, pid).await;
    let (sent, frame) = next_deploy(&mut agent).await;
    assert_eq!(sent, a);
    assert!(
        frame["project"]["images"]
            .as_object()
            .is_none_or(serde_json::Map::is_empty),
        "an ordinary deploy pins nothing: {frame}"
    );
    report(
        &mut agent,
        a,
        "SUCCESS",
        json!({"commit": COMMIT_A, "release": release("1"), "applied": true}),
    )
    .await;
    let d = deployment(api, a).await;
    assert_eq!(d["release"]["compose_hash"], "c".repeat(64), "{d}");
    assert_eq!(d["release"]["commit"], COMMIT_A, "{d}");
    assert_eq!(d["release"]["agent_name"], "prod-1", "{d}");
    assert_eq!(d["release"]["services"][1]["repo_digest"], DIGEST_A, "{d}");
    assert_eq!(d["secrets"][0]["version"], 1, "{d}");

    // B: S=2, another commit and tag.
    let (status, body) = api
        .put(&format!("/api/secrets/{sid}"), json!({"value": "canary-s2-8b1f"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let b = deploy(api, pid).await;
    let (_, frame) = next_deploy(&mut agent).await;
    assert_eq!(
        values(&agent, &frame),
        vec![("S".into(), "canary-s2-8b1f".into())]
    );
    report(
        &mut agent,
        b,
        "SUCCESS",
        json!({"commit": COMMIT_B, "release": release("2"), "applied": true}),
    )
    .await;

    // Redeploy A: S=1, commit A, images pinned.
    let r = api
        .ok(&format!("/api/deployments/{a}/redeploy"), json!({}), 201)
        .await;
    assert_eq!(r["redeploy_of"], a, "{r}");
    assert_eq!(r["status"], "queued", "{r}");
    let c = r["deployment_id"].as_i64().unwrap();
    let (sent, frame) = next_deploy(&mut agent).await;
    assert_eq!(sent, c);
    assert_eq!(
        values(&agent, &frame),
        vec![("S".into(), "canary-s1-4d7e".into())]
    );
    assert_eq!(frame["project"]["git_ref"], COMMIT_A, "{frame}");
    assert_eq!(
        frame["project"]["images"],
        json!({"db": ID_DB, "web": DIGEST_A}),
        "the registry digest, else the image id"
    );
    let d = deployment(api, c).await;
    assert_eq!(d["redeploy_of"], a, "{d}");
    assert_eq!(d["rollback_of"], Value::Null, "{d}");
    assert_eq!(d["commit"], COMMIT_A, "{d}");
    assert_eq!(
        (
            d["secrets"][0]["secret_id"].as_i64(),
            d["secrets"][0]["version"].as_i64()
        ),
        (Some(sid), Some(1)),
        "the redeploy records the versions it was sent: {d}"
    );
    report(
        &mut agent,
        c,
        "SUCCESS",
        json!({"commit": COMMIT_A, "release": release("1"), "applied": true}),
    )
    .await;
    let d = deployment(api, c).await;
    assert_eq!(
        d["release"]["commit"], COMMIT_A,
        "the redeploy has its own release: {d}"
    );

    let audit = audited(&server, "deploy.redeploy");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit[0].contains(&format!("deployment {c}")) && audit[0].contains(&format!("deployment {a}")),
        "{audit:?}"
    );

    // Neither value anywhere a person or a log can read.
    let (_, versions) = api.get(&format!("/api/secrets/{sid}/versions")).await;
    let (_, list) = api
        .get(&format!("/api/deployments?environment_id={}", envs[0]))
        .await;
    let (_, logs) = api.get(&format!("/api/deployments/{c}/logs")).await;
    for body in [
        versions.to_string(),
        list.to_string(),
        logs.to_string(),
        audit.join("\n"),
    ] {
        assert!(!body.contains("canary-s"), "{body}");
    }
    assert!(!crate::common::store_contains(&server.data_dir(), "canary-s"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_secret_versions_were_pruned_refuses_and_one_without_a_release_too() {
    let server = TestServer::start_with(|c| c.secrets.keep_versions = 2).await;
    let api = &server.api;
    let (pid, envs) = api.project("pruned", &["prod"]).await;
    let secret = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "DB_PASSWORD", "value": "canary-p1", "scope": "global"}),
            201,
        )
        .await;
    let sid = secret["id"].as_i64().unwrap();
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;

    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, a, "SUCCESS", json!({"release": release("1")})).await;
    let failed = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, failed, "FAIL", json!({"applied": true})).await;

    // A failed deployment (and an old agent's success) has no release.
    let (status, body) = api
        .post(&format!("/api/deployments/{failed}/redeploy"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("no_release")),
        "{body}"
    );

    for v in ["canary-p2", "canary-p3"] {
        let (status, body) = api.put(&format!("/api/secrets/{sid}"), json!({"value": v})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, versions) = api.get(&format!("/api/secrets/{sid}/versions")).await;
    let kept: Vec<i64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        kept,
        vec![3, 2],
        "the newest keep_versions, newest first: {versions}"
    );
    assert_eq!(versions[0]["current"], true, "{versions}");
    assert_eq!(versions[1]["current"], false, "{versions}");
    assert!(versions[0]["created_by"].is_string(), "{versions}");
    assert!(!versions.to_string().contains("canary-p"), "{versions}");

    let (status, body) = api
        .post(&format!("/api/deployments/{a}/redeploy"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "release_incomplete", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("DB_PASSWORD"),
        "{body}"
    );
    // Nothing was started, nothing sent.
    assert!(agent.recv_within(Duration::from_millis(300)).await.is_none());
    let (_, list) = api
        .get(&format!("/api/deployments?environment_id={}", envs[0]))
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(audited(&server, "deploy.redeploy").is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_secret_s_versions_stay_for_the_releases_that_used_them() {
    let server = TestServer::start_with(|c| c.secrets.keep_versions = 2).await;
    let api = &server.api;
    let (pid, envs) = api.project("deleted", &["prod"]).await;
    let used = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "USED", "value": "canary-used", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, a, "SUCCESS", json!({"release": release("1")})).await;
    // Never deployed: nothing holds it.
    let unused = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "UNUSED", "value": "canary-unused", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    for id in [used, unused] {
        let (status, body) = api.delete(&format!("/api/secrets/{id}")).await;
        assert_eq!(status, 204, "{body}");
    }
    let (status, versions) = api.get(&format!("/api/secrets/{used}/versions")).await;
    assert_eq!(status, 200, "{versions}");
    assert_eq!(versions[0]["version"], 1, "{versions}");
    assert!(versions[0]["deleted_at"].is_string(), "{versions}");
    let (status, body) = api.get(&format!("/api/secrets/{unused}/versions")).await;
    assert_eq!(status, 404, "no release used it: {body}");

    // A's release is still whole: the deleted secret's value comes back.
    let r = api
        .ok(&format!("/api/deployments/{a}/redeploy"), json!({}), 201)
        .await;
    let (_, frame) = next_deploy(&mut agent).await;
    assert_eq!(
        values(&agent, &frame),
        vec![("USED".into(), "canary-used".into())]
    );
    let b = r["deployment_id"].as_i64().unwrap();
    report(&mut agent, b, "SUCCESS", json!({"release": release("1")})).await;

    // Two newer releases without it: A and B age out (keep_versions = 2), and so does the value.
    for _ in 0..2 {
        let id = deploy(api, pid).await;
        next_deploy(&mut agent).await;
        report(&mut agent, id, "SUCCESS", json!({"release": release("3")})).await;
    }
    let (status, body) = api.get(&format!("/api/secrets/{used}/versions")).await;
    assert_eq!(status, 404, "pruned once no redeployable release used it: {body}");
    let (status, body) = api
        .post(&format!("/api/deployments/{a}/redeploy"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("release_incomplete")),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_releases_capability_is_not_sent_a_redeploy() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("oldagent", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, a, "SUCCESS", json!({"release": release("1")})).await;
    drop(agent);
    api.wait_offline(agent_id).await;

    // The same machine, downgraded: no capabilities.
    let mut agent = connect(api, &token, &[]).await;
    api.wait_online(agent_id).await;
    let (status, body) = api
        .post(&format!("/api/deployments/{a}/redeploy"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("agent_too_old")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("releases"),
        "{body}"
    );
    assert!(
        agent.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing sent"
    );
    let (_, list) = api
        .get(&format!("/api/deployments?environment_id={}", envs[0]))
        .await;
    let newest = &list[0];
    assert_eq!(newest["redeploy_of"], a, "{newest}");
    assert_eq!(newest["status"], "failed", "{newest}");
    assert!(
        newest["error"].as_str().unwrap().contains("agent too old"),
        "{newest}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rollback_answers_a_failure_after_up_with_a_linked_deployment_of_the_last_release() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("autorb", &["prod"]).await;
    let env = envs[0];
    let sid = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "S", "value": "canary-rb1", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    api.ok(
        &format!("/api/projects/{pid}/notifications"),
        json!({"kind": "webhook", "name": "ops", "events": ["deploy.rollback"], "url": "http://127.0.0.1:9/hook"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(env, "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;

    // Off (the default): a failure is only a failure.
    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(
        &mut agent,
        a,
        "SUCCESS",
        json!({"commit": COMMIT_A, "release": release("1")}),
    )
    .await;
    let f0 = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, f0, "FAIL", json!({"applied": true})).await;
    assert!(agent.recv_within(Duration::from_millis(300)).await.is_none());

    let (status, e) = api
        .patch(
            &format!("/api/environments/{env}"),
            json!({"auto_rollback": true}),
        )
        .await;
    assert_eq!((status, e["auto_rollback"].as_bool()), (200, Some(true)), "{e}");
    let (status, e) = api
        .patch(
            &format!("/api/environments/{env}"),
            json!({"auto_rollback": "yes"}),
        )
        .await;
    assert_eq!(status, 422, "{e}");

    // A failure before `up` changed nothing: no rollback.
    api.put(&format!("/api/secrets/{sid}"), json!({"value": "canary-rb2"}))
        .await;
    let f1 = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, f1, "FAIL", json!({"applied": false})).await;
    assert!(agent.recv_within(Duration::from_millis(300)).await.is_none());

    // After `up`: the last release comes back, linked.
    let f2 = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(
        &mut agent,
        f2,
        "FAIL",
        json!({"applied": true, "error": "verify: web unhealthy"}),
    )
    .await;
    let (rb, frame) = next_deploy(&mut agent).await;
    assert_eq!(values(&agent, &frame), vec![("S".into(), "canary-rb1".into())]);
    assert_eq!(frame["project"]["git_ref"], COMMIT_A);
    assert_eq!(frame["project"]["images"]["web"], DIGEST_A);
    let d = deployment(api, rb).await;
    assert_eq!(d["rollback_of"], f2, "{d}");
    assert_eq!(d["redeploy_of"], a, "{d}");
    assert_eq!(d["triggered_by"], "auto-rollback", "{d}");
    let failed = deployment(api, f2).await;
    assert_eq!(failed["status"], "failed", "the failure stays visible: {failed}");
    let audit = audited(&server, "deploy.rollback");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit[0].contains(&f2.to_string()) && audit[0].contains(&a.to_string()),
        "{audit:?}"
    );

    let db = crate::common::open_db(&server.data_dir());
    let notices: Vec<String> = db
        .rows(
            "SELECT payload FROM notify_outbox WHERE event = 'deploy.rollback'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains(&format!("/deployments/{rb}")), "{notices:?}");
    assert!(!notices[0].contains("canary-rb"), "{notices:?}");

    // A rollback that fails is not rolled back again.
    report(&mut agent, rb, "FAIL", json!({"applied": true})).await;
    assert!(agent.recv_within(Duration::from_millis(500)).await.is_none());
    assert_eq!(audited(&server, "deploy.rollback").len(), 1);

    // A newer deployment already waiting goes next instead of a rollback.
    let f3 = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    let newer = deploy(api, pid).await;
    report(&mut agent, f3, "FAIL", json!({"applied": true})).await;
    let (sent, _) = next_deploy(&mut agent).await;
    assert_eq!(sent, newer);
    assert_eq!(audited(&server, "deploy.rollback").len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_validation_is_dropped_and_the_status_still_counts() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("badrel", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    let mut bad = release("1");
    bad["services"][0]["image_id"] = json!("latest; rm -rf /");
    report(&mut agent, a, "SUCCESS", json!({"release": bad})).await;
    let d = deployment(api, a).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["release"], Value::Null, "{d}");
    server.stop().await;
}

/// `stagely` with a token and nothing else from the environment.
fn stagely(token: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagely"));
    cmd.args(args)
        .env_remove("STAGELY_SERVER")
        .env_remove("RUST_LOG")
        .env("STAGELY_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stagely_rollback_redeploys_the_release_before_the_latest_and_waits_like_deploy() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("clirb", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let mut ids = Vec::new();
    for (commit, tag) in [(COMMIT_A, "1"), (COMMIT_B, "2")] {
        let id = deploy(api, pid).await;
        next_deploy(&mut agent).await;
        report(
            &mut agent,
            id,
            "SUCCESS",
            json!({"commit": commit, "release": release(tag)}),
        )
        .await;
        ids.push(id);
    }
    let base = [
        "rollback",
        "--server",
        api.url.as_str(),
        "--project",
        "clirb",
        "--environment",
        "prod",
    ];

    // Default target: the release before the latest (A), and --no-wait prints the id.
    let mut args = base.to_vec();
    args.push("--no-wait");
    let out = stagely(&api.token, &args).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (sent, frame) = next_deploy(&mut agent).await;
    assert_eq!(stdout, sent.to_string());
    assert_eq!(frame["project"]["git_ref"], COMMIT_A);
    assert_eq!(deployment(api, sent).await["redeploy_of"], ids[0]);
    report(
        &mut agent,
        sent,
        "SUCCESS",
        json!({"commit": COMMIT_A, "release": release("1")}),
    )
    .await;

    // --to B, waiting: the exit code is the deployment's (1: failed).
    let to = ids[1].to_string();
    let mut args = base.to_vec();
    args.extend(["--to", to.as_str()]);
    let child = stagely(&api.token, &args).spawn().unwrap();
    let (sent, frame) = next_deploy(&mut agent).await;
    assert_eq!(frame["project"]["git_ref"], COMMIT_B);
    agent.log(sent, 0, "pulling nothing: pinned").await;
    report(&mut agent, sent, "FAIL", json!({"error": "verify failed"})).await;
    let out = tokio::time::timeout(crate::common::WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pulling nothing: pinned"));

    // An unknown deployment is a usage error (exit 2).
    let mut args = base.to_vec();
    args.extend(["--to", "999999"]);
    let out = stagely(&api.token, &args).output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_redeploy_whose_versions_are_pruned_meanwhile_fails_at_dispatch_and_sends_nothing() {
    let server = TestServer::start_with(|c| c.secrets.keep_versions = 1).await;
    let api = &server.api;
    let (pid, envs) = api.project("recheck", &["prod"]).await;
    let sid = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "TOKEN", "value": "canary-rc1", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, a, "SUCCESS", json!({"release": release("1")})).await;

    // B runs; the redeploy of A waits behind it.
    let b = deploy(api, pid).await;
    next_deploy(&mut agent).await;
    let r = api
        .ok(&format!("/api/deployments/{a}/redeploy"), json!({}), 201)
        .await;
    assert_eq!(r["status"], "waiting", "{r}");
    let waiting = r["deployment_id"].as_i64().unwrap();
    // Meanwhile the value A used is replaced and, with keep_versions = 1, pruned.
    let (status, _) = api
        .put(&format!("/api/secrets/{sid}"), json!({"value": "canary-rc2"}))
        .await;
    assert_eq!(status, 200);

    report(&mut agent, b, "SUCCESS", json!({"release": release("2")})).await;
    assert!(
        agent.recv_within(Duration::from_millis(500)).await.is_none(),
        "no half restore is sent"
    );
    let d = deployment(api, waiting).await;
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("cannot be restored exactly") && error.contains("TOKEN"),
        "{d}"
    );
    assert_eq!(d["secrets"], json!([]), "{d}");
    server.stop().await;
}
