//! End to end on a real engine: `stagely serve` and `stagely-agent run` as real processes, a
//! compose project in a local git repository, real containers whose environment is read back.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{file_contains, wait_for};
use crate::engine_support::{Stack, compose_up_processes, sh};
use crate::prereq;

const CANARY: &str = "e2e-canary-5d1b7c0a";

/// Values that break naive override writers: interpolation, YAML retyping, escapes, size.
fn hard_values() -> Vec<(&'static str, String)> {
    vec![
        ("DOLLAR", "$HOME ${PATH} $$ $".into()),
        ("QUOTES", r#"it's "quoted" `tick` \backslash\"#.into()),
        ("YES", "yes".into()),
        ("OCTAL", "0123".into()),
        ("FLOAT", "1e3".into()),
        ("NULL", "null".into()),
        ("TILDE", "~".into()),
        ("MULTILINE", "line one\nline two\n\ttabbed\n".into()),
        ("UNICODE", "ünïcødé ✓ 🚀 𝔘".into()),
        ("EMPTY", String::new()),
        ("BIG", "0123456789abcdef".repeat(4096)),
        ("CANARY", CANARY.into()),
    ]
}

const TWO_SERVICES: &str = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo web starting; exec sleep 3600"]
    environment:
      REPLACED_BY_SECRET: "from compose"
      KEPT: "kept"
  worker:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_deploy_delivers_every_value_byte_for_byte() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("e2e-values", TWO_SERVICES, "staging").await;
    for (key, value) in hard_values() {
        stack
            .secret(json!({"key": key, "value": value, "scope": "global"}))
            .await;
    }
    stack.secret(json!({"key": "REPLACED_BY_SECRET", "value": "from stagely", "scope": "service", "service": "web"})).await;
    stack
        .secret(json!({"key": "SCOPED", "value": "project-wide", "scope": "service", "service": "worker"}))
        .await;
    stack.secret(json!({"key": "SCOPED", "value": "staging only", "scope": "service", "service": "worker", "environment": "staging"})).await;
    stack
        .secret(
            json!({"key": "YES", "value": "service beats global", "scope": "service", "service": "worker"}),
        )
        .await;

    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert!(
        d["commit"].as_str().is_some_and(|c| c.len() == 40),
        "commit recorded: {d}"
    );
    let (_, logs) = stack.api.get(&format!("/api/deployments/{id}/logs")).await;
    assert!(
        logs.as_array().unwrap().len() > 2,
        "compose output stored: {logs}"
    );

    let web = stack.container_env("web");
    let worker = stack.container_env("worker");
    for (key, value) in hard_values() {
        assert_eq!(web.get(key), Some(&value), "web {key}");
        if key != "YES" {
            assert_eq!(worker.get(key), Some(&value), "worker {key}");
        }
    }
    assert_eq!(web["REPLACED_BY_SECRET"], "from stagely");
    assert_eq!(web["KEPT"], "kept", "the rest of the compose model is untouched");
    assert!(
        !web.contains_key("SCOPED"),
        "a service secret goes to its service only"
    );
    assert_eq!(
        worker["SCOPED"], "staging only",
        "environment-specific beats project-wide"
    );
    assert_eq!(worker["YES"], "service beats global");

    assert_eq!(
        stack.leftover_overrides(),
        Vec::<PathBuf>::new(),
        "no override file remains"
    );
    assert!(!logs.to_string().contains(CANARY), "stored logs are masked");
    assert!(
        !stack.logs_contain(CANARY),
        "the canary is in neither process's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_service_and_start_nothing_when_the_input_is_wrong() {
    if !prereq::docker() {
        return;
    }
    let crashing = r#"
services:
  ok:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
  crashy:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo boom-before-exit; exit 3"]
"#;
    let stack = Stack::start("e2e-fail", crashing, "staging").await;
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("crashy"),
        "names the service: {d}"
    );
    let crashy = d["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "crashy")
        .unwrap();
    assert_eq!(crashy["exit_code"], 3, "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("boom-before-exit"),
        "the service's last lines: {d}"
    );

    // A service secret for a service that does not exist: FAIL before anything runs.
    let fresh = Stack::start("e2e-unknown", TWO_SERVICES, "staging").await;
    fresh
        .secret(json!({"key": "K", "value": "v", "scope": "service", "service": "nosuch"}))
        .await;
    let id = fresh.deploy().await;
    let d = fresh.api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "failed");
    assert!(d["error"].as_str().unwrap().contains("nosuch"), "{d}");
    assert_eq!(fresh.containers(), 0, "nothing started");

    // A broken compose file: FAIL with compose's own words, nothing started.
    let broken = Stack::start(
        "e2e-broken",
        "services:\n  web:\n    image: [not, a, string\n",
        "staging",
    )
    .await;
    let id = broken.deploy().await;
    let d = broken.api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "failed");
    assert!(
        d["error"].as_str().unwrap_or("").len() > 10,
        "compose's message is carried: {d}"
    );
    assert_eq!(broken.containers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_or_the_agent_mid_deploy_ends_truthfully_and_leaves_no_secrets() {
    if !prereq::docker() {
        return;
    }
    // A healthcheck that takes a few seconds keeps the deploy in flight long enough to kill things.
    let slow = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "sleep 4; touch /tmp/ready; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 30
"#;
    let mut stack = Stack::start("e2e-kill", slow, "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;

    // 1. The server dies mid-deploy and comes back on the same port: the agent reconnects with
    //    backoff and reports; the deployment ends success.
    let id = stack.deploy().await;
    let api = stack.api.clone();
    wait_for("deploy running", Duration::from_secs(30), || {
        let api = api.clone();
        async move { (api.get(&format!("/api/deployments/{id}")).await.1["status"] == "running").then_some(()) }
    })
    .await;
    stack.restart_server(Duration::ZERO).await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "reported after reconnecting: {d}");

    // 2. The agent dies mid-deploy: after it restarts, no override file is left and the
    //    deployment is failed as agent_lost (the new agent does not hold it).
    let id = stack.deploy().await;
    wait_for("deploy running", Duration::from_secs(30), || {
        let api = api.clone();
        async move { (api.get(&format!("/api/deployments/{id}")).await.1["status"] == "running").then_some(()) }
    })
    .await;
    stack.kill_agent().await;
    stack.start_agent().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(60)).await;
    // The restarted agent remembers it was mid-deploy and says so itself (the server would
    // otherwise fail it as agent_lost): either way, a true `failed`.
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(error == "agent_lost" || error.contains("restarted"), "{d}");
    assert_eq!(
        stack.leftover_overrides(),
        Vec::<PathBuf>::new(),
        "the restarted agent cleared the leftover"
    );
    assert!(!stack.logs_contain(CANARY));
}

/// A failing service prints a secret encoded (base64 alone and inside a longer base64 text,
/// base64url without padding, percent-encoded, JSON-escaped): no form of it is stored or shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_printing_a_secret_encoded_shows_no_form_of_it() {
    if !prereq::docker() {
        return;
    }
    let value = "enc/canary+7Hq9-Zx8";
    let printing = r#"
services:
  leaky:
    image: stagely-test-busybox:latest
    command:
      - sh
      - -c
      - |
        printf '%s' "$$ENC" | base64
        printf 'Basic %s\n' "$$(printf 'user:%s' "$$ENC" | base64)"
        printf '%s' "$$ENC" | base64 | tr '+/' '-_' | tr -d '='
        printf 'url=%s\n' "$$(printf '%s' "$$ENC" | sed 's,/,%2F,g; s,+,%2B,g')"
        printf '{"v":"%s"}\n' "$$(printf '%s' "$$ENC" | sed 's,/,\\/,g')"
        exit 3
"#;
    let stack = Stack::start("e2e-encoded", printing, "staging").await;
    stack
        .secret(json!({"key": "ENC", "value": value, "scope": "global"}))
        .await;
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "failed", "{d}");
    let (_, logs) = stack.api.get(&format!("/api/deployments/{id}/logs")).await;
    let shown = format!("{d}\n{logs}");
    use base64::Engine;
    let engines = base64::engine::general_purpose::STANDARD;
    let forms = [
        value.to_owned(),
        engines.encode(value),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
        // The middle of `user:<value>`'s base64, which depends on the value alone.
        engines.encode(format!("user:{value}"))[8..24].to_owned(),
        "enc%2Fcanary%2B7Hq9-Zx8".to_owned(),
        r"enc\/canary+7Hq9-Zx8".to_owned(),
    ];
    assert!(
        shown.contains("***"),
        "the service's lines are there, masked: {shown}"
    );
    let db = crate::common::store::store_bytes(&stack.root.join("data"));
    for form in &forms {
        assert!(!shown.contains(form.as_str()), "{form} shown: {shown}");
        assert!(!stack.logs_contain(form), "{form} in a process log");
        assert!(
            !db.windows(form.len()).any(|w| w == form.as_bytes()),
            "{form} stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_capture_between_agent_and_appliance_holds_no_secret_in_clear() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start_captured("e2e-sealed", TWO_SERVICES, "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    stack
        .secret(json!({"key": "MULTILINE", "value": "sealed\nacross lines", "scope": "service", "service": "web"}))
        .await;
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");

    // The real agent opened them: the container has the exact values.
    let web = stack.container_env("web");
    assert_eq!(web["CANARY"], CANARY);
    assert_eq!(web["MULTILINE"], "sealed\nacross lines");

    // Everything the appliance sent through the proxy: the DEPLOY is there, its values are not.
    let capture = stack.proxy.as_ref().unwrap();
    let bytes = capture.bytes();
    assert!(
        !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "the canary crossed the wire in clear"
    );
    let deploys: Vec<Value> = capture
        .text_frames()
        .iter()
        // Every frame is a signed envelope: open it (the signature is checked) to see the message.
        .filter_map(|f| stagely_protocol::signing::open(f).ok())
        .filter_map(|o| serde_json::from_str::<Value>(o.message()).ok())
        .filter(|f| f["type"] == "DEPLOY")
        .collect();
    assert_eq!(deploys.len(), 1, "the DEPLOY went through the proxy");
    let deploy = &deploys[0];
    assert_eq!(deploy["deployment_id"], id);
    assert!(deploy.get("secrets").is_none(), "{deploy}");
    let sealed = deploy["sealed_secrets"].as_str().unwrap();
    // A replay of the captured frame is worth nothing to whoever holds it: only the agent's
    // identity (in its work dir) opens it, and only for this deployment.
    let project: stagely_protocol::ProjectSpec = serde_json::from_value(deploy["project"].clone()).unwrap();
    let other = stagely_agent::identity::AgentIdentity::generate();
    assert!(other.open(sealed, id, &project).is_err());
    let mine = stagely_agent::identity::AgentIdentity::load_or_create(&stack.root.join("work")).unwrap();
    assert!(mine.open(sealed, id + 1, &project).is_err());
    let opened = mine.open(sealed, id, &project).unwrap();
    assert!(opened.iter().any(|s| s.key == "CANARY" && s.value == CANARY));
    assert!(!stack.logs_contain(CANARY));
}

/// Issue 12: a `docker compose up` whose agent was SIGKILLed goes on (it would create the next
/// container with the old values); the restarted agent ends it before it reports, and nothing
/// of that deployment is started afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_left_running_by_a_killed_agent_is_ended_before_the_new_agent_reports() {
    if !prereq::docker() {
        return;
    }
    // `up -d` waits for `slow` to be healthy (about 20 s) before it starts `after`.
    let compose = r#"
services:
  slow:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "sleep 20; touch /tmp/ready; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 120
  after:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
    depends_on:
      slow:
        condition: service_healthy
"#;
    let mut stack = Stack::start("e2e-orphan", compose, "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    let project = stack.compose_project();
    // Running containers: compose creates every container first and starts `after` only once
    // `slow` is healthy.
    let service_containers = |service: &str| {
        sh(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]))
        .lines()
        .count()
    };
    let id = stack.deploy().await;
    // Compose prints nothing while it waits for `slow` to turn healthy: killed then, the agent
    // leaves a compose that lives on until its next write (`slow` healthy) hits the closed pipe.
    let api = stack.api.clone();
    wait_for("compose up waiting for `slow`", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let (_, logs) = api.get(&format!("/api/deployments/{id}/logs")).await;
            logs.to_string().contains("Waiting").then_some(())
        }
    })
    .await;
    let slow_created = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let up = compose_up_processes(&project);
    let pgid = stagely_agent::groups::read_stat(up[0]).unwrap().pgrp;
    // The agent recorded the group in its runtime dir.
    let runtime = stack.runtime.clone();
    let records = || {
        let out = Command::new("find")
            .arg(&runtime)
            .args(["-name", "pgroup-*.json"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            // Deployment 0 is the running agent's own `docker events` child (its runtime watch),
            // not a deployment's command.
            .filter(|r| !r.contains("\"deployment_id\":0,"))
            .collect::<Vec<_>>()
    };
    assert!(
        records()
            .iter()
            .any(|r| r.contains(&format!("\"pgid\":{pgid},"))
                && r.contains(&format!("\"deployment_id\":{id},"))),
        "no record of group {pgid}: {:?}",
        records()
    );

    stack.kill_agent().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !stagely_agent::groups::live_members(pgid).is_empty(),
        "the killed agent's compose goes on by itself (the orphan this test is about)"
    );

    // `start_agent` returns once the new agent is online: by then the orphan must be gone.
    stack.start_agent().await;
    assert_eq!(
        stagely_agent::groups::live_members(pgid),
        Vec::<i32>::new(),
        "the restarted agent ended its predecessor's compose before it reported"
    );
    assert_eq!(compose_up_processes(&project), Vec::<i32>::new());
    assert_eq!(records(), Vec::<String>::new(), "the records are removed");
    let d = stack.api.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "failed", "{d}");

    // `slow` turns healthy about 20 s after it started; an orphan would then start `after`.
    let settle = Duration::from_secs(32).saturating_sub(slow_created.elapsed());
    tokio::time::sleep(settle).await;
    assert_eq!(
        service_containers("after"),
        0,
        "a container was started after the agent restarted"
    );
    assert!(
        file_contains(&stack.root.join("agent.log"), "an earlier agent left running"),
        "the restarted agent says what it ended"
    );
    assert!(!stack.logs_contain(CANARY));
}
