//! Lifecycle actions and deleting through agents end to end (issue 15): `stagely serve` and
//! `stagely-agent run` as real processes, real containers. Restart changes the container's
//! StartedAt; stop shows it stopped in the runtime API, start brings it back; down removes the
//! containers and is audited; an action during a deployment is 409; a hostile service name is
//! 400 and runs nothing; deleting a project takes its stack down first; with the agent stopped,
//! deleting is 409, a member's force 403, an admin's force deletes.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, cli_token, wait_for};
use crate::engine_support::{Stack, sh};
use crate::prereq;

const COMPOSE: &str = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo up; exec sleep 3600"]
    stop_grace_period: 1s
"#;

async fn deploy_ok(stack: &Stack) {
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
}

async fn environment_id(stack: &Stack) -> i64 {
    let pid = stack.project_id().await;
    let (_, p) = stack.api.get(&format!("/api/projects/{pid}")).await;
    p["environments"][0]["id"].as_i64().unwrap()
}

fn started_at(stack: &Stack) -> String {
    let id = stack.container_id("web").expect("a running web container");
    sh(Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", &id]))
        .trim()
        .to_owned()
}

fn audit_log(stack: &Stack) -> Vec<(String, String)> {
    let db = crate::common::open_db(&stack.root.join("data"));
    db.rows("SELECT action, detail FROM audit_log ORDER BY id", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

async fn web_state(stack: &Stack, env: i64, what: &str, check: impl Fn(&str) -> bool) -> Value {
    let api = stack.api.clone();
    let check = &check;
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let (status, r) = api.get(&format!("/api/environments/{env}/runtime")).await;
            let web = r["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "web")
                .cloned()?;
            (status == 200 && check(web["state"].as_str().unwrap_or(""))).then_some(web)
        }
    })
    .await
}

async fn act(api: &Api, path: &str) -> (u16, Value) {
    api.post(path, json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stop_start_and_down_act_on_the_real_containers() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("actions", COMPOSE, "staging").await;
    let env = environment_id(&stack).await;
    deploy_ok(&stack).await;
    web_state(&stack, env, "web running", |s| s == "running").await;

    let before = started_at(&stack);
    let (status, body) = act(
        &stack.api,
        &format!("/api/environments/{env}/services/web/restart"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["agents"][0]["result"], "done", "{body}");
    assert_ne!(started_at(&stack), before, "restarted");

    let (status, body) = act(&stack.api, &format!("/api/environments/{env}/services/web/stop")).await;
    assert_eq!(status, 200, "{body}");
    assert!(stack.container_id("web").is_none(), "not running");
    web_state(&stack, env, "the runtime API shows web stopped", |s| {
        s == "exited"
    })
    .await;

    // Hostile names never reach compose: 400, and the container stays as it was.
    for hostile in ["web%3Bid", "--help", "..%2Fx"] {
        let (status, body) = act(
            &stack.api,
            &format!("/api/environments/{env}/services/{hostile}/start"),
        )
        .await;
        assert_eq!(status, 400, "{hostile}: {body}");
    }
    assert!(stack.container_id("web").is_none(), "nothing ran");

    let (status, body) = act(&stack.api, &format!("/api/environments/{env}/services/web/start")).await;
    assert_eq!(status, 200, "{body}");
    web_state(&stack, env, "web running again", |s| s == "running").await;

    // While a deployment runs: 409, naming it.
    let id = stack.deploy().await;
    let (status, body) = act(
        &stack.api,
        &format!("/api/environments/{env}/services/web/restart"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("#{id}")),
        "{body}"
    );
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");

    let (status, body) = act(&stack.api, &format!("/api/environments/{env}/down")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stack.containers(),
        0,
        "docker ps shows none of the project's containers"
    );
    web_state(&stack, env, "the runtime API shows web missing", |s| {
        s == "missing"
    })
    .await;

    let log = audit_log(&stack);
    let actions: Vec<&str> = log
        .iter()
        .map(|(a, _)| a.as_str())
        .filter(|a| a.starts_with("service.") || *a == "environment.down")
        .collect();
    assert_eq!(
        actions,
        [
            "service.restart",
            "service.stop",
            "service.start",
            "environment.down"
        ]
    );
    let down = &log.iter().find(|(a, _)| a == "environment.down").unwrap().1;
    assert!(
        down.contains(&stack.project) && down.contains("staging: done"),
        "{down}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_takes_its_stack_down_and_an_offline_agent_needs_an_admins_force() {
    if !prereq::docker() {
        return;
    }
    // Its agent online: the stack goes first, then the project.
    let stack = Stack::start("delete-on", COMPOSE, "staging").await;
    deploy_ok(&stack).await;
    assert_eq!(stack.containers(), 1);
    let pid = stack.project_id().await;
    let (status, body) = stack.api.delete(&format!("/api/projects/{pid}")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(stack.containers(), 0, "taken down before the project was deleted");
    assert_eq!(stack.api.get(&format!("/api/projects/{pid}")).await.0, 404);
    let log = audit_log(&stack);
    let down = log
        .iter()
        .position(|(a, _)| a == "environment.down")
        .expect("down audited");
    let deleted = log
        .iter()
        .position(|(a, _)| a == "project.delete")
        .expect("delete audited");
    assert!(down < deleted, "{log:?}");
    assert!(
        log[deleted].1.contains("staging taken down through e2e"),
        "{log:?}"
    );
    drop(stack);

    // Its agent stopped: refused; a member cannot force; an admin can (the stack stays).
    let mut stack = Stack::start("delete-off", COMPOSE, "staging").await;
    deploy_ok(&stack).await;
    let pid = stack.project_id().await;
    stack.kill_agent().await;
    let (_, agents) = stack.api.get("/api/agents").await;
    let agent_id = agents[0]["id"].as_i64().unwrap();
    stack.api.wait_offline(agent_id).await;
    let (status, body) = stack.api.delete(&format!("/api/projects/{pid}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("e2e"),
        "{body}"
    );
    let member = Api::new(
        &stack.api.url,
        &cli_token(&stack.root.join("data"), "maria", "member"),
    );
    assert_eq!(
        member.delete(&format!("/api/projects/{pid}?force=true")).await.0,
        403
    );
    assert_eq!(stack.containers(), 1, "nothing taken down, nothing deleted");
    let (status, body) = stack.api.delete(&format!("/api/projects/{pid}?force=true")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(stack.api.get(&format!("/api/projects/{pid}")).await.0, 404);
    assert_eq!(
        stack.containers(),
        1,
        "forced: the stack is left running (removed by the test)"
    );
}
