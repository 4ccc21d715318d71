//! Two-factor for local accounts (issue 16): TOTP enrolment on the account page (a wrong then a
//! right code), the second sign-in step (no session before it), a replayed code refused,
//! recovery codes working once, the per-challenge and per-account limits (429), the challenge's
//! time limit, disabling (password + code), an admin's reset, `auth.require_admin_2fa`
//! confining an unenrolled admin, the secret and codes in clear in no DB column, log line or
//! audit row, and `stagely admin rotate-key` keeping two-factor working. Codes are computed here
//! with totp-rs from the secret the page shows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::ServerProcess;
use crate::web_support::{PASSWORD, WebClient, WebServer, between, location};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The code of the step `offset` steps from now (the server accepts one step either way).
fn code(secret: &str, offset: i64) -> String {
    let t = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let at = now_secs().saturating_add_signed(offset * 30);
    t.generate(at).to_string()
}

/// A code no step around now produces.
fn wrong_code(secret: &str) -> String {
    let near: Vec<String> = (-2..=2).map(|o| code(secret, o)).collect();
    (0..)
        .map(|n| format!("{:06}", 123_457 + n))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// Start well inside a 30 s step, so "the step before, now, the step after" stays true for the
/// next seconds of the test (a correctness wait, not a speed assertion).
async fn settle() {
    let into = now_secs() % 30;
    if into > 15 {
        tokio::time::sleep(Duration::from_secs(31 - into)).await;
    }
}

/// Enrol the signed-in client: start, read the secret off the page, a wrong code (refused),
/// then the code of the step before now. Answers the secret and the recovery codes.
async fn enrol(c: &mut WebClient) -> (String, Vec<String>) {
    let (status, _, headers) = c.post_form_headers("/account/2fa/start", &[]).await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/account/2fa");
    let (status, body) = c.get("/account/2fa").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("data:image/svg+xml;base64,"),
        "the QR code is inline: {body}"
    );
    let secret = between(&body, r#"data-testid="totp-secret">"#, "<").expect("secret on the page");
    let (status, body) = c
        .post_form("/account/2fa/confirm", &[("code", &wrong_code(&secret))])
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_lowercase().contains("the code is wrong"), "{body:.300}");
    settle().await;
    let (status, body) = c
        .post_form("/account/2fa/confirm", &[("code", &code(&secret, -1))])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Store these recovery codes now"), "{body}");
    let codes = recovery_codes(&body);
    assert_eq!(codes.len(), 10, "{body}");
    (secret, codes)
}

fn recovery_codes(body: &str) -> Vec<String> {
    body.split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_owned())
        .collect()
}

fn has_session(c: &WebClient) -> bool {
    c.cookies.iter().any(|(k, _)| k.contains("stagely_session"))
}

/// The password step: 303 to the second step and no session cookie yet.
async fn password_step(c: &mut WebClient, username: &str) {
    let (status, body, headers) = c
        .post_form_raw("/login", &[("username", username), ("password", PASSWORD)])
        .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location(&headers), "/login/2fa");
    assert!(
        !has_session(c),
        "no session before the second step: {:?}",
        c.cookies
    );
    assert_eq!(c.get("/account").await.0, 401);
    assert_eq!(c.get("/login/2fa").await.0, 200);
}

async fn second_step(c: &mut WebClient, code: &str) -> (u16, String) {
    let (status, body, _) = c.post_form_raw("/login/2fa", &[("code", code)]).await;
    if status == 303 {
        c.refresh_csrf().await;
    }
    (status, body)
}

fn audit(server_dir: &std::path::Path) -> Vec<(String, Option<String>)> {
    let c = crate::common::open_db(server_dir);
    c.rows("SELECT action, detail FROM audit_log ORDER BY id", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

/// Every byte of the database (file and write-ahead log) as text, for a canary search.
fn db_text(data_dir: &std::path::Path) -> String {
    String::from_utf8_lossy(&crate::common::store::store_bytes(data_dir)).into_owned()
}

fn assert_nowhere(text: &str, secret: &str, codes: &[String], what: &str) {
    assert!(!text.contains(secret), "the TOTP secret is in the {what}");
    for c in codes {
        assert!(!text.contains(c.as_str()), "a recovery code is in the {what}");
        assert!(
            !text.contains(&c.replace('-', "")),
            "a recovery code is in the {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_second_step_replay_recovery_codes_and_disable() {
    let server = WebServer::start().await;
    let mut root = server.admin("root").await;
    let (secret, codes) = enrol(&mut root).await;
    let (_, body) = root.get("/account").await;
    assert!(
        body.contains("10</strong> unused recovery code(s) left"),
        "{body}"
    );

    // The password alone opens no session; the enrolment's own code is not accepted again.
    let mut c = server.client();
    password_step(&mut c, "root").await;
    let (status, body) = second_step(&mut c, &code(&secret, -1)).await;
    assert_eq!(status, 401, "a replayed code: {body}");
    let (status, body) = second_step(&mut c, &code(&secret, 0)).await;
    assert_eq!(status, 303, "{body}");
    assert!(has_session(&c));
    assert_eq!(c.get("/account").await.0, 200);

    // The same code again, from another browser: refused (a step is accepted once).
    let mut d = server.client();
    password_step(&mut d, "root").await;
    assert_eq!(second_step(&mut d, &code(&secret, 0)).await.0, 401);
    // A recovery code works once.
    assert_eq!(second_step(&mut d, &codes[0]).await.0, 303);
    let mut e = server.client();
    password_step(&mut e, "root").await;
    assert_eq!(
        second_step(&mut e, &codes[0]).await.0,
        401,
        "a recovery code is spent"
    );
    let typed = codes[1].to_lowercase().replace('-', " ");
    assert_eq!(
        second_step(&mut e, &typed).await.0,
        303,
        "case and separators do not matter"
    );

    // New recovery codes need a current code; the old ones stop working.
    let (status, body) = root
        .post_form("/account/2fa/recovery", &[("code", &code(&secret, 1))])
        .await;
    assert_eq!(status, 200, "{body}");
    let fresh = recovery_codes(&body);
    assert_eq!(fresh.len(), 10);
    let mut f = server.client();
    password_step(&mut f, "root").await;
    assert_eq!(second_step(&mut f, &codes[2]).await.0, 401);

    // Disabling needs the password AND a code (or a recovery code).
    let (status, body) = root
        .post_form(
            "/account/2fa/disable",
            &[("password", "not the password"), ("code", &fresh[0])],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = root
        .post_form(
            "/account/2fa/disable",
            &[("password", PASSWORD), ("code", "AAAA-BBBB-CC")],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, _, headers) = root
        .post_form_headers(
            "/account/2fa/disable",
            &[("password", PASSWORD), ("code", &fresh[0])],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/account?done=2fa-off");
    let mut g = server.client();
    let (status, _, headers) = g.sign_in("root", PASSWORD).await;
    assert_eq!((status, location(&headers).as_str()), (303, "/"));

    // Audited, and never a secret or a code in the audit or in the database in clear.
    let rows = audit(&server.data_dir());
    for action in [
        "user.2fa.enable",
        "user.2fa.recovery_used",
        "user.2fa.wrong_code",
        "user.2fa.disable",
    ] {
        assert!(
            rows.iter().any(|(a, _)| a == action),
            "{action} audited: {rows:?}"
        );
    }
    let audit_text = format!("{rows:?}");
    let all: Vec<String> = codes.iter().chain(&fresh).cloned().collect();
    assert_nowhere(&audit_text, &secret, &all, "audit log");
    assert_nowhere(&db_text(&server.data_dir()), &secret, &all, "database");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_step_has_its_own_limits_per_challenge_and_per_account() {
    // 8 per account: the enrolment's wrong code counts too (one limiter for every code check).
    let server = WebServer::start_with(|c| c.auth.second_factor_max_failures_per_account = 8).await;
    let mut root = server.admin("root").await;
    let (secret, _) = enrol(&mut root).await;
    let wrong = wrong_code(&secret);

    // Five wrong codes void the challenge: even the right code then needs the password again.
    let mut c = server.client();
    password_step(&mut c, "root").await;
    for n in 1..5 {
        let (status, body) = second_step(&mut c, &wrong).await;
        assert_eq!(status, 401, "attempt {n}");
        assert!(body.contains("Wrong code"), "{body}");
    }
    let (status, body) = second_step(&mut c, &wrong).await;
    assert_eq!(status, 401);
    assert!(
        body.contains("Too many wrong codes. Enter your password again."),
        "{body}"
    );
    let (status, body) = second_step(&mut c, &code(&secret, 0)).await;
    assert_eq!(status, 401, "{body}");
    assert!(!has_session(&c));

    // The account's own limit across challenges (1 + 5 used): two more, then 429 + Retry-After.
    password_step(&mut c, "root").await;
    assert_eq!(second_step(&mut c, &wrong).await.0, 401);
    assert_eq!(second_step(&mut c, &wrong).await.0, 401);
    let (status, _, headers) = c
        .post_form_raw("/login/2fa", &[("code", &code(&secret, 0))])
        .await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0);
    assert!(!has_session(&c));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_older_than_its_time_limit_is_refused() {
    let server = WebServer::start_with(|c| c.auth.second_factor_challenge_secs = 1).await;
    let mut root = server.admin("root").await;
    let (secret, _) = enrol(&mut root).await;
    let mut c = server.client();
    password_step(&mut c, "root").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = second_step(&mut c, &code(&secret, 0)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("timed out"), "{body}");
    assert!(!has_session(&c));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_admin_2fa_confines_an_unenrolled_admin_and_an_admin_can_reset_someones_2fa() {
    let server = WebServer::start_with(|c| c.auth.require_admin_2fa = true).await;
    let mut root = server.admin("root").await;
    // Until enrolment: pages redirect to the account page, the API says why.
    for path in ["/", "/projects", "/users"] {
        let (status, _, headers) = root.request(reqwest::Method::GET, path, None, &[]).await;
        assert_eq!(status, 303, "{path}");
        assert_eq!(location(&headers), "/account?done=2fa-required");
    }
    let (status, body) = root.get("/account?done=2fa-required").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("requires two-factor authentication for admins"),
        "{body}"
    );
    let (status, body) = root.get("/api/projects").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("auth.require_admin_2fa"), "{body}");

    let (_secret, _) = enrol(&mut root).await;
    assert_eq!(
        root.get("/").await.0,
        200,
        "enrolled: the same session reaches everything"
    );
    assert_eq!(root.get("/api/projects").await.0, 200);
    let mut maria = server.user(&mut root, "maria", "member").await;
    assert_eq!(maria.get("/").await.0, 200, "a member is not confined");
    let (maria_secret, _) = enrol(&mut maria).await;

    // A lost phone: the admin resets maria's two-factor; she signs in with her password alone.
    let maria_id: i64 = crate::common::open_db(&server.data_dir())
        .query_row("SELECT id FROM users WHERE username = 'maria'", [], |r| r.get(0))
        .unwrap();
    let (_, body) = root.get("/users").await;
    assert!(body.contains(&format!("/users/{maria_id}/2fa/reset")), "{body}");
    let (status, _, headers) = root
        .post_form_headers(&format!("/users/{maria_id}/2fa/reset"), &[])
        .await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/users?done=2fa-reset");
    let mut again = server.client();
    let (status, _, headers) = again.sign_in("maria", PASSWORD).await;
    assert_eq!((status, location(&headers).as_str()), (303, "/"));
    let rows = audit(&server.data_dir());
    assert!(rows.iter().any(|(a, _)| a == "user.2fa.reset"), "{rows:?}");
    assert_nowhere(&format!("{rows:?}"), &maria_secret, &[], "audit log");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_keeps_two_factor_working_and_no_log_line_holds_a_secret_or_code() {
    // A real process, so its whole log (at debug) can be searched.
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
    let form = [
        ("token", token.as_str()),
        ("username", "ada"),
        ("password", PASSWORD),
        ("confirm", PASSWORD),
    ];
    assert_eq!(ada.post_form_raw("/setup", &form).await.0, 303);
    ada.refresh_csrf().await;
    let (secret, codes) = enrol(&mut ada).await;
    let before = db_text(&data);

    let port = server.port();
    assert!(server.terminate().await.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args(["admin", "rotate-key", "--data-dir"])
        .arg(&data)
        .envs(crate::common::store_env(&data))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = ServerProcess::spawn(&data, &format!("127.0.0.1:{port}"), &[], &log).await;
    assert_ne!(before, db_text(&data), "the secret was re-encrypted");

    // The re-encrypted secret still gives the codes the app shows; a recovery code still works.
    let mut c = WebClient::new(&server.url);
    password_step(&mut c, "ada").await;
    let (status, body) = second_step(&mut c, &code(&secret, 0)).await;
    assert_eq!(status, 303, "{body}");
    let mut d = WebClient::new(&server.url);
    password_step(&mut d, "ada").await;
    assert_eq!(second_step(&mut d, &wrong_code(&secret)).await.0, 401);
    assert_eq!(second_step(&mut d, &codes[0]).await.0, 303);

    assert!(server.terminate().await.success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_nowhere(&logged, &secret, &codes, "log");
    assert_nowhere(&db_text(&data), &secret, &codes, "database");
}
