//! Protected environments and deploy approvals (issue 16), over real HTTP against an in-process
//! appliance with a scripted agent: production-like environments start protected; only admins
//! change the protection, validated as a whole; an unlisted member is refused a deploy naming
//! who may; a listed one's deploy awaits approval, which its author may not give, an unlisted
//! member may not give, and another listed person gives once (then it is dispatched); the
//! approver's diff names secret keys and versions, never a value; an approval expires.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, WAIT, admin_token, wait_for};
use crate::web_support::{WebClient, WebServer, between};

const CANARY: &str = "canary-approval-5e1d";

async fn token_of(client: &mut WebClient) -> String {
    let (status, body) = client
        .post_form("/tokens", &[("name", "t"), ("role", "member")])
        .await;
    assert_eq!(status, 201, "{body}");
    between(&body, "id=\"new-token\">", "<").unwrap()
}

/// People: root (admin), maya and bob (listed), carl (member, unlisted); their API clients.
async fn people(server: &WebServer) -> (Api, Api, Api, Api) {
    let mut root = server.admin("root").await;
    let admin = Api::new(&server.url, &admin_token(&server.data_dir()));
    let mut maya = server.user(&mut root, "maya", "member").await;
    let mut bob = server.user(&mut root, "bob", "member").await;
    let mut carl = server.user(&mut root, "carl", "member").await;
    (
        admin,
        Api::new(&server.url, &token_of(&mut maya).await),
        Api::new(&server.url, &token_of(&mut bob).await),
        Api::new(&server.url, &token_of(&mut carl).await),
    )
}

fn audit_rows(server: &WebServer) -> Vec<(String, String, String)> {
    let db = crate::common::open_db(&server.data_dir());
    db.rows(
        "SELECT actor, action, detail FROM audit_log ORDER BY id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_starts_protected_and_only_an_admin_changes_the_protection_validated_as_a_whole() {
    let server = WebServer::start().await;
    let (admin, maya, _bob, _carl) = people(&server).await;
    let (_, envs) = admin.project("shop", &["production", "staging"]).await;
    let (_, prod) = admin.get(&format!("/api/environments/{}", envs[0])).await;
    assert_eq!(
        (&prod["protected"], &prod["require_approval"], &prod["deployers"]),
        (&json!(true), &json!(false), &json!([{"role": "maintainer"}])),
        "{prod}"
    );
    let (_, staging) = admin.get(&format!("/api/environments/{}", envs[1])).await;
    assert_eq!(staging["protected"], false, "{staging}");

    let path = format!("/api/environments/{}", envs[0]);
    // A maintainer (a global member) may not lift it.
    let (status, body) = maya.patch(&path, json!({"protected": false})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("global admin"), "{body}");
    // Unknown people, bad types: 422 naming the entry, nothing written.
    let (status, body) = admin
        .patch(
            &path,
            json!({"protected": false, "deployers": ["maintainer", "user:nobody"], "auto_rollback": true}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("nobody"), "{body}");
    let (status, body) = admin.patch(&path, json!({"protected": "yes"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin.patch(&path, json!({"deployers": [999]})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("999"), "{body}");
    let (status, body) = admin.patch(&path, json!({"deployers": "maintainer"})).await;
    assert_eq!(status, 422, "{body}");
    let (_, unchanged) = admin.get(&path).await;
    assert_eq!(unchanged, prod, "nothing half-written");
    // People by name, by user:name and by id, normalised and deduplicated.
    let bob_id: i64 = crate::common::open_db(&server.data_dir())
        .query_row("SELECT id FROM users WHERE username = 'bob'", [], |r| r.get(0))
        .unwrap();
    let (status, body) = admin
        .patch(
            &path,
            json!({"deployers": ["deployer", "maya", "user:bob", bob_id], "require_approval": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deployers"][0], json!({"role": "deployer"}), "{body}");
    assert_eq!(body["deployers"][1]["username"], "maya", "{body}");
    assert_eq!(
        body["deployers"][2],
        json!({"user_id": bob_id, "username": "bob"}),
        "{body}"
    );
    assert_eq!(body["deployers"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(body["require_approval"], true);
    let entry = audit_rows(&server)
        .into_iter()
        .find(|(_, a, _)| a == "environment.protection")
        .expect("audited");
    assert!(
        entry.2.contains("user:bob") && entry.2.contains("require_approval true"),
        "{entry:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_deploy_awaits_another_listed_persons_approval_then_is_dispatched() {
    let server = WebServer::start().await;
    let (admin, maya, bob, carl) = people(&server).await;
    let (pid, envs) = admin.project("shop", &["prod"]).await;
    admin
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}),
            201,
        )
        .await;
    let path = format!("/api/environments/{}", envs[0]);
    let (status, body) = admin
        .patch(
            &path,
            json!({"deployers": ["maya", "bob"], "require_approval": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (agent_id, token) = admin.agent(envs[0], "prod-1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    admin.wait_online(agent_id).await;

    // Carl is a maintainer of every project but not listed: refused, naming who may.
    let (status, body) = carl.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 403, "{body}");
    let msg = body.to_string();
    assert!(
        msg.contains("\\\"prod\\\"") && msg.contains("user:maya, user:bob"),
        "{body}"
    );

    let body = maya
        .ok(&format!("/api/deploy/{pid}"), json!({"ref": "v2"}), 202)
        .await;
    assert_eq!(body["status"], "awaiting_approval", "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert!(
        agent.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing is sent before the approval"
    );
    let (_, d) = admin.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["approval"]["required"], true, "{d}");
    assert_eq!(d["approval"]["diff"]["to_ref"], "v2", "{d}");
    assert_eq!(
        d["approval"]["diff"]["secrets"],
        json!([{"key": "DB_PASSWORD", "scope": "global", "from_version": null, "to_version": 1, "change": "added"}]),
        "{d}"
    );
    assert!(!d.to_string().contains(CANARY), "no value in the answer");

    let approve = format!("/api/deployments/{id}/approve");
    let (status, body) = maya.post(&approve, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("another person"), "{body}");
    let (status, body) = carl.post(&approve, json!({})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = bob.post(&approve, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let frame = agent.recv().await;
    assert_eq!(
        (frame["type"].as_str(), frame["deployment_id"].as_i64()),
        (Some("DEPLOY"), Some(id)),
        "{frame}"
    );
    let (status, body) = bob.post(&approve, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("approved by"), "{body}");
    let (_, d) = admin.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["approval"]["approved_by"], "user:bob (token t)", "{d}");
    let rows = audit_rows(&server);
    let approved = rows
        .iter()
        .find(|(_, a, _)| a == "deployment.approve")
        .expect("audited");
    assert!(approved.2.contains("approved by"), "{approved:?}");
    assert!(!format!("{rows:?}").contains(CANARY), "no value in the audit log");
    let outbox: i64 = crate::common::open_db(&server.data_dir())
        .query_row(
            "SELECT count(*) FROM notify_outbox WHERE payload LIKE ?1",
            [format!("%{CANARY}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outbox, 0);
    // The page shows the diff and no value.
    let mut root = server.client();
    root.sign_in("root", crate::web_support::PASSWORD).await;
    let (_, page) = root.get(&format!("/deployments/{id}")).await;
    assert!(page.contains("Approved by"), "{page}");
    assert!(!page.contains(CANARY));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_nobody_gives_expires_and_can_no_longer_be_given() {
    let server = WebServer::start_with(|c| {
        c.deploys.approval_ttl_secs = 1;
        c.deploys.agent_lost_timeout_secs = 1;
    })
    .await;
    let (admin, maya, bob, _carl) = people(&server).await;
    let (pid, envs) = admin.project("shop", &["prod"]).await;
    let (status, body) = admin
        .patch(
            &format!("/api/environments/{}", envs[0]),
            json!({"deployers": ["maya", "bob"], "require_approval": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (agent_id, token) = admin.agent(envs[0], "prod-1").await;
    let _agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    admin.wait_online(agent_id).await;
    let body = maya.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    let id = body["deployment_id"].as_i64().unwrap();
    // The reaper's sweep (every second here) ends it once the ttl has passed.
    let d: Value = wait_for("the approval to expire", WAIT, || {
        let admin = admin.clone();
        async move {
            let (_, d) = admin.get(&format!("/api/deployments/{id}")).await;
            (d["status"] == "expired").then_some(d)
        }
    })
    .await;
    assert!(d["approval"]["expires_at"].is_string(), "{d}");
    let (status, body) = bob
        .post(&format!("/api/deployments/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    server.stop().await;
}
