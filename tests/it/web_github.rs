//! GitHub sign-in against a fake OAuth provider started by the test: a small axum server with
//! the authorize redirect, the token endpoint and the `/user` and `/user/orgs` API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::web_support::{PASSWORD, WebClient, WebServer, location};

/// Who is "signed in at GitHub" right now, and the organisations of each login.
#[derive(Clone, Default)]
struct Fake {
    current: Arc<Mutex<String>>,
    orgs: Arc<HashMap<String, Vec<String>>>,
    /// Codes handed out: code → (login, PKCE challenge was sent).
    codes: Arc<Mutex<HashMap<String, (String, bool)>>>,
    secrets_seen: Arc<Mutex<Vec<String>>>,
    /// GitHub's numeric id of each login (a rename keeps the id; a new owner of a freed login
    /// gets a new one). Logins not listed get a fixed id derived from the login.
    ids: Arc<Mutex<HashMap<String, i64>>>,
}

impl Fake {
    fn id_of(&self, login: &str) -> i64 {
        self.ids.lock().unwrap().get(login).copied().unwrap_or_else(|| {
            1_000
                + login
                    .bytes()
                    .fold(0_i64, |h, b| (h * 31 + i64::from(b)) % 1_000_000)
        })
    }
}

async fn authorize(State(f): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(
        q.get("client_id").map(String::as_str),
        Some("stagely-test-client")
    );
    assert_eq!(q.get("code_challenge_method").map(String::as_str), Some("S256"));
    let login = f.current.lock().unwrap().clone();
    let code = format!("code-{login}-{}", f.codes.lock().unwrap().len());
    f.codes
        .lock()
        .unwrap()
        .insert(code.clone(), (login, q.contains_key("code_challenge")));
    let redirect = q["redirect_uri"].clone();
    Redirect::to(&format!("{redirect}?code={code}&state={}", q["state"])).into_response()
}

async fn token(State(f): State<Fake>, Form(form): Form<HashMap<String, String>>) -> Response {
    f.secrets_seen
        .lock()
        .unwrap()
        .push(form.get("client_secret").cloned().unwrap_or_default());
    assert!(form.contains_key("code_verifier"), "PKCE verifier sent");
    let Some((login, _)) = f.codes.lock().unwrap().remove(&form["code"]) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "bad_verification_code"})),
        )
            .into_response();
    };
    axum::Json(json!({"access_token": format!("gho_{login}"), "token_type": "bearer", "scope": "read:user"}))
        .into_response()
}

fn login_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer gho_")
        .map(str::to_owned)
}

async fn user(State(f): State<Fake>, headers: HeaderMap) -> Response {
    match login_of(&headers) {
        Some(login) => {
            axum::Json(json!({"login": login, "id": f.id_of(&login), "name": login})).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn orgs(State(f): State<Fake>, headers: HeaderMap) -> Response {
    let Some(login) = login_of(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let list: Vec<_> = f
        .orgs
        .get(&login)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|o| json!({"login": o, "id": 9_000 + o.len()}))
        .collect();
    axum::Json(list).into_response()
}

async fn start_fake() -> (String, Fake) {
    let fake = Fake {
        orgs: Arc::new(HashMap::from([("carol".to_owned(), vec!["Acme".to_owned()])])),
        ..Fake::default()
    };
    let app = axum::Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(token))
        .route("/api/v3/user", get(user))
        .route("/api/v3/user/orgs", get(orgs))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fake)
}

/// Walk the redirects as a browser would: Stagely → GitHub → Stagely callback.
async fn github_sign_in(
    c: &mut WebClient,
    start: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, String, HeaderMap) {
    let (status, _, headers) = match form {
        None => c.request(reqwest::Method::GET, start, None, &[]).await,
        Some(f) => c.request(reqwest::Method::POST, start, Some(f), &[]).await,
    };
    assert_eq!(status, 303);
    let at_github = location(&headers);
    assert!(at_github.contains("/login/oauth/authorize?"), "{at_github}");
    let back = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&at_github)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&c.url),
        "callback goes to the public URL: {callback}"
    );
    c.request(reqwest::Method::GET, &callback, None, &[]).await
}

fn use_fake(c: &mut stagely::config::Config, gh: &str) {
    c.github.client_id = "stagely-test-client".into();
    c.github.client_secret = stagely::config::SecretString::new("gh-client-secret-xyz");
    c.github.auth_url = stagely::config::HttpUrl::parse(&format!("{gh}/login/oauth/authorize")).unwrap();
    c.github.token_url = stagely::config::HttpUrl::parse(&format!("{gh}/login/oauth/access_token")).unwrap();
    c.github.api_url = stagely::config::HttpUrl::parse(&format!("{gh}/api/v3")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_logins_and_org_members_get_in_and_others_are_refused() {
    let (gh, fake) = start_fake().await;
    let server = WebServer::start_with(|c| {
        use_fake(c, &gh);
        c.github.allowed_logins = vec!["alice".into()];
        c.github.allowed_orgs = vec!["acme".into()];
    })
    .await;
    let mut admin = server.admin("root").await;

    // An allowed login gets in, lands where it was going, with a new viewer account.
    *fake.current.lock().unwrap() = "alice".into();
    let mut alice = WebClient::new(&server.url);
    let (status, body) = alice.get("/login").await;
    assert_eq!(status, 200);
    assert!(body.contains("Sign in with GitHub"));
    let (status, body, headers) = github_sign_in(&mut alice, "/auth/github?next=/projects", None).await;
    assert_eq!(status, 303, "{body:.300}");
    assert_eq!(location(&headers), "/projects");
    let (status, body) = alice.get("/account").await;
    assert_eq!(status, 200);
    assert!(body.contains("alice") && body.contains("viewer"), "{body:.300}");
    assert_eq!(
        fake.secrets_seen.lock().unwrap().as_slice(),
        ["gh-client-secret-xyz"]
    );

    // A member of an allowed organisation gets in too.
    *fake.current.lock().unwrap() = "carol".into();
    let mut carol = WebClient::new(&server.url);
    let (status, _, _) = github_sign_in(&mut carol, "/auth/github", None).await;
    assert_eq!(status, 303);
    assert_eq!(carol.get("/").await.0, 200);

    // A valid GitHub account that is not on the list is refused, with a page that says why.
    *fake.current.lock().unwrap() = "mallory".into();
    let mut mallory = WebClient::new(&server.url);
    let (status, body, _) = github_sign_in(&mut mallory, "/auth/github", None).await;
    assert_eq!(status, 403);
    assert!(body.contains("not allowed to sign in") && body.contains("@mallory"));
    assert_eq!(mallory.get("/").await.0, 401, "no session");

    // A callback whose state this browser was not given is refused (login CSRF).
    let mut stranger = WebClient::new(&server.url);
    let (status, _, _) = stranger
        .request(
            reqwest::Method::GET,
            "/auth/github/callback?code=x&state=forged",
            None,
            &[],
        )
        .await;
    assert_eq!(status, 403);

    // Linking: the local admin links the GitHub login "root-gh"… which is not on the list,
    // so GitHub sign-in for it is still refused; after adding it, it would work.
    *fake.current.lock().unwrap() = "rootgh".into();
    let csrf = admin.csrf.clone();
    let (status, _, headers) = github_sign_in(&mut admin, "/account/github", Some(&[("_csrf", &csrf)])).await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/account?done=github-linked");
    let (_, body) = admin.get("/account").await;
    assert!(body.contains("@rootgh"), "{body:.400}");
    let mut again = WebClient::new(&server.url);
    let (status, _, _) = github_sign_in(&mut again, "/auth/github", None).await;
    assert_eq!(status, 403, "linked but not allowed");
    // And the password still works for the linked user.
    assert_eq!(again.sign_in("root", PASSWORD).await.0, 303);

    // An admin links an allowed login to an existing local user: that person signs in with
    // GitHub as that user (no new account).
    let mut dev = server.user(&mut admin, "dev.smith", "member").await;
    let (_, users) = admin.get("/users").await;
    assert!(users.contains("/users/4/github"), "dev.smith is user 4");
    let (status, _) = admin
        .post_form("/users/4/github", &[("github_login", "@Alice")])
        .await;
    assert_eq!(status, 422, "alice already has her own account: {status}");
    let (status, _) = admin.post_form("/users/2/github", &[("github_login", "")]).await;
    assert_eq!(status, 303, "unlink alice's account");
    let (status, _) = admin
        .post_form("/users/4/github", &[("github_login", "@Alice")])
        .await;
    assert_eq!(status, 303);
    *fake.current.lock().unwrap() = "alice".into();
    let mut as_dev = WebClient::new(&server.url);
    let (status, _, _) = github_sign_in(&mut as_dev, "/auth/github", None).await;
    assert_eq!(status, 303);
    let (_, body) = as_dev.get("/account").await;
    assert!(
        body.contains("dev.smith") && body.contains("member"),
        "{body:.400}"
    );
    assert_eq!(dev.get("/").await.0, 200);
    server.stop().await;
}

/// Sign in at GitHub as `login` (with the fake's current id for it) from a fresh browser.
async fn as_github(server: &WebServer, fake: &Fake, login: &str) -> (u16, String, WebClient) {
    *fake.current.lock().unwrap() = login.into();
    let mut c = WebClient::new(&server.url);
    let (status, body, _) = github_sign_in(&mut c, "/auth/github", None).await;
    (status, body, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_follow_the_numeric_github_id_not_the_login() {
    let (gh, fake) = start_fake().await;
    let server = WebServer::start_with(|c| {
        use_fake(c, &gh);
        // By login (alice, her new name, dave), by numeric id (4242), an organisation by id.
        c.github.allowed_logins = vec![
            "alice".into(),
            "alice-renamed".into(),
            "dave".into(),
            "4242".into(),
        ];
        c.github.allowed_orgs = vec!["9004".into()];
    })
    .await;
    let mut admin = server.admin("root").await;
    fake.ids.lock().unwrap().insert("alice".into(), 501);

    // Alice's first sign-in makes her account, bound to her id.
    let (status, body, mut alice) = as_github(&server, &fake, "alice").await;
    assert_eq!(status, 303, "{body:.300}");
    let (_, page) = alice.get("/account").await;
    assert!(
        page.contains("@alice") && page.contains("(id 501)"),
        "{page:.600}"
    );

    // She renames her GitHub account and, before she next signs in here, someone registers the
    // freed login "alice" (a new id) and signs in, allowed by login: refused, and audited.
    fake.ids.lock().unwrap().insert("alice".into(), 777);
    let (status, body, mut impostor) = as_github(&server, &fake, "alice").await;
    assert_eq!(status, 403, "{body:.300}");
    assert!(body.contains("belongs to someone else now"), "{body:.600}");
    assert_eq!(impostor.get("/").await.0, 401, "no session");
    let (_, audit) = admin.get("/audit").await;
    assert!(
        audit.contains("user.github_refused") && audit.contains("GitHub id 777"),
        "the refusal is audited: {audit:.2000}"
    );

    // Her renamed login, same id: the same Stagely account, the new login shown.
    fake.ids.lock().unwrap().insert("alice-renamed".into(), 501);
    let (status, _, mut renamed) = as_github(&server, &fake, "alice-renamed").await;
    assert_eq!(status, 303);
    let (_, page) = renamed.get("/account").await;
    assert!(
        page.contains("<strong>alice</strong>"),
        "still the account named alice: {page:.800}"
    );
    assert!(page.contains("@alice-renamed"), "{page:.800}");
    let (_, users) = admin.get("/users").await;
    assert_eq!(
        users.matches("GitHub id 501").count(),
        1,
        "one account for id 501"
    );

    // An account linked by login only (as before this version) binds the id at its next
    // sign-in, but not while it is disabled.
    let _dave = server.user(&mut admin, "dave", "member").await;
    let (_, users) = admin.get("/users").await;
    assert!(users.contains("/users/3/github"), "dave is user 3");
    assert_eq!(
        admin
            .post_form("/users/3/github", &[("github_login", "dave")])
            .await
            .0,
        303
    );
    assert_eq!(
        admin
            .post_form("/users/3/disable", &[("disabled", "true")])
            .await
            .0,
        303
    );
    let (status, body, _) = as_github(&server, &fake, "dave").await;
    assert_eq!(status, 403, "{body:.300}");
    let (_, users) = admin.get("/users").await;
    assert!(
        users.contains("id bound at the next GitHub sign-in"),
        "not bound while disabled"
    );
    assert_eq!(
        admin
            .post_form("/users/3/disable", &[("disabled", "false")])
            .await
            .0,
        303
    );
    fake.ids.lock().unwrap().insert("dave".into(), 600);
    let (status, _, mut dave_gh) = as_github(&server, &fake, "dave").await;
    assert_eq!(status, 303);
    let (_, page) = dave_gh.get("/account").await;
    assert!(page.contains("(id 600)"), "bound: {page:.600}");
    // From now on the login alone is not enough.
    fake.ids.lock().unwrap().insert("dave".into(), 601);
    let (status, body, _) = as_github(&server, &fake, "dave").await;
    assert_eq!(status, 403, "{body:.300}");

    // Allow-lists by numeric id: the user with id 4242 gets in whatever the login; a login
    // spelled "4242" with another id does not (a numeric entry matches only the id).
    fake.ids.lock().unwrap().insert("numbered".into(), 4242);
    assert_eq!(as_github(&server, &fake, "numbered").await.0, 303);
    fake.ids.lock().unwrap().insert("4242".into(), 12);
    let (status, body, _) = as_github(&server, &fake, "4242").await;
    assert_eq!(status, 403, "{body:.300}");
    assert!(body.contains("not allowed to sign in"));
    // An organisation listed by its numeric id (the fake's "Acme" has id 9004).
    assert_eq!(as_github(&server, &fake, "carol").await.0, 303);
    server.stop().await;
}
