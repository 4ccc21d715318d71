//! Bounded under abuse (issue 12): a tokenless handshake flood cannot keep agents out; a
//! half-sent request or a stalled body is closed; a thousand half-open connections from one
//! address do not stop `/healthz` for anyone else; the descriptor limit is raised at start.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{TestAgent, TestServer, read_listen_line};

/// One `GET /ws/agent` with WebSocket upgrade headers and the given `Authorization`, on a raw
/// socket; returns the status code (0 when the connection closed without one).
async fn handshake_status(addr: &str, authorization: Option<&str>) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return 0;
    };
    let auth = authorization.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    let req = format!(
        "GET /ws/agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_without_a_valid_token_cannot_keep_an_agent_out() {
    // A small shared budget, so that the flood would use it all up if it could spend it.
    let server = TestServer::start_with(|c| {
        c.agents.max_handshakes_per_sec = 5;
        c.agents.max_failed_handshakes_per_ip_per_min = 20;
    })
    .await;
    let api = &server.api;
    let (_, envs) = api.project("flooded", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "web").await;
    let addr = api.url.trim_start_matches("http://").to_owned();

    // From the same address as the agent (loopback): no token, and wrong agent tokens.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for i in 0..8 {
        let (stop, sent, limited, addr) = (stop.clone(), sent.clone(), limited.clone(), addr.clone());
        flood.push(tokio::spawn(async move {
            let bogus = format!("Bearer stga_{}", "0".repeat(40 + i));
            while !stop.load(Ordering::Relaxed) {
                let auth = (i % 2 == 0).then_some(bogus.as_str());
                let status = handshake_status(&addr, auth).await;
                assert_ne!(status, 503, "the flood must not reach the shared budget");
                assert_ne!(status, 101, "no upgrade without a valid token");
                if status == 429 {
                    limited.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    crate::common::wait_for("the flood to run", Duration::from_secs(20), || {
        let sent = sent.load(Ordering::Relaxed);
        async move { (sent >= 200).then_some(()) }
    })
    .await;

    // The real agent connects several times during the flood; each time it gets in.
    for round in 0..3 {
        let ws = TestAgent::dial(&api.url, &token).await;
        assert!(
            ws.is_ok(),
            "round {round}: the agent was refused during the flood: {:?}",
            ws.err()
        );
        drop(ws);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    api.wait_online(agent_id).await;

    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    assert!(
        limited.load(Ordering::Relaxed) > 0,
        "the flooding address was told to slow down (429) after its allowance"
    );
    agent.ws.close(None).await.ok();
    server.stop().await;
}

/// Read until the server closes the connection; returns what it sent, or `None` if it was still
/// open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_and_a_stalled_body_are_closed() {
    let server = TestServer::start_with(|c| {
        c.http.header_timeout_secs = 1;
        c.http.idle_timeout_secs = 1;
    })
    .await;
    let addr = server.api.url.trim_start_matches("http://").to_owned();

    // Headers never finished.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a half-sent request must be closed after the header timeout");
    assert!(!answer.contains(" 200 "), "{answer}");

    // A body that stops arriving (the handler waits for it: authenticated JSON).
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":",
        server.api.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a stalled body must be closed after the idle timeout");
    assert!(!answer.contains(" 201 "), "{answer}");

    // A keep-alive connection is answered, then closed once it idles past the header timeout.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut s, Duration::from_secs(10)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

/// `GET /healthz` from `from` (a loopback address of its own); the status line, or an error.
async fn healthz_from(from: &str, addr: &str) -> Result<String, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .map_err(|e| e.to_string())?;
    let mut s = socket
        .connect(addr.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.map_err(|e| e.to_string())?;
    Ok(reply.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_from_one_address_do_not_stop_healthz_for_another() {
    // A real `stagely serve` started with a soft limit of 256 descriptors (hard 640), as a
    // default systemd unit or shell would give it. It must raise the soft limit and log both;
    // the per-address cap keeps the half-open connections from taking the rest.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && ulimit -Hn 640 && exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_stagely"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .envs(crate::common::store_env(&dir.path().join("data")))
        .env("STAGELY_LOG_LEVEL", "info")
        .env("STAGELY_HTTP__MAX_CONNECTIONS_PER_IP", "50")
        // Long enough that no timeout is what frees them during the test.
        .env("STAGELY_HTTP__HEADER_TIMEOUT_SECS", "300")
        .env("STAGELY_HTTP__IDLE_TIMEOUT_SECS", "300")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = read_listen_line(child.stdout.take().unwrap(), &log).await;
    let addr = url.trim_start_matches("http://").to_owned();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("open-files limit") && logged.contains("soft=640") && logged.contains("hard=640"),
        "the soft limit is raised to the hard one and both are logged: {logged}"
    );

    let target: std::net::SocketAddr = addr.parse().unwrap();
    let held: Vec<TcpStream> = futures_util::future::join_all((0..1000).map(|_| async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // A full accept queue (an appliance out of descriptors) drops SYNs: do not wait on it.
        let mut s = tokio::time::timeout(Duration::from_secs(3), socket.connect(target))
            .await
            .ok()?
            .ok()?;
        // Half a request: a request line and no end of headers.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.ok()?;
        Some(s)
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    for attempt in 0..3 {
        let status = tokio::time::timeout(Duration::from_secs(10), healthz_from("127.0.0.2", &addr))
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        assert_eq!(
            status.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "attempt {attempt}: /healthz from another address with 1,000 half-open connections held; log: {}",
            tail(&log)
        );
    }
    drop(held);
    child.kill().await.unwrap();
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    text[start..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binaries_are_read_once_and_again_only_when_they_change() {
    use sha2::{Digest, Sha256};
    let bins = tempfile::tempdir().unwrap();
    let path = bins.path().join("stagely-agent-linux-aarch64");
    std::fs::write(&path, b"first build, 32 bytes of agent..").unwrap();
    let first_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let dir = bins.path().to_owned();
    let server = TestServer::start_with(move |c| c.agent_binaries_dir = dir).await;
    let http = reqwest::Client::new();
    let get = |suffix: &'static str| {
        let (http, url) = (http.clone(), server.api.url.clone());
        async move {
            let r = http
                .get(format!("{url}/agent/download/linux-aarch64{suffix}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let hex = |b: &[u8]| hex::encode(Sha256::digest(b));
    let first = hex(b"first build, 32 bytes of agent..");
    assert_eq!(get("/sha256").await, format!("{first}  stagely-agent\n"));

    // Same size, same mtime, other bytes: a per-request read would notice; the cache does not
    // (the honest observable that nothing is re-read or re-hashed per request).
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, b"other build, 32 bytes of agent..").unwrap();
    file.set_modified(first_mtime).unwrap();
    drop(file);
    for _ in 0..20 {
        assert_eq!(get("/sha256").await, format!("{first}  stagely-agent\n"));
    }
    assert_eq!(get("").await, "first build, 32 bytes of agent..");

    // A new build (new mtime): read and hashed again, and served consistently with its sum.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_modified(first_mtime + Duration::from_secs(60)).unwrap();
    drop(file);
    let second = hex(b"other build, 32 bytes of agent..");
    assert_eq!(get("/sha256").await, format!("{second}  stagely-agent\n"));
    assert_eq!(get("").await, "other build, 32 bytes of agent..");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_from_an_agent_count_as_invalid_frames() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, envs) = api.project("binary", &["prod"]).await;
    let (_, token) = api.agent(envs[0], "web").await;
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    for _ in 0..30 {
        let frame = tokio_tungstenite::tungstenite::Message::Binary(vec![0u8; 16].into());
        if agent.ws.send(frame).await.is_err() {
            break;
        }
    }
    assert_eq!(agent.closed_reason().await, "too many invalid frames");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_too_big_for_one_frame_fails_saying_what_is_too_big_never_agent_lost() {
    use serde_json::json;
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, envs) = api.project("bulky", &["prod"]).await;
    let (_, token) = api.agent(envs[0], "web").await;
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    // 12 values of 60,000 bytes, mostly quotes: 1.4 MiB once JSON-escaped (each under the
    // 64 KiB value limit, so every one of them is accepted on its own).
    let canary = "CANARY-7f3a9";
    for i in 0..12 {
        let value = format!("{canary}{}", "\"".repeat(60_000 - canary.len()));
        api.ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": format!("CERT_{i}"), "value": value, "scope": "global"}),
            201,
        )
        .await;
    }
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert!((400..500).contains(&status) && status != 409, "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("accepts at most 1.0 MiB") && message.contains("CERT_"),
        "{message}"
    );
    assert!(!body.to_string().contains(canary), "no value in the answer");
    assert!(
        agent.recv_within(Duration::from_millis(500)).await.is_none(),
        "nothing was sent to the agent"
    );
    let (_, list) = api.get("/api/deployments").await;
    let d = &list.as_array().unwrap()[0];
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    // Sealed to the agent, the values travel base64-encoded: the frame is larger than the values.
    assert!(
        error.contains("the DEPLOY message is") && error.contains("accepts at most 1.0 MiB"),
        "{error}"
    );
    assert!(
        !error.contains("agent_lost") && !error.contains(canary),
        "{error}"
    );
    server.stop().await;
}
