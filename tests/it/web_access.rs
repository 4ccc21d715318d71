//! The role × route matrix over the one authorization choke point, CSRF, sessions, sign-in
//! rules, and write-only secret values — all over real HTTP against a real appliance.

use reqwest::Method;
use serde_json::json;

use crate::common::{Api, cli_token};
use crate::web_support::{PASSWORD, WebClient, WebServer, between, location};

/// Who may call what. This table is this test's own: it must equal the router's table exactly,
/// so a route added without a decision here fails the test.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "public"),
    ("GET", "/readyz", "public"),
    ("GET", "/metrics", "public"),
    ("GET", "/ws/agent", "agent"),
    ("GET", "/agent/install.sh", "public"),
    ("GET", "/agent/download/{target}", "public"),
    ("GET", "/agent/download/{target}/sha256", "public"),
    ("GET", "/agent/download/{target}/sig", "public"),
    ("GET", "/agent/signing-key", "public"),
    ("GET", "/api/openapi.json", "public"),
    ("GET", "/api/projects", "viewer"),
    ("POST", "/api/projects", "member"),
    ("GET", "/api/projects/{id}", "project:viewer"),
    ("PATCH", "/api/projects/{id}", "project:maintainer"),
    ("DELETE", "/api/projects/{id}", "admin"),
    ("POST", "/api/projects/{id}/environments", "project:maintainer"),
    ("GET", "/api/environments/{id}", "project:viewer"),
    ("PATCH", "/api/environments/{id}", "project:maintainer"),
    ("DELETE", "/api/environments/{id}", "admin"),
    ("GET", "/api/environments/{id}/runtime", "project:viewer"),
    (
        "GET",
        "/api/environments/{id}/services/{service}/logs",
        "project:deployer",
    ),
    (
        "POST",
        "/api/environments/{id}/services/{service}/restart",
        "project:deployer",
    ),
    (
        "POST",
        "/api/environments/{id}/services/{service}/stop",
        "project:deployer",
    ),
    (
        "POST",
        "/api/environments/{id}/services/{service}/start",
        "project:deployer",
    ),
    ("POST", "/api/environments/{id}/down", "project:maintainer"),
    ("GET", "/api/projects/{id}/secrets", "project:viewer"),
    ("POST", "/api/projects/{id}/secrets", "project:maintainer"),
    ("PUT", "/api/secrets/{id}", "project:maintainer"),
    ("DELETE", "/api/secrets/{id}", "project:maintainer"),
    ("GET", "/api/secrets/{id}/versions", "project:viewer"),
    ("POST", "/api/environments/{id}/agents", "admin"),
    ("GET", "/api/agents", "viewer"),
    ("DELETE", "/api/agents/{id}", "admin"),
    ("POST", "/api/agents/{id}/identity/reset", "admin"),
    ("GET", "/api/projects/{id}/notifications", "project:viewer"),
    ("POST", "/api/projects/{id}/notifications", "project:maintainer"),
    ("DELETE", "/api/notifications/{id}", "project:maintainer"),
    ("GET", "/api/notifications/{id}/deliveries", "project:viewer"),
    ("POST", "/api/notifications/{id}/test", "project:maintainer"),
    ("GET", "/api/projects/{id}/members", "project:viewer"),
    (
        "PUT",
        "/api/projects/{id}/members/{user_id}",
        "project:maintainer",
    ),
    (
        "DELETE",
        "/api/projects/{id}/members/{user_id}",
        "project:maintainer",
    ),
    ("GET", "/api/projects/{id}/webhook", "project:viewer"),
    ("POST", "/api/projects/{id}/webhook", "project:maintainer"),
    // Push webhooks: authenticated by the signature over the body, not a session or token.
    ("POST", "/api/hooks/github/{project_id}", "public"),
    ("POST", "/api/hooks/gitlab/{project_id}", "public"),
    ("POST", "/api/hooks/gitea/{project_id}", "public"),
    ("POST", "/api/deploy/{project_id}", "project:deployer"),
    ("GET", "/api/deployments", "viewer"),
    ("GET", "/api/deployments/{id}", "project:viewer"),
    ("GET", "/api/deployments/{id}/logs", "project:viewer"),
    ("POST", "/api/deployments/{id}/cancel", "project:deployer"),
    ("POST", "/api/account/password", "viewer"),
    ("POST", "/deployments/{id}/cancel", "project:deployer"),
    ("POST", "/api/deployments/{id}/redeploy", "project:deployer"),
    ("POST", "/deployments/{id}/redeploy", "project:deployer"),
    ("POST", "/api/deployments/{id}/approve", "project:deployer"),
    ("POST", "/api/deployments/{id}/reject", "project:deployer"),
    ("POST", "/deployments/{id}/approve", "project:deployer"),
    ("POST", "/deployments/{id}/reject", "project:deployer"),
    ("POST", "/environments/{id}/protection", "admin"),
    ("GET", "/assets/{*path}", "public"),
    ("GET", "/login", "public"),
    ("POST", "/login", "public"),
    ("GET", "/login/2fa", "public"),
    ("POST", "/login/2fa", "public"),
    ("GET", "/setup", "public"),
    ("POST", "/setup", "public"),
    ("GET", "/invite", "public"),
    ("POST", "/invite", "public"),
    ("GET", "/reset", "public"),
    ("POST", "/reset", "public"),
    ("GET", "/auth/github", "public"),
    ("GET", "/auth/github/callback", "public"),
    ("GET", "/auth/oidc/{name}", "public"),
    ("GET", "/auth/oidc/{name}/callback", "public"),
    ("POST", "/logout", "viewer"),
    ("GET", "/account", "viewer"),
    ("POST", "/account/github", "viewer"),
    ("POST", "/account/github/unlink", "viewer"),
    ("POST", "/account/password", "viewer"),
    ("GET", "/account/2fa", "viewer"),
    ("POST", "/account/2fa/start", "viewer"),
    ("POST", "/account/2fa/confirm", "viewer"),
    ("POST", "/account/2fa/recovery", "viewer"),
    ("POST", "/account/2fa/disable", "viewer"),
    ("POST", "/account/sessions/end", "viewer"),
    ("GET", "/tokens", "viewer"),
    ("POST", "/tokens", "viewer"),
    ("POST", "/tokens/{id}/revoke", "viewer"),
    ("GET", "/", "viewer"),
    ("GET", "/ws/dashboard", "viewer"),
    ("GET", "/projects", "viewer"),
    ("POST", "/projects", "member"),
    ("GET", "/projects/{id}", "project:viewer"),
    ("GET", "/projects/{id}/deployments", "project:viewer"),
    ("GET", "/projects/{id}/secrets", "project:viewer"),
    ("GET", "/projects/{id}/agents", "project:viewer"),
    ("GET", "/projects/{id}/settings", "project:viewer"),
    ("POST", "/projects/{id}", "project:maintainer"),
    ("POST", "/projects/{id}/environments", "project:maintainer"),
    ("POST", "/environments/{id}/retention", "project:maintainer"),
    ("POST", "/environments/{id}/triggers", "project:maintainer"),
    ("POST", "/environments/{id}/rollback", "project:maintainer"),
    (
        "POST",
        "/environments/{id}/services/{service}/{action}",
        "project:deployer",
    ),
    ("POST", "/environments/{id}/down", "project:maintainer"),
    ("POST", "/environments/{id}/delete", "admin"),
    ("POST", "/projects/{id}/delete", "admin"),
    ("POST", "/projects/{id}/webhook", "project:maintainer"),
    ("POST", "/projects/{id}/members", "project:maintainer"),
    ("POST", "/projects/{id}/members/{user_id}", "project:maintainer"),
    (
        "POST",
        "/projects/{id}/members/{user_id}/delete",
        "project:maintainer",
    ),
    ("POST", "/projects/{id}/secrets", "project:maintainer"),
    ("POST", "/secrets/{id}", "project:maintainer"),
    ("POST", "/secrets/{id}/delete", "project:maintainer"),
    ("GET", "/projects/{id}/notifications", "project:viewer"),
    ("POST", "/projects/{id}/notifications", "project:maintainer"),
    ("POST", "/notifications/{id}/delete", "project:maintainer"),
    ("POST", "/notifications/{id}/test", "project:maintainer"),
    ("POST", "/projects/{id}/deploy", "project:deployer"),
    ("GET", "/deployments/{id}", "project:viewer"),
    ("GET", "/ws/deployments/{id}", "project:viewer"),
    (
        "GET",
        "/environments/{id}/services/{service}/logs",
        "project:deployer",
    ),
    (
        "GET",
        "/ws/environments/{id}/services/{service}/logs",
        "project:deployer",
    ),
    ("GET", "/agents", "viewer"),
    ("POST", "/agents", "admin"),
    ("GET", "/agents/{id}/created", "admin"),
    ("GET", "/agents/{id}", "viewer"),
    ("POST", "/agents/{id}/revoke", "admin"),
    ("POST", "/agents/{id}/delete", "admin"),
    ("POST", "/agents/{id}/identity/reset", "admin"),
    ("GET", "/users", "admin"),
    ("POST", "/users/invite", "admin"),
    ("POST", "/users/{id}/role", "admin"),
    ("POST", "/users/{id}/disable", "admin"),
    ("POST", "/users/{id}/github", "admin"),
    ("POST", "/users/{id}/sessions/end", "admin"),
    ("POST", "/invites/{id}/revoke", "admin"),
    ("POST", "/users/{id}/reset", "admin"),
    ("POST", "/users/{id}/2fa/reset", "admin"),
    ("POST", "/resets/{id}/revoke", "admin"),
    ("GET", "/audit", "admin"),
    ("GET", "/api/audit", "admin"),
];

fn access_name(a: stagely::web::auth::Access) -> String {
    use stagely::web::auth::Access;
    match a {
        Access::Public => "public".into(),
        Access::Agent => "agent".into(),
        Access::Role(r) => r.as_str().into(),
        Access::Project(r, _) => format!("project:{}", r.as_str()),
    }
}

/// The global rank a route needs when its object does not exist (or the caller holds no
/// project role): a global viewer is a viewer of every project, a member a maintainer.
fn level(name: &str) -> u8 {
    match name {
        "viewer" | "project:viewer" => 1,
        "member" | "project:deployer" | "project:maintainer" => 2,
        "admin" => 3,
        _ => 0,
    }
}

#[test]
fn every_route_is_in_this_tests_table() {
    let actual: Vec<(String, String, String)> = stagely::web::routes()
        .table()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned(), access_name(r.access)))
        .collect();
    let expected: Vec<(String, String, String)> = EXPECTED
        .iter()
        .map(|(m, p, a)| ((*m).to_owned(), (*p).to_owned(), (*a).to_owned()))
        .collect();
    for row in &actual {
        assert!(
            expected.contains(row),
            "route {row:?} is not in this test's table: decide its access here"
        );
    }
    for row in &expected {
        assert!(
            actual.contains(row),
            "table row {row:?} is not a route (or has another access)"
        );
    }
    assert_eq!(actual.len(), expected.len(), "duplicate rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_every_role_and_without_a_session() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let member = server.user(&mut admin, "maria", "member").await;
    let viewer = server.user(&mut admin, "victor", "viewer").await;
    let mut sessions = [
        (None, 0u8),
        (Some(viewer), 1),
        (Some(member), 2),
        (Some(admin), 3),
    ];
    for (method, path, access) in EXPECTED {
        // Ids that do not exist: an allowed call fails in its handler (404/422), never acts.
        let concrete = path
            .replace("{id}", "999999")
            .replace("{project_id}", "999999")
            .replace("{user_id}", "999999")
            .replace("{*path}", "app.css")
            .replace("{target}", "linux-x86_64")
            .replace("{service}", "web")
            .replace("{action}", "restart");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for (client, rank) in &mut sessions {
            let mut anonymous = WebClient::new(&server.url);
            let c = client.as_mut().unwrap_or(&mut anonymous);
            let csrf = c.csrf.clone();
            let headers: Vec<(&str, &str)> = if csrf.is_empty() {
                vec![]
            } else {
                vec![("x-csrf-token", &csrf)]
            };
            let form: Option<&[(&str, &str)]> = if method == Method::GET { None } else { Some(&[]) };
            let (status, body, _) = c.request(method.clone(), &concrete, form, &headers).await;
            if *path == "/account/sessions/end" && *rank > 0 && status == 303 {
                // "Sign out everywhere" did end this session: sign back in for the next routes.
                let name = ["", "victor", "maria", "root"][usize::from(*rank)];
                assert_eq!(c.sign_in(name, PASSWORD).await.0, 303);
            }
            let needed = level(access);
            let refused = status == 401 || status == 403;
            if *access == "public" || *access == "agent" {
                // Decided by the handler itself (agent tokens; sign-in forms).
                continue;
            }
            if *rank >= needed {
                assert!(
                    !refused,
                    "{method} {concrete} with rank {rank} got {status}: {body:.200}"
                );
            } else if *rank == 0 {
                assert_eq!(status, 401, "{method} {concrete} without a session: {body:.200}");
            } else {
                assert_eq!(status, 403, "{method} {concrete} with rank {rank}: {body:.200}");
            }
            if concrete == "/logout" && *rank > 0 {
                // That really signed out: sign in again for the remaining routes.
                let name = ["", "victor", "maria", "root"][usize::from(*rank)];
                let (s, _, _) = c.sign_in(name, PASSWORD).await;
                assert_eq!(s, 303);
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_origin_and_sessions() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let project = [("name", "shop"), ("compose_path", "/srv/shop/compose.yaml")];

    // A session request that changes state without the token is refused, whatever else is right.
    let (status, _, _) = admin.post_form_raw("/projects", &project).await;
    assert_eq!(status, 403, "no token");
    let mut forged = project.to_vec();
    forged.push(("_csrf", "csrf_forged"));
    let (status, _, _) = admin.post_form_raw("/projects", &forged).await;
    assert_eq!(status, 403, "wrong token");
    let (status, _, _) = admin
        .request(
            Method::POST,
            "/api/projects",
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 403, "JSON API with a session cookie needs the token too");
    let csrf = admin.csrf.clone();
    let (status, _, _) = admin
        .request(
            Method::POST,
            "/projects",
            Some(&project),
            &[("x-csrf-token", &csrf), ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, 403, "cross-origin");
    let (_, list) = admin.get("/projects").await;
    assert!(!list.contains("/projects/1\""), "nothing was created");
    // With the token (header or field) it goes through.
    let (status, _, headers) = admin
        .request(
            Method::POST,
            "/projects",
            Some(&project),
            &[("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(status, 303);
    assert!(location(&headers).starts_with("/projects/1"));
    // Bearer tokens are exempt: no browser sends them on its own.
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ci", "member"));
    assert_eq!(
        api.post("/api/projects", json!({"name": "api", "compose_path": "/x"}))
            .await
            .0,
        201
    );

    // A WebSocket from another site with the session cookie is refused before the upgrade.
    let (status, _, _) = admin
        .request(
            Method::GET,
            "/ws/dashboard",
            None,
            &[
                ("origin", "https://evil.example"),
                ("upgrade", "websocket"),
                ("connection", "upgrade"),
            ],
        )
        .await;
    assert_eq!(status, 403);

    // Sign-out ends the session at once: the old cookie is worthless.
    let stolen = admin.cookies.clone();
    let (status, _) = admin.post_form("/logout", &[]).await;
    assert_eq!(status, 303);
    let mut replay = WebClient::new(&server.url);
    replay.cookies = stolen;
    assert_eq!(replay.get("/projects").await.0, 401);

    // Disabling a user ends their sessions at once.
    let (s, _, _) = admin.sign_in("root", PASSWORD).await;
    assert_eq!(s, 303);
    let mut bob = server.user(&mut admin, "bob", "member").await;
    assert_eq!(bob.get("/projects").await.0, 200);
    let (_, users) = admin.get("/users").await;
    assert!(users.contains("/users/2/disable"), "bob is user 2");
    let bob_id = 2;
    let (status, _) = admin
        .post_form(&format!("/users/{bob_id}/disable"), &[("disabled", "true")])
        .await;
    assert_eq!(status, 303);
    assert_eq!(bob.get("/projects").await.0, 401, "disabled: session gone");
    let (status, body, _) = bob.sign_in("bob", PASSWORD).await;
    assert_eq!(status, 401);
    assert!(body.contains("Wrong username or password."));

    // The last admin cannot be demoted.
    let (status, body) = admin.post_form("/users/1/role", &[("role", "viewer")]).await;
    assert_eq!(status, 422, "{body:.300}");
    assert!(body.contains("no enabled admin"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_uniform_and_rate_limited_and_setup_works_once() {
    let server = WebServer::start_with(|c| c.auth.login_max_failures_per_account = 3).await;
    let link = server.setup_link.clone().unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let mut admin = server.admin("root").await;

    // The setup link is spent: it cannot make a second admin.
    let mut other = WebClient::new(&server.url);
    let (status, body, _) = other
        .post_form_raw(
            "/setup",
            &[
                ("token", &token),
                ("username", "mallory"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, 404, "{body:.200}");
    assert_eq!(other.get(&format!("/setup?token={token}")).await.0, 404);

    // Unknown user and wrong password read the same.
    let (s1, b1, _) = other.sign_in("nobody", "whatever-password").await;
    let (s2, b2, _) = other.sign_in("root", "wrong-password!").await;
    assert_eq!((s1, s2), (401, 401));
    let msg = "Wrong username or password.";
    assert!(b1.contains(msg) && b2.contains(msg));
    // Per account: two more failures (three in all) and even the right password waits.
    other.sign_in("root", "wrong-password!").await;
    other.sign_in("root", "wrong-password!").await;
    let (status, body, _) = other.sign_in("root", PASSWORD).await;
    assert_eq!(status, 429, "{body:.200}");
    assert!(body.contains("Too many failed sign-in attempts"));
    // The session that exists is unaffected.
    assert_eq!(admin.get("/").await.0, 200);

    // Unknown pages are 404 and styled; API 404s stay JSON.
    let (status, body) = admin.get("/no/such/page").await;
    assert_eq!(status, 404);
    assert!(body.contains("<html") && body.contains("Not found"));
    let (status, body) = admin.get("/api/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("\"not_found\""));
    // Not signed in: the sign-in form, with 401.
    let (status, body) = WebClient::new(&server.url).get("/projects").await;
    assert_eq!(status, 401);
    assert!(body.contains("action=\"/login\""));
    // A viewer sees a styled 403.
    let mut viewer = server.user(&mut admin, "vera", "viewer").await;
    let (status, body) = viewer.get("/users").await;
    assert_eq!(status, 403);
    assert!(body.contains("Forbidden"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_validate_next_to_the_field_and_secret_values_never_come_back() {
    const CANARY: &str = "canary-7f3a9c1e-never-in-html";
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;

    let (status, body) = admin
        .post_form(
            "/projects",
            &[("name", "Bad Name"), ("compose_path", "/srv/x.yml")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"name-error\""), "error next to the name field");
    assert!(
        body.contains("value=\"Bad Name\""),
        "the form keeps what was typed"
    );
    let (_, list) = admin.get("/projects").await;
    assert!(list.contains("No projects yet."), "nothing half-saved");

    let (status, _) = admin
        .post_form(
            "/projects",
            &[("name", "shop"), ("compose_path", "/srv/shop/compose.yaml")],
        )
        .await;
    assert_eq!(status, 303);
    let (status, _) = admin
        .post_form("/projects/1/environments", &[("name", "staging")])
        .await;
    assert_eq!(status, 303);
    // The environment's log retention form: a bad number comes back next to its field, nothing
    // saved; a good one is saved and shown; empty returns to the default.
    let (status, body) = admin
        .post_form(
            "/environments/1/retention",
            &[("log_keep_deployments", "12"), ("log_keep_days", "-4")],
        )
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"log_keep_days-error\""), "{body}");
    assert!(body.contains("value=\"-4\""), "the form keeps what was typed");
    let (_, page) = admin.get("/projects/1/settings").await;
    assert!(
        page.contains("50 <span class=\"muted\">(default)</span>"),
        "nothing half-saved: {page}"
    );
    let (status, _) = admin
        .post_form(
            "/environments/1/retention",
            &[("log_keep_deployments", "12"), ("log_keep_days", "")],
        )
        .await;
    assert_eq!(status, 303);
    let (_, page) = admin.get("/projects/1/settings").await;
    assert!(
        page.contains("the last <strong>12</strong> deployments"),
        "{page}"
    );
    assert!(
        page.contains("30 <span class=\"muted\">(default)</span> days"),
        "{page}"
    );
    // A bad key: the value is not echoed back into the form.
    let (status, body) = admin
        .post_form(
            "/projects/1/secrets",
            &[
                ("key", "1BAD"),
                ("value", CANARY),
                ("scope", "global"),
                ("environment", ""),
            ],
        )
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("id=\"key-error\""));
    assert!(!body.contains(CANARY));
    let (status, _) = admin
        .post_form(
            "/projects/1/secrets",
            &[
                ("key", "DB_PASSWORD"),
                ("value", CANARY),
                ("scope", "global"),
                ("environment", "staging"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let (status, _) = admin
        .post_form("/secrets/1", &[("value", &format!("{CANARY}-v2"))])
        .await;
    assert_eq!(status, 303);
    let (_, page) = admin.get("/projects/1/secrets").await;
    assert!(
        page.contains("DB_PASSWORD") && page.contains("v2"),
        "listed with its version"
    );
    for path in [
        "/",
        "/projects",
        "/projects/1",
        "/projects/1/deployments",
        "/projects/1/secrets",
        "/projects/1/agents",
        "/projects/1/settings",
        "/agents",
        "/users",
        "/audit",
        "/account",
        "/tokens",
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.contains(CANARY), "{path} shows a secret value");
        // The CSP allows no inline script or style: the pages must need none.
        assert!(
            !body.contains("style=\"") && !body.contains("<style"),
            "{path}: inline style"
        );
        assert_eq!(
            body.matches("<script").count(),
            body.matches("<script src=\"/assets/").count(),
            "{path}: inline script"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_embedded_with_cache_headers() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let (_, page) = admin.get("/").await;
    let css = between(&page, "href=\"/assets/app.css", "\"").unwrap();
    assert!(css.starts_with("?v="));
    let (status, _, headers) = admin
        .request(Method::GET, &format!("/assets/app.css{css}"), None, &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "public, max-age=31536000, immutable");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/css"));
    let csp = headers["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, _) = admin
        .request(Method::GET, "/assets/app.css", None, &[("if-none-match", &etag)])
        .await;
    assert_eq!(status, 304);
    for script in ["htmx-2.0.11.min.js", "ext-ws-2.0.4.min.js"] {
        assert!(page.contains(script));
    }
    assert!(
        !page.contains("http://") || !page.contains("<script src=\"http"),
        "no external scripts"
    );
    assert!(!page.contains("style=\""), "no inline styles (CSP)");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_logs_a_working_setup_link_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server =
        crate::common::ServerProcess::spawn(&dir.path().join("data"), "127.0.0.1:0", &[], &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let token = between(&text, "/setup?token=", " ").expect("setup link in the log");
    let token = token.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-');
    let mut c = WebClient::new(&server.url);
    assert_eq!(c.get(&format!("/setup?token={token}")).await.0, 200);
    assert_eq!(c.get("/setup?token=setup_guessed").await.0, 404);
    let (status, _, _) = c
        .post_form_raw(
            "/setup",
            &[
                ("token", token),
                ("username", "first"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(c.get(&format!("/setup?token={token}")).await.0, 404, "used once");
    assert!(server.terminate().await.success());
    // A restart with a user prints no new link.
    let log2 = dir.path().join("server2.log");
    let server =
        crate::common::ServerProcess::spawn(&dir.path().join("data"), "127.0.0.1:0", &[], &log2).await;
    assert!(!std::fs::read_to_string(&log2).unwrap().contains("setup?token="));
    assert!(server.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_shown_once_capped_at_the_role_and_revocable() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut member = server.user(&mut admin, "mia", "member").await;
    let (status, body) = member
        .post_form("/tokens", &[("name", "ci"), ("role", "admin")])
        .await;
    assert_eq!(status, 422, "no token above one's own role");
    assert!(body.contains("higher role"));
    let (status, body) = member
        .post_form("/tokens", &[("name", "ci"), ("role", "member")])
        .await;
    assert_eq!(status, 201);
    let token = between(&body, "id=\"new-token\">", "<").unwrap();
    assert!(token.starts_with("stg_"));
    let api = Api::new(&server.url, &token);
    assert_eq!(api.get("/api/projects").await.0, 200);
    let (_, list) = member.get("/tokens").await;
    assert!(
        list.contains("ci") && !list.contains(&token),
        "listed, never shown again"
    );
    // Someone else's token is not theirs to revoke; their own is.
    let (status, _) = member.post_form("/tokens/1/revoke", &[]).await;
    assert_eq!(status, 303);
    assert_eq!(api.get("/api/projects").await.0, 401);
    let other = cli_token(&server.data_dir(), "ops", "admin");
    let (status, _) = member.post_form("/tokens/2/revoke", &[]).await;
    assert_eq!(status, 404, "a member cannot revoke the CLI's token");
    assert_eq!(Api::new(&server.url, &other).get("/api/projects").await.0, 200);
    let (status, _) = admin.post_form("/tokens/2/revoke", &[]).await;
    assert_eq!(status, 303, "an admin can");
    assert_eq!(Api::new(&server.url, &other).get("/api/projects").await.0, 401);
    server.stop().await;
}

/// The same matrix for the project-scoped routes, on objects that exist, as global viewers who
/// hold each project role on the target project and as a deployer of another project. A global
/// viewer reads every project; anything above reading needs the role on this very project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_project_route_with_every_project_role() {
    use stagely::web::auth::{Access, Scope};
    let server = WebServer::start_with(|c| c.agents.action_timeout_secs = 2).await;
    let mut admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let (other, _) = api.project("other", &["staging"]).await;
    // One finished deployment, then the agent leaves (actions answer agent_offline at once).
    let (agent_id, agent_token) = api.agent(envs[0], "shop-1").await;
    let mut agent = crate::common::TestAgent::connect(&api.url, &agent_token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let deployment = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    agent.status(deployment, "SUCCESS").await;
    api.wait_finished(deployment, std::time::Duration::from_secs(10))
        .await;
    drop(agent);
    api.wait_offline(agent_id).await;

    // Global viewers: 2 holds viewer on shop, 3 deployer, 4 maintainer, 5 deployer on `other`.
    let mut people = Vec::new();
    for (name, project, role) in [
        ("vic", pid, "viewer"),
        ("dee", pid, "deployer"),
        ("mae", pid, "maintainer"),
        ("otto", other, "deployer"),
    ] {
        let c = server.user(&mut admin, name, "viewer").await;
        let user_id = i64::try_from(people.len()).unwrap() + 2;
        let (status, body) = api
            .put(
                &format!("/api/projects/{project}/members/{user_id}"),
                json!({"role": role}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let rank = if project == pid {
            ["viewer", "deployer", "maintainer"]
                .iter()
                .position(|r| *r == role)
                .unwrap()
        } else {
            0
        };
        people.push((name, c, rank));
    }
    // Refused first, allowed last: an allowed call that acts (a deleted secret) comes after the
    // refusals on the same object.
    people.rotate_left(3);

    let table = stagely::web::routes();
    let mut n = 0;
    for spec in table.table() {
        let Access::Project(min, scope) = spec.access else {
            continue;
        };
        n += 1;
        let needed = ["viewer", "deployer", "maintainer"]
            .iter()
            .position(|r| *r == min.as_str())
            .unwrap();
        let i = n.to_string();
        // Objects a call may delete are made afresh for each route.
        let id = match scope {
            Scope::Project => pid,
            Scope::Environment => envs[0],
            Scope::Deployment => deployment,
            Scope::Secret => {
                let s = api
                    .ok(
                        &format!("/api/projects/{pid}/secrets"),
                        json!({"key": format!("KEY_{i}"), "value": "canary-matrix", "scope": "global"}),
                        201,
                    )
                    .await;
                s["id"].as_i64().unwrap()
            }
            Scope::Notification => {
                let c = api
                    .ok(
                        &format!("/api/projects/{pid}/notifications"),
                        json!({"kind": "webhook", "name": format!("n{i}"), "events": ["deploy.failed"], "url": "https://x.example/h"}),
                        201,
                    )
                    .await;
                c["id"].as_i64().unwrap()
            }
        };
        let concrete = spec
            .path
            .replace("{id}", &id.to_string())
            .replace("{project_id}", &id.to_string())
            // Root (user 1) holds no grant: a members call on it finds none (404), never acts.
            .replace("{user_id}", "1")
            .replace("{service}", "web")
            .replace("{action}", "restart");
        for (name, c, rank) in &mut people {
            let csrf = c.csrf.clone();
            let headers = [("x-csrf-token", csrf.as_str())];
            let form: Option<&[(&str, &str)]> = if spec.method == Method::GET {
                None
            } else {
                Some(&[])
            };
            let (status, body, _) = c.request(spec.method.clone(), &concrete, form, &headers).await;
            let method = &spec.method;
            if *rank >= needed {
                assert!(
                    status != 401 && status != 403,
                    "{method} {concrete} as {name} got {status}: {body:.200}"
                );
            } else {
                assert_eq!(status, 403, "{method} {concrete} as {name}: {body:.200}");
            }
        }
    }
    assert!(n > 50, "every project route was walked ({n})");
    server.stop().await;
}
