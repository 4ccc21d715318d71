//! What the end-to-end engine tests share (`e2e_engine`, `faults`, `compose_names`): a [`Stack`]
//! of a real `stagely serve` process, a compose project in a local git repository, an environment
//! and a real `stagely-agent run` process (dialing the appliance directly, through a frame
//! [`Capture`], or through a steerable [`FaultProxy`]); and readers of what is on the machine
//! (container environments, override files, compose processes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, ServerProcess, admin_token, file_contains, wait_for};
use crate::fault_proxy::FaultProxy;

/// The override file's name (the agent writes it in its private runtime dir only).
pub const OVERRIDE_NAME: &str = "docker-compose.stagely.yml";

pub fn sh(cmd: &mut Command) -> String {
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

/// How the stack's agent reaches its appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dial {
    #[default]
    Direct,
    /// Through a [`Capture`] (every byte the appliance sends is kept).
    Capture,
    /// Through a [`FaultProxy`] the test steers.
    Faults,
}

/// What a [`Stack`] is started with beyond its compose file.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// `STAGELY_*` variables of the appliance (kept for its restarts).
    pub server_env: Vec<(String, String)>,
    /// Extra `stagely-agent run` arguments.
    pub agent_args: Vec<String>,
    pub dial: Dial,
}

pub struct Stack {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub server: Option<ServerProcess>,
    pub agent: Option<tokio::process::Child>,
    pub api: Api,
    pub project: String,
    /// The environment's compose project name, as the appliance chose it.
    pub compose_project: String,
    pub runtime: PathBuf,
    /// When set, the agent dials the appliance through this frame-capturing proxy.
    pub proxy: Option<Capture>,
    /// When set, the agent dials the appliance through this proxy.
    pub faults: Option<FaultProxy>,
    options: StackOptions,
}

/// A TCP proxy on loopback between the agent and the appliance that keeps every byte the
/// appliance sends (server-to-client WebSocket frames are not masked: a clear value would be
/// there as is), as a TLS-terminating proxy or a frame log on the path would.
pub struct Capture {
    pub url: String,
    from_server: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Capture {
    pub async fn start(upstream: &str) -> Capture {
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

    pub fn bytes(&self) -> Vec<u8> {
        self.from_server.lock().unwrap().clone()
    }

    /// The text frames of the capture, after the HTTP upgrade response (unmasked frames of a
    /// server; every connection's bytes in order, each starting with its own response).
    pub fn text_frames(&self) -> Vec<String> {
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
    pub async fn start(name: &str, compose: &str, env: &str) -> Stack {
        Self::start_with(name, compose, env, StackOptions::default()).await
    }

    /// As [`Stack::start`], the agent dialing through a [`Capture`].
    pub async fn start_captured(name: &str, compose: &str, env: &str) -> Stack {
        let options = StackOptions {
            dial: Dial::Capture,
            ..StackOptions::default()
        };
        Self::start_with(name, compose, env, options).await
    }

    pub async fn start_with(name: &str, compose: &str, env: &str, mut options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let data = root.join("data");
        if !options
            .server_env
            .iter()
            .any(|(k, _)| k == "STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS")
        {
            options
                .server_env
                .push(("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS".into(), "20".into()));
        }
        let server = Self::spawn_server(&root, "127.0.0.1:0", &options).await;
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
        let e = api
            .ok(
                &format!("/api/projects/{}/environments", p["id"]),
                json!({"name": env}),
                201,
            )
            .await;
        let compose_project = e["compose_project"].as_str().unwrap().to_owned();
        let runtime = PathBuf::from("/dev/shm").join(format!("stagely-test-{}-{name}", std::process::id()));
        let proxy = match options.dial {
            Dial::Capture => Some(Capture::start(&api.url).await),
            _ => None,
        };
        let faults = match options.dial {
            Dial::Faults => Some(FaultProxy::start(&api.url).await),
            _ => None,
        };
        let mut stack = Stack {
            _dir: dir,
            root,
            server: Some(server),
            agent: None,
            api,
            project,
            compose_project,
            runtime,
            proxy,
            faults,
            options,
        };
        stack.start_agent().await;
        stack
    }

    async fn spawn_server(root: &Path, listen: &str, options: &StackOptions) -> ServerProcess {
        let env: Vec<(&str, &str)> = options
            .server_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServerProcess::spawn(&root.join("data"), listen, &env, &root.join("server.log")).await
    }

    /// SIGKILL the appliance, wait `down`, start it again on the same data dir and port.
    pub async fn restart_server(&mut self, down: Duration) {
        let server = self.server.take().unwrap();
        let port = server.port();
        server.kill().await;
        tokio::time::sleep(down).await;
        let listen = format!("127.0.0.1:{port}");
        self.server = Some(Self::spawn_server(&self.root, &listen, &self.options).await);
    }

    /// SIGKILL the agent (and wait for it to be gone); returns its pid.
    pub async fn kill_agent(&mut self) -> u32 {
        let mut agent = self.agent.take().unwrap();
        let pid = agent.id().unwrap();
        agent.kill().await.unwrap();
        pid
    }

    pub async fn project_id(&self) -> i64 {
        let (_, ps) = self.api.get("/api/projects").await;
        ps.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == self.project.as_str())
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// The agent's work dir (its checkouts, identity and deployments record).
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }

    /// Start the agent (same token, work dir and runtime dir each time) and wait until the
    /// appliance lists it online.
    pub async fn start_agent(&mut self) {
        let token_file = self.root.join("agent.token");
        if !token_file.exists() {
            let pid = self.project_id().await;
            let (_, p) = self.api.get(&format!("/api/projects/{pid}")).await;
            let env_id = p["environments"][0]["id"].as_i64().unwrap();
            let (_, token) = self.api.agent(env_id, "e2e").await;
            std::fs::write(&token_file, token).unwrap();
            // As an operator would keep it: the agent warns about a token others can read.
            std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        std::fs::create_dir_all(&self.runtime).unwrap();
        let log_path = self.root.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let log_start = log.metadata().unwrap().len();
        let server = match (&self.proxy, &self.faults) {
            (Some(p), _) => p.url.clone(),
            (_, Some(f)) => f.url.clone(),
            _ => self.api.url.clone(),
        };
        let child = tokio::process::Command::new(crate::bins::agent())
            .args(["run", "--server", &server, "--token-file"])
            .arg(&token_file)
            .arg("--work-dir")
            .arg(self.work_dir())
            .arg("--runtime-dir")
            .arg(&self.runtime)
            .args(["--verify-wait-secs", "1"])
            .args(&self.options.agent_args)
            .env("STAGELY_AGENT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        // This agent's own session, not a killed predecessor's the appliance has not yet seen
        // close: the agent says "connected" once it has ended its predecessor's leftovers and
        // opened its socket.
        wait_for("the new agent connected", Duration::from_secs(30), || {
            let log_path = log_path.clone();
            async move {
                let text = std::fs::read(&log_path).ok()?;
                let new = String::from_utf8_lossy(text.get(log_start as usize..)?).into_owned();
                new.lines()
                    .any(|l| l.contains("stagely_agent::connection") && l.contains(" connected server="))
                    .then_some(())
            }
        })
        .await;
        self.wait_agent_online(Duration::from_secs(30)).await;
    }

    /// Wait until the appliance lists the agent online (panics after `timeout`).
    pub async fn wait_agent_online(&self, timeout: Duration) {
        let api = self.api.clone();
        wait_for("agent online", timeout, || {
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

    pub async fn secret(&self, body: Value) -> Value {
        let pid = self.project_id().await;
        self.api
            .ok(&format!("/api/projects/{pid}/secrets"), body, 201)
            .await
    }

    pub async fn deploy(&self) -> i64 {
        let pid = self.project_id().await;
        let (status, body) = self.api.post(&format!("/api/deploy/{pid}"), json!({})).await;
        assert_eq!(status, 202, "{body}");
        body["deployment_id"].as_i64().unwrap()
    }

    pub fn compose_project(&self) -> String {
        self.compose_project.clone()
    }

    /// The id of a service's running container, if there is one.
    pub fn container_id(&self, service: &str) -> Option<String> {
        let id = sh(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.compose_project()),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]));
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    }

    /// The environment of a service's running container, as the container sees it.
    pub fn container_env(&self, service: &str) -> HashMap<String, String> {
        let id = self.container_id(service);
        let id = id.unwrap_or_else(|| panic!("no running container for {service}"));
        let raw = Command::new("docker")
            .args(["exec", &id, "cat", "/proc/1/environ"])
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

    pub fn containers(&self) -> usize {
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
    pub fn leftover_overrides(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for base in [self.runtime.clone(), self.work_dir()] {
            found.extend(crate::agent_support::find_named(&base, OVERRIDE_NAME));
        }
        found
    }

    pub fn logs_contain(&self, needle: &str) -> bool {
        file_contains(&self.root.join("server.log"), needle)
            || file_contains(&self.root.join("agent.log"), needle)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        take_down(&self.compose_project(), &self.runtime);
    }
}

/// What a test leaves on the engine and in /dev/shm, whatever its outcome: the compose project
/// down (volumes too, at once) and the agent's runtime dir gone.
pub fn take_down(compose_project: &str, runtime: &Path) {
    let _ = Command::new("docker")
        .args([
            "compose",
            "-p",
            compose_project,
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "0",
        ])
        .output();
    let _ = std::fs::remove_dir_all(runtime);
}

/// A live (non-zombie) process, named by pid and start time so a recycled pid is not mistaken
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    pub fn alive(&self) -> bool {
        stagely_agent::groups::read_stat(self.pid)
            .is_some_and(|s| s.state != 'Z' && s.start_time == self.start)
    }

    /// What a failing test should say about it: its group, state and argv.
    pub fn describe(&self) -> String {
        let stat = stagely_agent::groups::read_stat(self.pid);
        let argv = std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        format!("pid {} {stat:?}: {argv}", self.pid)
    }
}

/// The live processes whose argv names compose project `project` (`-p project`) and, when
/// `subcommand` is given, holds that word (`up`).
pub fn compose_processes(project: &str, subcommand: Option<&str>) -> Vec<Proc> {
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
        let has_word = subcommand.is_none_or(|w| argv.contains(&w.as_bytes()));
        if !names_project || !has_word {
            continue;
        }
        if let Some(stat) = stagely_agent::groups::read_stat(pid)
            && stat.state != 'Z'
        {
            found.push(Proc {
                pid,
                start: stat.start_time,
            });
        }
    }
    found
}

/// The non-zombie processes whose argv runs `up` for compose project `project` (`-p project`).
pub fn compose_up_processes(project: &str) -> Vec<i32> {
    compose_processes(project, Some("up"))
        .into_iter()
        .map(|p| p.pid)
        .collect()
}
