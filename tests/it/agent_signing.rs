//! Signed commands (issue 11) with a real `stagely-agent` process: against a fake appliance in
//! the test (a tokio-tungstenite server that signs with keys the test picks), an agent refuses
//! unsigned frames, frames signed by another key or for another agent, and a replayed DEPLOY,
//! and runs nothing for them; it pins the key its token names (or, for an old token, the first
//! one, saying so), and follows a signed rotation chain. Against the real appliance, a key
//! rotated with `stagely admin rotate-signing-key` moves a connected agent's pin.
//! No engine: the "compose" here is a script that records being called.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use stagely_protocol::signing::{self, SigningKey};
use stagely_protocol::{self as protocol, AgentMessage, DeployOutcome, ServerMessage};
use tokio::net::TcpListener;

use crate::agent_override::global;
use crate::agent_run::{
    TOKEN, Ws, accept, appliance_key, deploy_msg, recv, seal_with, send_raw, start_agent_with, token,
};
use crate::common::{Api, ServerProcess, admin_token, wait_for};

const CANARY: &str = "canary-signed-secret-4711";

fn fp(key: &SigningKey) -> String {
    signing::fingerprint(&key.verifying_key())
}

/// A compose stand-in that answers the version probe and records every other call.
fn recording_compose(dir: &Path) -> (String, std::path::PathBuf) {
    let calls = dir.join("compose-calls");
    let script = dir.join("compose.sh");
    std::fs::write(
        &script,
        format!(
            "case \"$1\" in version) echo 2.40.0; exit 0;; esac\necho \"$@\" >> '{}'\necho 'compose stand-in' >&2\nexit 1\n",
            calls.display()
        ),
    )
    .unwrap();
    (format!("sh {}", script.display()), calls)
}

/// The next frame that is not a LOG line.
/// The agent's HELLO, answering the age recipient it offers (DEPLOY secrets are sealed to it).
async fn hello_recipient(ws: &mut Ws) -> String {
    match recv(ws).await {
        AgentMessage::Hello {
            recipient: Some(recipient),
            ..
        } => recipient,
        other => panic!("HELLO with a recipient first, got {other:?}"),
    }
}

async fn next_report(ws: &mut Ws) -> AgentMessage {
    loop {
        match recv(ws).await {
            AgentMessage::Log { .. } => continue,
            other => return other,
        }
    }
}

/// The STATUS of `id`, which must be a FAIL: its error.
async fn failed(ws: &mut Ws, id: i64) -> String {
    match next_report(ws).await {
        AgentMessage::Status {
            deployment_id,
            status: DeployOutcome::Fail,
            error,
            ..
        } if deployment_id == id => error.unwrap_or_default(),
        other => panic!("expected deployment {id} to fail, got {other:?}"),
    }
}

async fn refused(ws: &mut Ws) -> (String, String) {
    match next_report(ws).await {
        AgentMessage::Error { code, message } => (code, message),
        other => panic!("expected an ERROR (refusal), got {other:?}"),
    }
}

fn pin(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("work/appliance-key.pin")).unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_real_agent_runs_only_what_the_pinned_key_signed_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (compose, calls) = recording_compose(dir.path());
    let compose_file = dir.path().join("compose.yml");
    std::fs::write(&compose_file, "services: {}\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = start_agent_with(listener.local_addr().unwrap(), dir.path(), &token(), &compose);
    let (mut ws, _, _) = accept(&listener).await;
    let recipient = hello_recipient(&mut ws).await;
    assert!(
        pin(dir.path()).contains(&fp(&appliance_key())),
        "the token's key is pinned at start: {:?}",
        pin(dir.path())
    );

    let deploy = |id| {
        protocol::encode(&deploy_msg(
            &recipient,
            id,
            "signed",
            &compose_file,
            vec![global("CANARY", CANARY)],
        ))
    };
    // Unsigned.
    send_raw(&mut ws, deploy(1)).await;
    let error = failed(&mut ws, 1).await;
    assert!(error.contains("not signed"), "{error}");
    // Re-signed with another key.
    let stranger = SigningKey::from_bytes(&[99; 32]);
    send_raw(&mut ws, seal_with(&stranger, &deploy(2))).await;
    let error = failed(&mut ws, 2).await;
    assert!(
        error.contains("another key")
            && error.contains(&fp(&stranger))
            && error.contains(&fp(&appliance_key())),
        "{error}"
    );
    // Signed by the right key, for another agent.
    let elsewhere = signing::seal(
        &appliance_key(),
        &signing::recipient_tag("stga_someone_else"),
        now_ms(),
        &deploy(3),
    );
    send_raw(&mut ws, elsewhere.to_string()).await;
    let error = failed(&mut ws, 3).await;
    assert!(error.contains("another agent"), "{error}");
    assert!(!calls.exists(), "a refused DEPLOY ran compose");

    // The real thing runs (compose is called, and fails as the stand-in does).
    let good = seal_with(&appliance_key(), &deploy(4));
    send_raw(&mut ws, good.clone()).await;
    let error = failed(&mut ws, 4).await;
    assert!(error.contains("compose stand-in"), "{error}");
    let ran = std::fs::read_to_string(&calls).expect("the signed DEPLOY did not call compose");

    // The same frame again: a replay, refused, compose not called again.
    send_raw(&mut ws, good).await;
    let (code, message) = refused(&mut ws).await;
    assert_eq!(code, "deploy_refused");
    assert!(message.contains("replay"), "{message}");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        ran,
        "the replay ran compose"
    );

    agent.signal("-TERM", false);
    assert!(agent.wait().await.success());
    let log = agent.log();
    for said in ["not signed", "another key", "another agent", "replay"] {
        assert!(log.contains(said), "the agent log does not say {said:?}:\n{log}");
    }
    assert!(
        !log.contains(CANARY) && !log.contains(TOKEN),
        "secret in the log:\n{log}"
    );
}

#[tokio::test]
async fn an_agent_follows_a_signed_rotation_chain_and_no_other_key() {
    let dir = tempfile::tempdir().unwrap();
    let (compose, _) = recording_compose(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = start_agent_with(listener.local_addr().unwrap(), dir.path(), &token(), &compose);
    let (mut ws, _, _) = accept(&listener).await;
    let recipient = hello_recipient(&mut ws).await;

    let old = appliance_key();
    let new = SigningKey::from_bytes(&[43; 32]);
    let ack = protocol::encode(&ServerMessage::Ack { deployment_id: 1 });
    // The new key without a hand-over: refused.
    send_raw(&mut ws, seal_with(&new, &ack)).await;
    let (code, message) = refused(&mut ws).await;
    assert_eq!(code, "frame_refused");
    assert!(message.contains("another key"), "{message}");
    // A hand-over "signed" by someone else than the pinned key: refused.
    let stranger = SigningKey::from_bytes(&[98; 32]);
    let forged = protocol::encode(&ServerMessage::Rekey {
        chain: vec![signing::sign_rotation(&stranger, &new.verifying_key())],
    });
    send_raw(&mut ws, seal_with(&new, &forged)).await;
    assert_eq!(refused(&mut ws).await.0, "frame_refused");
    assert!(pin(dir.path()).contains(&fp(&old)));

    // The real hand-over: the pin moves, and the new key's DEPLOY runs.
    let rekey = protocol::encode(&ServerMessage::Rekey {
        chain: vec![signing::sign_rotation(&old, &new.verifying_key())],
    });
    send_raw(&mut ws, seal_with(&new, &rekey)).await;
    let compose_file = dir.path().join("missing/compose.yml");
    let deploy = protocol::encode(&deploy_msg(&recipient, 7, "rotated", &compose_file, vec![]));
    send_raw(&mut ws, seal_with(&new, &deploy)).await;
    let error = failed(&mut ws, 7).await;
    assert!(error.contains("does not exist"), "it ran: {error}");
    assert!(pin(dir.path()).contains(&fp(&new)), "{}", pin(dir.path()));
    // And the old key is no longer obeyed.
    send_raw(&mut ws, seal_with(&old, &ack)).await;
    assert_eq!(refused(&mut ws).await.0, "frame_refused");

    agent.signal("-TERM", false);
    assert!(agent.wait().await.success());
    assert!(
        agent.log().contains("followed the signed hand-over"),
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn an_old_token_pins_the_first_key_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (compose, _) = recording_compose(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A token from before signed commands: no fingerprint.
    let mut agent = start_agent_with(listener.local_addr().unwrap(), dir.path(), TOKEN, &compose);
    let (mut ws, _, _) = accept(&listener).await;
    assert!(matches!(recv(&mut ws).await, AgentMessage::Hello { .. }));
    assert_eq!(
        pin(dir.path()),
        "",
        "nothing pinned before the first signed frame"
    );

    let first = SigningKey::from_bytes(&[50; 32]);
    let ack = protocol::encode(&ServerMessage::Ack { deployment_id: 1 });
    send_raw(&mut ws, seal_with(&first, &ack)).await;
    let d = dir.path().to_owned();
    let want = fp(&first);
    wait_for("the first key to be pinned", Duration::from_secs(10), || {
        let got = pin(&d).contains(&want);
        async move { got.then_some(()) }
    })
    .await;
    send_raw(&mut ws, seal_with(&appliance_key(), &ack)).await;
    assert_eq!(refused(&mut ws).await.0, "frame_refused");

    agent.signal("-TERM", false);
    assert!(agent.wait().await.success());
    let log = agent.log();
    assert!(log.contains("trust on first use"), "{log}");
}

fn stagely(args: &[&str], data: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .envs(crate::common::store_env(data))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_appliance_key_moves_a_connected_agents_pin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let port = server.port();
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("rotated", &["prod"]).await;
    let (agent_id, agent_token) = api.agent(envs[0], "a").await;

    // The token carries the fingerprint `stagely admin signing-key` prints.
    let out = stagely(&["admin", "signing-key"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let old_fp = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        signing::split_token(&agent_token).1.as_deref(),
        Some(old_fp.as_str())
    );
    let (_, page) = api.get("/agent/signing-key").await;
    assert!(
        page.as_str().unwrap_or_default().contains("BEGIN PUBLIC KEY"),
        "{page}"
    );

    let work = dir.path().join("work");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{agent_token}\n")).unwrap();
    let mut agent = tokio::process::Command::new(crate::bins::agent())
        .args(["run", "--server", &server.url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(&work)
        .kill_on_drop(true)
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    api.wait_online(agent_id).await;
    let pinned = || std::fs::read_to_string(work.join("appliance-key.pin")).unwrap_or_default();
    assert!(pinned().contains(&old_fp));

    server.terminate().await;
    let out = stagely(&["admin", "rotate-signing-key"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let new_fp = text
        .lines()
        .find_map(|l| l.strip_prefix("new fingerprint: "))
        .unwrap()
        .to_owned();
    assert_ne!(new_fp, old_fp);

    // Same port, so the running agent comes back by itself.
    let server = ServerProcess::spawn(&data, &format!("127.0.0.1:{port}"), &[], &log).await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let d = api
        .wait_finished(body["deployment_id"].as_i64().unwrap(), Duration::from_secs(60))
        .await;
    // It ran on the agent (and failed there: the compose file is not on this machine).
    let error = d["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("does not exist") && !error.contains("refused"),
        "{d}"
    );
    assert!(pinned().contains(&new_fp), "{}", pinned());
    let agent_log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(agent_log.contains("followed the signed hand-over"), "{agent_log}");
    // New tokens carry the new key.
    let (_, newer) = api.agent(envs[0], "b").await;
    assert_eq!(signing::split_token(&newer).1.as_deref(), Some(new_fp.as_str()));

    agent.kill().await.unwrap();
    server.terminate().await;
}
