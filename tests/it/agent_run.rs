//! `stagely-agent run` as a real process against a minimal WebSocket server in the test (the
//! appliance's own end-to-end tests come with the server): token header, HELLO, a deploy on the
//! engine, reconnect, no listening socket, SIGTERM, and a SIGKILL mid-deploy leaving no override.

// Test helpers outside #[test] fns: clippy does not count them as tests. The handshake callback's
// error type is tungstenite's, large by its design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use stagely_agent::compose::project_name;
use stagely_agent::override_file::OVERRIDE_FILE_NAME;
use stagely_protocol::signing::{self, SigningKey};
use stagely_protocol::{
    self as protocol, AgentMessage, DeployOutcome, Incoming, ProjectSpec, PullPolicy, SealedSecrets,
    SecretEntry, ServerMessage,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::agent_override::global;
use crate::agent_support::{ProjectDown, find_named, require_engine, unique};

/// The token's secret part; the token the agent gets also names [`appliance_key`]'s fingerprint.
pub(crate) const TOKEN: &str = "agt_test_token_canary";
const CANARY: &str = "canary-run-secret-xyz";

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The key this test's appliance signs with (issue 11).
pub(crate) fn appliance_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// The agent token: [`TOKEN`] carrying [`appliance_key`]'s fingerprint, as the appliance makes them.
pub(crate) fn token() -> String {
    signing::token_with_fingerprint(TOKEN, &signing::fingerprint(&appliance_key().verifying_key()))
}

/// A server message sealed as the appliance seals it: signed by `key`, for the agent of [`TOKEN`],
/// dated now.
pub(crate) fn seal_with(key: &SigningKey, message_json: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    signing::seal(key, &signing::recipient_tag(TOKEN), now, message_json).to_string()
}

/// Accept the next agent connection, returning the request path and Authorization header.
pub(crate) async fn accept(listener: &TcpListener) -> (Ws, String, String) {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("the agent did not (re)connect within 20 s")
        .unwrap();
    let seen = Arc::new(Mutex::new((String::new(), String::new())));
    let s = Arc::clone(&seen);
    let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        *s.lock().unwrap() = (req.uri().path().to_owned(), auth.to_owned());
        Ok(resp)
    })
    .await
    .unwrap();
    let (path, auth) = seen.lock().unwrap().clone();
    (ws, path, auth)
}

pub(crate) async fn recv(ws: &mut Ws) -> AgentMessage {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("agent silent for 60 s")
            .expect("agent closed")
            .unwrap();
        if let Message::Text(t) = msg {
            let Ok(Incoming::Known(m)) = protocol::decode_agent_message(t.as_str()) else {
                panic!("undecodable frame from the agent");
            };
            return m;
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, msg: &ServerMessage) {
    send_raw(ws, seal_with(&appliance_key(), &protocol::encode(msg))).await;
}

pub(crate) async fn send_raw(ws: &mut Ws, frame: String) {
    ws.send(Message::Text(frame.into())).await.unwrap();
}

pub(crate) struct AgentProc {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

fn start_agent(addr: std::net::SocketAddr, dir: &Path) -> AgentProc {
    start_agent_with(addr, dir, &token(), "docker compose")
}

/// `stagely-agent run` against `addr` with this token, its work dir under `dir`.
pub(crate) fn start_agent_with(
    addr: std::net::SocketAddr,
    dir: &Path,
    token: &str,
    compose: &str,
) -> AgentProc {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut child = tokio::process::Command::new(crate::bins::agent())
        .arg("run")
        .arg("--server")
        .arg(format!("http://{addr}"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .args(["--verify-wait-secs", "1", "--compose-command", compose])
        .env("STAGELY_AGENT_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own group, so a "crash" can take compose down with it, as a service manager would.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = Arc::clone(&stderr);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    AgentProc { child, stderr }
}

impl AgentProc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub(crate) fn signal(&self, sig: &str, group: bool) {
        let target = if group {
            format!("-{}", self.pid())
        } else {
            self.pid().to_string()
        };
        let ok = std::process::Command::new("kill")
            .args([sig, "--", &target])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {target}");
    }

    pub(crate) async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the agent did not exit within 20 s")
            .unwrap()
    }

    pub(crate) fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

/// Socket inodes the process holds that are listening (TCP) or bound (UDP).
fn listening_sockets(pid: u32) -> Vec<String> {
    let mine: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // TCP state 0A is LISTEN; any UDP socket of ours would be a bound port.
            let listening = table.starts_with("udp") || cols.get(3) == Some(&"0A");
            if listening && cols.get(9).is_some_and(|inode| mine.iter().any(|m| m == inode)) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    found
}

/// A DEPLOY with its secrets sealed to the recipient the agent's HELLO offered.
pub(crate) fn deploy_msg(
    recipient: &str,
    id: i64,
    name: &str,
    compose: &Path,
    secrets: Vec<SecretEntry>,
) -> ServerMessage {
    let project = ProjectSpec {
        name: name.into(),
        environment: "staging".into(),
        repo_url: None,
        git_ref: "main".into(),
        compose_path: compose.to_string_lossy().into_owned(),
        pull: PullPolicy::Never,
        compose_project: None,
        images: Default::default(),
    };
    let payload = SealedSecrets {
        deployment_id: id,
        project: project.clone(),
        secrets,
    };
    ServerMessage::Deploy {
        deployment_id: id,
        project,
        sealed_secrets: stagely_agent::identity::seal(recipient, &payload).unwrap(),
    }
}

#[tokio::test]
async fn agent_process_deploys_reconnects_listens_nowhere_and_stops_on_sigterm() {
    if !require_engine() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(
        &compose,
        "services:\n  web:\n    image: stagely-test-busybox\n    command: [\"sh\", \"-c\", \"echo got $$CANARY; sleep 3600\"]\n",
    )
    .unwrap();
    let name = unique("agtrun");
    let _down = ProjectDown(project_name(&name, "staging"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = start_agent(listener.local_addr().unwrap(), dir.path());

    let (mut ws, path, auth) = accept(&listener).await;
    assert_eq!(path, "/ws/agent");
    assert_eq!(auth, format!("Bearer {}", token()));
    let AgentMessage::Hello {
        protocol: 1,
        hostname,
        docker_version,
        compose_version,
        active_deployments: Some(active),
        recipient: Some(recipient),
        ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first (with the agent's age recipient)")
    };
    assert!(!hostname.is_empty() && !docker_version.is_empty() && !compose_version.is_empty());
    assert!(active.is_empty());
    assert_eq!(
        listening_sockets(agent.pid()),
        Vec::<String>::new(),
        "the agent must listen on no port"
    );

    send(
        &mut ws,
        &deploy_msg(&recipient, 1, &name, &compose, vec![global("CANARY", CANARY)]),
    )
    .await;
    let mut lines = Vec::new();
    let status = loop {
        match recv(&mut ws).await {
            AgentMessage::Log { line, .. } => lines.push(line),
            AgentMessage::Status {
                deployment_id: 1,
                status,
                error,
                ..
            } => break (status, error),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(status.0, DeployOutcome::Success, "{:?}\n{lines:#?}", status.1);
    assert!(lines.iter().all(|l| !l.contains(CANARY)));
    send(&mut ws, &ServerMessage::Ack { deployment_id: 1 }).await;

    // The server drops the connection: the agent comes back (first backoff ≤ 1 s).
    let _ = ws.close(None).await;
    drop(ws);
    let (mut ws, _, _) = accept(&listener).await;
    let AgentMessage::Hello {
        active_deployments, ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first")
    };
    assert_eq!(active_deployments, Some(vec![]), "the ACKed result is not active");

    agent.signal("-TERM", false);
    let status = agent.wait().await;
    assert!(status.success(), "SIGTERM must exit cleanly: {status:?}");
    let log = agent.log();
    assert!(
        !log.contains(CANARY) && !log.contains(TOKEN),
        "secret in the agent log:\n{log}"
    );
    assert!(find_named(dir.path(), OVERRIDE_FILE_NAME).is_empty());
}

#[tokio::test]
async fn a_killed_agent_leaves_no_override_and_reports_the_deploy_as_interrupted() {
    if !require_engine() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = unique("agtkill");
    let _down = ProjectDown(project_name(&name, "staging"));
    // A slow build keeps compose (and so the override) busy long enough to kill the agent.
    std::fs::create_dir_all(dir.path().join("slow")).unwrap();
    std::fs::write(
        dir.path().join("slow/Dockerfile"),
        format!("FROM stagely-test-busybox\nRUN echo {name} && sleep 30\n"),
    )
    .unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(&compose, "services:\n  slow:\n    build: ./slow\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut agent = start_agent(addr, dir.path());
    let (mut ws, _, _) = accept(&listener).await;
    let AgentMessage::Hello {
        recipient: Some(recipient),
        ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first (with the agent's age recipient)")
    };
    send(
        &mut ws,
        &deploy_msg(&recipient, 7, &name, &compose, vec![global("CANARY", CANARY)]),
    )
    .await;

    let run_dir = dir.path().join("run");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while find_named(&run_dir, OVERRIDE_FILE_NAME).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no override appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.signal("-KILL", true);
    agent.wait().await;
    drop(ws);
    assert!(
        !find_named(&run_dir, OVERRIDE_FILE_NAME).is_empty(),
        "a crash leaves it behind"
    );

    let mut agent = start_agent(addr, dir.path());
    let (mut ws, _, _) = accept(&listener).await;
    // Leftovers are deleted before the agent dials.
    assert!(
        find_named(&run_dir, OVERRIDE_FILE_NAME).is_empty(),
        "leftover override not deleted"
    );
    let AgentMessage::Hello {
        active_deployments,
        recipient: again,
        ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first")
    };
    assert_eq!(active_deployments, Some(vec![7]));
    // The identity made at first start is kept, private, across restarts (and a crash).
    assert_eq!(again.as_deref(), Some(recipient.as_str()));
    let identity = dir
        .path()
        .join("work")
        .join(stagely_agent::identity::IDENTITY_FILE);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&identity).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", identity.display());
    match recv(&mut ws).await {
        AgentMessage::Status {
            deployment_id: 7,
            status: DeployOutcome::Fail,
            error,
            ..
        } => assert!(
            error
                .unwrap_or_default()
                .contains("agent stopped during this deployment")
        ),
        other => panic!("expected the interrupted STATUS, got {other:?}"),
    }
    agent.signal("-TERM", false);
    assert!(agent.wait().await.success());
    let log = agent.log();
    assert!(!log.contains(CANARY));
    assert!(
        !log.contains("AGE-SECRET-KEY"),
        "the identity's secret half in the log"
    );
}
