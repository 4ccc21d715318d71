//! Every request has a context: an id answered in `X-Request-Id`, shown in every JSON error and
//! error page, kept from a trusted proxy, and on every log line the request causes.

use std::time::Duration;

use crate::common::{ServerProcess, wait_for};

fn id_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .expect("every response names its request id")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn ids_are_answered_shown_in_errors_kept_from_a_trusted_proxy_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    // Loopback is a trusted proxy by default; this server trusts nobody, so a second server
    // below checks the other side.
    let server = ServerProcess::spawn(&dir.path().join("data"), "127.0.0.1:0", &[], &log).await;
    let http = reqwest::Client::new();

    // A JSON error carries the same id as the header.
    let r = http
        .get(format!("{}/api/projects", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = id_of(&r);
    assert_eq!(id.len(), 12, "a fresh id: {id}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], id.as_str());

    // Two requests, two ids.
    let a = id_of(&http.get(format!("{}/healthz", server.url)).send().await.unwrap());
    let b = id_of(&http.get(format!("{}/healthz", server.url)).send().await.unwrap());
    assert_ne!(a, b);

    // The proxy's id is kept (loopback is trusted by default) …
    let r = http
        .get(format!("{}/no/such/page", server.url))
        .header("x-request-id", "edge-4711.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(id_of(&r), "edge-4711.abc");
    let page = r.text().await.unwrap();
    assert!(
        page.contains("edge-4711.abc"),
        "the error page shows the id:\n{page}"
    );

    // … unless it could forge a log line or a header: then a fresh one is made.
    let r = http
        .get(format!("{}/api/projects", server.url))
        .header("x-request-id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_ne!(id_of(&r), "a b\"c");

    // The request's log line names its id, method, route, status and latency.
    let line = wait_for("the request's log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .find(|l| l.contains("edge-4711.abc") && l.contains("served"))
            .map(str::to_owned);
        async move { found }
    })
    .await;
    for part in ["GET", "<no route>", "status=404", "latency_ms"] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    let line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find(|l| l.contains(&id) && l.contains("served"))
        .map(str::to_owned)
        .expect("the 401's line");
    assert!(
        line.contains("/api/projects") && line.contains("status=401"),
        "{line}"
    );
    server.terminate().await;

    // A server that trusts no proxy makes its own id whatever the header says.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = ServerProcess::spawn(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &[("STAGELY_TRUSTED_PROXIES", "")],
        &log,
    )
    .await;
    let r = http
        .get(format!("{}/healthz", server.url))
        .header("x-request-id", "edge-4711")
        .send()
        .await
        .unwrap();
    assert_ne!(id_of(&r), "edge-4711");
    server.terminate().await;
}
