//! End to end on a real engine: `stagely serve` and `stagely-agent run` as real processes, a
//! compose project in a local git repository, real containers whose environment is read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, ServerProcess, admin_token, file_contains, wait_for};
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

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A git repository holding `compose.yaml` (and whatever else), committed.
pub(crate) fn git_repo(dir: &Path, compose: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), compose).unwrap();
    let git = |args: &[&str]| {
        sh(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir))
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "compose project"]);
    format!("file://{}", dir.display())
}

struct Stack {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: Option<ServerProcess>,
    agent: Option<tokio::process::Child>,
    api: Api,
    project: String,
    runtime: PathBuf,
    /// When set, the agent dials the appliance through this frame-capturing proxy.
    proxy: Option<Capture>,
}

/// A TCP proxy on loopback between the agent and the appliance that keeps every byte the
/// appliance sends (server-to-client WebSocket frames are not masked: a clear value would be
/// there as is), as a TLS-terminating proxy or a frame log on the path would.
struct Capture {
    url: String,
    from_server: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Capture {
    async fn start(upstream: &str) -> Capture {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let from_server = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = from_server.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Capture { url, from_server }
    }

    fn bytes(&self) -> Vec<u8> {
        self.from_server.lock().unwrap().clone()
    }

    /// The text frames of the capture, after the HTTP upgrade response (unmasked frames of a
    /// server; every connection's bytes in order, each starting with its own response).
    fn text_frames(&self) -> Vec<String> {
        let bytes = self.bytes();
        let mut frames = Vec::new();
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            if rest.starts_with(b"HTTP/1.1") {
                let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                rest = &rest[end..];
                continue;
            }
            let (opcode, short) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
            let (len, head) = match short {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 => (
                    usize::try_from(u64::from_be_bytes(rest[2..10].try_into().unwrap())).unwrap(),
                    10,
                ),
                n => (n, 2),
            };
            if rest.len() < head + len {
                break;
            }
            if opcode == 1 {
                frames.push(String::from_utf8_lossy(&rest[head..head + len]).into_owned());
            }
            rest = &rest[head + len..];
        }
        frames
    }
}

impl Stack {
    /// Server + project (from `compose`) + environment `env` + a running real agent.
    async fn start(name: &str, compose: &str, env: &str) -> Stack {
        Self::start_inner(name, compose, env, false).await
    }

    /// As [`Stack::start`], the agent dialing through a [`Capture`].
    async fn start_captured(name: &str, compose: &str, env: &str) -> Stack {
        Self::start_inner(name, compose, env, true).await
    }

    async fn start_inner(name: &str, compose: &str, env: &str, captured: bool) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let data = root.join("data");
        let server = ServerProcess::spawn(
            &data,
            "127.0.0.1:0",
            &[("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS", "20")],
            &root.join("server.log"),
        )
        .await;
        let api = Api::new(&server.url, &admin_token(&data));
        let project = format!("{name}-{}", std::process::id());
        let repo = git_repo(&root.join("repo"), compose);
        let (status, p) = api
            .post(
                "/api/projects",
                json!({"name": project, "repo_url": repo, "compose_path": "compose.yaml", "pull": "never"}),
            )
            .await;
        assert_eq!(status, 201, "{p}");
        api.ok(
            &format!("/api/projects/{}/environments", p["id"]),
            json!({"name": env}),
            201,
        )
        .await;
        let runtime = PathBuf::from("/dev/shm").join(format!("stagely-test-{}-{name}", std::process::id()));
        let proxy = match captured {
            true => Some(Capture::start(&api.url).await),
            false => None,
        };
        let mut stack = Stack {
            _dir: dir,
            root,
            server: Some(server),
            agent: None,
            api,
            project,
            runtime,
            proxy,
        };
        stack.start_agent().await;
        stack
    }

    async fn project_id(&self) -> i64 {
        let (_, ps) = self.api.get("/api/projects").await;
        ps.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == self.project.as_str())
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    async fn start_agent(&mut self) {
        let token_file = self.root.join("agent.token");
        if !token_file.exists() {
            let pid = self.project_id().await;
            let (_, p) = self.api.get(&format!("/api/projects/{pid}")).await;
            let env_id = p["environments"][0]["id"].as_i64().unwrap();
            let (_, token) = self.api.agent(env_id, "e2e").await;
            std::fs::write(&token_file, token).unwrap();
        }
        std::fs::create_dir_all(&self.runtime).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("agent.log"))
            .unwrap();
        let server = self
            .proxy
            .as_ref()
            .map_or(self.api.url.clone(), |p| p.url.clone());
        let child = tokio::process::Command::new(crate::bins::agent())
            .args(["run", "--server", &server, "--token-file"])
            .arg(&token_file)
            .arg("--work-dir")
            .arg(self.root.join("work"))
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(["--verify-wait-secs", "1"])
            .env("STAGELY_AGENT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let api = self.api.clone();
        wait_for("agent online", Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                api.get("/api/agents")
                    .await
                    .1
                    .as_array()?
                    .iter()
                    .any(|a| a["online"] == true)
                    .then_some(())
            }
        })
        .await;
    }

    async fn secret(&self, body: Value) {
        let pid = self.project_id().await;
        self.api
            .ok(&format!("/api/projects/{pid}/secrets"), body, 201)
            .await;
    }

    async fn deploy(&self) -> i64 {
        let pid = self.project_id().await;
        let (status, body) = self.api.post(&format!("/api/deploy/{pid}"), json!({})).await;
        assert_eq!(status, 202, "{body}");
        body["deployment_id"].as_i64().unwrap()
    }

    fn compose_project(&self) -> String {
        let env = "staging";
        format!("{}-{env}", self.project)
    }

    /// The environment of a service's running container, as the container sees it.
    fn container_env(&self, service: &str) -> HashMap<String, String> {
        let id = sh(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.compose_project()),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        let id = id.trim();
        assert!(!id.is_empty(), "no running container for {service}");
        let raw = Command::new("docker")
            .args(["exec", id, "cat", "/proc/1/environ"])
            .output()
            .unwrap()
            .stdout;
        raw.split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let kv = String::from_utf8(kv.to_vec()).unwrap();
                kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect()
    }

    fn containers(&self) -> usize {
        let out = sh(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.compose_project()),
        ]));
        out.lines().count()
    }

    /// Every override file left anywhere this stack's agent could have written one: its
    /// `--runtime-dir` and its work dir. (Other tests' agents may hold their own override in
    /// /dev/shm at this very moment, so /dev/shm as a whole is not this test's to judge.)
    fn leftover_overrides(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for base in [self.runtime.clone(), self.root.join("work")] {
            let out = Command::new("find")
                .arg(&base)
                .args(["-name", "docker-compose.stagely.yml"])
                .output()
                .unwrap();
            found.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
        }
        found
    }

    fn logs_contain(&self, needle: &str) -> bool {
        file_contains(&self.root.join("server.log"), needle)
            || file_contains(&self.root.join("agent.log"), needle)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args([
                "compose",
                "-p",
                &self.compose_project(),
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "0",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
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
    let server = stack.server.take().unwrap();
    let port = server.port();
    let data = stack.root.join("data");
    server.kill().await;
    stack.server = Some(
        ServerProcess::spawn(
            &data,
            &format!("127.0.0.1:{port}"),
            &[],
            &stack.root.join("server.log"),
        )
        .await,
    );
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
    let mut agent = stack.agent.take().unwrap();
    agent.kill().await.unwrap();
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
    let db = std::fs::read(stack.root.join("data/stagely.db")).unwrap();
    let wal = std::fs::read(stack.root.join("data/stagely.db-wal")).unwrap_or_default();
    for form in &forms {
        assert!(!shown.contains(form.as_str()), "{form} shown: {shown}");
        assert!(!stack.logs_contain(form), "{form} in a process log");
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
                "{form} stored"
            );
        }
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

/// The non-zombie processes whose argv runs `up` for compose project `project` (`-p project`).
fn compose_up_processes(project: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let names_project = argv
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == project.as_bytes());
        let is_zombie = stagely_agent::groups::read_stat(pid).is_none_or(|s| s.state == 'Z');
        if names_project && argv.contains(&&b"up"[..]) && !is_zombie {
            found.push(pid);
        }
    }
    found
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

    let mut agent = stack.agent.take().unwrap();
    agent.kill().await.unwrap();
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
