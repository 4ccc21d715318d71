//! Issue 15's input papercuts, in-process against real SQLite: ids never reused after a delete
//! (V16), audit entries that keep the object's name and project and the audit log filtered by
//! project and person (page and API), secret values with a NUL byte refused naming the key, a
//! warning for a service secret no release has, and the sign-in page's hint on a fresh install.

use serde_json::{Value, json};

use crate::common::{Api, admin_token};
use crate::web_support::{WebServer, between};

const CANARY: &str = "canary-nul-7c1f3e09";

async fn api_of(server: &WebServer) -> Api {
    Api::new(&server.url, &admin_token(&server.data_dir()))
}

/// A successful deployment of `env_id` whose release runs only `services` (as an agent that
/// reports releases would have left it).
fn release_of(server: &WebServer, project_id: i64, env_id: i64, services: &[&str]) {
    let c = crate::common::open_db(&server.data_dir());
    let token_hash: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ (env_id as u8)).collect();
    let agent: i64 = c
        .query_row(
            "INSERT INTO agents (environment_id, name, token_hash, created_at) VALUES (?1, 'r', ?2, 0) RETURNING id",
            stagely::db::params![env_id, token_hash],
            |r| r.get(0),
        )
        .unwrap();
    let deployment: i64 = c
        .query_row(
            "INSERT INTO deployments (project_id, environment_id, agent_id, status, git_ref, triggered_by, created_at, finished_at)
             VALUES (?1, ?2, ?3, 'success', 'main', 'test', 0, 1) RETURNING id",
            [project_id, env_id, agent],
            |r| r.get(0),
        )
        .unwrap();
    let services: Vec<Value> = services
        .iter()
        .map(|s| json!({"name": s, "image": format!("{s}:1"), "image_id": "sha256:00", "config_hash": "h"}))
        .collect();
    c.execute(
        "INSERT INTO releases VALUES (?1, ?2, ?3, 'r', NULL, 'hash', ?4, 0)",
        stagely::db::params![deployment, env_id, agent, Value::from(services).to_string()],
    )
    .unwrap();
}

#[tokio::test]
async fn a_deleted_projects_and_agents_id_is_never_given_again() {
    let server = WebServer::start().await;
    let _admin = server.admin("ada").await;
    let api = api_of(&server).await;
    let (first, _) = api.project("one", &["prod"]).await;
    let (second, envs) = api.project("two", &["prod"]).await;
    let (agent, _) = api.agent(envs[0], "a1").await;
    // Deleting the newest agent and project used to hand their ids to the next ones.
    assert_eq!(api.delete(&format!("/api/agents/{agent}")).await.0, 204);
    let c = crate::common::open_db(&server.data_dir());
    c.execute("DELETE FROM agents WHERE id = ?1", [agent]).unwrap();
    let (agent2, _) = api.agent(envs[0], "a2").await;
    assert!(agent2 > agent, "agent id {agent2} after deleting {agent}");
    assert_eq!(
        api.delete(&format!("/api/projects/{second}?stack_removed=true"))
            .await
            .0,
        204
    );
    let (third, _) = api.project("three", &["prod"]).await;
    assert!(
        third > second && second > first,
        "project ids {first}, {second}, then {third}"
    );
    // The audit entries of the deleted project still name it and its project.
    let (status, entries) = api.get(&format!("/api/audit?project={second}")).await;
    assert_eq!(status, 200, "{entries}");
    let entries = entries.as_array().unwrap();
    let delete = entries
        .iter()
        .find(|e| e["action"] == "project.delete")
        .expect("the delete is audited");
    assert_eq!(delete["target_name"], "two");
    assert_eq!(delete["project_id"], second);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "environment.create" && e["target_name"] == "two/prod")
    );
    assert!(entries.iter().all(|e| e["project_id"] == second), "{entries:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_audit_log_filters_by_project_and_person_and_paging_keeps_the_filter() {
    let server = WebServer::start().await;
    let mut ada = server.admin("ada").await;
    let mut bob = server.user(&mut ada, "bob", "member").await;
    let api = api_of(&server).await;
    let (shop, _) = api.project("shop", &["staging"]).await;
    let (blog, _) = api.project("blog", &[]).await;
    for i in 0..3 {
        let (status, body) = bob
            .post_form(
                &format!("/projects/{shop}/secrets"),
                &[("key", &format!("K{i}")), ("value", "v")],
            )
            .await;
        assert!(status == 303 || status == 200, "{status} {body}");
    }
    // By person: bob's three secrets, found by his bare name.
    let (_, by_bob) = api.get("/api/audit?actor=bob").await;
    let by_bob = by_bob.as_array().unwrap();
    assert!(by_bob.iter().all(|e| e["actor"] == "user:bob"), "{by_bob:?}");
    assert!(by_bob.iter().any(|e| e["action"] == "user.accept_invite"));
    let (_, by_bob_in_shop) = api
        .get(&format!("/api/audit?actor=user:bob&project={shop}"))
        .await;
    let by_bob_in_shop = by_bob_in_shop.as_array().unwrap();
    assert_eq!(by_bob_in_shop.len(), 3, "{by_bob_in_shop:?}");
    assert!(by_bob_in_shop.iter().all(|e| e["action"] == "secret.create"));
    assert_eq!(by_bob_in_shop[0]["target_name"], "K2");
    // By project: nothing of blog's among shop's, and both filters together.
    let (_, of_shop) = api.get(&format!("/api/audit?project={shop}")).await;
    assert!(of_shop.as_array().unwrap().len() >= 5, "{of_shop}");
    let (_, of_blog) = api.get(&format!("/api/audit?project={blog}&actor=bob")).await;
    assert_eq!(of_blog, json!([]));
    assert_eq!(api.get("/api/audit?project=x").await.0, 422);
    assert_eq!(api.get("/api/audit?limit=0").await.0, 422);
    // A page of one: the next page's link keeps the filter.
    let (_, page) = api
        .get(&format!("/api/audit?actor=bob&project={shop}&limit=1"))
        .await;
    let last = page[0]["id"].as_i64().unwrap();
    let (_, next) = api
        .get(&format!(
            "/api/audit?actor=bob&project={shop}&limit=1&before={last}"
        ))
        .await;
    assert_eq!(next[0]["target_name"], "K1");
    // The page: the filter form, the names, and a member may not see it.
    let (status, html) = ada.get(&format!("/audit?project={shop}&actor=bob")).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"audit-filter\""), "{html}");
    assert!(
        html.contains(&format!("<option value=\"{shop}\" selected>shop</option>")),
        "{html}"
    );
    assert!(html.contains("value=\"bob\""));
    assert!(html.contains("<strong>K2</strong>"));
    assert!(
        !html.contains("project.create"),
        "the filter leaves ada's entries out"
    );
    assert_eq!(bob.get("/audit").await.0, 403);
    let member = api.with_token(&crate::common::cli_token(&server.data_dir(), "m", "member"));
    assert_eq!(member.get("/api/audit").await.0, 403);
    server.stop().await;
}

#[tokio::test]
async fn a_secret_value_with_a_nul_byte_is_refused_naming_the_key_and_nothing_is_stored() {
    let server = WebServer::start().await;
    let mut ada = server.admin("ada").await;
    let api = api_of(&server).await;
    let (shop, _) = api.project("shop", &["staging"]).await;
    let value = format!("{CANARY}\0tail");
    let (status, body) = api
        .post(
            &format!("/api/projects/{shop}/secrets"),
            json!({"key": "DB_PASSWORD", "value": value, "scope": "global"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("DB_PASSWORD") && message.contains("NUL"),
        "{message}"
    );
    assert!(!message.contains(CANARY));
    assert_eq!(
        api.get(&format!("/api/projects/{shop}/secrets")).await.1,
        json!([])
    );
    // The form alike.
    let (status, html) = ada
        .post_form(
            &format!("/projects/{shop}/secrets"),
            &[("key", "API_KEY"), ("value", &value)],
        )
        .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("value of API_KEY contains a NUL byte"), "{html}");
    assert!(!html.contains(CANARY));
    assert_eq!(
        api.get(&format!("/api/projects/{shop}/secrets")).await.1,
        json!([])
    );
    // A new value for an existing secret alike; the old value stays.
    let created = api
        .ok(
            &format!("/api/projects/{shop}/secrets"),
            json!({"key": "TOKEN", "value": "ok", "scope": "global"}),
            201,
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    let (status, body) = api
        .put(&format!("/api/secrets/{id}"), json!({"value": value}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("TOKEN"), "{body}");
    assert_eq!(
        api.get(&format!("/api/projects/{shop}/secrets")).await.1[0]["version"],
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn a_service_secret_for_a_service_the_last_release_lacks_is_stored_with_a_warning() {
    let server = WebServer::start().await;
    let mut ada = server.admin("ada").await;
    let api = api_of(&server).await;
    let (shop, envs) = api.project("shop", &["staging", "prod"]).await;
    // No release yet: nothing to compare with, no warning.
    let body = api
        .ok(
            &format!("/api/projects/{shop}/secrets"),
            json!({"key": "A", "value": "v", "scope": "service", "service": "wbe"}),
            201,
        )
        .await;
    assert!(body.get("warnings").is_none(), "{body}");
    release_of(&server, shop, envs[0], &["web", "db"]);
    let body = api
        .ok(
            &format!("/api/projects/{shop}/secrets"),
            json!({"key": "B", "value": "v", "scope": "service", "service": "wbe", "environment": "staging"}),
            201,
        )
        .await;
    let warnings = body["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{body}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.contains("staging") && w.contains("no service wbe") && w.contains("it has: web, db"),
        "{w}"
    );
    // A service the release has: no warning. The list never carries warnings.
    let body = api
        .ok(
            &format!("/api/projects/{shop}/secrets"),
            json!({"key": "C", "value": "v", "scope": "service", "service": "web"}),
            201,
        )
        .await;
    assert!(body.get("warnings").is_none(), "{body}");
    let list = api.get(&format!("/api/projects/{shop}/secrets")).await.1;
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("warnings").is_none())
    );
    // The form shows it on the page it answers with.
    let (status, html) = ada
        .post_form(
            &format!("/projects/{shop}/secrets"),
            &[
                ("key", "D"),
                ("value", "v"),
                ("scope", "service"),
                ("service", "worker"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{html}");
    let notice = between(&html, "data-testid=\"secret-warning\">", "</p>").expect("the warning is shown");
    assert!(notice.contains("no service worker"), "{notice}");
    assert!(html.contains("Secret added."));
    server.stop().await;
}

#[tokio::test]
async fn the_sign_in_page_says_where_the_setup_link_is_only_while_no_user_exists() {
    let server = WebServer::start().await;
    let hint = "No admin yet: the one-time setup link is in the appliance&#39;s log.";
    let (status, html) = server.client().get("/login").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(hint)
            || html.contains("No admin yet: the one-time setup link is in the appliance's log."),
        "{html}"
    );
    let _ada = server.admin("ada").await;
    let (_, html) = server.client().get("/login").await;
    assert!(!html.contains("No admin yet"), "{html}");
    server.stop().await;
}
