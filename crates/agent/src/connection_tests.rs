//! The connection protocol over channels: no server, no network, no Docker.

use super::*;
use stagely_protocol::signing::{self as sig, SigningKey};
use stagely_protocol::{DeployOutcome, LogStream, PullPolicy, Scope, SealedSecrets, SecretEntry};

/// The fake appliance's signing key, named in the fixture's token (so the agent pins it).
fn appliance_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

const TOKEN_SECRET: &str = "stga_connection_tests";

fn token() -> super::super::config::Token {
    super::super::config::Token::new(sig::token_with_fingerprint(
        TOKEN_SECRET,
        &sig::fingerprint(&appliance_key().verifying_key()),
    ))
}

/// A server message as the appliance sends it: signed for this agent, dated now (each frame a
/// millisecond later than the last, as a real resend would be).
fn signed_by(key: &SigningKey, message_json: &str) -> WsIn {
    static AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let at = AT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).max(0) + trust::now_ms();
    WsIn::Text(sig::seal(key, &sig::recipient_tag(TOKEN_SECRET), at, message_json).to_string())
}

fn signed(msg: &ServerMessage) -> WsIn {
    signed_by(&appliance_key(), &protocol::encode(msg))
}

type ServerTx = mpsc::UnboundedSender<Result<WsIn, String>>;
type ServerRx = mpsc::UnboundedReceiver<WsOut>;

fn pipe() -> (
    ServerTx,
    ServerRx,
    impl Sink<WsOut, Error = String> + Unpin,
    impl Stream<Item = Result<WsIn, String>> + Unpin,
) {
    let (to_agent, from_server) = mpsc::unbounded_channel::<Result<WsIn, String>>();
    let (to_server, from_agent) = mpsc::unbounded_channel::<WsOut>();
    let sink = Box::pin(futures_util::sink::unfold(
        to_server,
        |tx, item: WsOut| async move {
            tx.send(item).map_err(|_| "server gone".to_string())?;
            Ok::<_, String>(tx)
        },
    ));
    let stream = Box::pin(futures_util::stream::unfold(from_server, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }));
    (to_agent, from_agent, sink, stream)
}

struct Fixture {
    _work: tempfile::TempDir,
    _base: tempfile::TempDir,
    agent: Agent,
}

fn fixture(compose_command: &str) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let runtime = RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
    let deployer = Deployer {
        compose: Compose::new(compose_command).unwrap(),
        work_dir: work.path().to_owned(),
        runtime,
        verify_wait: Duration::ZERO,
        health_timeout: Duration::ZERO,
        deploy_timeout: Duration::from_secs(60),
        policy: Default::default(),
    };
    let results = Results::open(work.path()).unwrap();
    let trust = Trust::open(work.path(), &token()).unwrap();
    let agent = Agent::new(
        deployer,
        results,
        trust,
        HostInfo {
            hostname: "test-host".into(),
            ..Default::default()
        },
        identity(),
    );
    Fixture {
        _work: work,
        _base: base,
        agent,
    }
}

/// One identity for every agent of these tests, so a frame function can seal to it.
fn identity() -> Arc<AgentIdentity> {
    static ID: std::sync::OnceLock<Arc<AgentIdentity>> = std::sync::OnceLock::new();
    ID.get_or_init(|| Arc::new(AgentIdentity::generate())).clone()
}

fn deploy_msg(id: i64, compose_path: &str, secret_value: &str) -> ServerMessage {
    deploy_msg_to(identity().recipient(), id, compose_path, secret_value)
}

fn deploy_frame(id: i64, compose_path: &str, secret_value: &str) -> WsIn {
    signed(&deploy_msg(id, compose_path, secret_value))
}

fn deploy_frame_to(recipient: &str, id: i64, compose_path: &str, secret_value: &str) -> WsIn {
    signed(&deploy_msg_to(recipient, id, compose_path, secret_value))
}

/// A DEPLOY whose secrets are sealed to `recipient`.
fn deploy_msg_to(recipient: &str, id: i64, compose_path: &str, secret_value: &str) -> ServerMessage {
    let project = ProjectSpec {
        name: "shop".into(),
        environment: "staging".into(),
        repo_url: None,
        git_ref: "main".into(),
        compose_path: compose_path.into(),
        pull: PullPolicy::Never,
        compose_project: None,
        images: Default::default(),
    };
    let sealed = SealedSecrets {
        deployment_id: id,
        project: project.clone(),
        secrets: vec![SecretEntry {
            key: "CANARY".into(),
            value: secret_value.into(),
            scope: Scope::Global,
            service: None,
        }],
    };
    ServerMessage::Deploy {
        deployment_id: id,
        project,
        sealed_secrets: crate::identity::seal(recipient, &sealed).unwrap(),
    }
}

async fn next_msg(rx: &mut ServerRx) -> AgentMessage {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("agent said nothing for 20 s")
            .expect("agent hung up");
        match frame {
            WsOut::Text(t) => {
                let Ok(Incoming::Known(m)) = protocol::decode_agent_message(&t) else {
                    panic!("agent sent an undecodable frame")
                };
                return m;
            }
            WsOut::Ping => continue,
            WsOut::Close => panic!("agent closed"),
        }
    }
}

fn run_session(
    mut agent: Agent,
    sink: impl Sink<WsOut, Error = String> + Unpin + Send + 'static,
    stream: impl Stream<Item = Result<WsIn, String>> + Unpin + Send + 'static,
    stop: CancellationToken,
) -> JoinHandle<(Agent, SessionEnd)> {
    tokio::spawn(async move {
        let end = agent.session(sink, stream, &stop).await;
        (agent, end)
    })
}

#[tokio::test]
async fn status_is_kept_until_ack_and_a_repeated_deploy_is_not_run_again() {
    let f = fixture("docker compose");
    let stop = CancellationToken::new();
    let (mut tx, mut rx, sink, stream) = pipe();
    let mut session = run_session(f.agent, sink, stream, stop.clone());

    let AgentMessage::Hello {
        protocol,
        hostname,
        active_deployments,
        ..
    } = next_msg(&mut rx).await
    else {
        panic!("first frame must be HELLO")
    };
    assert_eq!((protocol, hostname.as_str()), (PROTOCOL_VERSION, "test-host"));
    assert_eq!(active_deployments, Some(vec![]));

    // A compose file that does not exist: the deployment fails fast, before any command runs.
    tx.send(Ok(deploy_frame(
        1,
        "/nonexistent/compose.yml",
        "canary-value-123",
    )))
    .unwrap();
    let mut seqs = Vec::new();
    let (status, error) = loop {
        match next_msg(&mut rx).await {
            AgentMessage::Log {
                deployment_id,
                seq,
                stream,
                line,
            } => {
                assert_eq!((deployment_id, stream), (1, LogStream::Agent));
                assert!(!line.contains("canary-value-123"));
                seqs.push(seq);
            }
            AgentMessage::Status {
                deployment_id,
                status,
                error,
                ..
            } => {
                assert_eq!(deployment_id, 1);
                break (status, error.unwrap_or_default());
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(status, DeployOutcome::Fail);
    assert!(error.contains("does not exist"), "{error}");
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "LOG before STATUS, in order"
    );

    // The connection drops before any ACK: the next session announces the deployment, resends
    // every line (in order), then the STATUS. Then the appliance commits the lines, and the
    // connection drops again before the STATUS ACK: only the STATUS is resent.
    let mut expect = seqs.clone();
    for round in 0..2 {
        drop(tx);
        let (agent, end) = session.await.unwrap();
        assert!(matches!(end, SessionEnd::Disconnected(_)));
        let (tx2, mut rx2, sink, stream) = pipe();
        session = run_session(agent, sink, stream, stop.clone());
        let AgentMessage::Hello {
            active_deployments, ..
        } = next_msg(&mut rx2).await
        else {
            panic!("HELLO first")
        };
        assert_eq!(active_deployments, Some(vec![1]));
        let mut resent = Vec::new();
        let lines = loop {
            match next_msg(&mut rx2).await {
                AgentMessage::Log {
                    deployment_id: 1,
                    seq,
                    ..
                } => resent.push(seq),
                AgentMessage::Status {
                    deployment_id: 1,
                    lines,
                    ..
                } => break lines,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(
            resent, expect,
            "round {round}: the unacknowledged lines, once, in order"
        );
        assert_eq!(
            lines,
            Some(seqs.len() as u64),
            "STATUS says how many lines were sent"
        );
        tx2.send(Ok(signed(&ServerMessage::LogAck {
            deployment_id: 1,
            seq: *seqs.last().unwrap(),
        })))
        .unwrap();
        expect.clear();
        tx = tx2;
        rx = rx2;
    }
    tx.send(Ok(signed(&ServerMessage::Ack { deployment_id: 1 })))
        .unwrap();

    // The same DEPLOY again: answered with the stored result, no new LOG lines.
    tx.send(Ok(deploy_frame(1, "/nonexistent/compose.yml", "x")))
        .unwrap();
    match next_msg(&mut rx).await {
        AgentMessage::Status {
            deployment_id: 1,
            status: DeployOutcome::Fail,
            error,
            ..
        } => assert!(error.unwrap_or_default().contains("does not exist")),
        other => panic!("expected the stored STATUS, got {other:?}"),
    }
    stop.cancel();
    let (agent, end) = session.await.unwrap();
    assert_eq!(end, SessionEnd::Shutdown);
    assert!(!agent.is_busy());
}

#[tokio::test]
async fn one_deployment_at_a_time() {
    // A "compose" that takes a while to answer `config --services`, then fails.
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow-compose.sh");
    std::fs::write(&slow, "sleep 2\necho 'no compose here' >&2\nexit 1\n").unwrap();
    let compose_file = dir.path().join("compose.yml");
    std::fs::write(&compose_file, "services: {}\n").unwrap();
    let f = fixture(&format!("sh {}", slow.display()));
    let stop = CancellationToken::new();
    let (tx, mut rx, sink, stream) = pipe();
    let session = run_session(f.agent, sink, stream, stop.clone());
    assert!(matches!(next_msg(&mut rx).await, AgentMessage::Hello { .. }));

    let path = compose_file.to_string_lossy().into_owned();
    tx.send(Ok(deploy_frame(10, &path, "v"))).unwrap();
    tx.send(Ok(deploy_frame(11, &path, "v"))).unwrap();
    let mut finished = Vec::new();
    while finished.len() < 2 {
        if let AgentMessage::Status {
            deployment_id, error, ..
        } = next_msg(&mut rx).await
        {
            finished.push((deployment_id, error.unwrap_or_default()));
        }
    }
    assert_eq!(finished[0].0, 11, "the second DEPLOY is refused at once");
    assert!(
        finished[0].1.contains("busy with deployment 10"),
        "{}",
        finished[0].1
    );
    assert_eq!(finished[1].0, 10);
    assert!(finished[1].1.contains("no compose here"), "{}", finished[1].1);
    stop.cancel();
    session.await.unwrap();
}

#[tokio::test]
async fn hello_carries_the_recipient_and_a_deploy_sealed_to_another_key_fails_before_anything_runs() {
    // A compose command that would leave a mark if it ran at all.
    let work = tempfile::tempdir().unwrap();
    let mark = work.path().join("ran");
    let script = work.path().join("compose.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
    let f = fixture(&format!("sh {}", script.display()));
    let stop = CancellationToken::new();
    let (tx, mut rx, sink, stream) = pipe();
    let session = run_session(f.agent, sink, stream, stop.clone());
    let AgentMessage::Hello { recipient, .. } = next_msg(&mut rx).await else {
        panic!("first frame must be HELLO")
    };
    assert_eq!(recipient.as_deref(), Some(identity().recipient()));

    let stranger = AgentIdentity::generate();
    tx.send(Ok(deploy_frame_to(
        stranger.recipient(),
        21,
        "/x/compose.yml",
        "canary-sealed-elsewhere",
    )))
    .unwrap();
    let AgentMessage::Status {
        deployment_id,
        status,
        error,
        ..
    } = next_msg(&mut rx).await
    else {
        panic!("expected a STATUS")
    };
    let error = error.unwrap_or_default();
    assert_eq!((deployment_id, status), (21, DeployOutcome::Fail));
    assert!(error.contains("not sealed to this agent's identity"), "{error}");
    assert!(
        !mark.exists(),
        "nothing may run for a DEPLOY whose secrets cannot be opened"
    );
    stop.cancel();
    session.await.unwrap();
}

#[tokio::test]
async fn garbage_and_unknown_frames_do_not_end_the_session() {
    let f = fixture("docker compose");
    let stop = CancellationToken::new();
    let (tx, mut rx, sink, stream) = pipe();
    let session = run_session(f.agent, sink, stream, stop.clone());
    assert!(matches!(next_msg(&mut rx).await, AgentMessage::Hello { .. }));
    for frame in [
        "not json",
        r#"{"type":"NEWS"}"#,
        r#"{"type":"DEPLOY"}"#,
        r#"{"type":"ACK","deployment_id":99}"#,
    ] {
        tx.send(Ok(WsIn::Text(frame.into()))).unwrap();
    }
    tx.send(Ok(WsIn::Other)).unwrap();
    tx.send(Ok(WsIn::Close("server shutting down".into()))).unwrap();
    let (_, end) = session.await.unwrap();
    assert_eq!(
        end,
        SessionEnd::Disconnected("server closed the connection: server shutting down".into())
    );
}

#[tokio::test]
async fn unsigned_foreign_and_replayed_deploys_are_refused_and_never_run() {
    let f = fixture("docker compose");
    let stop = CancellationToken::new();
    let (tx, mut rx, sink, stream) = pipe();
    let session = run_session(f.agent, sink, stream, stop.clone());
    assert!(matches!(next_msg(&mut rx).await, AgentMessage::Hello { .. }));

    let deploy = protocol::encode(&deploy_msg(20, "/nonexistent/compose.yml", "canary-refused"));
    // Unsigned, then signed by another key: each fails its deployment with the cause, no LOG.
    tx.send(Ok(WsIn::Text(deploy.clone()))).unwrap();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    tx.send(Ok(signed_by(&stranger, &deploy))).unwrap();
    for cause in ["not signed", "another key"] {
        match next_msg(&mut rx).await {
            AgentMessage::Status {
                deployment_id: 20,
                status: DeployOutcome::Fail,
                error: Some(error),
                ..
            } => assert!(error.contains(cause), "{error}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // Signed right: it runs (and fails on the missing file). The same frame again is a replay.
    let good = signed_by(&appliance_key(), &deploy);
    tx.send(Ok(good.clone())).unwrap();
    loop {
        if let AgentMessage::Status { deployment_id, .. } = next_msg(&mut rx).await {
            assert_eq!(deployment_id, 20);
            break;
        }
    }
    tx.send(Ok(good)).unwrap();
    match next_msg(&mut rx).await {
        AgentMessage::Error { code, message } => {
            assert_eq!(code, "deploy_refused");
            assert!(message.contains("replay"), "{message}");
        }
        other => panic!("expected the replay refused, got {other:?}"),
    }
    stop.cancel();
    let (agent, _) = session.await.unwrap();
    assert!(!agent.is_busy());
}

#[tokio::test]
async fn hello_offers_releases_and_runtime_and_a_bad_pin_fails_before_anything_runs() {
    let work = tempfile::tempdir().unwrap();
    let mark = work.path().join("ran");
    let script = work.path().join("compose.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
    std::fs::create_dir(work.path().join("p")).unwrap();
    let compose_file = work.path().join("p/compose.yml");
    std::fs::write(&compose_file, "services:\n  web: {image: x}\n").unwrap();
    let f = fixture(&format!("sh {}", script.display()));
    let stop = CancellationToken::new();
    let (tx, mut rx, sink, stream) = pipe();
    let session = run_session(f.agent, sink, stream, stop.clone());
    let AgentMessage::Hello { capabilities, .. } = next_msg(&mut rx).await else {
        panic!("first frame must be HELLO")
    };
    assert_eq!(
        capabilities,
        [CAP_RELEASES, CAP_RUNTIME, stagely_protocol::operate::CAP_OPERATE]
    );

    // A pin that is a tag, not a digest or an image id: refused naming the service.
    let ServerMessage::Deploy {
        mut project,
        deployment_id,
        ..
    } = deploy_msg(31, &compose_file.to_string_lossy(), "canary-pin")
    else {
        unreachable!()
    };
    project.images.insert("web".into(), "shop/web:latest".into());
    let sealed = SealedSecrets {
        deployment_id,
        project: project.clone(),
        secrets: vec![],
    };
    let msg = ServerMessage::Deploy {
        deployment_id,
        project,
        sealed_secrets: crate::identity::seal(identity().recipient(), &sealed).unwrap(),
    };
    tx.send(Ok(signed(&msg))).unwrap();
    let (status, error, applied, release) = loop {
        if let AgentMessage::Status {
            status,
            error,
            applied,
            release,
            ..
        } = next_msg(&mut rx).await
        {
            break (status, error.unwrap_or_default(), applied, release);
        }
    };
    assert_eq!(status, DeployOutcome::Fail);
    assert!(error.contains("image pin for service \"web\""), "{error}");
    assert_eq!(
        (applied, release),
        (Some(false), None),
        "nothing ran, so nothing applied"
    );
    assert!(!mark.exists(), "nothing may run for a DEPLOY with a bad pin");
    stop.cancel();
    session.await.unwrap();
}
