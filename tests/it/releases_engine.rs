//! Releases, rollback, runtime and drift end to end (issue 14's own test): `stagely serve` and
//! `stagely-agent run` as real processes, a compose project in a local git repository, real
//! images whose tags are moved under the release, real containers whose environment, image and
//! command are read back from the engine.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::wait_for;
use crate::engine_support::{Stack, sh};
use crate::prereq;

const CANARY: &str = "release-canary-3b8e61f4";

/// A local image of its own (a committed copy of the test image with a label), so two releases
/// run images with different ids. Answers the image id.
fn make_image(tag: &str, label: &str) -> String {
    let cid = sh(Command::new("docker").args(["create", "stagely-test-busybox:latest", "true"]));
    let cid = cid.trim();
    sh(Command::new("docker").args(["commit", "-c", &format!("LABEL release={label}"), cid, tag]));
    sh(Command::new("docker").args(["rm", cid]));
    image_id(tag)
}

fn image_id(reference: &str) -> String {
    sh(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", reference]))
        .trim()
        .to_owned()
}

fn compose(image: &str, says: &str) -> String {
    format!(
        r#"
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo {says}; exec sleep 3600"]
"#
    )
}

fn commit(repo: &Path, compose: &str, message: &str) {
    std::fs::write(repo.join("compose.yaml"), compose).unwrap();
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(repo))
    };
    git(&["add", "."]);
    git(&["commit", "-q", "-m", message]);
}

fn container_field(stack: &Stack, format: &str) -> String {
    let id = stack.container_id("web").expect("a running web container");
    sh(Command::new("docker").args(["inspect", "-f", format, &id]))
        .trim()
        .to_owned()
}

async fn deploy_ok(stack: &Stack) -> Value {
    let id = stack.deploy().await;
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    d
}

async fn environment_id(stack: &Stack) -> i64 {
    let pid = stack.project_id().await;
    let (_, p) = stack.api.get(&format!("/api/projects/{pid}")).await;
    p["environments"][0]["id"].as_i64().unwrap()
}

async fn redeploy(stack: &Stack, of: i64) -> Value {
    let (status, body) = stack
        .api
        .post(&format!("/api/deployments/{of}/redeploy"), json!({}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["redeploy_of"], of, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    let d = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    d
}

/// Wait until the environment's runtime satisfies `check`; answers it.
async fn runtime_until(stack: &Stack, env: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let api = stack.api.clone();
    let check = &check;
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let (status, r) = api.get(&format!("/api/environments/{env}/runtime")).await;
            (status == 200 && check(&r)).then_some(r)
        }
    })
    .await
}

/// The appliance's audit log: (action, detail), oldest first.
fn audit_log(stack: &Stack) -> Vec<(String, String)> {
    let db = crate::common::open_db(&stack.root.join("data"));
    db.rows("SELECT action, detail FROM audit_log ORDER BY id", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

fn web_of(runtime: &Value) -> Value {
    runtime["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web").cloned())
        .unwrap_or(Value::Null)
}

fn drift_kinds(runtime: &Value) -> Vec<String> {
    runtime["drift"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|r| {
                    format!(
                        "{}:{}",
                        r["service"].as_str().unwrap_or(""),
                        r["kind"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_restores_the_commit_the_image_and_the_secrets_exactly_and_drift_is_seen_and_cleared() {
    if !prereq::docker() {
        return;
    }
    let repo_tag = format!("stagely-release-test-{}", std::process::id());
    let (tag_a, tag_b) = (format!("{repo_tag}:a"), format!("{repo_tag}:b"));
    let id_a = make_image(&tag_a, "a");
    let id_b = make_image(&tag_b, "b");
    assert_ne!(id_a, id_b);

    let stack = Stack::start("releases", &compose(&tag_a, "release-A"), "prod").await;
    let env = environment_id(&stack).await;
    let secret = stack
        .secret(json!({"key": "S", "value": format!("1-{CANARY}"), "scope": "global"}))
        .await;

    // Release A: S=1, image A, compose A.
    let a = deploy_ok(&stack).await;
    let a_id = a["id"].as_i64().unwrap();
    assert_eq!(stack.container_env("web")["S"], format!("1-{CANARY}"));
    assert_eq!(container_field(&stack, "{{.Image}}"), id_a);

    // Release B: S=2, another commit, another image tag.
    commit(&stack.root.join("repo"), &compose(&tag_b, "release-B"), "B");
    let (status, body) = stack
        .api
        .put(
            &format!("/api/secrets/{}", secret["id"]),
            json!({"value": format!("2-{CANARY}")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let b = deploy_ok(&stack).await;
    assert_ne!(a["commit"], b["commit"]);
    assert_eq!(stack.container_env("web")["S"], format!("2-{CANARY}"));
    assert_eq!(container_field(&stack, "{{.Image}}"), id_b);

    // The tag A's compose names is moved to another image: the redeploy must not follow it.
    let id_moved = make_image(&tag_a, "moved");
    assert_ne!(id_moved, id_a);

    let r = redeploy(&stack, a_id).await;
    assert_eq!(r["commit"], a["commit"], "the same commit: {r}");
    assert_eq!(
        stack.container_env("web")["S"],
        format!("1-{CANARY}"),
        "S's old version"
    );
    assert_eq!(
        container_field(&stack, "{{.Image}}"),
        id_a,
        "A's image, not the moved tag's"
    );
    assert!(
        container_field(&stack, "{{json .Config.Cmd}}").contains("release-A"),
        "A's compose"
    );

    // The runtime shows it running, without drift.
    let rt = runtime_until(&stack, env, "runtime after the redeploy", |r| {
        web_of(r)["state"] == "running" && r["drift"].is_null()
    })
    .await;
    assert!(rt["reported_at"].is_string(), "{rt}");
    let web = web_of(&rt);
    assert_eq!(web["digest"].as_str(), Some(id_a.as_str()), "{rt}");
    for field in ["health", "restarts", "image", "started_at"] {
        assert!(web.get(field).is_some(), "{field} in {web}");
    }

    // `docker stop` is drift, within 60 s; a re-converge (a redeploy of the last release) ends it.
    let cid = stack.container_id("web").unwrap();
    sh(Command::new("docker").args(["stop", "-t", "0", &cid]));
    let rt = runtime_until(&stack, env, "drift after docker stop", |r| {
        drift_kinds(r)
            .iter()
            .any(|k| k == "web:stopped" || k == "web:missing")
    })
    .await;
    assert_ne!(web_of(&rt)["state"], "running", "{rt}");
    let last = r["id"].as_i64().unwrap();
    let r2 = redeploy(&stack, last).await;
    runtime_until(&stack, env, "drift cleared after re-converge", |r| {
        r["drift"].is_null() && web_of(r)["state"] == "running"
    })
    .await;

    // A manual `docker compose up` with a changed environment is drift too.
    let manual = stack.root.join("manual.yaml");
    std::fs::write(
        &manual,
        format!(
            "services:\n  web:\n    image: {id_a}\n    command: [\"sh\", \"-c\", \"exec sleep 3600\"]\n    environment:\n      S: by-hand\n"
        ),
    )
    .unwrap();
    sh(Command::new("docker")
        .args(["compose", "-p", &stack.compose_project(), "-f"])
        .arg(&manual)
        .args(["up", "-d"]));
    let rt = runtime_until(&stack, env, "drift after a manual compose up", |r| {
        drift_kinds(r).iter().any(|k| k == "web:config")
    })
    .await;
    assert!(!rt.to_string().contains(CANARY), "no secret in the runtime: {rt}");
    redeploy(&stack, r2["id"].as_i64().unwrap()).await;
    runtime_until(&stack, env, "drift cleared after the second re-converge", |r| {
        r["drift"].is_null()
    })
    .await;
    assert_eq!(stack.container_env("web")["S"], format!("1-{CANARY}"));

    // Drift was audited when it started and when it ended, once per transition.
    let audit = audit_log(&stack);
    let count = |action: &str| audit.iter().filter(|(a, _)| a == action).count();
    assert_eq!(
        (count("drift.started"), count("drift.ended")),
        (2, 2),
        "{audit:?}"
    );
    assert!(!format!("{audit:?}").contains(CANARY));
    assert!(
        !stack.logs_contain(CANARY),
        "the canary is in neither process's log"
    );

    for tag in [&tag_a, &tag_b] {
        let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
    }
    let _ = Command::new("docker")
        .args(["rmi", "-f", &id_a, &id_b, &id_moved])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_verification_rolls_back_and_a_failed_deploy_leaves_the_runtime_running() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start(
        "rollback",
        &compose("stagely-test-busybox:latest", "good"),
        "prod",
    )
    .await;
    let env = environment_id(&stack).await;
    stack
        .secret(json!({"key": "S", "value": CANARY, "scope": "global"}))
        .await;
    let good = deploy_ok(&stack).await;

    // A deploy that fails before anything is applied (no such ref): the last deployment failed,
    // what runs is still running.
    let pid = stack.project_id().await;
    let (status, body) = stack
        .api
        .post(
            &format!("/api/deploy/{pid}"),
            json!({"environment": "prod", "ref": "no-such-branch"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let failed = stack
        .api
        .wait_finished(body["deployment_id"].as_i64().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let rt = runtime_until(&stack, env, "runtime of a failed environment", |r| {
        web_of(r)["state"] == "running"
    })
    .await;
    assert!(rt["drift"].is_null(), "{rt}");

    // auto_rollback: a deployment failing verification is followed by the last release.
    let (status, body) = stack
        .api
        .patch(
            &format!("/api/environments/{env}"),
            json!({"auto_rollback": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    commit(
        &stack.root.join("repo"),
        "services:\n  web:\n    image: stagely-test-busybox:latest\n    command: [\"sh\", \"-c\", \"exit 3\"]\n",
        "broken",
    );
    let id = stack.deploy().await;
    let broken = stack.api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(broken["status"], "failed", "{broken}");
    let api = stack.api.clone();
    let rollback = wait_for("the automatic rollback", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let (_, list) = api.get("/api/deployments").await;
            list.as_array()?.iter().find(|d| d["rollback_of"] == id).cloned()
        }
    })
    .await;
    assert_eq!(rollback["redeploy_of"], good["id"], "{rollback}");
    let rollback = stack
        .api
        .wait_finished(rollback["id"].as_i64().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(rollback["status"], "success", "{rollback}");
    assert_eq!(rollback["commit"], good["commit"], "{rollback}");
    assert_eq!(stack.container_env("web")["S"], CANARY);
    assert!(container_field(&stack, "{{json .Config.Cmd}}").contains("good"));

    let audit = audit_log(&stack);
    assert!(
        audit
            .iter()
            .any(|(a, d)| a == "deploy.rollback" && d.contains(&id.to_string())),
        "{audit:?}"
    );
}
