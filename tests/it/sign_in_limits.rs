//! Sign-in under attack (issue 12): the limiter reserves before hashing, so a burst evaluates at
//! most the limit; the password threads are bounded (beyond them: 429 + Retry-After at once);
//! a flood against an account from one address does not lock its owner out from another; the
//! client address comes from X-Forwarded-For only behind a trusted proxy.

use futures_util::future::join_all;

use crate::web_support::{PASSWORD, WebClient, WebServer};

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

/// One sign-in from a fresh client, as coming through a proxy that says the client is `xff`.
async fn attempt(url: &str, username: &str, password: &str, xff: Option<&str>) -> Answer {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = http
        .post(format!("{url}/login"))
        .form(&[("username", username), ("password", password)]);
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        retry_after: resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: resp.text().await.unwrap(),
    }
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_evaluates_at_most_the_limit_and_the_admin_still_signs_in_from_elsewhere() {
    let server = WebServer::start_with(|c| c.auth.login_max_failures_per_account = 5).await;
    let mut admin = server.admin("root").await;
    let before = server.state.auth.passwords.verified();

    // 40 concurrent wrong guesses for root from one address (behind the loopback proxy, which
    // is trusted by default), and, in the middle of the flood, root from another address.
    let flood = join_all((0..40).map(|i| {
        let url = server.url.clone();
        async move { attempt(&url, "root", &format!("wrong-guess-{i}"), Some("203.0.113.7")).await }
    }));
    let owner = async {
        let mut c = WebClient::new(&server.url);
        let (status, body, _) = c
            .request(
                reqwest::Method::POST,
                "/login",
                Some(&[("username", "root"), ("password", PASSWORD)]),
                &[("x-forwarded-for", "198.51.100.2")],
            )
            .await;
        (status, body)
    };
    let (answers, (owner_status, owner_body)) = tokio::join!(flood, owner);
    assert_eq!(
        owner_status, 303,
        "the owner signs in from another address: {owner_body:.300}"
    );

    let (refused, limited) = (count(&answers, 401), count(&answers, 429));
    assert_eq!(refused + limited, 40, "only 401 and 429");
    let checked = server.state.auth.passwords.verified() - before;
    // The owner's own sign-in is one check; the flood's are at most the limit.
    assert!(checked <= 5 + 1, "{checked} passwords checked for a limit of 5");
    assert_eq!(refused, 5, "exactly the limit was evaluated");
    for a in answers.iter().filter(|a| a.status == 429) {
        let wait: u64 = a.retry_after.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=5).contains(&wait), "{wait}");
        assert!(a.body.contains("Too many failed sign-in attempts"));
    }
    // Still delayed from the flooding address, even with the right password …
    let a = attempt(&server.url, "root", PASSWORD, Some("203.0.113.7")).await;
    assert_eq!(a.status, 429);
    // … not from a third one.
    assert_eq!(
        attempt(&server.url, "root", PASSWORD, Some("192.0.2.55"))
            .await
            .status,
        303
    );

    // The audit log names the address each sign-in came from.
    let (_, audit) = admin.get("/audit").await;
    assert!(audit.contains("from 198.51.100.2"), "{audit:.2000}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_password_threads_and_queue_the_answer_is_429_with_retry_after() {
    let server = WebServer::start_with(|c| {
        c.auth.password_hash_threads = 1;
        c.auth.password_hash_queue = 1;
        c.auth.login_max_failures_per_ip = 10_000;
    })
    .await;
    let _admin = server.admin("root").await;
    let before = server.state.auth.passwords.verified();
    let answers = join_all((0..60).map(|i| {
        let url = server.url.clone();
        async move {
            attempt(
                &url,
                &format!("nobody{i}"),
                "whatever-password",
                Some("203.0.113.9"),
            )
            .await
        }
    }))
    .await;
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(
        !busy.is_empty(),
        "60 at once cannot fit 1 thread and a queue of 1"
    );
    for a in &busy {
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert!(a.body.contains("Too many sign-ins at once"), "{:.300}", a.body);
    }
    let refused = count(&answers, 401);
    assert_eq!(refused + busy.len(), 60, "only 401 and 429");
    assert_eq!(
        server.state.auth.passwords.verified() - before,
        refused as u64,
        "a refused attempt checked no password"
    );
    // A refusal for want of a thread costs nothing: the same address signs in right after.
    assert_eq!(
        attempt(&server.url, "root", PASSWORD, Some("203.0.113.9"))
            .await
            .status,
        303
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_limited_apart_and_an_untrusted_peer_cannot_spoof() {
    // Loopback (the tests' client) is a trusted proxy by default.
    let server = WebServer::start_with(|c| c.auth.login_max_failures_per_ip = 3).await;
    let _admin = server.admin("root").await;
    for name in ["a", "b", "c"] {
        let a = attempt(&server.url, name, "wrong-password", Some("198.51.100.1")).await;
        assert_eq!(a.status, 401);
    }
    let a = attempt(&server.url, "d", "wrong-password", Some("198.51.100.1")).await;
    assert_eq!(a.status, 429, "the first client is limited");
    // A second client behind the same proxy is not.
    let b = attempt(&server.url, "d", "wrong-password", Some("198.51.100.2")).await;
    assert_eq!(b.status, 401);
    // The proxy prepends what the client claimed; only the hop it appended is believed.
    let c = attempt(&server.url, "d", "wrong-password", Some("10.1.1.1, 198.51.100.1")).await;
    assert_eq!(c.status, 429, "a client cannot prepend its way out");
    server.stop().await;

    // When the peer is not trusted, X-Forwarded-For is ignored: every attempt counts against
    // the peer, whatever it claims.
    let server = WebServer::start_with(|c| {
        c.auth.login_max_failures_per_ip = 3;
        c.trusted_proxies = vec![stagely::config::Cidr::parse("10.0.0.0/8").unwrap()];
    })
    .await;
    let _admin = server.admin("root").await;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let spoofed = format!("198.51.100.{i}");
        let a = attempt(&server.url, name, "wrong-password", Some(&spoofed)).await;
        assert_eq!(a.status, 401);
    }
    let a = attempt(&server.url, "d", "wrong-password", Some("192.0.2.200")).await;
    assert_eq!(a.status, 429, "spoofing X-Forwarded-For does not dodge the limit");
    assert!(a.retry_after.is_some());
    server.stop().await;
}
