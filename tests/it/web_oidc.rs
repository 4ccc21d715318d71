//! OpenID Connect sign-in against a fake provider started by the test: a small axum server on
//! loopback with discovery, JWKS, authorize and token endpoints, signing RS256 ID tokens with the
//! fixed keys in tests/support/oidc/ (one it can rotate to, one an attacker holds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Api, cli_token};
use crate::web_support::{WebClient, WebServer, location};

const CLIENT_ID: &str = "stagely-oidc-test";
const SECRET_CANARY: &str = "oidc-client-secret-canary-9c41e";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn key(name: &str) -> RsaPrivateKey {
    let path = format!("{}/tests/support/oidc/{name}.pem", env!("CARGO_MANIFEST_DIR"));
    RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Clone)]
struct Person {
    sub: String,
    email: String,
    email_verified: bool,
    preferred_username: Option<String>,
    groups: Vec<String>,
}

fn person(sub: &str, email: &str, groups: &[&str]) -> Person {
    Person {
        sub: sub.into(),
        email: email.into(),
        email_verified: true,
        preferred_username: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

struct FakeState {
    person: Person,
    /// The key that signs, and the `kid` the token's header names.
    signing: (&'static str, &'static str),
    /// Keys in the JWKS (their `kid` is their name).
    published: Vec<&'static str>,
    audience: Option<String>,
    exp_offset_secs: i64,
    /// Put this nonce in the next ID token instead of the one the request carried.
    stale_nonce: Option<String>,
    /// code → (nonce, PKCE challenge).
    codes: HashMap<String, (String, String)>,
    last_nonce: String,
    jwks_fetches: usize,
    secrets_seen: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    issuer: String,
    keys: Arc<HashMap<&'static str, RsaPrivateKey>>,
    s: Arc<Mutex<FakeState>>,
}

impl Fake {
    fn set(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.s.lock().unwrap());
    }
    fn jwks_fetches(&self) -> usize {
        self.s.lock().unwrap().jwks_fetches
    }
}

async fn discovery(State(f): State<Fake>) -> Response {
    let i = &f.issuer;
    axum::Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(f): State<Fake>) -> Response {
    let mut s = f.s.lock().unwrap();
    s.jwks_fetches += 1;
    let keys: Vec<Value> = s
        .published
        .iter()
        .map(|name| {
            let k = &f.keys[name];
            json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": name,
                   "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())})
        })
        .collect();
    axum::Json(json!({ "keys": keys })).into_response()
}

async fn authorize(State(f): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{q:?}");
    let mut s = f.s.lock().unwrap();
    let code = format!("code-{}", s.codes.len() + s.jwks_fetches * 1000 + rand_suffix());
    s.codes
        .insert(code.clone(), (q["nonce"].clone(), q["code_challenge"].clone()));
    s.last_nonce = q["nonce"].clone();
    Redirect::to(&format!("{}?code={code}&state={}", q["redirect_uri"], q["state"])).into_response()
}

fn rand_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn token(
    State(f): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let basic = headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(basic).unwrap()).unwrap();
    let (id, secret) = decoded.split_once(':').unwrap();
    assert_eq!(id, CLIENT_ID);
    let mut s = f.s.lock().unwrap();
    s.secrets_seen.push(secret.to_owned());
    let Some((nonce, challenge)) = s.codes.remove(&form["code"]) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    assert_eq!(
        b64(&Sha256::digest(form["code_verifier"].as_bytes())),
        challenge,
        "PKCE"
    );
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let p = s.person.clone();
    let mut claims = json!({
        "iss": f.issuer,
        "sub": p.sub,
        "aud": s.audience.clone().unwrap_or_else(|| CLIENT_ID.into()),
        "iat": now,
        "exp": now + 300 + s.exp_offset_secs,
        "nonce": s.stale_nonce.take().unwrap_or(nonce),
        "email": p.email,
        "email_verified": p.email_verified,
        "groups": p.groups,
    });
    if let Some(u) = p.preferred_username {
        claims["preferred_username"] = json!(u);
    }
    let (signer, kid) = s.signing;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = f.keys[signer]
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input.as_bytes()))
        .unwrap();
    let id_token = format!("{input}.{}", b64(&sig));
    axum::Json(
        json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}),
    )
    .into_response()
}

async fn start_fake(path: &str, who: Person) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}{path}", listener.local_addr().unwrap());
    let keys = ["key1", "key2", "attacker"].map(|k| (k, key(k)));
    let fake = Fake {
        issuer,
        keys: Arc::new(keys.into_iter().collect()),
        s: Arc::new(Mutex::new(FakeState {
            person: who,
            signing: ("key1", "key1"),
            published: vec!["key1"],
            audience: None,
            exp_offset_secs: 0,
            stale_nonce: None,
            codes: HashMap::new(),
            last_nonce: String::new(),
            jwks_fetches: 0,
            secrets_seen: Vec::new(),
        })),
    };
    let app = axum::Router::new()
        .route(
            &format!("{path}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{path}/jwks"), get(jwks))
        .route(&format!("{path}/authorize"), get(authorize))
        .route(&format!("{path}/token"), post(token))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    fake
}

/// A `[[oidc]]` entry for a fake, its secret in a file under `dir`.
fn provider(dir: &std::path::Path, name: &str, fake: &Fake, mapping: &str) -> stagely::config::OidcProvider {
    let secret = dir.join(format!("{name}.secret"));
    std::fs::write(&secret, format!("{SECRET_CANARY}\n")).unwrap();
    let text = format!(
        "name = \"{name}\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n{mapping}",
        fake.issuer,
        secret.display()
    );
    let mut p: stagely::config::OidcProvider = toml::from_str(&text).unwrap();
    p.client_secret = stagely::config::SecretString::new(SECRET_CANARY);
    p
}

/// Walk the redirects as a browser would: Stagely → provider → Stagely callback. Answers the
/// callback URL too (to replay it).
async fn oidc_sign_in(c: &mut WebClient, start: &str) -> (u16, String, HeaderMap, String) {
    let (status, body, headers) = c.request(reqwest::Method::GET, start, None, &[]).await;
    assert_eq!(status, 303, "{body:.300}");
    let at_provider = location(&headers);
    assert!(at_provider.contains("/authorize?"), "{at_provider}");
    let back = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&at_provider)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), 303);
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{}/auth/oidc/", c.url)),
        "{callback}"
    );
    let (status, body, headers) = c.request(reqwest::Method::GET, &callback, None, &[]).await;
    (status, body, headers, callback)
}

fn db(server: &WebServer) -> crate::common::StoreDb {
    crate::common::open_db(&server.data_dir())
}

fn count(server: &WebServer, sql: &str) -> i64 {
    db(server).query_row(sql, [], |r| r.get(0)).unwrap()
}

fn db_bytes(server: &WebServer) -> String {
    String::from_utf8_lossy(&crate::common::store::store_bytes(&server.data_dir())).into_owned()
}

const CORP: &str = "display_name = \"Corp SSO\"\nallowed_email_domains = [\"example.com\"]\ngroups_claim = \"groups\"\n\
    group_roles = { ops = \"member\", admins = \"admin\" }\n\
    project_roles = [{ group = \"web\", project = \"shop\", role = \"deployer\" },\n\
                     { group = \"web\", project = \"no-such-project\", role = \"viewer\" }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_bound_to_issuer_and_subject_and_get_their_roles_from_groups() {
    let corp = start_fake(
        "/realms/corp",
        person("sub-ann", "ann@example.com", &["ops", "web"]),
    )
    .await;
    let google = start_fake("", person("g-1", "bob@example.org", &[])).await;
    let secrets = tempfile::tempdir().unwrap();
    let (pc, pg) = (
        provider(secrets.path(), "corp", &corp, CORP),
        provider(
            secrets.path(),
            "google",
            &google,
            "allowed_email_domains = [\"example.org\"]",
        ),
    );
    let server = WebServer::start_with(|c| c.oidc = vec![pc, pg]).await;
    let mut admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "t", "admin"));
    let (shop, _) = api.project("shop", &["production"]).await;
    let mut pages = String::new();

    // Both providers are offered on the sign-in page.
    let mut ann = WebClient::new(&server.url);
    let (status, body) = ann.get("/login").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("Sign in with Corp SSO") && body.contains("Sign in with google"),
        "{body}"
    );
    pages += &body;

    // First sign-in: an account, the global role from her group, the project role from another.
    let (status, body, headers, _) = oidc_sign_in(&mut ann, "/auth/oidc/corp?next=/projects").await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location(&headers), "/projects");
    let (status, body) = ann.get("/account").await;
    assert_eq!(status, 200);
    assert!(body.contains("ann") && body.contains("member"), "{body:.400}");
    pages += &body;
    let ann_id: i64 = db(&server)
        .query_row(
            "SELECT user_id FROM oidc_identities WHERE subject = 'sub-ann'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let grant: (String, String) = db(&server)
        .query_row(
            "SELECT role, source FROM project_members WHERE user_id = ?1 AND project_id = ?2",
            [ann_id, shop],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(grant, ("deployer".to_owned(), "oidc:corp".to_owned()));
    let via: i64 = count(
        &server,
        "SELECT count(*) FROM audit_log WHERE action = 'user.sign_in' AND detail LIKE 'via oidc:corp from %'",
    );
    assert_eq!(via, 1);

    // Second sign-in with another e-mail and name: the same account, found by sub.
    corp.set(|s| {
        s.person.email = "ann.new@example.com".into();
        s.person.preferred_username = Some("annie".into());
    });
    let mut ann2 = WebClient::new(&server.url);
    assert_eq!(oidc_sign_in(&mut ann2, "/auth/oidc/corp").await.0, 303);
    let (_, body) = ann2.get("/account").await;
    assert!(body.contains("ann") && !body.contains("annie"), "{body:.400}");
    assert_eq!(count(&server, "SELECT count(*) FROM users"), 2);
    let email: String = db(&server)
        .query_row(
            "SELECT email FROM oidc_identities WHERE user_id = ?1",
            [ann_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(email, "ann.new@example.com");

    // Same e-mail, another subject: another identity and another account, never Ann's.
    corp.set(|s| {
        s.person.sub = "sub-impostor".into();
        s.person.preferred_username = None;
        s.person.groups = vec![];
    });
    let mut other = WebClient::new(&server.url);
    assert_eq!(oidc_sign_in(&mut other, "/auth/oidc/corp").await.0, 303);
    let (_, body) = other.get("/account").await;
    assert!(body.contains("ann.new") && body.contains("viewer"), "{body:.400}");
    assert_eq!(count(&server, "SELECT count(*) FROM users"), 3);
    assert_eq!(count(&server, "SELECT count(*) FROM oidc_identities"), 2);

    // The second provider works alongside.
    let mut bob = WebClient::new(&server.url);
    assert_eq!(oidc_sign_in(&mut bob, "/auth/oidc/google").await.0, 303);
    assert_eq!(bob.get("/account").await.0, 200);
    let (status, body) = admin.get("/users").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("google") && body.contains("bob@example.org"),
        "{body:.400}"
    );
    pages += &body;

    // The client secret reached the providers, and nothing else.
    assert!(
        corp.s
            .lock()
            .unwrap()
            .secrets_seen
            .iter()
            .all(|s| s == SECRET_CANARY)
    );
    assert!(!pages.contains(SECRET_CANARY));
    assert!(!db_bytes(&server).contains(SECRET_CANARY));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_or_replayed_answers_are_refused_and_rotated_keys_are_fetched() {
    let corp = start_fake("/corp", person("sub-eve", "eve@example.com", &[])).await;
    let secrets = tempfile::tempdir().unwrap();
    let pc = provider(secrets.path(), "corp", &corp, CORP);
    let server = WebServer::start_with(|c| c.oidc = vec![pc]).await;
    let _admin = server.admin("root").await;

    let refused = |label: &'static str, tweak: fn(&mut FakeState)| {
        let (server, corp) = (&server, &corp);
        async move {
            corp.set(tweak);
            let mut c = WebClient::new(&server.url);
            let (status, body, _, _) = oidc_sign_in(&mut c, "/auth/oidc/corp").await;
            assert_eq!(status, 403, "{label}: {body:.300}");
            assert!(body.contains("could not be verified"), "{label}: {body:.300}");
            assert_eq!(c.get("/account").await.0, 401, "{label}: no session");
            assert_eq!(
                count(server, "SELECT count(*) FROM users"),
                1,
                "{label}: no account"
            );
        }
    };
    refused("bad signature", |s| s.signing = ("attacker", "key1")).await;
    refused("wrong audience", |s| {
        s.signing = ("key1", "key1");
        s.audience = Some("someone-else".into());
    })
    .await;
    refused("expired", |s| {
        s.audience = None;
        s.exp_offset_secs = -3600;
    })
    .await;
    // A nonce from an earlier sign-in (a replayed ID token).
    refused("replayed nonce", |s| {
        s.exp_offset_secs = 0;
        s.stale_nonce = Some(s.last_nonce.clone());
    })
    .await;
    let fetches = corp.jwks_fetches();
    refused("unknown key", |s| s.signing = ("attacker", "nope")).await;
    assert_eq!(
        corp.jwks_fetches(),
        fetches + 1,
        "an unknown kid refetches the JWKS once"
    );

    // The provider rotates to a new key: the JWKS is fetched again and the sign-in succeeds.
    corp.set(|s| {
        s.signing = ("key2", "key2");
        s.published = vec!["key1", "key2"];
    });
    let mut eve = WebClient::new(&server.url);
    let (status, body, _, callback) = oidc_sign_in(&mut eve, "/auth/oidc/corp").await;
    assert_eq!(status, 303, "{body:.300}");
    assert_eq!(corp.jwks_fetches(), fetches + 2);
    assert_eq!(eve.get("/account").await.0, 200);

    // The callback again, with its flow cookie: the state was consumed.
    let state = callback.split("state=").nth(1).unwrap().to_owned();
    let mut replay = WebClient::new(&server.url);
    replay.cookies.push(("stagely_oidc".into(), state));
    let (status, body, _) = replay.request(reqwest::Method::GET, &callback, None, &[]).await;
    assert_eq!(status, 403, "{body:.300}");
    assert!(body.contains("already used"), "{body:.300}");
    assert_eq!(replay.get("/account").await.0, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapping_is_applied_at_every_sign_in() {
    let corp = start_fake("/corp", person("sub-mal", "mal@elsewhere.net", &[])).await;
    let secrets = tempfile::tempdir().unwrap();
    let pc = provider(secrets.path(), "corp", &corp, CORP);
    let server = WebServer::start_with(|c| c.oidc = vec![pc]).await;
    let _admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "t", "admin"));
    api.project("shop", &["production"]).await;

    // A domain not allowed and no group: refused with a page that says so; no account.
    let mut mal = WebClient::new(&server.url);
    let (status, body, _, _) = oidc_sign_in(&mut mal, "/auth/oidc/corp").await;
    assert_eq!(status, 403);
    assert!(
        body.contains("Your account at Corp SSO is not allowed here: ask an admin"),
        "{body}"
    );
    assert_eq!(count(&server, "SELECT count(*) FROM users"), 1);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM audit_log WHERE action = 'user.sign_in_refused'"
        ),
        1
    );
    // An unverified e-mail in an allowed domain does not count.
    corp.set(|s| {
        s.person.email = "mal@example.com".into();
        s.person.email_verified = false;
    });
    assert_eq!(oidc_sign_in(&mut mal, "/auth/oidc/corp").await.0, 403);

    // In the admins group: in, as admin, with the web group's project role.
    corp.set(|s| s.person.groups = vec!["admins".into(), "web".into()]);
    let (status, _, _, _) = oidc_sign_in(&mut mal, "/auth/oidc/corp").await;
    assert_eq!(status, 303);
    assert_eq!(mal.get("/users").await.0, 200, "admin from the group");
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM project_members WHERE source = 'oidc:corp'"
        ),
        1
    );

    // Moved to ops: demoted to member at the next sign-in.
    corp.set(|s| s.person.groups = vec!["ops".into()]);
    let mut again = WebClient::new(&server.url);
    assert_eq!(oidc_sign_in(&mut again, "/auth/oidc/corp").await.0, 303);
    assert_eq!(again.get("/users").await.0, 403);
    assert_eq!(
        count(
            &server,
            "SELECT count(*) FROM project_members WHERE source = 'oidc:corp'"
        ),
        0
    );

    // Removed from every group: refused at the next sign-in, and the old sessions end.
    corp.set(|s| s.person.groups = vec![]);
    assert_eq!(mal.get("/account").await.0, 200);
    let mut third = WebClient::new(&server.url);
    let (status, body, _, _) = oidc_sign_in(&mut third, "/auth/oidc/corp").await;
    assert_eq!(status, 403, "{body:.300}");
    assert_eq!(mal.get("/account").await.0, 401, "old session ended");
    assert_eq!(again.get("/account").await.0, 401, "old session ended");
    assert_eq!(
        count(&server, "SELECT count(*) FROM sessions WHERE user_id != 1"),
        0
    );

    // An unknown provider is a 404.
    assert_eq!(third.get("/auth/oidc/nope").await.0, 404);
    server.stop().await;
}
