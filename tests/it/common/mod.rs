//! Test harness: a real appliance (in-process on 127.0.0.1:0, or as a `stagely serve` process),
//! a real store (a SQLite file in a temp dir, or with `STAGELY_TEST_STORE=postgres` a PostgreSQL
//! database of its own: [`store`]), an HTTP client, and a protocol-level agent on a real
//! WebSocket. No fixed ports, no sleeps to "wait for start": tests wait on conditions.

#![allow(dead_code)]

pub mod store;

pub use store::{StoreDb, open_db, store_contains, store_env};

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use stagely::app::App;
use stagely::config::{Config, Overrides};
use stagely_agent::identity::AgentIdentity;

pub const WAIT: Duration = Duration::from_secs(20);

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An HTTP client bound to one appliance URL and API token.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Api {
        Api {
            url: url.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api::new(&self.url, token)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// POST that must answer `expect`; returns the body.
    pub async fn ok(&self, path: &str, body: Value, expect: u16) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, expect, "POST {path}: {v}");
        v
    }

    /// Create a project with environments; returns (project id, [environment ids]).
    pub async fn project(&self, name: &str, envs: &[&str]) -> (i64, Vec<i64>) {
        let p = self
            .ok(
                "/api/projects",
                json!({"name": name, "compose_path": format!("/srv/{name}/compose.yaml")}),
                201,
            )
            .await;
        let pid = p["id"].as_i64().unwrap();
        let mut ids = Vec::new();
        for env in envs {
            let e = self
                .ok(
                    &format!("/api/projects/{pid}/environments"),
                    json!({"name": env}),
                    201,
                )
                .await;
            ids.push(e["id"].as_i64().unwrap());
        }
        (pid, ids)
    }

    /// Create an agent for an environment; returns (agent id, token).
    pub async fn agent(&self, env_id: i64, name: &str) -> (i64, String) {
        let a = self
            .ok(
                &format!("/api/environments/{env_id}/agents"),
                json!({"name": name}),
                201,
            )
            .await;
        (a["id"].as_i64().unwrap(), a["token"].as_str().unwrap().to_owned())
    }

    pub async fn wait_online(&self, agent_id: i64) {
        self.wait_agent(agent_id, true).await;
    }

    pub async fn wait_offline(&self, agent_id: i64) {
        self.wait_agent(agent_id, false).await;
    }

    /// Until `GET /api/agents` shows the agent with this `online`.
    async fn wait_agent(&self, agent_id: i64, online: bool) {
        let api = self.clone();
        let what = if online { "agent online" } else { "agent offline" };
        wait_for(what, WAIT, || {
            let api = api.clone();
            async move {
                let (_, agents) = api.get("/api/agents").await;
                agents
                    .as_array()?
                    .iter()
                    .find(|a| a["id"] == agent_id && a["online"] == online)
                    .map(|_| ())
            }
        })
        .await;
    }

    /// Wait until the deployment has finished; returns it.
    pub async fn wait_finished(&self, id: i64, timeout: Duration) -> Value {
        let api = self.clone();
        wait_for("deployment to finish", timeout, || {
            let api = api.clone();
            async move {
                let (_, d) = api.get(&format!("/api/deployments/{id}")).await;
                matches!(
                    d["status"].as_str(),
                    Some("success" | "failed" | "superseded" | "cancelled")
                )
                .then_some(d)
            }
        })
        .await
    }
}

/// Wait for `stagely serve`'s "listening on" line; returns the URL.
pub async fn read_listen_line(stdout: tokio::process::ChildStdout, log: &Path) -> String {
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("stagely listening on ") {
                return url.to_owned();
            }
        }
        panic!(
            "server exited before listening; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    })
    .await
    .expect("server did not start")
}

/// An appliance running inside the test process.
pub struct TestServer {
    pub api: Api,
    pub dir: tempfile::TempDir,
    app: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), None, tweak).await
    }

    /// Stop this appliance and start a new one on the same data dir (on a new port).
    pub async fn restart(mut self) -> TestServer {
        self.shutdown.cancel();
        if let Some(h) = self.app.take() {
            h.await.unwrap().unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, Some(self.api.token.clone()), |_| {}).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        token: Option<String>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let overrides = Overrides {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        };
        let mut config = Config::load(None, Vec::new(), &overrides).unwrap();
        use_test_store(&mut config, &dir.path().join("data"));
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        config.bound_to(listener.local_addr().unwrap());
        let app = App::start(config).unwrap();
        let shutdown = app.state.shutdown.clone();
        let token = token.unwrap_or_else(|| admin_token(&dir.path().join("data")));
        let handle = tokio::spawn(app.serve(listener));
        TestServer {
            api: Api::new(&url, &token),
            dir,
            app: Some(handle),
            shutdown,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.app.take() {
            h.await.unwrap().unwrap();
        }
    }
}

/// Point `config` at the store of `data_dir` (its PostgreSQL database under
/// `STAGELY_TEST_STORE=postgres`; nothing to do on SQLite). Every in-process appliance calls it.
pub fn use_test_store(config: &mut Config, data_dir: &Path) {
    if let Some(url) = store::database_url(data_dir) {
        config.database_url = stagely::config::SecretString::new(url);
    }
}

/// A new admin API token made by the real CLI on the data dir.
pub fn admin_token(data_dir: &Path) -> String {
    cli_token(data_dir, "test-admin", "admin")
}

pub fn cli_token(data_dir: &Path, name: &str, role: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args([
            "admin",
            "create-token",
            "--name",
            name,
            "--role",
            role,
            "--data-dir",
        ])
        .arg(data_dir)
        .envs(store_env(data_dir))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "create-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `stagely serve` as a real process, its stderr kept in a file.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub url: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Start on `listen` (use "127.0.0.1:0" for any port) with extra `STAGELY_*` variables.
    pub async fn spawn(data_dir: &Path, listen: &str, env: &[(&str, &str)], log: &Path) -> ServerProcess {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_stagely"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .envs(store_env(data_dir))
            .env("STAGELY_LOG_LEVEL", "debug")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let url = read_listen_line(child.stdout.take().unwrap(), log).await;
        ServerProcess {
            child,
            url,
            log: log.to_owned(),
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("server did not stop")
            .unwrap()
    }

    /// SIGKILL: the crash case.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol-level agent on a real WebSocket, with an age identity: the same one for every
/// connection with the same token in this test process (as one machine keeps its identity file),
/// so an appliance restarted under a test still finds the pinned recipient.
pub struct TestAgent {
    pub ws: Ws,
    pub identity: Arc<AgentIdentity>,
    /// What the appliance must address this agent's frames to, and the key it must sign them
    /// with (the fingerprint in the token, when it has one): checked on every frame received.
    tag: String,
    fingerprint: Option<String>,
    /// The highest LOG_ACK seq received per deployment. [`TestAgent::recv_within`] takes
    /// LOG_ACK frames aside into this map (they come after every committed batch), so tests
    /// read the frames they are about in order.
    pub log_acks: HashMap<i64, u64>,
}

/// The identity "the machine" holding `token` has.
pub fn identity_for(token: &str) -> Arc<AgentIdentity> {
    static IDS: OnceLock<Mutex<HashMap<String, Arc<AgentIdentity>>>> = OnceLock::new();
    let mut ids = IDS.get_or_init(Default::default).lock().unwrap();
    ids.entry(token.to_owned())
        .or_insert_with(|| Arc::new(AgentIdentity::generate()))
        .clone()
}

impl TestAgent {
    /// A raw connection (no HELLO yet) with the token's identity.
    pub async fn raw(url: &str, token: &str) -> TestAgent {
        let ws = Self::dial(url, token).await.expect("agent could not connect");
        let (_, fingerprint) = stagely_protocol::signing::split_token(token);
        let tag = stagely_protocol::signing::recipient_tag(token);
        TestAgent {
            ws,
            identity: identity_for(token),
            tag,
            fingerprint,
            log_acks: HashMap::new(),
        }
    }

    pub async fn dial(url: &str, token: &str) -> Result<Ws, tungstenite::Error> {
        let ws_url = format!("{}/ws/agent", url.replacen("http", "ws", 1));
        let mut req = ws_url.into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(tokio_tungstenite::connect_async(req).await?.0)
    }

    /// Connect without saying anything yet (the same as [`TestAgent::raw`]).
    pub async fn dial_only(url: &str, token: &str) -> TestAgent {
        Self::raw(url, token).await
    }

    /// Connect and say HELLO (optionally listing the deployments it still holds), offering the
    /// token's identity.
    pub async fn connect(url: &str, token: &str, active: Option<Vec<i64>>) -> TestAgent {
        let mut agent = Self::raw(url, token).await;
        let recipient = agent.identity.recipient().to_owned();
        agent.hello(active, Some(&recipient), "test-host").await;
        agent
    }

    /// Say HELLO with this recipient (`None`: an agent from before end-to-end secrets).
    pub async fn hello(&mut self, active: Option<Vec<i64>>, recipient: Option<&str>, hostname: &str) {
        let mut hello = json!({"type": "HELLO", "protocol": 1, "agent_version": "test", "hostname": hostname,
            "docker_version": "0", "compose_version": "0"});
        if let Some(active) = active {
            hello["active_deployments"] = json!(active);
        }
        if let Some(r) = recipient {
            hello["recipient"] = json!(r);
        }
        self.send(hello).await;
    }

    /// Open a DEPLOY frame's sealed secrets with this agent's identity: the entries as JSON
    /// (`[{"key", "value", "scope", "service"}]`). Panics if they do not open.
    pub fn secrets(&self, deploy: &Value) -> Value {
        assert_eq!(deploy["type"], "DEPLOY", "{deploy}");
        assert!(
            deploy.get("secrets").is_none(),
            "clear secrets in a DEPLOY: {deploy}"
        );
        let project: stagely_protocol::ProjectSpec =
            serde_json::from_value(deploy["project"].clone()).unwrap();
        let entries = self
            .identity
            .open(
                deploy["sealed_secrets"].as_str().expect("sealed_secrets"),
                deploy["deployment_id"].as_i64().unwrap(),
                &project,
            )
            .expect("the DEPLOY's secrets open with the agent's identity");
        serde_json::to_value(&entries).unwrap()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: String) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::Text(text.into())).await
    }

    /// The next JSON frame within `timeout` (pings skipped, LOG_ACKs taken aside into
    /// [`TestAgent::log_acks`]); `None` on timeout or close.
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let msg = self.open(t.as_str());
                        if msg["type"] == "LOG_ACK" {
                            let (id, seq) = (msg["deployment_id"].as_i64(), msg["seq"].as_u64());
                            let (Some(id), Some(seq)) = (id, seq) else {
                                panic!("bad LOG_ACK {msg}")
                            };
                            let best = self.log_acks.entry(id).or_insert(seq);
                            *best = (*best).max(seq);
                            continue;
                        }
                        return Some(msg);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// A signed frame's message, after checking it is signed (by the token's key), for us.
    fn open(&self, frame: &str) -> Value {
        let opened =
            stagely_protocol::signing::open(frame).expect("the server sent an unsigned or forged frame");
        assert_eq!(opened.to, self.tag, "a frame addressed to another agent");
        if let Some(fp) = &self.fingerprint {
            assert_eq!(&opened.fingerprint, fp, "signed by another key than the token's");
        }
        serde_json::from_str(opened.message()).unwrap()
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await.expect("no frame from server")
    }

    /// Wait for the close frame; returns its reason.
    pub async fn closed_reason(&mut self) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => return frame.reason.to_string(),
                    Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return String::new(),
                    _ => continue,
                }
            }
        })
        .await
        .expect("connection was not closed")
    }

    pub async fn log(&mut self, deployment_id: i64, seq: u64, line: &str) {
        self.send(json!({"type": "LOG", "deployment_id": deployment_id, "seq": seq, "stream": "stdout", "line": line}))
            .await;
    }

    pub async fn status(&mut self, deployment_id: i64, status: &str) {
        self.send(
            json!({"type": "STATUS", "deployment_id": deployment_id, "status": status,
            "services": [{"name": "web", "state": "running", "health": "", "exit_code": 0}], "error": null}),
        )
        .await;
    }
}

/// True when `needle` occurs anywhere in the file's bytes (missing file: false).
pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .unwrap_or(false)
}
