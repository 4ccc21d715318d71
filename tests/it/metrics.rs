//! `GET /metrics` (issue 15): behind the bearer token from `metrics.token_file` on the main
//! listener, or open on `metrics.listen` (and then 404 on the main one); Prometheus text format
//! 0.0.4, every line of a known shape; the values move with a deployment, sockets and refused
//! handshakes. Also: the scrape cost on a big database (ignored; BENCHMARKS.md).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;
use stagely::app::App;
use stagely::config::{Config, Overrides};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, TestAgent, admin_token};
use crate::web_support::{PASSWORD, WebClient};

const TOKEN: &str = "metrics-token-0123456789abcdef";

struct Server {
    url: String,
    metrics_addr: Option<std::net::SocketAddr>,
    setup_link: Option<String>,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A token file with `mode`, in `dir`.
fn token_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("metrics.token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn load(dir: &std::path::Path, url: &str, env: &[(&str, String)]) -> Result<Config, String> {
    let overrides = Overrides {
        data_dir: Some(dir.join("data")),
        public_url: Some(url.to_owned()),
        ..Default::default()
    };
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone()));
    Config::load(None, env, &overrides).map_err(|e| e.to_string())
}

/// An appliance in this process configured through `STAGELY_METRICS__*` variables.
async fn start(env: impl FnOnce(&std::path::Path) -> Vec<(&'static str, String)>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = load(dir.path(), &url, &env(dir.path())).unwrap();
    crate::common::use_test_store(&mut config, &dir.path().join("data"));
    let app = App::start(config).unwrap();
    let (metrics_addr, setup_link) = (app.metrics_addr, app.setup_link.clone());
    let shutdown = app.state.shutdown.clone();
    let task = tokio::spawn(app.serve(listener));
    Server {
        url,
        metrics_addr,
        setup_link,
        data: dir.path().join("data"),
        _dir: dir,
        shutdown,
        task,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn scrape(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("{url}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Check every line's shape (text format 0.0.4) and answer the samples: (name{labels}, value).
/// Each sample's family must have had its `# HELP` and `# TYPE` before it.
fn parse(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with('\n'), "ends with a newline");
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(is_name(name) && !help.is_empty(), "{line}");
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                !typed.iter().any(|(n, _)| n == name),
                "one TYPE per family: {line}"
            );
            typed.push((name.to_owned(), kind.to_owned()));
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "unexpected line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect(line);
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
            };
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect(line);
                    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").expect(line);
                        assert!(is_name(k), "label name in {line}");
                        assert!(!v.trim_end_matches('"').contains('"'), "label value in {line}");
                    }
                    assert!(labels.ends_with('"'), "{line}");
                    name
                }
                None => series,
            };
            assert!(is_name(name), "{line}");
            let (family, kind) = typed
                .iter()
                .rev()
                .find(|(f, _)| {
                    name == f
                        || [format!("{f}_bucket"), format!("{f}_sum"), format!("{f}_count")]
                            .contains(&name.to_owned())
                })
                .unwrap_or_else(|| panic!("no TYPE before {line}"));
            assert!(helped.contains(family), "no HELP for {family}");
            if kind == "histogram" {
                assert!(
                    name != family,
                    "a histogram's samples are _bucket, _sum, _count: {line}"
                );
            }
            samples.push((series.to_owned(), value));
        }
    }
    samples
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series}"))
        .1
}

#[test]
fn a_missing_or_world_readable_token_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = load(
        dir.path(),
        "http://127.0.0.1:1",
        &[("STAGELY_METRICS__TOKEN_FILE", missing.display().to_string())],
    )
    .unwrap_err();
    assert!(
        err.contains("metrics.token_file") && err.contains("cannot read"),
        "{err}"
    );
    let open = token_file(dir.path(), 0o644);
    let err = load(
        dir.path(),
        "http://127.0.0.1:1",
        &[("STAGELY_METRICS__TOKEN_FILE", open.display().to_string())],
    )
    .unwrap_err();
    assert!(err.contains("any user") && err.contains("chmod"), "{err}");
    std::fs::write(&open, "short").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load(
        dir.path(),
        "http://127.0.0.1:1",
        &[("STAGELY_METRICS__TOKEN_FILE", open.display().to_string())],
    )
    .unwrap_err();
    assert!(err.contains("at least 16"), "{err}");
    let err = load(
        dir.path(),
        "http://127.0.0.1:1",
        &[("STAGELY_METRICS__LISTEN", "not an address".into())],
    )
    .unwrap_err();
    assert!(err.contains("metrics.listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_parse_as_prometheus_text_and_move_with_a_deployment() {
    let server = start(|dir| {
        vec![(
            "STAGELY_METRICS__TOKEN_FILE",
            token_file(dir, 0o600).display().to_string(),
        )]
    })
    .await;
    assert_eq!(scrape(&server.url, None).await.0, 401);
    assert_eq!(
        scrape(&server.url, Some("metrics-token-0123456789abcdeX"))
            .await
            .0,
        401
    );
    assert_eq!(scrape(&server.url, Some("")).await.0, 401);
    // An API token is not the metrics token.
    let cli = Api::new(&server.url, &admin_token(&server.data));
    assert_eq!(scrape(&server.url, Some(&cli.token)).await.0, 401);
    let (status, ctype, text) = scrape(&server.url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let before = parse(&text);
    assert_eq!(value(&before, "stagely_deployments{status=\"success\"}"), 0.0);
    assert_eq!(value(&before, "stagely_deploy_duration_seconds_count"), 0.0);
    assert_eq!(value(&before, "stagely_agents_online"), 0.0);
    assert!(value(&before, "stagely_db_size_bytes") > 0.0);
    let buckets: Vec<&str> = before
        .iter()
        .filter(|(s, _)| s.starts_with("stagely_deploy_duration_seconds_bucket"))
        .map(|(s, _)| s.split("le=\"").nth(1).unwrap().trim_end_matches("\"}"))
        .collect();
    assert_eq!(buckets, ["1", "5", "10", "30", "60", "120", "300", "600", "+Inf"]);

    // A refused handshake, an agent, a deployment with log lines, a browser socket.
    let resp = reqwest::get(format!("{}/ws/agent", server.url)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (pid, envs) = cli.project("shop", &["staging"]).await;
    let (agent_id, token) = cli.agent(envs[0], "a1").await;
    let mut agent = TestAgent::connect(&server.url, &token, Some(vec![])).await;
    cli.wait_online(agent_id).await;
    let (status, body) = cli.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let id = agent.recv().await["deployment_id"].as_i64().unwrap();
    for seq in 1..=3 {
        agent.log(id, seq, "a line").await;
    }
    agent.status(id, "SUCCESS").await;
    cli.wait_finished(id, Duration::from_secs(10)).await;
    let mut web = WebClient::new(&server.url);
    let token = server.setup_link.clone().unwrap();
    let token = token.split("token=").nth(1).unwrap();
    let (status, _, _) = web
        .post_form_raw(
            "/setup",
            &[
                ("token", token),
                ("username", "root"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let mut req = format!("{}/ws/dashboard", server.url.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", web.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", server.url.parse().unwrap());
    let (_dashboard, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    // Log lines are written in batches: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, _, text) = scrape(&server.url, Some(TOKEN)).await;
        let after = parse(&text);
        if value(&after, "stagely_log_lines_stored") >= 3.0
            && value(&after, "stagely_websocket_connections{kind=\"browser\"}") >= 1.0
        {
            break after;
        }
        assert!(Instant::now() < deadline, "the values did not move: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value(&after, "stagely_deployments{status=\"success\"}"), 1.0);
    assert_eq!(value(&after, "stagely_deployments{status=\"queued\"}"), 0.0);
    assert_eq!(value(&after, "stagely_deployments{status=\"running\"}"), 0.0);
    assert_eq!(value(&after, "stagely_deploy_duration_seconds_count"), 1.0);
    assert_eq!(
        value(&after, "stagely_deploy_duration_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "stagely_deploy_duration_seconds_bucket{le=\"600\"}"),
        1.0
    );
    assert_eq!(value(&after, "stagely_agents_online"), 1.0);
    assert_eq!(
        value(&after, "stagely_websocket_connections{kind=\"agent\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "stagely_websocket_connections{kind=\"browser\"}"),
        1.0
    );
    assert!(value(&after, "stagely_log_lines_stored") >= 3.0);
    assert_eq!(
        value(
            &after,
            "stagely_agent_handshake_rejections_total{reason=\"no_token\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "stagely_webhook_deliveries_total{result=\"deployed\"}"),
        0.0
    );
    drop(agent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_listener_serves_metrics_without_a_token_and_the_main_one_then_does_not() {
    let server = start(|_| vec![("STAGELY_METRICS__LISTEN", "127.0.0.1:0".into())]).await;
    let addr = server.metrics_addr.expect("bound");
    let (status, ctype, text) = scrape(&format!("http://{addr}"), None).await;
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"));
    parse(&text);
    assert_eq!(scrape(&server.url, None).await.0, 404);
    assert_eq!(scrape(&server.url, Some(TOKEN)).await.0, 404);
    // Nothing else is served there.
    let other = reqwest::get(format!("http://{addr}/api/projects")).await.unwrap();
    assert_eq!(other.status().as_u16(), 404);
    server.stop().await;

    // Neither set: 404.
    let server = start(|_| Vec::new()).await;
    assert!(server.metrics_addr.is_none());
    assert_eq!(scrape(&server.url, None).await.0, 404);
    assert_eq!(scrape(&server.url, Some(TOKEN)).await.0, 404);
    server.stop().await;
}

/// Not a pass/fail test: how long one scrape takes on a database with many deployments and log
/// lines (BENCHMARKS.md). `cargo test --release --test it metrics::scrape_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn scrape_cost_on_a_big_database() {
    let deployments: i64 = std::env::var("DEPLOYMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let lines_each: i64 = std::env::var("LINES_EACH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let server = start(|dir| {
        vec![(
            "STAGELY_METRICS__TOKEN_FILE",
            token_file(dir, 0o600).display().to_string(),
        )]
    })
    .await;
    let cli = Api::new(&server.url, &admin_token(&server.data));
    let (_, envs) = cli.project("big", &["prod"]).await;
    let filled = Instant::now();
    let db = crate::common::open_db(&server.data);
    let env = envs[0];
    db.write(|tx| {
        let mut dep = tx.prepare(
            "INSERT INTO deployments (project_id, environment_id, status, git_ref, triggered_by, created_at, queued_at, finished_at)
             SELECT project_id, ?1, 'success', 'main', 'bench', ?2, ?2, ?2 + ?3 FROM environments WHERE id = ?1
             RETURNING id",
        )?;
        let mut log = tx.prepare(
            "INSERT INTO deployment_logs VALUES (?1, ?2, 'stdout', 'a line of a deploy log, as long as most', 0)",
        )?;
        for i in 0..deployments {
            let id: i64 = dep.query_row(stagely::db::params![env, i * 1000, (i % 700) * 1000], |r| r.get(0))?;
            for seq in 0..lines_each {
                log.execute(stagely::db::params![id, seq])?;
            }
        }
        Ok(())
    });
    println!(
        "filled {deployments} deployments and {} log lines in {:?}",
        deployments * lines_each,
        filled.elapsed()
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (status, _, text) = scrape(&server.url, Some(TOKEN)).await;
        times.push(t.elapsed());
        assert_eq!(status, 200);
        assert_eq!(
            value(&parse(&text), "stagely_deploy_duration_seconds_count"),
            deployments as f64
        );
    }
    times.sort();
    println!(
        "one scrape (HTTP, loopback): median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    // What a scrape would cost counting instead of reading the counters.
    let t = Instant::now();
    let n: i64 = db
        .query_row("SELECT count(*) FROM deployment_logs", [], |r| r.get(0))
        .unwrap();
    let g: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT status, count(*) FROM deployments GROUP BY status)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "for comparison, counting the tables ({n} lines, {g} statuses) takes {:?}",
        t.elapsed()
    );
    server.stop().await;
}
