//! Notifications end to end: a real appliance process, a protocol-level agent on a real
//! WebSocket, a local HTTP receiver (the generic webhook checked the way a receiver would, Slack,
//! Discord, a failing receiver), a real SMTP server with STARTTLS (aiosmtpd), and a canary
//! secret that must never appear in a payload, the delivery log, a response, the log or the DB.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::common::{Api, ServerProcess, TestAgent, TestServer, WAIT, cli_token, file_contains, wait_for};

const CANARY: &str = "canary-n0tify-7f3a9c";
/// The secret part of the Slack URL: a credential, never to be stored or shown in clear.
const SLACK_TOKEN: &str = "T0CANARY/B0CANARY/slackpathsecret42";

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A local HTTP receiver: records every request; answers each path from its script of statuses
/// (the last one repeats; no script: 200).
#[derive(Clone, Default)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..Receiver::default()
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.serve(sock).await;
                });
            }
        });
        r
    }

    fn answer(&self, path: &str, statuses: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    async fn serve(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(sock);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).await?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).await?;
            let status = {
                let mut script = self.script.lock().unwrap();
                match script.get_mut(&path) {
                    Some(q) if q.len() > 1 => q.pop_front().unwrap(),
                    Some(q) => q.front().copied().unwrap_or(200),
                    None => 200,
                }
            };
            self.got.lock().unwrap().push(Received { path, headers, body });
            let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
            reader.get_mut().write_all(resp.as_bytes()).await?;
        }
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    async fn wait(&self, path: &str, n: usize) -> Vec<Received> {
        let me = self.clone();
        let path = path.to_owned();
        wait_for(&format!("{n} request(s) at {path}"), WAIT, || {
            let got = me.at(&path);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

/// Verify `X-Stagely-Signature` exactly as a receiver would: HMAC-SHA256 of the raw body.
fn signature_ok(secret: &str, r: &Received) -> bool {
    let Some(sig) = r.headers.get("x-stagely-signature") else {
        return false;
    };
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&expected).is_ok()
}

async fn channel(api: &Api, pid: i64, body: Value) -> Value {
    api.ok(&format!("/api/projects/{pid}/notifications"), body, 201)
        .await
}

async fn deliveries(api: &Api, channel: i64) -> Value {
    let (s, v) = api.get(&format!("/api/notifications/{channel}/deliveries")).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn wait_delivery(api: &Api, channel: i64, event: &str, status: &str) -> Value {
    let api = api.clone();
    let event = event.to_owned();
    let status = status.to_owned();
    wait_for(
        &format!("a {status} {event} delivery on channel {channel}"),
        WAIT,
        || {
            let api = api.clone();
            let (event, status) = (event.clone(), status.clone());
            async move {
                let v = deliveries(&api, channel).await;
                v.as_array()?
                    .iter()
                    .find(|d| d["event"] == event.as_str() && d["status"] == status.as_str())
                    .cloned()
            }
        },
    )
    .await
}

/// Deploy once through a protocol agent; the agent fails it with the canary in its error.
async fn failed_deploy(api: &Api, pid: i64, (agent_id, token): &(i64, String)) -> i64 {
    let mut agent = TestAgent::connect(&api.url, token, Some(vec![])).await;
    api.wait_online(*agent_id).await;
    let (status, body) = api
        .post(&format!("/api/deploy/{pid}"), json!({"environment": "staging"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    agent.log(id, 1, &format!("using {CANARY}")).await;
    agent
        .send(json!({"type": "STATUS", "deployment_id": id, "status": "FAIL",
            "services": [], "error": format!("compose up failed: password {CANARY} rejected")}))
        .await;
    let d = api.wait_finished(id, WAIT).await;
    assert_eq!(d["status"], "failed", "{d}");
    id
}

fn no_canary(what: &str, bytes: &[u8]) {
    for needle in [CANARY, SLACK_TOKEN] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{what} holds {needle}: {}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_slack_discord_signed_retried_sent_once_and_never_a_secret() {
    let receiver = Receiver::start().await;
    receiver.answer("/flaky", &[500, 500, 200]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let env = [("STAGELY_NOTIFY__RETRY_BASE_SECS", "0.2")];
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &env, &log).await;
    let api = Api::new(&server.url, &cli_token(&data, "notify-admin", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "DB_PASSWORD", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let agent = api.agent(envs[0], "staging-1").await;

    let hook = channel(
        &api,
        pid,
        json!({"kind": "webhook", "name": "ci", "events": ["deploy.failed", "deploy.succeeded"],
            "url": format!("{}/hook", receiver.url)}),
    )
    .await;
    let secret = hook["signing_secret"]
        .as_str()
        .expect("a signing secret, once")
        .to_owned();
    assert_eq!(hook["target"], "127.0.0.1", "{hook}");
    assert!(hook.get("url").is_none(), "{hook}");
    let slack_url = format!("{}/slack/{SLACK_TOKEN}", receiver.url);
    let slack = channel(
        &api,
        pid,
        json!({"kind": "slack", "name": "slack", "events": ["deploy.failed"], "url": slack_url}),
    )
    .await;
    assert!(slack.get("signing_secret").is_none(), "{slack}");
    no_canary("the create answer", slack.to_string().as_bytes());
    let discord = channel(
        &api,
        pid,
        json!({"kind": "discord", "name": "discord", "events": ["deploy.failed"], "url": format!("{}/discord", receiver.url)}),
    )
    .await;
    let flaky = channel(
        &api,
        pid,
        json!({"kind": "webhook", "name": "flaky", "events": ["deploy.failed"], "url": format!("{}/flaky", receiver.url)}),
    )
    .await;
    let (_, listed) = api.get(&format!("/api/projects/{pid}/notifications")).await;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    no_canary("the channel list", listed.to_string().as_bytes());
    assert!(!listed.to_string().contains("whsec_"), "{listed}");

    let id = failed_deploy(&api, pid, &agent).await;

    // The generic webhook: signed, with the event and a delivery id, linking to the deployment.
    let got = receiver.wait("/hook", 1).await;
    let r = &got[0];
    assert!(signature_ok(&secret, r), "bad signature: {:?}", r.headers);
    assert!(!signature_ok("another secret", r));
    assert_eq!(r.headers["x-stagely-event"], "deploy.failed");
    assert!(r.headers.contains_key("x-stagely-delivery"));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["event"], "deploy.failed");
    assert_eq!(body["project"], "shop");
    assert_eq!(body["environment"], "staging");
    assert_eq!(body["deployment_id"], id);
    assert_eq!(body["status"], "failed");
    assert_eq!(body["url"], format!("{}/deployments/{id}", server.url));
    assert!(
        body["error"].as_str().unwrap().contains("compose up failed"),
        "{body}"
    );
    for key in ["commit", "at"] {
        assert!(body.get(key).is_some(), "{key} missing: {body}");
    }

    let s: Value =
        serde_json::from_slice(&receiver.wait(&format!("/slack/{SLACK_TOKEN}"), 1).await[0].body).unwrap();
    let text = s["text"].as_str().unwrap();
    assert!(text.starts_with("*shop/staging deploy failed*"), "{text}");
    assert!(
        text.contains(&format!("<{}/deployments/{id}|", server.url)),
        "{text}"
    );
    let d: Value = serde_json::from_slice(&receiver.wait("/discord", 1).await[0].body).unwrap();
    assert!(
        d["content"]
            .as_str()
            .unwrap()
            .contains(&format!("/deployments/{id}")),
        "{d}"
    );

    // 500, 500, then 200: three attempts, with backoff, then sent.
    let flaky_id = flaky["id"].as_i64().unwrap();
    let sent = wait_delivery(&api, flaky_id, "deploy.failed", "sent").await;
    assert_eq!(sent["attempts"], 3, "{sent}");
    assert_eq!(receiver.at("/flaky").len(), 3);

    // A test event reaches its one channel only.
    let hook_id = hook["id"].as_i64().unwrap();
    let (s, t) = api
        .post(&format!("/api/notifications/{hook_id}/test"), json!({}))
        .await;
    assert_eq!(s, 202, "{t}");
    let got = receiver.wait("/hook", 2).await;
    assert_eq!(got[1].headers["x-stagely-event"], "test");
    assert!(signature_ok(&secret, &got[1]));

    // A restart (the catch-up replays recent deployments) sends nothing twice; pending rows
    // survive it and are retried: /later refuses until after the restart.
    receiver.answer("/later", &[503]);
    let later = channel(
        &api,
        pid,
        json!({"kind": "webhook", "name": "later", "events": ["deploy.failed"], "url": format!("{}/later", receiver.url)}),
    )
    .await;
    let later_id = later["id"].as_i64().unwrap();
    let (s, _) = api
        .post(&format!("/api/notifications/{later_id}/test"), json!({}))
        .await;
    assert_eq!(s, 202);
    receiver.wait("/later", 1).await;
    let status = server.terminate().await;
    assert!(status.success());
    receiver.answer("/later", &[200]);
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &env, &log).await;
    let api = Api::new(&server.url, &api.token);
    wait_delivery(&api, later_id, "test", "sent").await;
    // One more test through the hook proves the sender has run since the restart.
    api.ok(&format!("/api/notifications/{hook_id}/test"), json!({}), 202)
        .await;
    receiver.wait("/hook", 3).await;
    let failed_events = receiver
        .at("/hook")
        .iter()
        .filter(|r| r.headers["x-stagely-event"] == "deploy.failed")
        .count();
    assert_eq!(failed_events, 1, "deploy.failed sent more than once");
    assert_eq!(receiver.at("/discord").len(), 1);

    // No secret anywhere: payloads, the delivery logs, responses, the log, the database.
    for r in receiver.got.lock().unwrap().iter() {
        no_canary("a notification payload", &r.body);
    }
    for ch in [&hook, &slack, &discord, &flaky, &later] {
        let v = deliveries(&api, ch["id"].as_i64().unwrap()).await;
        no_canary("a delivery log", v.to_string().as_bytes());
    }
    let (_, listed) = api.get(&format!("/api/projects/{pid}/notifications")).await;
    no_canary("the channel list", listed.to_string().as_bytes());
    server.terminate().await;
    assert!(
        !file_contains(&log, SLACK_TOKEN),
        "the Slack URL is in the server log"
    );
    assert!(
        !file_contains(&log, &secret),
        "the signing secret is in the server log"
    );
    {
        let f = "the store";
        assert!(
            !crate::common::store_contains(&data, CANARY),
            "{f} holds the canary"
        );
        assert!(
            !crate::common::store_contains(&data, SLACK_TOKEN),
            "{f} holds the Slack URL in clear"
        );
        assert!(
            !crate::common::store_contains(&data, &secret),
            "{f} holds the signing secret in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_validated_audited_and_readable_by_viewers_only() {
    let server = TestServer::start().await;
    let api = &server.api;
    let (pid, _) = api.project("web", &["staging"]).await;
    let path = format!("/api/projects/{pid}/notifications");
    for (body, field) in [
        (
            json!({"kind": "pager", "name": "a", "events": ["deploy.failed"], "url": "https://x.example/h"}),
            "kind",
        ),
        (
            json!({"kind": "slack", "name": "a", "events": ["deploy.maybe"], "url": "https://x.example/h"}),
            "events",
        ),
        (
            json!({"kind": "slack", "name": "a", "events": [], "url": "https://x.example/h"}),
            "events",
        ),
        (
            json!({"kind": "slack", "name": "a", "events": ["deploy.failed"], "url": "ftp://x.example/h"}),
            "url",
        ),
        (
            json!({"kind": "slack", "name": "a", "events": ["deploy.failed"]}),
            "url",
        ),
        (
            json!({"kind": "email", "name": "a", "events": ["deploy.failed"],
            "email": {"host": "smtp.example.com", "from": "s@example.com", "to": []}}),
            "email.to",
        ),
        (
            json!({"kind": "email", "name": "a", "events": ["deploy.failed"],
            "email": {"host": "smtp.example.com", "from": "s@example.com", "to": ["nope"]}}),
            "email.to",
        ),
        (
            json!({"kind": "email", "name": "a", "events": ["deploy.failed"],
            "email": {"host": "smtp.example.com", "from": "not an address", "to": ["o@example.com"]}}),
            "email.from",
        ),
        (
            json!({"kind": "webhook", "name": "a", "events": ["agent.offline"], "offline_minutes": -1, "url": "https://x.example/h"}),
            "offline_minutes",
        ),
    ] {
        let (s, v) = api.post(&path, body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_field", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(field),
            "{field}: {v}"
        );
    }
    let created = api
        .ok(&path, json!({"kind": "slack", "name": "a", "events": ["deploy.failed"], "url": "https://hooks.slack.com/services/X"}), 201)
        .await;
    let (s, v) = api
        .post(&path, json!({"kind": "slack", "name": "a", "events": ["deploy.failed"], "url": "https://hooks.slack.com/services/X"}))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("name_taken")), "{v}");

    // The page lists the channel by name and host, never its URL.
    let page = reqwest::Client::new()
        .get(format!("{}/projects/{pid}/notifications", api.url))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("hooks.slack.com") && !html.contains("/services/X"),
        "{html}"
    );

    let viewer = api.with_token(&cli_token(&server.data_dir(), "viewer", "viewer"));
    let (s, v) = viewer.get(&path).await;
    assert_eq!(s, 200, "{v}");
    let id = created["id"].as_i64().unwrap();
    let (s, _) = viewer.get(&format!("/api/notifications/{id}/deliveries")).await;
    assert_eq!(s, 200);
    let (s, _) = viewer
        .post(
            &path,
            json!({"kind": "slack", "name": "b", "events": ["deploy.failed"], "url": "https://x.example/h"}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = viewer.delete(&format!("/api/notifications/{id}")).await;
    assert_eq!(s, 403);
    let (s, _) = api.delete(&format!("/api/notifications/{id}")).await;
    assert_eq!(s, 204);
    let (s, _) = api.delete(&format!("/api/notifications/{id}")).await;
    assert_eq!(s, 404);
    let actions: Vec<String> = crate::common::open_db(&server.data_dir())
        .rows(
            "SELECT action FROM audit_log WHERE target_type = 'notification' ORDER BY id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(actions, vec!["notify.create", "notify.delete"]);
    server.stop().await;
}

/// An appliance in this process whose state the test can reach (to call `notify::ops::emit`).
async fn in_process(
    tweak: impl FnOnce(&mut stagely::config::Config),
) -> (Api, stagely::app::AppState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let overrides = stagely::config::Overrides {
        data_dir: Some(dir.path().join("data")),
        ..Default::default()
    };
    let mut config = stagely::config::Config::load(None, Vec::new(), &overrides).unwrap();
    crate::common::use_test_store(&mut config, &dir.path().join("data"));
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.bound_to(listener.local_addr().unwrap());
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = stagely::app::App::start(config).unwrap();
    let state = app.state.clone();
    let token = crate::common::admin_token(&dir.path().join("data"));
    tokio::spawn(app.serve(listener));
    (Api::new(&url, &token), state, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offline_once_per_episode_and_webhook_rejected_once_per_delivery() {
    let receiver = Receiver::start().await;
    let (api, state, _dir) = in_process(|c| {
        c.notify.offline_check_secs = 0.2;
        c.notify.retry_base_secs = 0.2;
    })
    .await;
    let (pid, envs) = api.project("ops", &["staging"]).await;
    let (agent_id, token) = api.agent(envs[0], "edge-1").await;
    channel(
        &api,
        pid,
        json!({"kind": "webhook", "name": "pager", "events": ["agent.offline", "webhook.rejected"],
            "offline_minutes": 0.02, "url": format!("{}/pager", receiver.url)}),
    )
    .await;

    // Episode 1: online, then gone for longer than 0.02 min (1.2 s).
    let agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    drop(agent);
    let got = receiver.wait("/pager", 1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["event"], "agent.offline", "{body}");
    assert_eq!(body["agent"], "edge-1");
    assert_eq!(body["environment"], "staging");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/agents/{agent_id}")),
        "{body}"
    );

    // Episode 2: back, gone again: one more (and only one more) notice.
    let agent = TestAgent::connect(&api.url, &token, Some(vec![])).await;
    api.wait_online(agent_id).await;
    drop(agent);
    receiver.wait("/pager", 2).await;

    // webhook.rejected through the hook other domains call; the same delivery id notifies once.
    let rejected = || stagely::notify::Event::WebhookRejected {
        provider: "github".into(),
        reason: "bad signature".into(),
        delivery: Some("d-123".into()),
    };
    assert_eq!(
        stagely::notify::ops::emit(&state, pid, rejected()).await.unwrap(),
        1
    );
    assert_eq!(
        stagely::notify::ops::emit(&state, pid, rejected()).await.unwrap(),
        0
    );
    let got = receiver.wait("/pager", 3).await;
    let body: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(body["event"], "webhook.rejected", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("bad signature"));

    // Still offline, checked many times since: no further agent.offline.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let offline = receiver
        .at("/pager")
        .iter()
        .filter(|r| r.headers["x-stagely-event"] == "agent.offline")
        .count();
    assert_eq!(offline, 2, "one agent.offline per offline episode");
    state.shutdown.cancel();
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stagely test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_to_a_real_smtp_server() {
    // The first python with aiosmtpd: the one on PATH (it may be a pyenv one), else Debian's,
    // where `apt-get install python3-aiosmtpd` puts it.
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        crate::prereq::missing("python3-aiosmtpd (scripts/test-deps.sh)");
        return;
    };
    if !crate::prereq::tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(
        make_certs(dir.path()),
        "openssl could not make the test certificates"
    );
    let outbox = dir.path().join("mail");
    std::fs::create_dir(&outbox).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
    let mut smtp = tokio::process::Command::new(python)
        .arg(&script)
        .arg(port.to_string())
        .arg(dir.path().join("server.pem"))
        .arg(dir.path().join("server.key"))
        .args(["mailer", CANARY])
        .arg(&outbox)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(smtp.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"));

    let ca = dir.path().join("ca.pem");
    let (api, state, data) = in_process(|c| {
        c.notify.retry_base_secs = 0.2;
        c.notify.smtp_extra_ca_file = ca.clone();
    })
    .await;
    let (pid, envs) = api.project("mail", &["staging"]).await;
    let agent = api.agent(envs[0], "m-1").await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "SMTP_CANARY", "value": CANARY, "scope": "global"}),
        201,
    )
    .await;
    let ch = channel(
        &api,
        pid,
        json!({"kind": "email", "name": "team", "events": ["deploy.failed"],
            "email": {"host": "127.0.0.1", "port": port, "username": "mailer", "password": CANARY,
                "from": "Stagely <stagely@example.com>", "to": ["ops@example.com", "dev@example.com"]}}),
    )
    .await;
    assert_eq!(
        ch["target"],
        format!("127.0.0.1:{port} → ops@example.com, dev@example.com")
    );
    no_canary("the create answer", ch.to_string().as_bytes());

    let id = failed_deploy(&api, pid, &agent).await;
    let sent = wait_delivery(&api, ch["id"].as_i64().unwrap(), "deploy.failed", "sent").await;
    no_canary("the delivery log", sent.to_string().as_bytes());
    let mail = std::fs::read(outbox.join("0.eml")).unwrap();
    let text = String::from_utf8_lossy(&mail);
    assert!(
        text.contains("Subject: [stagely] mail/staging deploy failed"),
        "{text}"
    );
    assert!(text.contains(&format!("/deployments/{id}")), "{text}");
    no_canary("the email", &mail);

    // A wrong password: the SMTP error is logged as a code, the password nowhere.
    let bad = channel(
        &api,
        pid,
        json!({"kind": "email", "name": "bad", "events": ["deploy.failed"],
            "email": {"host": "127.0.0.1", "port": port, "username": "mailer", "password": "wrong-pass-1234",
                "from": "stagely@example.com", "to": ["ops@example.com"]}}),
    )
    .await;
    let bad_id = bad["id"].as_i64().unwrap();
    api.ok(&format!("/api/notifications/{bad_id}/test"), json!({}), 202)
        .await;
    let api2 = api.clone();
    let row = wait_for("a failed SMTP attempt", WAIT, || {
        let api = api2.clone();
        async move {
            let v = deliveries(&api, bad_id).await;
            let d = v.as_array()?.first()?.clone();
            (d["attempts"].as_i64()? >= 1).then_some(d)
        }
    })
    .await;
    let err = row["last_error"].as_str().unwrap();
    assert!(err.starts_with("SMTP"), "{err}");
    assert!(!err.contains("wrong-pass-1234"), "{err}");

    state.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let db = data.path().join("data");
    assert!(
        !crate::common::store_contains(&db, CANARY),
        "the store holds the SMTP password in clear"
    );
    drop(smtp.stdin.take());
    let _ = smtp.wait().await;
}

/// A real push webhook with a bad signature notifies `webhook.rejected`; a flood of them
/// notifies once (a minute), and the notice holds neither the body nor the forged signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_webhooks_notifies_once() {
    let receiver = Receiver::start().await;
    let (api, state, _dir) = in_process(|c| c.notify.retry_base_secs = 0.2).await;
    let (pid, _) = api.project("shop", &["staging"]).await;
    channel(
        &api,
        pid,
        json!({"kind": "webhook", "name": "sec", "events": ["webhook.rejected"],
            "url": format!("{}/sec", receiver.url)}),
    )
    .await;
    let (s, _) = api.post(&format!("/api/projects/{pid}/webhook"), json!({})).await;
    assert_eq!(s, 201);
    let http = reqwest::Client::new();
    for i in 0..10 {
        let resp = http
            .post(format!("{}/api/hooks/github/{pid}", api.url))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("forged-{i}"))
            .header("X-Hub-Signature-256", format!("sha256={}", "ab".repeat(32)))
            .body(r#"{"ref":"refs/heads/main","after":"FORGED-BODY-MARKER"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let got = receiver.wait("/sec", 1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["event"], "webhook.rejected", "{body}");
    let text = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(
        !text.contains("FORGED-BODY-MARKER") && !text.contains(&"ab".repeat(32)),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.at("/sec").len(), 1, "one notice for the flood");
    state.shutdown.cancel();
}
