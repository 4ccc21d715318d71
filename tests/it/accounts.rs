//! Accounts (issue 15): changing your own password (the current one required and rate limited
//! like a sign-in, other sessions ended, audited, the password never stored or logged in clear),
//! password-reset links an admin issues (single use, expiring, withdrawable, ending sessions),
//! and "sign out everywhere" (every session and live socket ended).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, ServerProcess};
use crate::web_support::{PASSWORD, WebClient, WebServer, between, location};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A canary: if it shows up in the database file or the log, a password leaked.
const CANARY: &str = "canary-pw-5d1e7a93c0";

async fn open_dashboard(url: &str, c: &WebClient) -> Ws {
    let mut req = format!("{}/ws/dashboard", url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", c.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", url.parse().unwrap());
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

fn audit_actions(data_dir: &std::path::Path) -> Vec<(String, String)> {
    let c = crate::common::open_db(data_dir);
    c.rows("SELECT action, detail FROM audit_log ORDER BY id", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

/// Every byte of the database (file and write-ahead log) as text, for a canary search.
fn db_bytes(data_dir: &std::path::Path) -> String {
    String::from_utf8_lossy(&crate::common::store::store_bytes(data_dir)).into_owned()
}

/// Signed in from the session page: 200 on /account.
async fn signed_in(c: &mut WebClient) -> bool {
    c.get("/account").await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_needs_the_current_one_ends_other_sessions_and_never_stores_it_in_clear() {
    // A real process, so its whole log (at debug) can be searched for the canary.
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("server.log"));
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let token: String = text
        .split("/setup?token=")
        .nth(1)
        .expect("setup link in the log")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        .collect();
    let mut ada = WebClient::new(&server.url);
    let (status, _, _) = ada
        .post_form_raw(
            "/setup",
            &[
                ("token", token.as_str()),
                ("username", "ada"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, 303);
    ada.refresh_csrf().await;
    // A second session of ada's (another browser), with a live socket.
    let mut other = WebClient::new(&server.url);
    assert_eq!(other.sign_in("ada", PASSWORD).await.0, 303);
    let mut socket = open_dashboard(&server.url, &other).await;
    assert!(!closes_within(&mut socket, Duration::from_millis(300)).await);

    // A wrong current password: a clear error, nothing changed.
    let (status, body) = ada
        .post_form(
            "/account/password",
            &[
                ("current_password", "not the password"),
                ("password", CANARY),
                ("confirm", CANARY),
            ],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_lowercase().contains("the current password is wrong"),
        "{body}"
    );
    // The new one follows the setup rules; the two must match.
    let (status, body) = ada
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("password", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_lowercase().contains("at least 10 characters"), "{body}");
    let (status, body) = ada
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("password", CANARY),
                ("confirm", "something else"),
            ],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_lowercase().contains("the two passwords differ"), "{body}");
    assert!(signed_in(&mut other).await, "nothing changed yet");

    let (status, body) = ada
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("password", CANARY),
                ("confirm", CANARY),
            ],
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert!(signed_in(&mut ada).await, "this session stays");
    assert!(!signed_in(&mut other).await, "the other session ended");
    assert!(
        closes_within(&mut socket, Duration::from_secs(3)).await,
        "the other session's socket closed"
    );
    let (_, page) = ada.get("/account?done=password-changed").await;
    assert!(page.contains("Password changed"), "{page}");

    // The old password no longer signs in; the new one does.
    assert_eq!(WebClient::new(&server.url).sign_in("ada", PASSWORD).await.0, 401);
    assert_eq!(WebClient::new(&server.url).sign_in("ada", CANARY).await.0, 303);

    let audit = audit_actions(&data);
    assert!(
        audit
            .iter()
            .any(|(a, d)| a == "user.password_change" && d.contains("1 other session")),
        "{audit:?}"
    );
    assert!(!audit.iter().any(|(_, d)| d.contains(CANARY)));
    server.terminate().await;
    assert!(
        !db_bytes(&data).contains(CANARY),
        "the password is in the database in clear"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(CANARY), "the password is in the log");
    assert!(
        text.contains("wrong current password"),
        "the refusal is logged (without the password)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_count_against_the_sign_in_limit() {
    let server = WebServer::start_with(|c| c.auth.login_max_failures_per_account = 2).await;
    let mut root = server.admin("root").await;
    for _ in 0..2 {
        let (status, body) = root
            .post_form(
                "/account/password",
                &[
                    ("current_password", "a wrong guess!"),
                    ("password", "a new password 1"),
                    ("confirm", "a new password 1"),
                ],
            )
            .await;
        assert_eq!(status, 422, "{body}");
    }
    // The account's free failures from this address are used: even the right one now waits,
    // and so does a sign-in of that account from this address.
    let (status, body) = root
        .post_form(
            "/account/password",
            &[
                ("current_password", PASSWORD),
                ("password", "a new password 1"),
                ("confirm", "a new password 1"),
            ],
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.to_lowercase().contains("too many failed sign-in attempts"),
        "{body}"
    );
    assert_eq!(server.client().sign_in("root", PASSWORD).await.0, 429);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_changes_only_the_callers_own_password() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let mut ada = server.user(&mut root, "ada", "member").await;
    let (status, body) = ada
        .post_form("/tokens", &[("name", "ci"), ("role", "member")])
        .await;
    assert_eq!(status, 201, "{body}");
    let token = between(&body, "id=\"new-token\">", "<").unwrap();
    let api = Api::new(&server.url, &token);
    let (status, body) = api
        .post(
            "/api/account/password",
            json!({"current_password": "wrong wrong wrong", "password": "ada's new password"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "current_password", "{body}");
    let (status, body) = api
        .post(
            "/api/account/password",
            json!({"current_password": PASSWORD, "password": "ada's new password"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 1, "{body}");
    assert!(
        !signed_in(&mut ada).await,
        "a token keeps no session: ada's browser session ended"
    );
    assert_eq!(server.client().sign_in("ada", "ada's new password").await.0, 303);
    assert_eq!(
        server.client().sign_in("root", PASSWORD).await.0,
        303,
        "root's is untouched"
    );
    // A CLI token stands for nobody: no account to change.
    let cli = Api::new(
        &server.url,
        &crate::common::cli_token(&server.data_dir(), "c", "admin"),
    );
    let (status, _) = cli
        .post(
            "/api/account/password",
            json!({"current_password": PASSWORD, "password": "whatever whatever"}),
        )
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// Issue a reset link for user `id` as `admin`; its token.
async fn reset_link(admin: &mut WebClient, id: i64, extra: &[(&str, &str)]) -> (u16, String) {
    let (status, body) = admin.post_form(&format!("/users/{id}/reset"), extra).await;
    match between(&body, "/reset?token=", "<") {
        Some(token) => (status, token),
        None => (status, body),
    }
}

async fn use_link(server: &WebServer, token: &str, password: &str) -> (u16, String, WebClient) {
    let mut c = server.client();
    let (status, body, headers) = c
        .post_form_raw(
            "/reset",
            &[("token", token), ("password", password), ("confirm", password)],
        )
        .await;
    if status == 303 {
        assert_eq!(location(&headers), "/");
    }
    (status, body, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_link_works_once_ends_every_session_and_can_be_withdrawn() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let mut ada = server.user(&mut root, "ada", "member").await; // user 2
    let mut socket = open_dashboard(&server.url, &ada).await;
    let (status, token) = reset_link(&mut root, 2, &[]).await;
    assert_eq!(status, 201, "{token}");
    let (status, page) = server.client().get(&format!("/reset?token={token}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("ada"), "{page}");
    // The new password follows the usual rules.
    let (status, body, _) = use_link(&server, &token, "short").await;
    assert_eq!(status, 422, "{body}");
    let (status, _, mut fresh) = use_link(&server, &token, "ada reset password").await;
    assert_eq!(status, 303);
    assert!(signed_in(&mut fresh).await, "the link signs the person in afresh");
    assert!(!signed_in(&mut ada).await, "every earlier session ended");
    assert!(
        closes_within(&mut socket, Duration::from_secs(3)).await,
        "and its sockets closed"
    );
    assert_eq!(server.client().sign_in("ada", PASSWORD).await.0, 401);
    assert_eq!(server.client().sign_in("ada", "ada reset password").await.0, 303);
    // Used: not again.
    let (status, body, _) = use_link(&server, &token, "another password").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not valid"), "{body}");
    assert_eq!(server.client().get(&format!("/reset?token={token}")).await.0, 404);

    // Withdrawn: dead; a newer link replaces an older open one.
    let (_, first) = reset_link(&mut root, 2, &[]).await;
    let (_, second) = reset_link(&mut root, 2, &[]).await;
    assert_eq!(
        use_link(&server, &first, "first first first").await.0,
        404,
        "replaced"
    );
    let (_, users) = root.get("/users").await;
    let id = between(&users, "/resets/", "/revoke").expect("the open link is listed");
    let (status, _) = root.post_form(&format!("/resets/{id}/revoke"), &[]).await;
    assert_eq!(status, 303);
    assert_eq!(
        use_link(&server, &second, "second second second").await.0,
        404,
        "withdrawn"
    );

    // Expired: dead.
    let (_, third) = reset_link(&mut root, 2, &[]).await;
    let db = crate::common::open_db(&server.data_dir());
    db.execute("UPDATE password_resets SET expires_at = 1", [])
        .unwrap();
    assert_eq!(
        use_link(&server, &third, "third third third").await.0,
        404,
        "expired"
    );

    // A disabled account gets none, and a link dies with the account's disabling.
    let (_, fourth) = reset_link(&mut root, 2, &[]).await;
    let (status, _) = root.post_form("/users/2/disable", &[("disabled", "true")]).await;
    assert_eq!(status, 303);
    assert_eq!(
        use_link(&server, &fourth, "fourth fourth fourth").await.0,
        404,
        "disabled"
    );
    let (status, body) = reset_link(&mut root, 2, &[]).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("is disabled"), "{body}");

    let audit = audit_actions(&server.data_dir());
    for action in [
        "user.password_reset_issue",
        "user.password_reset",
        "user.password_reset_revoke",
    ] {
        assert!(audit.iter().any(|(a, _)| a == action), "{action}: {audit:?}");
    }
    // Only hashes are stored.
    for t in [&token, &first, &second, &third, &fourth] {
        assert!(!db_bytes(&server.data_dir()).contains(t.as_str()));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_only_account_has_no_password_to_change_and_gets_a_link_only_when_asked() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    // A GitHub-only account, as a first GitHub sign-in creates it.
    let db = crate::common::open_db(&server.data_dir());
    let id: i64 = db
        .query_row(
            "INSERT INTO users (username, display_name, role, github_login, created_at) VALUES ('gh', '', 'member', 'gh', 0) RETURNING id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (status, body) = reset_link(&mut root, id, &[]).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("has no password"), "{body}");
    let (status, token) = reset_link(&mut root, id, &[("add_password", "true")]).await;
    assert_eq!(status, 201, "{token}");
    assert_eq!(use_link(&server, &token, "gh now has one").await.0, 303);
    assert_eq!(server.client().sign_in("gh", "gh now has one").await.0, 303);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_everywhere_ends_every_session_and_socket_this_one_too() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let mut ada = server.user(&mut root, "ada", "member").await;
    let mut other = server.client();
    assert_eq!(other.sign_in("ada", PASSWORD).await.0, 303);
    let mut sockets = vec![
        open_dashboard(&server.url, &ada).await,
        open_dashboard(&server.url, &other).await,
    ];
    let mut roots = open_dashboard(&server.url, &root).await;
    let (_, page) = ada.get("/account").await;
    assert!(
        page.contains("Sign out everywhere") && page.contains("2</strong>"),
        "{page}"
    );
    let (status, body, headers) = ada
        .request(
            reqwest::Method::POST,
            "/account/sessions/end",
            Some(&[("_csrf", ada.csrf.clone().as_str())]),
            &[],
        )
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location(&headers), "/login");
    assert!(!signed_in(&mut ada).await, "this session ended");
    assert!(!signed_in(&mut other).await, "the other one too");
    for ws in &mut sockets {
        assert!(closes_within(ws, Duration::from_secs(3)).await, "socket closed");
    }
    assert!(
        !closes_within(&mut roots, Duration::from_millis(500)).await,
        "someone else's stays"
    );
    assert!(
        audit_actions(&server.data_dir())
            .iter()
            .any(|(a, d)| a == "user.sign_out_everywhere" && d.contains("2 session")),
    );
    server.stop().await;
}
