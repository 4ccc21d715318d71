//! Cancel on a real engine (issue 13, "A queue per environment"): `stagely serve` and
//! `stagely-agent run` as processes, a local git repository, real containers. A deployment whose
//! `docker compose up` waits (a dependency whose healthcheck never passes) is cancelled through
//! the API: it ends `cancelled`, no compose process of it is left on the machine, its override
//! and private directory are gone, no secret is anywhere, and the queue moves on (the next
//! deployment, or the one waiting behind it, runs and succeeds). Also a cancel while the agent
//! is still fetching (a git server that never answers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, wait_for};
use crate::engine_support::{OVERRIDE_NAME, Stack, compose_processes, sh};
use crate::prereq;

const CANARY: &str = "cancel-canary-3e9f61d2";

/// How long a cancelled deployment may take to end: the agent's SIGTERM grace (5 s), its
/// SIGKILL, its STATUS, with room for a loaded machine. A bound, not a speed.
const CANCEL_BOUND: Duration = Duration::from_secs(45);

/// `slow` turns healthy once `/tmp/ready` exists; `after` waits for that. With `ready: false`
/// the file never appears, so `up -d` waits (about 1000 s) for as long as nobody stops it.
fn compose(ready: bool) -> String {
    let command = if ready {
        "touch /tmp/ready; exec sleep 3600"
    } else {
        "exec sleep 3600"
    };
    format!(
        r#"
services:
  slow:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "{command}"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 1000
  after:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
    depends_on:
      slow:
        condition: service_healthy
"#
    )
}

/// Commit a new `compose.yaml` to the stack's repository; its sha.
fn commit_compose(stack: &Stack, content: &str) -> String {
    let repo = stack.root.join("repo");
    std::fs::write(repo.join("compose.yaml"), content).unwrap();
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(&repo))
        .trim()
        .to_owned()
    };
    git(&["commit", "-q", "-am", "next"]);
    git(&["rev-parse", "HEAD"])
}

async fn status_of(api: &Api, id: i64) -> Value {
    let (status, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

async fn logs_of(api: &Api, id: i64) -> String {
    api.get(&format!("/api/deployments/{id}/logs"))
        .await
        .1
        .to_string()
}

/// Wait until deployment `id` runs and its stored log holds `needle`.
async fn wait_log(api: &Api, id: i64, needle: &str) {
    let api = api.clone();
    let needle = needle.to_owned();
    wait_for(
        &format!("deployment {id} log to hold {needle:?}"),
        Duration::from_secs(90),
        || {
            let (api, needle) = (api.clone(), needle.clone());
            async move { logs_of(&api, id).await.contains(&needle).then_some(()) }
        },
    )
    .await;
}

/// The stored log of a cancelled deployment: the command ended on the SIGTERM (compose exits
/// 130, git on the signal) and the log says the cancel stopped it, not that the deployment
/// failed.
async fn assert_cancel_log(api: &Api, id: i64) {
    let log = logs_of(api, id).await;
    assert!(log.contains("cancel requested"), "{log}");
    assert!(log.contains("stopped by the cancel"), "{log}");
    assert!(log.contains("deployment cancelled"), "{log}");
    assert!(!log.contains("deployment failed"), "{log}");
    assert!(
        !log.contains("after SIGTERM: killed"),
        "ended on SIGTERM, not SIGKILL: {log}"
    );
}

async fn cancel(api: &Api, id: i64) -> Value {
    let (status, body) = api
        .post(&format!("/api/deployments/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    body
}

/// Live processes other than the stack's agent (whose own argv names its work and runtime
/// dirs) whose argv mentions `needle` anywhere (a path, a URL).
fn processes_naming(stack: &Stack, needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let agent = stack.agent.as_ref().and_then(tokio::process::Child::id);
    let ours = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == ours || Some(p) == agent) {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
        if agent.is_some_and(|a| forked_by(pid, a, &raw)) {
            // The running agent between fork and exec of a command it starts: still its copy.
            continue;
        }
        if argv.contains(needle) && stagely_agent::groups::read_stat(pid).is_some_and(|s| s.state != 'Z') {
            found.push((pid, argv));
        }
    }
    found
}

/// Whether `pid` is a child of `agent` that still has the agent's own argv: forked to start a
/// command and not yet exec'd (gone or another program a moment later).
fn forked_by(pid: i32, agent: u32, argv: &[u8]) -> bool {
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
    ppid == Some(agent) && std::fs::read(format!("/proc/{agent}/cmdline")).is_ok_and(|a| a == argv)
}

/// The entries of the agent's private runtime directory (its per-deployment dirs `d<id>-…`
/// and its process group records `pgroup-*.json`), at any depth under the stack's runtime base.
fn runtime_entries(base: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(base) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        found.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(runtime_entries(&p));
        }
    }
    found
}

/// The agent's own runtime dir is a direct child of the base (named after its work dir); what
/// is inside it belongs to deployments.
fn deployment_leftovers(stack: &Stack) -> Vec<PathBuf> {
    runtime_entries(&stack.runtime)
        .into_iter()
        .filter(|p| p.parent() != Some(stack.runtime.as_path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('d') || n.starts_with("pgroup-") || n == OVERRIDE_NAME)
        })
        // Deployment 0's record is the running agent's own `docker events` child (its runtime
        // watch), not something a deployment left.
        .filter(|p| !std::fs::read_to_string(p).is_ok_and(|r| r.contains("\"deployment_id\":0,")))
        .collect()
}

/// Nothing of the cancelled deployment is left on the machine: no compose process of the
/// project, none naming the agent's runtime dir (where the override is) or its work dir (the
/// checkout: git, compose's `-f`), no override, no private directory, no process group record.
fn assert_nothing_left(stack: &Stack) {
    let project = stack.compose_project();
    assert_eq!(
        compose_processes(&project, None),
        Vec::new(),
        "a compose process of {project} is left"
    );
    for dir in [stack.runtime.clone(), stack.work_dir()] {
        let dir = dir.to_string_lossy().into_owned();
        assert_eq!(
            processes_naming(stack, &dir),
            Vec::<(i32, String)>::new(),
            "a process naming {dir} is left"
        );
    }
    assert_eq!(stack.leftover_overrides(), Vec::<PathBuf>::new());
    assert_eq!(deployment_leftovers(stack), Vec::<PathBuf>::new());
}

fn assert_no_canary(stack: &Stack) {
    assert!(!stack.logs_contain(CANARY), "the canary is in a process log");
    let data = stack.root.join("data");
    assert!(
        !crate::common::store_contains(&data, CANARY),
        "the canary is in the store in clear"
    );
}

/// Start `slow` never-healthy; deploy; wait until `up` waits for it. Returns the deployment id.
async fn deploy_until_compose_waits(stack: &Stack) -> i64 {
    let id = stack.deploy().await;
    wait_log(&stack.api, id, "Waiting").await;
    assert_eq!(status_of(&stack.api, id).await["status"], "running");
    let project = stack.compose_project();
    assert!(
        !compose_processes(&project, Some("up")).is_empty(),
        "compose up of {project} is running"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_compose_up_is_cancelled_cleaned_up_and_the_next_deploy_runs() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("cancel-up", &compose(false), "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    let api = stack.api.clone();

    let id = deploy_until_compose_waits(&stack).await;
    // While compose runs, its override is there (so its absence later means something).
    assert_eq!(stack.leftover_overrides().len(), 1);
    let asked = std::time::Instant::now();
    let body = cancel(&api, id).await;
    assert_eq!(body["status"], "running", "told to stop, not ended yet: {body}");
    let d = api.wait_finished(id, CANCEL_BOUND).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    eprintln!("cancelled {:?} after the request", asked.elapsed());
    assert_cancel_log(&api, id).await;
    // Compose had created `after` and was waiting to start it: a cancelled `up` starts nothing
    // more, not even a moment later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.container_id("after"), None, "`after` was started");
    assert_nothing_left(&stack);

    // A second cancel of an ended deployment changes nothing.
    let (status, body) = api
        .post(&format!("/api/deployments/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(status_of(&api, id).await["status"], "cancelled");

    // The queue is free: the next deploy (of a fixed compose file) runs and succeeds.
    let fixed = commit_compose(&stack, &compose(true));
    let next = stack.deploy().await;
    let d = api.wait_finished(next, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(d["commit"], fixed.as_str(), "{d}");
    assert_eq!(stack.container_env("after")["CANARY"], CANARY);
    assert_nothing_left(&stack);
    assert_no_canary(&stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_waiting_behind_a_cancelled_one_runs_next_and_succeeds() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("cancel-queue", &compose(false), "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    let api = stack.api.clone();

    let stuck = deploy_until_compose_waits(&stack).await;
    let fixed = commit_compose(&stack, &compose(true));
    let pid = stack.project_id().await;
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    let waiting = body["deployment_id"].as_i64().unwrap();
    assert_eq!(body["status"], "waiting", "{body}");

    cancel(&api, stuck).await;
    let d = api.wait_finished(stuck, CANCEL_BOUND).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_cancel_log(&api, stuck).await;
    let d = api.wait_finished(waiting, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "the queue moved on: {d}");
    assert_eq!(d["commit"], fixed.as_str(), "{d}");
    assert_eq!(stack.container_env("after")["CANARY"], CANARY);
    assert_eq!(status_of(&api, stuck).await["status"], "cancelled");
    assert_nothing_left(&stack);
    assert_no_canary(&stack);
}

/// A git server that accepts connections and never answers: a fetch from it hangs.
fn silent_git_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_cancelled_while_git_fetches_ends_cancelled_and_the_next_one_runs() {
    if !prereq::docker() {
        return;
    }
    let stack = Stack::start("cancel-git", &compose(true), "staging").await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    let api = stack.api.clone();
    let pid = stack.project_id().await;
    // A first deploy from the local repository: the agent's clone exists; the next fetch goes
    // to the silent server.
    let first = stack.deploy().await;
    assert_eq!(
        api.wait_finished(first, Duration::from_secs(120)).await["status"],
        "success"
    );
    let (_, p) = api.get(&format!("/api/projects/{pid}")).await;
    let local = p["repo_url"].as_str().unwrap().to_owned();
    let silent = format!("git://127.0.0.1:{}/repo.git", silent_git_server());
    let (s, v) = api
        .patch(&format!("/api/projects/{pid}"), json!({"repo_url": silent}))
        .await;
    assert_eq!(s, 200, "{v}");

    let id = stack.deploy().await;
    wait_log(&api, id, "fetching").await;
    let work_dir = stack.work_dir().to_string_lossy().into_owned();
    let fetching = || {
        processes_naming(&stack, &work_dir)
            .into_iter()
            .filter(|(_, argv)| argv.contains(" fetch "))
            .collect::<Vec<_>>()
    };
    wait_for(
        "git fetch from the silent server",
        Duration::from_secs(30),
        || async { (!fetching().is_empty()).then_some(()) },
    )
    .await;
    cancel(&api, id).await;
    let d = api.wait_finished(id, CANCEL_BOUND).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_cancel_log(&api, id).await;
    assert_eq!(fetching(), Vec::<(i32, String)>::new(), "git is left running");
    assert_nothing_left(&stack);

    let (s, v) = api
        .patch(&format!("/api/projects/{pid}"), json!({"repo_url": local}))
        .await;
    assert_eq!(s, 200, "{v}");
    let next = stack.deploy().await;
    let d = api.wait_finished(next, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
    assert_nothing_left(&stack);
    assert_no_canary(&stack);
}
