//! One rule per kind of name, in the API and the pages alike: agent names refuse markup, paths
//! and duplicates within an environment; project and environment names agree across surfaces.

use serde_json::json;

use crate::common::TestServer;
use crate::web_support::{WebServer, between};

const BAD_AGENT_NAMES: [&str; 4] = ["<script>", "../../x", "a b", ".hidden"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_markup_paths_and_duplicate_agent_names_naming_the_field() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, envs) = api.project("shop", &["staging", "prod"]).await;
    let path = format!("/api/environments/{}/agents", envs[0]);
    for bad in BAD_AGENT_NAMES {
        let (status, err) = api.post(&path, json!({"name": bad})).await;
        assert_eq!(status, 422, "{bad} → {err}");
        assert_eq!(err["error"]["code"], "invalid_field", "{bad} → {err}");
        assert_eq!(err["error"]["field"], "name", "{bad} → {err}");
    }
    let (_, list) = api.get("/api/agents").await;
    assert_eq!(list, json!([]), "nothing half-saved");

    api.agent(envs[0], "web-1").await;
    let (status, err) = api.post(&path, json!({"name": "web-1"})).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "name_taken", "{err}");
    assert_eq!(err["error"]["field"], "name", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("name:") && message.contains("web-1"),
        "{message}"
    );
    // Surrounding blanks do not make another name.
    assert_eq!(api.post(&path, json!({"name": " web-1 "})).await.0, 409);
    // Unique per environment: another environment may use it.
    api.agent(envs[1], "web-1").await;
    // A revoked agent keeps its name.
    let (_, list) = api.get("/api/agents").await;
    let first = list[0]["id"].as_i64().unwrap();
    assert_eq!(api.delete(&format!("/api/agents/{first}")).await.0, 204);
    assert_eq!(api.post(&path, json!({"name": "web-1"})).await.0, 409);
    let (_, list) = api.get("/api/agents").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_page_applies_the_same_name_rule() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let (status, _) = admin
        .post_form(
            "/projects",
            &[("name", "shop"), ("compose_path", "/srv/shop.yml")],
        )
        .await;
    assert_eq!(status, 303);
    let (status, _) = admin
        .post_form("/projects/1/environments", &[("name", "staging")])
        .await;
    assert_eq!(status, 303);

    for bad in BAD_AGENT_NAMES {
        let (status, body) = admin
            .post_form("/agents", &[("environment_id", "1"), ("name", bad)])
            .await;
        assert_eq!(status, 422, "{bad}");
        assert!(
            body.contains("id=\"name-error\""),
            "{bad}: error next to the name field"
        );
        assert!(!body.contains("<script>"), "{bad}: escaped when shown back");
    }
    let (_, page) = admin.get("/agents").await;
    assert!(page.contains("No agents yet."), "nothing half-saved");

    // Created: POST → redirect → GET. The token is on the page once; a reload (or anyone else)
    // gets no token and creates no second agent.
    let (status, _, headers) = admin
        .post_form_headers("/agents", &[("environment_id", "1"), ("name", "web-1")])
        .await;
    assert_eq!(status, 303);
    let shown = headers["location"].to_str().unwrap().to_owned();
    assert!(shown.starts_with("/agents/1/created?once="), "{shown}");
    let (status, body) = admin.get(&shown).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("id=\"agent-token\""),
        "the token shown once: {body}"
    );
    assert!(
        body.contains("/agent/install.sh | sudo sh"),
        "the installer is the main path"
    );
    let token = between(&body, "id=\"agent-token\">", "<").unwrap();
    assert!(token.starts_with("stga_"));
    let (status, again) = admin.get(&shown).await;
    assert_eq!(status, 200);
    assert!(
        !again.contains(&token) && again.contains("shown once"),
        "a reload shows no token"
    );
    let (_, listed) = admin.get("/agents").await;
    assert_eq!(listed.matches("href=\"/agents/").count(), 1, "one agent, not two");
    let (status, body) = admin
        .post_form("/agents", &[("environment_id", "1"), ("name", "web-1")])
        .await;
    assert_eq!(status, 409);
    assert!(
        body.contains("id=\"name-error\""),
        "the duplicate is reported at the name field"
    );
    assert!(body.contains("already has an agent named"), "{body}");

    // A duplicate project or environment name is also reported at its field, on both surfaces.
    let api = crate::common::Api::new(&server.url, &crate::common::admin_token(&server.data_dir()));
    let (status, err) = api
        .post(
            "/api/projects",
            json!({"name": "shop", "compose_path": "/srv/y.yml"}),
        )
        .await;
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (409, Some("name_taken"), Some("name")),
        "{err}"
    );
    let (status, body) = admin
        .post_form("/projects/1/environments", &[("name", "staging")])
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"name-error\""), "{body}");
    server.stop().await;
}

/// Names tried on both surfaces, and whether the rule accepts them.
fn project_names() -> Vec<(String, bool)> {
    vec![
        ("ok-1".into(), true),
        ("a".repeat(63), true),
        ("a".repeat(64), false),
        ("Bad Name".into(), false),
        ("-x".into(), false),
        ("é".into(), false),
        ("<script>".into(), false),
        ("../x".into(), false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_and_environment_names_follow_one_rule_in_the_api_and_the_pages() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let api = crate::common::Api::new(&server.url, &crate::common::admin_token(&server.data_dir()));
    for (name, ok) in project_names() {
        // The API first, then the page: the same name when it is bad, a distinct one of the same
        // shape when it is good (the API's project already holds it).
        let (status, err) = api
            .post(
                "/api/projects",
                json!({"name": name, "compose_path": "/srv/x.yml"}),
            )
            .await;
        if ok {
            assert_eq!(status, 201, "{name} → {err}");
        } else {
            assert_eq!(
                (status, err["error"]["field"].as_str()),
                (422, Some("name")),
                "{name}"
            );
        }
        let page_name = if ok {
            format!("p{}", &name[1..])
        } else {
            name.clone()
        };
        let (status, body) = admin
            .post_form(
                "/projects",
                &[("name", page_name.as_str()), ("compose_path", "/srv/x.yml")],
            )
            .await;
        if ok {
            assert_eq!(status, 303, "{page_name}: {body}");
        } else {
            assert_eq!(status, 422, "{page_name}");
            assert!(body.contains("id=\"name-error\""), "{page_name}");
        }
    }

    let (pid, _) = api.project("envs", &[]).await;
    for (name, ok) in [
        ("staging", true),
        ("Prod", false),
        (&*"e".repeat(33), false),
        ("e/x", false),
    ] {
        let (status, _) = api
            .post(
                &format!("/api/projects/{pid}/environments"),
                json!({"name": name}),
            )
            .await;
        assert_eq!(status, if ok { 201 } else { 422 }, "API {name}");
        let page_name = if ok { "production" } else { name };
        let (status, body) = admin
            .post_form(&format!("/projects/{pid}/environments"), &[("name", page_name)])
            .await;
        assert_eq!(status, if ok { 303 } else { 422 }, "page {page_name}: {body}");
    }
    server.stop().await;
}
