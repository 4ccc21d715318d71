//! The users and deploys domain rules hold whichever door a request comes through: the last-admin
//! rule, the token name rule (page and CLI alike, counted in characters), unknown stored roles,
//! and a log that cannot be masked being withheld rather than stored.

use std::time::Duration;

use serde_json::json;

use crate::common::{Api, ServerProcess, TestAgent, admin_token, wait_for};
use crate::web_support::{WebServer, between};

fn db_of(data_dir: &std::path::Path) -> crate::common::StoreDb {
    crate::common::open_db(data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_can_be_neither_demoted_nor_disabled_through_the_page() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let (status, body) = admin.post_form("/users/1/disable", &[("disabled", "true")]).await;
    assert_eq!(status, 422, "{body:.300}");
    assert!(body.contains("no enabled admin"), "{body:.300}");
    let (status, body) = admin.post_form("/users/1/role", &[("role", "member")]).await;
    assert_eq!(status, 422, "{body:.300}");
    assert!(body.contains("no enabled admin"));
    // Still an admin: the Users page (admin only) answers.
    assert_eq!(admin.get("/users").await.0, 200);

    // With a second admin, the first may step down.
    let mut second = server.user(&mut admin, "grace", "admin").await;
    let (status, _) = admin.post_form("/users/1/role", &[("role", "member")]).await;
    assert_eq!(status, 303);
    assert_eq!(admin.get("/users").await.0, 403, "root is a member now");
    // And now grace is the last one.
    let (status, body) = second
        .post_form("/users/2/disable", &[("disabled", "true")])
        .await;
    assert_eq!(status, 422, "{body:.300}");
    server.stop().await;
}

fn cli_create_token(data_dir: &std::path::Path, name: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args([
            "admin",
            "create-token",
            "--name",
            name,
            "--role",
            "viewer",
            "--data-dir",
        ])
        .arg(data_dir)
        .envs(crate::common::store_env(data_dir))
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_names_are_counted_in_characters_by_the_page_and_the_cli_alike() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    // 64 two-byte characters: 128 bytes, but 64 characters.
    let ok = "é".repeat(64);
    let long = "é".repeat(65);

    let (status, body) = admin
        .post_form("/tokens", &[("name", &ok), ("role", "viewer")])
        .await;
    assert_eq!(status, 201, "{body:.300}");
    let token = between(&body, "id=\"new-token\">", "<").unwrap();
    assert_eq!(Api::new(&server.url, &token).get("/api/projects").await.0, 200);
    let (status, body) = admin
        .post_form("/tokens", &[("name", &long), ("role", "viewer")])
        .await;
    assert_eq!(status, 422, "{body:.300}");
    assert!(body.contains("1 to 64"), "the rule is stated: {body:.500}");

    let out = cli_create_token(&server.data_dir(), &ok);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("stg_"));
    let out = cli_create_token(&server.data_dir(), &long);
    assert!(!out.status.success(), "65 characters are refused by the CLI too");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--name") && stderr.contains("64"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stored_role_is_an_error_not_a_viewer() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut bob = server.user(&mut admin, "bob", "member").await;
    assert_eq!(bob.get("/projects").await.0, 200);
    {
        let db = db_of(&server.data_dir());
        // A role no CHECK allows: past the constraint the way each store lets a test.
        if crate::common::store::postgres() {
            db.batch(
                "ALTER TABLE users DROP CONSTRAINT users_role_check; UPDATE users SET role = 'owner' WHERE username = 'bob';",
            );
        } else {
            db.as_sqlite_batch(
                "PRAGMA ignore_check_constraints = ON; UPDATE users SET role = 'owner' WHERE username = 'bob';",
            );
        }
    }
    // Bob is not quietly a viewer: his session cannot be read at all.
    let (status, _) = bob.get("/projects").await;
    assert_eq!(status, 500);
    // Nor does the admin's list of users show him as one.
    let (status, body) = admin.get("/users").await;
    assert_eq!(status, 500, "{body:.300}");
    server.stop().await;
}

const CANARY: &str = "withheld-canary-5d1e";
const NOTE: &str = "log withheld: the secrets could not be loaded to mask it";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_masked_is_withheld_and_the_deployment_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let port = server.port();
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("withheld", &["one"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "CANARY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "agent-1").await;
    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let (_, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    // The server restarts (its masker is gone from memory) and the secret can no longer be
    // decrypted, so no masker can be rebuilt.
    server.kill().await;
    drop(agent);
    db_of(&data)
        .execute("UPDATE secrets SET encrypted_value = ?1", [vec![0u8]])
        .unwrap();
    let server = ServerProcess::spawn(&data, &format!("127.0.0.1:{port}"), &[], &log).await;

    let mut agent = TestAgent::connect(&api.url, &token, Some(vec![id])).await;
    api.wait_online(agent_id).await;
    agent.log(id, 1, &format!("connecting with {CANARY}")).await;
    agent.log(id, 2, &format!("still {CANARY}")).await;
    agent
        .send(json!({"type": "STATUS", "deployment_id": id, "status": "FAIL",
            "services": [{"name": "web", "state": CANARY, "health": "", "exit_code": 1}],
            "error": format!("boom {CANARY}")}))
        .await;
    assert_eq!(agent.recv().await["type"], "ACK");
    let d = api.wait_finished(id, Duration::from_secs(10)).await;
    assert_eq!(d["error"], NOTE, "{d}");
    assert!(!d.to_string().contains(CANARY), "{d}");
    let logs = wait_for("the note stored", Duration::from_secs(10), || {
        let api = api.clone();
        async move {
            let (_, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
            (!logs.as_array()?.is_empty()).then_some(logs)
        }
    })
    .await;
    let lines = logs.as_array().unwrap();
    assert_eq!(lines.len(), 1, "one note, no lines: {logs}");
    assert_eq!(lines[0]["line"], NOTE);
    assert!(!logs.to_string().contains(CANARY));
    let (_, page) = api.get(&format!("/api/deployments/{id}")).await;
    assert!(!page.to_string().contains(CANARY));
    assert!(server.terminate().await.success());
}
