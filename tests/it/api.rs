//! The JSON API: validation names the field, ids that do not exist are 404, roles are enforced.

use serde_json::json;

use crate::common::{TestServer, cli_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_422_naming_the_field_and_nothing_is_half_written() {
    let server = TestServer::start().await;
    let api = &server.api;
    for (body, field) in [
        (json!({"name": "Bad Name", "compose_path": "/x.yml"}), "name"),
        (
            json!({"name": "ok", "compose_path": "relative.yml"}),
            "compose_path",
        ),
        (
            json!({"name": "ok", "compose_path": "/x.yml", "pull": "sometimes"}),
            "pull",
        ),
        (
            json!({"name": "ok", "repo_url": "https://u:pw@example.com/r.git"}),
            "repo_url",
        ),
        (
            json!({"name": "ok", "compose_path": "/x.yml", "git_ref": "--upload-pack=x"}),
            "git_ref",
        ),
        (json!({"nmae": "typo"}), "body"),
    ] {
        let (status, err) = api.post("/api/projects", body.clone()).await;
        assert_eq!(status, 422, "{body} → {err}");
        assert_eq!(err["error"]["field"], field, "{body} → {err}");
    }
    let (_, list) = api.get("/api/projects").await;
    assert_eq!(list, json!([]), "nothing half-saved");

    let (pid, _) = api.project("shop", &["staging"]).await;
    let (status, err) = api
        .post("/api/projects", json!({"name": "shop", "compose_path": "/y.yml"}))
        .await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("name_taken")));

    let secrets = format!("/api/projects/{pid}/secrets");
    let big = "v".repeat(64 * 1024 + 1);
    for (body, field) in [
        (json!({"key": "1BAD", "value": "v", "scope": "global"}), "key"),
        (json!({"key": "A-B", "value": "v", "scope": "global"}), "key"),
        (
            json!({"key": "K".repeat(257), "value": "v", "scope": "global"}),
            "key",
        ),
        (json!({"key": "OK", "value": big, "scope": "global"}), "value"),
        (json!({"key": "OK", "value": "v", "scope": "team"}), "scope"),
        (json!({"key": "OK", "value": "v", "scope": "service"}), "service"),
        (
            json!({"key": "OK", "value": "v", "scope": "global", "environment": "nope"}),
            "environment",
        ),
        (json!({"key": "OK", "value": 12345, "scope": "global"}), "body"),
    ] {
        let (status, err) = api.post(&secrets, body.clone()).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert!(
            !err.to_string().contains("12345"),
            "a rejected value is not echoed: {err}"
        );
    }
    let (_, list) = api.get(&secrets).await;
    assert_eq!(list, json!([]));

    // Exactly 64 KiB, empty and odd values are fine; values never come back.
    let (status, s) = api
        .post(
            &secrets,
            json!({"key": "BIG", "value": "v".repeat(64 * 1024), "scope": "global"}),
        )
        .await;
    assert_eq!(status, 201);
    assert!(s.get("value").is_none());
    let (status, s) = api
        .put(&format!("/api/secrets/{}", s["id"]), json!({"value": ""}))
        .await;
    assert_eq!((status, s["version"].as_i64()), (200, Some(2)), "{s}");
    let (status, err) = api
        .post(
            &secrets,
            json!({"key": "BIG", "value": "again", "scope": "global"}),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("secret_exists"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_and_credentials_are_checked() {
    let server = TestServer::start().await;
    let api = &server.api;
    for path in [
        "/api/projects/999",
        "/api/deployments/999",
        "/api/deployments/999/logs",
        "/api/projects/999/secrets",
    ] {
        let (status, err) = api.get(path).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {err}"
        );
    }
    assert_eq!(api.delete("/api/secrets/999").await.0, 404);
    assert_eq!(api.delete("/api/agents/999").await.0, 404);
    assert_eq!(
        api.post("/api/environments/999/agents", json!({"name": "x"}))
            .await
            .0,
        404
    );
    assert_eq!(api.post("/api/deploy/999", json!({})).await.0, 404);
    assert_eq!(api.get("/no/such/page").await.0, 404);

    let anonymous = api.with_token("");
    assert_eq!(anonymous.get("/api/projects").await.0, 401);
    assert_eq!(api.with_token("stg_forged").get("/api/projects").await.0, 401);
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/readyz").await.0, 200);

    let viewer = api.with_token(&cli_token(&server.data_dir(), "look", "viewer"));
    assert_eq!(viewer.get("/api/projects").await.0, 200);
    assert_eq!(
        viewer
            .post("/api/projects", json!({"name": "x", "compose_path": "/x"}))
            .await
            .0,
        403
    );
    let member = api.with_token(&cli_token(&server.data_dir(), "dev", "member"));
    let (pid, envs) = member.project("m", &["e"]).await;
    assert!(pid > 0);
    assert_eq!(
        member
            .post(
                &format!("/api/environments/{}/agents", envs[0]),
                json!({"name": "a"})
            )
            .await
            .0,
        403
    );
    assert_eq!(member.delete(&format!("/api/projects/{pid}")).await.0, 403);
    assert_eq!(api.delete(&format!("/api/projects/{pid}")).await.0, 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_updates_and_revalidates_a_project() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, _) = api.project("web", &[]).await;
    let (status, p) = api
        .patch(&format!("/api/projects/{pid}"), json!({"repo_url": "file:///srv/repo.git", "compose_path": "deploy/compose.yml", "pull": "never"}))
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["repo_url"].as_str(), p["pull"].as_str()),
        (Some("file:///srv/repo.git"), Some("never"))
    );
    // Clearing the repo while the compose path is relative is refused as a whole.
    let (status, err) = api
        .patch(&format!("/api/projects/{pid}"), json!({"repo_url": null}))
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("compose_path")),
        "{err}"
    );
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    assert_eq!(p["repo_url"], "file:///srv/repo.git");
    server.stop().await;
}

/// The API contract is served without signing in, is OpenAPI 3.1, lists every /api/ route with
/// the role it needs, and its schemas are the handlers' own (a deployment's fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_public_and_covers_the_api() {
    let server = TestServer::start().await;
    let anonymous = reqwest::get(format!("{}/api/openapi.json", server.api.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    assert_eq!(
        anonymous.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let doc: serde_json::Value = anonymous.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let deploy = &doc["paths"]["/api/deploy/{project_id}"]["post"];
    assert_eq!(deploy["x-stagely-access"], "project:deployer");
    assert_eq!(deploy["security"], json!([{"token": []}, {"session": []}]));
    assert_eq!(
        doc["paths"]["/api/projects/{id}"]["delete"]["x-stagely-access"],
        "admin"
    );
    let deployment = &doc["components"]["schemas"]["Deployment"]["properties"];
    for field in ["id", "status", "commit", "git_ref", "triggered_by", "secrets"] {
        assert!(
            deployment[field].is_object(),
            "Deployment.{field} in {deployment}"
        );
    }
    // Nothing outside /api/ (pages, the agent socket) is in the API contract.
    for path in doc["paths"].as_object().unwrap().keys() {
        assert!(path.starts_with("/api/"), "{path}");
    }
}
