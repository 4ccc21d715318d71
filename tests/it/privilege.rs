//! Privilege follows the person (issue 11): a token acts with the lower of its own role and its
//! owner's current one and dies with a disabled owner; a token cannot mint tokens; an invitation
//! is capped by its inviter's current role and dies with a disabled inviter; sign-out, disable,
//! demotion and ended sessions close the person's open dashboard and live-log WebSockets.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, TestAgent, cli_token};
use crate::web_support::{PASSWORD, WebClient, WebServer, between};

/// A token made on the `/tokens` page by a signed-in user.
async fn page_token(c: &mut WebClient, name: &str, role: &str) -> String {
    let (status, body) = c.post_form("/tokens", &[("name", name), ("role", role)]).await;
    assert_eq!(status, 201, "{body}");
    between(&body, "id=\"new-token\">", "<").unwrap()
}

/// An invitation link's token, made by `admin` for `role`.
async fn invite(admin: &mut WebClient, role: &str) -> String {
    let (status, body) = admin.post_form("/users/invite", &[("role", role)]).await;
    assert_eq!(status, 201, "{body}");
    between(&body, "/invite?token=", "<").expect("invite link on the page")
}

/// Accept an invitation: true when the account was created.
async fn accept(server: &WebServer, token: &str, username: &str) -> bool {
    let mut c = server.client();
    let (status, body, _) = c
        .post_form_raw(
            "/invite",
            &[
                ("token", token),
                ("username", username),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    if status == 303 {
        return true;
    }
    assert!(body.contains("Link not valid"), "{status}: {body}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_acts_with_its_owners_current_role_and_dies_with_a_disabled_owner() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let cli = Api::new(&server.url, &cli_token(&server.data_dir(), "setup", "admin"));
    let mut ada = server.user(&mut root, "ada", "admin").await;
    let token = page_token(&mut ada, "ci", "admin").await;
    let api = Api::new(&server.url, &token);
    let (p1, _) = cli.project("one", &["staging"]).await;
    let (p2, _) = cli.project("two", &["staging"]).await;
    assert_eq!(
        api.delete(&format!("/api/projects/{p1}")).await.0,
        204,
        "admin while ada is"
    );

    let (status, body) = root.post_form("/users/2/role", &[("role", "member")]).await;
    assert!(status < 400, "{status}: {body}");
    let (status, body) = api.delete(&format!("/api/projects/{p2}")).await;
    assert_eq!(status, 403, "the admin token of a member is a member's: {body}");
    let (status, body) = api
        .post(
            "/api/projects",
            json!({"name": "three", "repo_url": "https://example.com/r.git"}),
        )
        .await;
    assert_eq!(status, 201, "and can still do what a member can: {body}");

    let (status, body) = root.post_form("/users/2/disable", &[("disabled", "true")]).await;
    assert!(status < 400, "{status}: {body}");
    assert_eq!(
        api.get("/api/projects").await.0,
        401,
        "a disabled owner's token is dead"
    );
    // A CLI token has no owner: it keeps its role.
    assert_eq!(cli.delete(&format!("/api/projects/{p2}")).await.0, 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_mint_tokens() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let token = page_token(&mut root, "ci", "admin").await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/tokens", server.url))
        .bearer_auth(&token)
        .form(&[("name", "child"), ("role", "viewer")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body = resp.text().await.unwrap();
    assert!(body.contains("a token cannot mint tokens"), "{body}");
    let (_, list) = root.get("/tokens").await;
    assert!(!list.contains("child"), "no token was made");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_is_capped_by_its_inviters_current_role_and_dies_with_them() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let mut ada = server.user(&mut root, "ada", "admin").await;
    let for_admin = invite(&mut ada, "admin").await;
    let for_member = invite(&mut ada, "member").await;
    let (status, body) = root.post_form("/users/2/role", &[("role", "member")]).await;
    assert!(status < 400, "{status}: {body}");
    assert!(
        !accept(&server, &for_admin, "eve").await,
        "a member's old admin invitation creates no admin"
    );
    assert!(
        accept(&server, &for_member, "max").await,
        "one at the inviter's role still works"
    );

    let mut bob = server.user(&mut root, "bob", "admin").await;
    let for_viewer = invite(&mut bob, "viewer").await;
    let bob_id = 4; // root, ada, max, bob
    let (status, body) = root
        .post_form(&format!("/users/{bob_id}/disable"), &[("disabled", "true")])
        .await;
    assert!(status < 400, "{status}: {body}");
    assert!(
        !accept(&server, &for_viewer, "vic").await,
        "a disabled inviter's invitation is dead"
    );
    server.stop().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(server: &WebServer, c: &WebClient, path: &str) -> Ws {
    let url = format!("{}{path}", server.url.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", c.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", server.url.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// True when the socket ends (close frame, end of stream or error) within `within`.
async fn closes_within(ws: &mut Ws, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_ended_sessions_disable_and_demotion_close_the_persons_sockets() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let cli = Api::new(&server.url, &cli_token(&server.data_dir(), "setup", "admin"));
    let (pid, envs) = cli.project("shop", &["staging"]).await;
    let (agent_id, token) = cli.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    cli.wait_online(agent_id).await;
    let (status, body) = cli.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = agent.recv().await["deployment_id"].as_i64().unwrap();
    agent.log(id, 1, "a running deploy").await;
    let live = format!("/ws/deployments/{id}");

    // (user id, what ends it) — users are made in this order: 2, 3, 4, 5.
    let mut people = Vec::new();
    for (name, role) in [
        ("sam", "member"),
        ("eli", "member"),
        ("dee", "member"),
        ("dom", "admin"),
    ] {
        people.push(server.user(&mut root, name, role).await);
    }
    for (i, what) in ["sign-out", "end sessions", "disable", "demotion"]
        .into_iter()
        .enumerate()
    {
        let user_id = i + 2;
        let c = &mut people[i];
        let mut dash = open(&server, c, "/ws/dashboard").await;
        let mut log = open(&server, c, &live).await;
        assert!(
            !closes_within(&mut dash, Duration::from_millis(300)).await,
            "{what}: open before"
        );
        assert!(
            !closes_within(&mut log, Duration::from_millis(300)).await,
            "{what}: open before"
        );
        let (status, body) = match what {
            "sign-out" => c.post_form("/logout", &[]).await,
            "end sessions" => {
                root.post_form(&format!("/users/{user_id}/sessions/end"), &[])
                    .await
            }
            "disable" => {
                root.post_form(&format!("/users/{user_id}/disable"), &[("disabled", "true")])
                    .await
            }
            _ => {
                root.post_form(&format!("/users/{user_id}/role"), &[("role", "viewer")])
                    .await
            }
        };
        assert!(status < 400, "{what}: {status}: {body}");
        assert!(
            closes_within(&mut dash, Duration::from_secs(2)).await,
            "{what}: dashboard socket closed"
        );
        assert!(
            closes_within(&mut log, Duration::from_secs(2)).await,
            "{what}: live-log socket closed"
        );
    }
    // Someone else's sockets stay open.
    let mut dash = open(&server, &root, "/ws/dashboard").await;
    let (status, _) = root.post_form("/users/2/disable", &[("disabled", "false")]).await;
    assert!(status < 400);
    assert!(
        !closes_within(&mut dash, Duration::from_millis(500)).await,
        "root's socket stays open"
    );
    server.stop().await;
}
