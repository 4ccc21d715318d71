//! Push webhooks on a real engine: `stagely serve` and `stagely-agent run` as processes, a local
//! git repository, real containers. The pushed commit is what runs, even when the branch has
//! moved on by the time the agent fetches.

use std::process::Command;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::engine_support::{Stack, sh};
use crate::prereq;

fn compose(content: &str) -> String {
    format!(
        r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
    environment:
      CONTENT: "{content}"
"#
    )
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    sh(Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir))
    .trim()
    .to_owned()
}

async fn github(url: &str, pid: i64, secret: &str, delivery: &str, body: &Value) -> (u16, Value) {
    let raw = body.to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(raw.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/hooks/github/{pid}"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_deploys_its_own_commit_after_the_branch_moved_on_and_tags_peel() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("hook-pin", &compose("commit-A"), "staging").await;
    let repo = stack.root.join("repo");
    let a = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("compose.yaml"), compose("commit-B")).unwrap();
    git(&repo, &["commit", "-q", "-am", "B"]);
    let b = git(&repo, &["rev-parse", "HEAD"]);
    assert_ne!(a, b);

    let api = &stack.api;
    let pid = stack.project_id().await;
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    let env_id = p["environments"][0]["id"].as_i64().unwrap();
    let (s, v) = api
        .patch(
            &format!("/api/environments/{env_id}"),
            json!({"deploy_on_push": true, "deploy_on_tag": "v*"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let hook = api
        .ok(&format!("/api/projects/{pid}/webhook"), json!({}), 201)
        .await;
    let secret = hook["secret"].as_str().unwrap();

    // The webhook for A arrives after main already points at B: A is what runs.
    let push = json!({"ref": "refs/heads/main", "after": a, "deleted": false, "pusher": {"name": "dev"}});
    let (s, v) = github(&api.url, pid, secret, "e-1", &push).await;
    assert_eq!(s, 202, "{v}");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    let d = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["commit"], a.as_str(), "{d}");
    assert_eq!(d["triggered_by"], "github:dev");
    assert_eq!(stack.container_env("web")["CONTENT"], "commit-A");

    // An annotated tag: GitHub's `after` is the tag object (here with no head_commit, as an
    // older payload would be); the agent peels it to B's commit, and that is what is recorded.
    git(&repo, &["tag", "-a", "v1.0", "-m", "release", &b]);
    let tag_object = git(&repo, &["rev-parse", "v1.0"]);
    assert_ne!(tag_object, b, "an annotated tag is its own object");
    let push = json!({"ref": "refs/tags/v1.0", "after": tag_object, "pusher": {"name": "rel"}});
    let (s, v) = github(&api.url, pid, secret, "e-2", &push).await;
    assert_eq!(s, 202, "{v}");
    let id = v["deployments"][0]["deployment_id"].as_i64().unwrap();
    let d = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["commit"], b.as_str(), "the peeled commit is recorded: {d}");
    assert_eq!(stack.container_env("web")["CONTENT"], "commit-B");
}
