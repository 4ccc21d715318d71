//! Compose project names (issue 12): two environments whose names join to the same
//! `<project>-<environment>` (`a-b`/`c` and `a`/`b-c`) deploy to one host side by side, neither
//! removing the other's containers, and a renamed project keeps its running stack.
//! Real `stagely serve`, two real `stagely-agent run` processes, the real engine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::{Api, ServerProcess, admin_token, wait_for};
use crate::engine_support::git_repo;
use crate::prereq;

fn compose(service: &str) -> String {
    format!(
        "services:\n  {service}:\n    image: stagely-test-busybox:latest\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// Running containers of a compose project.
fn running(compose_project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "--format",
            "{{.Label \"com.docker.compose.service\"}}",
            "--filter",
            &format!("label=com.docker.compose.project={compose_project}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn down(compose_project: &str) {
    let _ = Command::new("docker")
        .args([
            "compose",
            "-p",
            compose_project,
            "down",
            "-t",
            "0",
            "--remove-orphans",
        ])
        .output();
}

struct Downs(Vec<String>);

impl Drop for Downs {
    fn drop(&mut self) {
        for p in &self.0 {
            down(p);
        }
    }
}

/// A project (from its own repository) with one environment and a running agent; answers the
/// environment as the API shows it.
async fn project_with_agent(
    api: &Api,
    root: &Path,
    project: &str,
    env: &str,
    service: &str,
) -> (i64, serde_json::Value, tokio::process::Child) {
    let repo = git_repo(&root.join(format!("repo-{project}")), &compose(service));
    let p = api
        .ok(
            "/api/projects",
            json!({"name": project, "repo_url": repo, "compose_path": "compose.yaml", "pull": "never"}),
            201,
        )
        .await;
    let pid = p["id"].as_i64().unwrap();
    let e = api
        .ok(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": env}),
            201,
        )
        .await;
    let (agent_id, token) = api.agent(e["id"].as_i64().unwrap(), "host").await;
    let token_file = root.join(format!("{project}.token"));
    std::fs::write(&token_file, token).unwrap();
    let runtime = root.join(format!("run-{project}"));
    std::fs::create_dir_all(&runtime).unwrap();
    let child = tokio::process::Command::new(crate::bins::agent())
        .args(["run", "--server", &api.url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(root.join(format!("work-{project}")))
        .arg("--runtime-dir")
        .arg(&runtime)
        .args(["--verify-wait-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("agent online", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            api.get("/api/agents")
                .await
                .1
                .as_array()?
                .iter()
                .any(|a| a["id"] == agent_id && a["online"] == true)
                .then_some(())
        }
    })
    .await;
    (pid, e, child)
}

async fn deploy(api: &Api, pid: i64) {
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    let d = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_join_alike_get_their_own_stacks_and_a_rename_keeps_the_running_one() {
    if !prereq::docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &root.join("server.log")).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let tag = format!("cn{}", std::process::id());
    // `<tag>-a-b` + `c` and `<tag>-a` + `b-c` both join to `<tag>-a-b-c`.
    let (p1, e1, _agent1) = project_with_agent(&api, root, &format!("{tag}-a-b"), "c", "first").await;
    let (p2, e2, _agent2) = project_with_agent(&api, root, &format!("{tag}-a"), "b-c", "second").await;
    let (c1, c2) = (
        e1["compose_project"].as_str().unwrap().to_owned(),
        e2["compose_project"].as_str().unwrap().to_owned(),
    );
    let _downs = Downs(vec![c1.clone(), c2.clone(), format!("{tag}-a-b-c")]);
    assert_eq!(c1, format!("{tag}-a-b-c"), "the first keeps the readable name");
    assert_ne!(c1, c2, "the second gets a name of its own");

    deploy(&api, p1).await;
    deploy(&api, p2).await;
    assert_eq!(
        running(&c1),
        ["first"],
        "the second deploy left the first stack alone"
    );
    assert_eq!(running(&c2), ["second"]);

    // A rename keeps the environment's compose project: the next deploy updates the stack that
    // runs, instead of starting a second one beside an orphan.
    let (status, body) = api
        .patch(
            &format!("/api/projects/{p1}"),
            json!({"name": format!("{tag}-renamed")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["environments"][0]["compose_project"], c1.as_str());
    deploy(&api, p1).await;
    assert_eq!(running(&c1), ["first"]);
    assert!(
        running(&format!("{tag}-renamed-c")).is_empty(),
        "no stack under the new name"
    );
    assert_eq!(running(&c2), ["second"]);
}
