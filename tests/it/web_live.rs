//! The live parts over real WebSockets, as the browser's htmx ws extension sees them: session
//! cookie + same-origin handshake, stored lines first, then live ones, each seq once, then the
//! outcome and a normal close (so htmx does not reconnect).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, TestAgent, cli_token, wait_for};
use crate::web_support::WebServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_socket_sends_stored_then_live_lines_once_and_closes_normally() {
    let server = WebServer::start().await;
    let admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "setup", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = agent.recv().await["deployment_id"].as_i64().unwrap();
    for seq in 1..=5u64 {
        agent.log(id, seq, &format!("stored line {seq}")).await;
    }
    let logs = format!("/api/deployments/{id}/logs");
    wait_for("stored lines", Duration::from_secs(10), || {
        let api = api.clone();
        let logs = logs.clone();
        async move { (api.get(&logs).await.1.as_array()?.len() == 5).then_some(()) }
    })
    .await;

    let ws_url = format!("{}/ws/deployments/{id}", server.url.replacen("http", "ws", 1));
    // From another site the cookie is not enough.
    let mut req = ws_url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", admin.cookie_header().parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_err(),
        "cross-site socket refused"
    );
    // Without a session: refused too.
    assert!(tokio_tungstenite::connect_async(ws_url.clone()).await.is_err());

    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", admin.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", server.url.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut text = String::new();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()
            .flatten()
            .map(Result::unwrap)
    };
    while !text.contains("stored line 5") {
        match next(&mut ws).await {
            Some(Message::Text(t)) => text.push_str(t.as_str()),
            other => panic!("expected stored lines, got {other:?}"),
        }
    }
    assert!(
        text.starts_with(r#"<pre class="log" id="log" hx-swap-oob="true">"#),
        "{text}"
    );
    // A resent line (same seq) and new ones: each shows once.
    agent.log(id, 5, "stored line 5").await;
    for seq in 6..=8u64 {
        agent.log(id, seq, &format!("live line {seq}")).await;
    }
    while !text.contains("live line 8") {
        match next(&mut ws).await {
            Some(Message::Text(t)) => text.push_str(t.as_str()),
            other => panic!("expected live lines, got {other:?}"),
        }
    }
    agent.status(id, "SUCCESS").await;
    let close = loop {
        match next(&mut ws).await {
            Some(Message::Text(t)) => text.push_str(t.as_str()),
            Some(Message::Close(frame)) => break frame,
            other => panic!("expected the outcome and a close, got {other:?}"),
        }
    };
    assert!(
        close.is_none_or(|f| u16::from(f.code) == 1000),
        "a normal close: htmx must not reconnect"
    );
    for seq in 1..=8 {
        let marker = format!(r#"<span class="seq">{seq}</span>"#);
        assert_eq!(
            text.matches(&marker).count(),
            1,
            "seq {seq} exactly once in {text}"
        );
    }
    assert!(text.contains(r#"id="deploy-status""#) && text.contains("success"));
    assert!(text.contains("log complete"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_log_viewer_is_resynced_and_misses_nothing() {
    let server = WebServer::start().await;
    let admin = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "setup", "admin"));
    let (pid, envs) = api.project("big", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    let id = agent.recv().await["deployment_id"].as_i64().unwrap();

    let ws_url = format!("{}/ws/deployments/{id}", server.url.replacen("http", "ws", 1));
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", admin.cookie_header().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req.clone()).await.unwrap();
    // The viewer reads nothing while ~9 MB of log goes by: many times what the socket buffers
    // and the live channel hold, so the server lags behind it again and again and must catch up
    // from the store each time. One line is far longer than a page shows.
    const LINES: u64 = 30_000;
    let filler = "x".repeat(300);
    for seq in 1..=LINES {
        agent.log(id, seq, &format!("line {seq} {filler}")).await;
    }
    agent.log(id, LINES + 1, &"y".repeat(200_000)).await;
    agent.status(id, "SUCCESS").await;
    assert_eq!(agent.recv().await["type"], "ACK");
    let text = read_to_close(&mut ws).await;
    assert_eq!(
        seqs(&text),
        (1..=LINES + 1).collect::<Vec<_>>(),
        "in order, none missing, none twice"
    );
    assert!(text.contains("line cut; the API has it whole"));
    assert!(text.contains("success"));

    // A viewer arriving later sees what the page shows: the newest 5,000 lines, and a note.
    let (mut late, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let text = read_to_close(&mut late).await;
    let total = LINES + 2; // seq 0 was never sent: the log is 1..=LINES+1
    assert_eq!(
        seqs(&text),
        (LINES + 2 - 5000..=LINES + 1).collect::<Vec<_>>(),
        "the newest 5,000 lines"
    );
    assert!(
        text.contains(&format!("{} earlier lines", total - 5000)),
        "{:.300}",
        text
    );
    server.stop().await;
}

async fn read_to_close<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => text.push_str(t.as_str()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return text,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The seq of every line in the fragments, in the order they came.
fn seqs(text: &str) -> Vec<u64> {
    text.split(r#"<span class="seq">"#)
        .skip(1)
        .map(|part| part.split('<').next().unwrap().parse().unwrap())
        .collect()
}
