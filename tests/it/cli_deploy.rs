//! `stagely deploy`, `stagely deployments` and `stagely logs` for CI (issue 13): the real
//! `stagely` binary against a real appliance on a real socket, with a protocol-level agent that
//! reports what the test tells it. The exit codes are the contract (docs/ci.md): 0 success,
//! 1 failed, 2 usage or auth, 3 timeout, 4 cancelled or superseded.
//!
//! Exit 4 (superseded, cancelled) runs against the real queue below.

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, TestAgent, TestServer, WAIT, cli_token};

const CANARY: &str = "cli-canary-5e1f0b";

/// The `stagely` binary with a clean environment: no token, no server unless given.
fn stagely(token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagely"));
    cmd.args(args)
        .env_remove("STAGELY_TOKEN")
        .env_remove("STAGELY_SERVER")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("STAGELY_TOKEN", t);
    }
    cmd
}

async fn finish(child: tokio::process::Child) -> Output {
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the CLI did not exit")
        .unwrap()
}

async fn run(token: Option<&str>, args: &[&str]) -> Output {
    finish(stagely(token, args).spawn().unwrap()).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code, stdout, stderr; and neither stream holds the token or the canary.
fn parts(out: &Output, token: &str) -> (i32, String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for secret in [token, CANARY] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret in the CLI's output:\n{stdout}\n{stderr}"
        );
    }
    (
        out.status.code().expect("an exit code, not a signal"),
        stdout,
        stderr,
    )
}

/// One line on stderr, for a refusal.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    lines[0]
}

/// A project `shop` with `production`, a canary secret, and an agent online there.
async fn setup(api: &Api) -> (i64, TestAgent) {
    let (pid, envs) = api.project("shop", &["production", "staging"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "API_KEY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "web-1").await;
    let agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    (pid, agent)
}

async fn next_deploy(agent: &mut TestAgent) -> Value {
    let deploy = agent.recv().await;
    assert_eq!(deploy["type"], "DEPLOY", "{deploy}");
    deploy
}

fn deploy_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "deploy",
        "--server",
        url,
        "--project",
        "shop",
        "--environment",
        "production",
    ];
    v.extend_from_slice(extra);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_streams_the_masked_log_and_exits_0_on_success() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let args = deploy_args(&api.url, &["--ref", "v1.2.3", "--wait", "--timeout", "60"]);
    let child = stagely(Some(&api.token), &args).spawn().unwrap();

    let deploy = next_deploy(&mut agent).await;
    let id = deploy["deployment_id"].as_i64().unwrap();
    assert_eq!(
        deploy["project"]["git_ref"], "v1.2.3",
        "--ref is the deployed ref"
    );
    agent.log(id, 1, "pulling web").await;
    // Lines reported a while apart: the CLI prints them as they come, not only at the end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent
        .log(id, 2, &format!("token={CANARY} in the compose output"))
        .await;
    agent.log(id, 3, "web started").await;
    agent.status(id, "SUCCESS").await;

    let out = finish(child).await;
    let (code, stdout, stderr) = parts(&out, &api.token);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout, "pulling web\ntoken=*** in the compose output\nweb started\n",
        "stdout is the masked log, in order"
    );
    assert!(
        stderr.contains(&format!("deployment {id} of shop/production"))
            && stderr.contains(&format!("{}/deployments/{id}", api.url))
            && stderr.contains(&format!("deployment {id} succeeded")),
        "{stderr}"
    );
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "success");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_exits_1_when_the_deployment_fails_and_says_why() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let child = stagely(Some(&api.token), &deploy_args(&api.url, &["--wait"]))
        .spawn()
        .unwrap();
    let id = next_deploy(&mut agent).await["deployment_id"].as_i64().unwrap();
    agent.log(id, 1, "web exited with 3").await;
    agent
        .send(json!({"type": "STATUS", "deployment_id": id, "status": "FAIL",
            "services": [], "error": "compose up failed: web exited"}))
        .await;
    let (code, stdout, stderr) = parts(&finish(child).await, &api.token);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "web exited with 3\n");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("deployment {id} failed")) && last.contains("compose up failed"),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_exits_3_when_the_timeout_passes_and_says_it_may_still_run() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let child = stagely(
        Some(&api.token),
        &deploy_args(&api.url, &["--wait", "--timeout", "2"]),
    )
    .spawn()
    .unwrap();
    // The agent takes the DEPLOY and never reports.
    let id = next_deploy(&mut agent).await["deployment_id"].as_i64().unwrap();
    let (code, _, stderr) = parts(&finish(child).await, &api.token);
    assert_eq!(code, 3, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("timed out waiting for deployment {id}"))
            && last.contains("may still be running"),
        "{stderr}"
    );
    let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
    assert_eq!(d["status"], "queued", "the CLI leaves the deployment alone");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_auth_errors_exit_2_with_one_line_and_no_deployment() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let url = api.url.as_str();
    let viewer = cli_token(&server.data_dir(), "ci-viewer", "viewer");
    let cases: Vec<(Option<&str>, Vec<&str>, &str)> = vec![
        (None, deploy_args(url, &["--wait"]), "no API token"),
        (
            Some("stagely_not-a-real-token"),
            deploy_args(url, &[]),
            "not authenticated (401",
        ),
        (Some(&viewer), deploy_args(url, &[]), "not allowed (403"),
        (
            Some(&api.token),
            vec![
                "deploy",
                "--server",
                url,
                "--project",
                "nope",
                "--environment",
                "production",
            ],
            "no project named \"nope\" (there are: shop)",
        ),
        (
            Some(&api.token),
            vec![
                "deploy",
                "--server",
                url,
                "--project",
                "shop",
                "--environment",
                "prod",
            ],
            "has no environment named \"prod\" (it has: production, staging)",
        ),
        (
            Some(&api.token),
            deploy_args(url, &["--ref", "a..b"]),
            "branch, tag or commit",
        ),
        (
            Some(&api.token),
            vec!["logs", "--server", url, "999"],
            "deployment",
        ),
        (
            Some(&api.token),
            vec!["deploy", "--project", "shop", "--environment", "production"],
            "--server",
        ),
    ];
    for (token, args, expect) in cases {
        let out = run(token, &args).await;
        let (code, stdout, stderr) = parts(&out, &api.token);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        if args.contains(&"--server") {
            let line = one_line(&stderr);
            assert!(
                line.starts_with("stagely: ") && line.contains(expect),
                "{args:?}: {line}"
            );
        } else {
            // clap's own usage error (a missing flag): several lines, exit 2 all the same.
            assert!(stderr.contains(expect), "{stderr}");
        }
    }
    // A viewer token also must not show up: checked for the admin token by `parts`.
    assert!(!text(&run(Some(&viewer), &deploy_args(url, &[])).await.stderr).contains(&viewer));

    // There is no way to pass the token as a flag value (it would be in argv, visible to
    // every user of the machine).
    let out = run(None, &deploy_args(url, &["--token", &api.token])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unexpected argument '--token'"),
        "{}",
        text(&out.stderr)
    );
    let help = text(&run(None, &["deploy", "--help"]).await.stdout);
    assert!(
        help.contains("--token-file") && !help.contains("--token "),
        "{help}"
    );

    assert!(
        agent.recv_within(Duration::from_millis(300)).await.is_none(),
        "no deployment was sent"
    );
    let (_, list) = api.get("/api/deployments").await;
    assert_eq!(list, json!([]), "no deployment was made");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_trimmed_warned_about_when_others_can_read_it_and_deploy_prints_the_id() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("  {}\n\n", api.token)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file_arg = file.to_str().unwrap();

    // The file wins over a wrong STAGELY_TOKEN; without --wait stdout is the id alone.
    let out = run(
        Some("stagely_wrong"),
        &deploy_args(&api.url, &["--token-file", file_arg]),
    )
    .await;
    let (code, stdout, stderr) = parts(&out, &api.token);
    assert_eq!(code, 0, "{stderr}");
    let id: i64 = stdout.trim().parse().expect("stdout is the deployment id");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_eq!(next_deploy(&mut agent).await["deployment_id"], id);
    agent.status(id, "SUCCESS").await;
    assert_eq!(agent.recv().await["type"], "ACK");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        None,
        &[
            "logs",
            "--server",
            &api.url,
            "--token-file",
            file_arg,
            &id.to_string(),
        ],
    )
    .await;
    let (code, _, stderr) = parts(&out, &api.token);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("readable by other users: chmod 600"), "{stderr}");

    std::fs::write(&file, "\n").unwrap();
    let out = run(None, &deploy_args(&api.url, &["--token-file", file_arg])).await;
    let (code, _, stderr) = parts(&out, &api.token);
    assert_eq!(code, 2);
    assert!(stderr.contains("is empty"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_lists_newest_first_and_logs_pages_and_follows() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, mut agent) = setup(api).await;
    let token = api.token.as_str();

    // One finished deployment with more lines than one logs page (1,000).
    let (_, first) = api
        .post(
            &format!("/api/deploy/{pid}"),
            json!({"environment": "production"}),
        )
        .await;
    let first = first["deployment_id"].as_i64().unwrap();
    assert_eq!(next_deploy(&mut agent).await["deployment_id"], first);
    for seq in 1..=1_500u64 {
        agent.log(first, seq, &format!("line {seq}")).await;
    }
    agent.status(first, "SUCCESS").await;
    assert_eq!(agent.recv().await["type"], "ACK");
    api.wait_finished(first, WAIT).await;

    let out = run(Some(token), &["logs", "--server", &api.url, &first.to_string()]).await;
    let (code, stdout, stderr) = parts(&out, token);
    assert_eq!(code, 0, "{stderr}");
    let want: String = (1..=1_500).map(|n| format!("line {n}\n")).collect();
    assert!(
        stdout == want,
        "every page, in order: {} lines",
        stdout.lines().count()
    );

    // A second one, followed while it runs.
    let (_, second) = api
        .post(
            &format!("/api/deploy/{pid}"),
            json!({"environment": "production", "ref": "main"}),
        )
        .await;
    let second = second["deployment_id"].as_i64().unwrap();
    assert_eq!(next_deploy(&mut agent).await["deployment_id"], second);
    agent.log(second, 1, "before").await;
    let child = stagely(
        Some(token),
        &["logs", "--server", &api.url, "--follow", &second.to_string()],
    )
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.log(second, 2, &format!("after {CANARY}")).await;
    agent.status(second, "SUCCESS").await;
    let (code, stdout, stderr) = parts(&finish(child).await, token);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "before\nafter ***\n");

    let out = run(
        Some(token),
        &["deployments", "--server", &api.url, "--project", "shop"],
    )
    .await;
    let (code, stdout, stderr) = parts(&out, token);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("ENVIRONMENT") && rows[0].contains("TRIGGERED BY"),
        "{stdout}"
    );
    assert!(
        rows[1].starts_with(&format!("{second} ")) && rows[1].contains("production"),
        "{stdout}"
    );
    assert!(
        rows[1].contains("success") && rows[1].contains("(main)"),
        "{stdout}"
    );
    assert!(rows[2].starts_with(&format!("{first} ")), "{stdout}");

    let out = run(
        Some(token),
        &[
            "deployments",
            "--server",
            &api.url,
            "--project",
            "shop",
            "--limit",
            "1",
            "--json",
        ],
    )
    .await;
    let (code, stdout, _) = parts(&out, token);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], second);
    assert_eq!(list[0]["project"], "shop", "the API's object, whole");

    // The other environment has none.
    let out = run(
        Some(token),
        &[
            "deployments",
            "--server",
            &api.url,
            "--project",
            "shop",
            "--environment",
            "staging",
        ],
    )
    .await;
    assert_eq!(text(&out.stdout).lines().count(), 1, "the header only");
    server.stop().await;
}

/// The ```yaml blocks of docs/ci.md, parsed.
fn ci_doc_jobs() -> Vec<serde_yaml_ng::Value> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ci.md")).unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + "```yaml\n".len()..];
        let end = body.find("```").expect("an unclosed yaml block");
        blocks.push(serde_yaml_ng::from_str(&body[..end]).expect("docs/ci.md: a yaml block does not parse"));
        rest = &body[end..];
    }
    blocks
}

fn yaml_strings(v: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::String(s) => out.push(s.clone()),
        Y::Sequence(items) => items.iter().for_each(|i| yaml_strings(i, out)),
        Y::Mapping(m) => m.values().for_each(|i| yaml_strings(i, out)),
        Y::Tagged(t) => yaml_strings(&t.value, out),
        _ => {}
    }
}

/// The words after `deploy` in a command line, quotes dropped.
fn deploy_words(command: &str) -> Vec<String> {
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_owned())
        .collect();
    let at = words
        .iter()
        .position(|w| w == "deploy")
        .expect("a deploy command");
    words[at + 1..].to_vec()
}

/// Every `--flag` that `stagely deploy --help` lists.
async fn deploy_help_flags() -> Vec<String> {
    let out = run(None, &["deploy", "--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    text(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_owned())
        .collect()
}

#[tokio::test]
async fn the_ci_jobs_in_docs_call_stagely_deploy_with_flags_that_exist() {
    let jobs = ci_doc_jobs();
    assert_eq!(jobs.len(), 2, "a GitHub Actions job and a GitLab CI job");
    let flags = deploy_help_flags().await;
    assert!(flags.contains(&"--wait".to_owned()), "{flags:?}");
    let (github, gitlab) = (&jobs[0], &jobs[1]);
    let step = &github["jobs"]["deploy"]["steps"][0];
    assert_eq!(step["env"]["STAGELY_TOKEN"], "${{ secrets.STAGELY_TOKEN }}");
    let gitlab_script = gitlab["deploy-production"]["script"][0].as_str().unwrap();
    for (which, job, command) in [
        ("github", github, step["run"].as_str().unwrap()),
        ("gitlab", gitlab, gitlab_script),
    ] {
        let mut strings = Vec::new();
        yaml_strings(job, &mut strings);
        assert!(
            !strings
                .iter()
                .any(|s| s.contains("--token ") || s.contains("--token=")),
            "{which}: a token as a flag value"
        );
        let words = deploy_words(command);
        for w in words.iter().filter(|w| w.starts_with("--")) {
            let flag = w.split('=').next().unwrap().to_owned();
            assert!(
                flags.contains(&flag),
                "{which}: stagely deploy has no {flag} ({flags:?})"
            );
        }
        let timeout = words
            .iter()
            .position(|w| w == "--timeout")
            .map(|i| words[i + 1].as_str());
        assert!(
            words.contains(&"--wait".to_owned()) && timeout == Some("600"),
            "{which}: {command}"
        );
    }
}

/// The GitLab job's `script` line, run by a shell with the variables GitLab would set, against a
/// real appliance: it deploys the pushed commit and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gitlab_jobs_script_line_deploys_the_pushed_commit() {
    let jobs = ci_doc_jobs();
    let script = jobs[1]["deploy-production"]["script"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_stagely"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("PATH", path)
        .env("STAGELY_SERVER", &api.url)
        .env("STAGELY_TOKEN", &api.token)
        .env("CI_COMMIT_SHA", sha)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deploy = next_deploy(&mut agent).await;
    let id = deploy["deployment_id"].as_i64().unwrap();
    assert_eq!(deploy["project"]["git_ref"], sha, "the pushed commit is deployed");
    agent.log(id, 1, "deployed").await;
    agent.status(id, "SUCCESS").await;
    let (code, stdout, stderr) = parts(&finish(child).await, &api.token);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "deployed\n");
    server.stop().await;
}

/// A loopback TCP forwarder that can be taken down: while down, open connections are closed and
/// new ones closed as soon as accepted (what a restarting proxy or a dropped route looks like).
struct FlakyLink {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FlakyLink {
    async fn start(upstream: &str) -> FlakyLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (up, _) = tokio::sync::watch::channel(true);
        let up_tx = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = up_tx.subscribe();
                if !*state.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        FlakyLink { url, up, task }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for FlakyLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_retries_through_a_lost_link_and_still_gets_every_line() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let link = FlakyLink::start(&api.url).await;
    let child = stagely(
        Some(&api.token),
        &deploy_args(&link.url, &["--wait", "--timeout", "60"]),
    )
    .spawn()
    .unwrap();
    let id = next_deploy(&mut agent).await["deployment_id"].as_i64().unwrap();
    agent.log(id, 1, "one").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    link.set_up(false);
    agent
        .log(id, 2, "two, while the CLI cannot reach the appliance")
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    link.set_up(true);
    agent.log(id, 3, "three").await;
    agent.status(id, "SUCCESS").await;
    let (code, stdout, stderr) = parts(&finish(child).await, &api.token);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout, "one\ntwo, while the CLI cannot reach the appliance\nthree\n",
        "every line once, in order"
    );
    assert!(
        stderr.contains("retrying") && stderr.contains("the appliance answers again"),
        "the outage was noted: {stderr}"
    );
    server.stop().await;
}

/// The appliance's own state refusing a deploy (no agent: 409) is not the pipeline's mistake:
/// exit 1, with the API's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_the_appliance_cannot_start_exits_1_with_its_reason() {
    let server = TestServer::start().await;
    let api = &server.api;
    api.project("shop", &["production"]).await;
    let out = run(Some(&api.token), &deploy_args(&api.url, &["--wait"])).await;
    let (code, stdout, stderr) = parts(&out, &api.token);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    let line = one_line(&stderr);
    assert!(line.contains("409") && line.contains("agent"), "{line}");
    server.stop().await;
}

/// The deploy request is sent once: a server error to it (the deployment may have been made) is
/// final, exit 1, never a retry that could start a second deployment. A fake appliance counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_request_answered_5xx_is_not_sent_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let posts = Arc::new(AtomicU32::new(0));
    let counted = posts.clone();
    let app = axum::Router::new()
        .route(
            "/api/projects",
            axum::routing::get(|| async {
                axum::Json(
                    json!([{"id": 1, "name": "shop", "environments": [{"id": 1, "name": "production"}]}]),
                )
            }),
        )
        .route(
            "/api/deploy/{id}",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"error": {"code": "unavailable", "message": "busy"}})),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = tokio::spawn(async move { axum::serve(listener, app).await });
    let out = run(Some("stg_fake"), &deploy_args(&url, &["--wait"])).await;
    let (code, _, stderr) = parts(&out, "stg_fake");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        one_line(&stderr).contains("503") && stderr.contains("busy"),
        "{stderr}"
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the deploy request was sent once"
    );
    fake.abort();
}

/// Exit 4: a waiting deployment that a newer one replaced (superseded, naming it), and a running
/// one cancelled through the API; the first, which ran, exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_and_cancelled_deployments_exit_4() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (_, mut agent) = setup(api).await;
    let args = deploy_args(&api.url, &["--wait", "--timeout", "60"]);
    let first = stagely(Some(&api.token), &args).spawn().unwrap();
    let d1 = next_deploy(&mut agent).await["deployment_id"].as_i64().unwrap();

    // Two more while d1 runs: both wait.
    let second = stagely(Some(&api.token), &args).spawn().unwrap();
    let waiting = |n: usize| async move {
        crate::common::wait_for("deployments waiting", WAIT, || async {
            let (_, list) = api.get("/api/deployments").await;
            let w: Vec<i64> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["status"] == "waiting")
                .map(|d| d["id"].as_i64().unwrap())
                .collect();
            (w.len() == n).then_some(w)
        })
        .await
    };
    let d2 = waiting(1).await[0];
    let third = stagely(Some(&api.token), &args).spawn().unwrap();
    let d3 = *waiting(2).await.iter().max().unwrap();

    // d1 ends: d2 is superseded by d3, which is sent.
    agent.status(d1, "SUCCESS").await;
    let mut sent = None;
    for _ in 0..2 {
        let frame = agent.recv().await;
        if frame["type"] == "DEPLOY" {
            sent = frame["deployment_id"].as_i64();
        }
    }
    assert_eq!(sent, Some(d3), "the newest waiting one runs");
    let (code, _, _) = parts(&finish(first).await, &api.token);
    assert_eq!(code, 0);
    let (code, _, stderr) = parts(&finish(second).await, &api.token);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("superseded") && stderr.contains(&d3.to_string()),
        "{stderr}"
    );

    // d3 is cancelled while it runs: the agent is told, reports it, the CLI exits 4.
    let (s, v) = api
        .post(&format!("/api/deployments/{d3}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let cancel = agent.recv().await;
    assert_eq!(cancel, json!({"type": "CANCEL", "deployment_id": d3}));
    agent.status(d3, "CANCELLED").await;
    let (code, _, stderr) = parts(&finish(third).await, &api.token);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    let (_, d) = api.get(&format!("/api/deployments/{d2}")).await;
    assert_eq!(
        (d["status"].clone(), d["superseded_by"].clone()),
        (json!("superseded"), json!(d3))
    );
}
