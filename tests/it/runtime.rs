//! What runs and drift (issue 14), against a protocol-level agent on a real socket and a real
//! SQLite file, no engine: a HELLO offering `runtime` is answered with WATCH naming the
//! environment's compose project; RUNTIME frames are stored only when something changed and
//! compared with the last release; drift starts and ends once per transition (audited and
//! enqueued for the channels that want it); a RUNTIME for another project is refused; the API's
//! shape and access.

use std::time::Duration;

use serde_json::{Value, json};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::{Api, TestAgent, TestServer, WAIT, cli_token, wait_for};
use crate::web_support::WebServer;

fn db(server: &TestServer) -> crate::common::StoreDb {
    db_at(&server.data_dir())
}

fn db_at(data: &std::path::Path) -> crate::common::StoreDb {
    crate::common::open_db(data)
}

fn audited(server: &TestServer, action: &str) -> Vec<String> {
    let db = db(server);
    db.rows(
        "SELECT actor || ' ' || detail FROM audit_log WHERE action = ?1 ORDER BY id",
        [action],
        |r| r.get(0),
    )
    .unwrap()
}

fn outbox(server: &TestServer, event: &str) -> i64 {
    db(server)
        .query_row(
            "SELECT count(*) FROM notify_outbox WHERE event = ?1",
            [event],
            |r| r.get(0),
        )
        .unwrap()
}

/// The row's `reported_at`, or `None` before the first report.
fn reported_at(server: &TestServer, env: i64) -> Option<i64> {
    db(server)
        .query_row(
            "SELECT reported_at FROM environment_runtime WHERE environment_id = ?1",
            [env],
            |r| r.get(0),
        )
        .ok()
}

/// The config hash the release records for a service (what its containers carry unless drifted).
fn config_hash(service: &str) -> &'static str {
    match service {
        "adminer" => "cf00cccccccc",
        "db" => "cf01cccccccc",
        _ => "cf02cccccccc",
    }
}

fn service(name: &str, image_id: &str) -> Value {
    json!({"name": name, "image": format!("shop/{name}:1"), "image_id": image_id,
        "config_hash": config_hash(name)})
}

fn release() -> Value {
    json!({"compose_hash": "c0ffee0000000000000000000000000000000000000000000000000000000000", "services": [service("db", "sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1"),
        service("web", "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2")]})
}

fn container(service: &str, n: u32, state: &str, image_id: &str, config_hash: &str) -> Value {
    json!({"service": service, "name": format!("shop-staging-{service}-{n}"), "state": state,
        "health": "", "restarts": n, "image": format!("shop/{service}:1"), "image_id": image_id,
        "started_at": "2026-01-02T03:04:05Z", "config_hash": config_hash})
}

/// What runs when it matches [`release`].
fn matching() -> Vec<Value> {
    vec![
        container(
            "db",
            1,
            "running",
            "sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1",
            "cf01cccccccc",
        ),
        container(
            "web",
            1,
            "running",
            "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
            "cf02cccccccc",
        ),
        container(
            "web",
            2,
            "running",
            "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
            "cf02cccccccc",
        ),
    ]
}

/// Connect with the `runtime` capability and read the WATCH; returns the agent and the project.
async fn connect_watching(api: &Api, token: &str) -> (TestAgent, String) {
    let mut agent = TestAgent::raw(&api.url, token).await;
    let recipient = agent.identity.recipient().to_owned();
    agent
        .send(
            json!({"type": "HELLO", "protocol": 1, "agent_version": "test", "hostname": "test-host",
            "docker_version": "0", "compose_version": "0", "recipient": recipient,
            "capabilities": ["releases", "runtime"]}),
        )
        .await;
    let watch = agent.recv().await;
    assert_eq!(watch["type"], "WATCH", "{watch}");
    let project = watch["project"].as_str().unwrap().to_owned();
    (agent, project)
}

async fn report(agent: &mut TestAgent, project: &str, containers: &[Value]) {
    agent
        .send(json!({"type": "RUNTIME", "project": project, "containers": containers, "truncated": false}))
        .await;
}

async fn runtime(api: &Api, env: i64) -> Value {
    let (status, body) = api.get(&format!("/api/environments/{env}/runtime")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Wait until the API's drift satisfies `check`.
async fn wait_drift(api: &Api, env: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, WAIT, || async {
        let rt = runtime(api, env).await;
        check(&rt["drift"]).then_some(rt)
    })
    .await
}

fn kinds(drift: &Value) -> Vec<(String, String)> {
    drift
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["service"].as_str().unwrap().to_owned(),
                        r["kind"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Run one deployment to success with `release` in its STATUS, which the releases domain records.
async fn deploy_release(server: &TestServer, agent: &mut TestAgent, pid: i64, release: &Value) -> i64 {
    deploy_release_at(&server.api, &server.data_dir(), agent, pid, release).await
}

async fn deploy_release_at(
    api: &Api,
    data: &std::path::Path,
    agent: &mut TestAgent,
    pid: i64,
    release: &Value,
) -> i64 {
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    let id = body["deployment_id"].as_i64().unwrap();
    let frame = agent.recv().await;
    assert_eq!(frame["type"], "DEPLOY", "{frame}");
    agent
        .send(json!({"type": "STATUS", "deployment_id": id, "status": "SUCCESS",
            "services": [{"name": "web", "state": "running", "health": "", "exit_code": 0}],
            "error": null, "release": release, "applied": true}))
        .await;
    let ack = agent.recv().await;
    assert_eq!(ack, json!({"type": "ACK", "deployment_id": id}));
    let recorded: i64 = db_at(data)
        .query_row(
            "SELECT count(*) FROM releases WHERE deployment_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recorded, 1, "one release row for deployment {id}");
    id
}

async fn setup(server: &TestServer) -> (i64, i64, String) {
    let api = &server.api;
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let (_, token) = api.agent(envs[0], "staging-1").await;
    (pid, envs[0], token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_of_each_kind_starts_and_ends_once_per_transition() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, env, token) = setup(&server).await;
    api.ok(
        &format!("/api/projects/{pid}/notifications"),
        json!({"kind": "webhook", "name": "ops", "events": ["drift.started", "drift.ended"],
            "url": "https://hooks.example.com/drift"}),
        201,
    )
    .await;
    let (mut agent, project) = connect_watching(&api, &token).await;
    let e: Value = api.get(&format!("/api/environments/{env}")).await.1;
    assert_eq!(project, e["compose_project"].as_str().unwrap());

    // Before any report: nothing known.
    let rt = runtime(&api, env).await;
    assert_eq!(rt["reported_at"], Value::Null, "{rt}");
    assert_eq!(rt["services"], json!([]));
    assert_eq!(rt["drift"], Value::Null);

    // No release yet: what runs is shown, and there is nothing to drift from.
    report(&mut agent, &project, &matching()).await;
    let rt = wait_for("the first report", WAIT, || async {
        let rt = runtime(&api, env).await;
        (!rt["reported_at"].is_null()).then_some(rt)
    })
    .await;
    assert_eq!(rt["drift"], Value::Null, "{rt}");

    deploy_release(&server, &mut agent, pid, &release()).await;
    report(&mut agent, &project, &matching()).await;
    // The same containers again: still no drift, and it matches the release.
    let rt = runtime(&api, env).await;
    assert_eq!(rt["drift"], Value::Null, "{rt}");
    assert!(rt["release_deployment_id"].is_i64(), "{rt}");

    // (kind, what runs, the drift expected)
    type Case = (&'static str, Vec<Value>, Vec<(&'static str, &'static str)>);
    let cases: Vec<Case> = vec![
        (
            "stopped",
            vec![
                container(
                    "db",
                    1,
                    "running",
                    "sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1",
                    "cf01cccccccc",
                ),
                container(
                    "web",
                    1,
                    "exited",
                    "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
                    "cf02cccccccc",
                ),
                container(
                    "web",
                    2,
                    "running",
                    "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
                    "cf02cccccccc",
                ),
            ],
            vec![("web", "stopped")],
        ),
        (
            "missing",
            vec![container(
                "web",
                1,
                "running",
                "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
                "cf02cccccccc",
            )],
            vec![("db", "missing")],
        ),
        (
            "extra",
            [
                matching(),
                vec![container(
                    "adminer",
                    1,
                    "running",
                    "sha256:adadadadadadadadadadadadadadadadadadadadadadadadadadadadadadadad",
                    "cf00cccccccc",
                )],
            ]
            .concat(),
            vec![("adminer", "extra")],
        ),
        (
            "image",
            vec![
                container(
                    "db",
                    1,
                    "running",
                    "sha256:d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9",
                    "cf01cccccccc",
                ),
                container(
                    "web",
                    1,
                    "running",
                    "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
                    "cf02cccccccc",
                ),
            ],
            vec![("db", "image")],
        ),
        (
            "config",
            vec![
                container(
                    "db",
                    1,
                    "running",
                    "sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1",
                    "cf01cccccccc",
                ),
                container(
                    "web",
                    1,
                    "running",
                    "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
                    "edited-by-hand",
                ),
            ],
            vec![("web", "config")],
        ),
    ];
    for (round, (what, containers, expected)) in cases.into_iter().enumerate() {
        report(&mut agent, &project, &containers).await;
        let rt = wait_drift(&api, env, what, |d| !d.is_null()).await;
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(s, k)| ((*s).to_owned(), (*k).to_owned()))
            .collect();
        assert_eq!(kinds(&rt["drift"]), expected, "{what}: {rt}");
        assert!(rt["drift_since"].is_string(), "{rt}");
        // The same report again changes nothing, and audits nothing twice.
        report(&mut agent, &project, &containers).await;
        report(&mut agent, &project, &matching()).await;
        wait_drift(&api, env, "the drift to clear", Value::is_null).await;
        let started = audited(&server, "drift.started");
        let ended = audited(&server, "drift.ended");
        assert_eq!(
            (started.len(), ended.len()),
            (round + 1, round + 1),
            "{what}: {started:?} {ended:?}"
        );
        let last = started.last().unwrap();
        assert!(last.starts_with("stagely "), "{last}");
        assert!(last.contains(&format!("{}: {what}", expected[0].0)), "{last}");
        assert!(
            ended
                .last()
                .unwrap()
                .contains("matches the release of deployment #")
        );
    }
    // Notices are enqueued right after the change commits: wait for the last one, then check
    // that no transition was enqueued twice.
    wait_for("five drift.ended notices", WAIT, || async {
        (outbox(&server, "drift.ended") == 5).then_some(())
    })
    .await;
    assert_eq!(outbox(&server, "drift.started"), 5);
    assert_eq!(outbox(&server, "drift.ended"), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_ends_the_drift_without_a_new_report() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, env, token) = setup(&server).await;
    let (mut agent, project) = connect_watching(&api, &token).await;
    deploy_release(&server, &mut agent, pid, &release()).await;
    // Someone ran another image of db by hand.
    let by_hand = vec![
        container(
            "db",
            1,
            "running",
            "sha256:d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9",
            "cf01cccccccc",
        ),
        container(
            "web",
            1,
            "running",
            "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
            "cf02cccccccc",
        ),
    ];
    report(&mut agent, &project, &by_hand).await;
    wait_drift(&api, env, "image drift", |d| !d.is_null()).await;
    // A deployment records that image as the release: the drift ends, though nothing new was
    // reported.
    let mut fixed = release();
    fixed["services"][0]["image_id"] =
        json!("sha256:d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9d9");
    deploy_release(&server, &mut agent, pid, &fixed).await;
    wait_drift(&api, env, "the drift to end at the new release", Value::is_null).await;
    assert_eq!(audited(&server, "drift.ended").len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_for_another_project_is_refused_and_a_flood_of_the_same_writes_nothing() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (_, env, token) = setup(&server).await;
    let (mut agent, project) = connect_watching(&api, &token).await;

    report(&mut agent, "someone-elses-project", &matching()).await;
    let err = agent.recv().await;
    assert_eq!(err["type"], "ERROR", "{err}");
    assert_eq!(err["code"], "wrong_project", "{err}");
    assert_eq!(reported_at(&server, env), None, "a refused report is not stored");

    report(&mut agent, &project, &matching()).await;
    wait_for("the report", WAIT, || async { reported_at(&server, env) }).await;
    // Mark the row: a write would replace the mark.
    db(&server)
        .execute(
            "UPDATE environment_runtime SET reported_at = 1 WHERE environment_id = ?1",
            [env],
        )
        .unwrap();
    // The same containers in either order, 200 times.
    let mut reversed = matching();
    reversed.reverse();
    for i in 0..200 {
        let list = if i % 2 == 0 { reversed.clone() } else { matching() };
        report(&mut agent, &project, &list).await;
    }
    // Frames are handled in order: once this one is refused, every one before it was handled.
    report(&mut agent, "probe", &matching()).await;
    let err = agent.recv().await;
    assert_eq!(err["code"], "wrong_project", "{err}");
    assert_eq!(
        reported_at(&server, env),
        Some(1),
        "an unchanged report was written"
    );

    let mut changed = matching();
    changed[0]["restarts"] = json!(7);
    report(&mut agent, &project, &changed).await;
    wait_for("the changed report", WAIT, || async {
        reported_at(&server, env).filter(|at| *at != 1)
    })
    .await;
    let rt = runtime(&api, env).await;
    assert_eq!(rt["services"][0]["restarts"], 7, "{rt}");
    assert!(
        agent.recv_within(Duration::from_millis(300)).await.is_none(),
        "nothing else refused"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_capability_gets_no_watch() {
    let server = TestServer::start().await;
    let (_, _, token) = setup(&server).await;
    let mut agent = TestAgent::connect(&server.api.url, &token, None).await;
    assert!(
        agent.recv_within(Duration::from_millis(500)).await.is_none(),
        "WATCH sent to an agent that did not offer runtime"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_api_shape_and_access() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, env, token) = setup(&server).await;
    let (mut agent, project) = connect_watching(&api, &token).await;
    let release_id = deploy_release(&server, &mut agent, pid, &release()).await;
    let mut containers = vec![
        container(
            "web",
            1,
            "running",
            "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
            "cf02cccccccc",
        ),
        container(
            "web",
            2,
            "restarting",
            "sha256:e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2",
            "cf02cccccccc",
        ),
    ];
    containers[0]["repo_digest"] =
        json!("shop/web@sha256:fefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefe");
    containers[0]["health"] = json!("healthy");
    report(&mut agent, &project, &containers).await;

    let viewer = api.with_token(&cli_token(&server.data_dir(), "watcher", "viewer"));
    let rt = wait_for("the report", WAIT, || async {
        let (status, rt) = viewer.get(&format!("/api/environments/{env}/runtime")).await;
        assert_eq!(status, 200, "{rt}");
        (!rt["reported_at"].is_null()).then_some(rt)
    })
    .await;
    assert_eq!(
        rt["services"],
        json!([
            {"name": "db", "state": "missing", "health": "", "restarts": 0, "image": "shop/db:1",
             "digest": "sha256:d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1", "started_at": null, "containers": 0},
            {"name": "web", "state": "restarting", "health": "", "restarts": 3, "image": "shop/web:1",
             "digest": "shop/web@sha256:fefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefe", "started_at": "2026-01-02T03:04:05Z", "containers": 2},
        ]),
        "{rt}"
    );
    assert_eq!(
        kinds(&rt["drift"]),
        [("db".into(), "missing".into()), ("web".into(), "stopped".into())]
    );
    assert_eq!(rt["release_deployment_id"], release_id);
    assert_eq!(rt["truncated"], false);

    let (status, body) = viewer.get("/api/environments/999999/runtime").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = api
        .with_token("stg_not_a_token")
        .get(&format!("/api/environments/{env}/runtime"))
        .await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_runtime_and_drift_live_with_reconverge_for_members() {
    let server = WebServer::start().await;
    let mut admin = server.admin("root").await;
    let mut viewer = server.user(&mut admin, "vic", "viewer").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "ops", "admin"));
    let (pid, envs) = api.project("shop", &["staging"]).await;
    let env = envs[0];
    let (_, token) = api.agent(env, "staging-1").await;
    let (mut agent, project) = connect_watching(&api, &token).await;
    let release_id = deploy_release_at(&api, &server.data_dir(), &mut agent, pid, &release()).await;

    let (status, page) = admin.get(&format!("/projects/{pid}")).await;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("id=\"runtime-{env}\"")), "{page}");
    assert!(page.contains("not reported"), "{page}");
    assert!(page.contains(&format!("/ws/dashboard?project={pid}")), "{page}");

    // The project page's socket pushes the panel when the agent reports drift.
    let url = format!(
        "{}/ws/dashboard?project={pid}",
        server.url.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", admin.cookie_header().parse().unwrap());
    req.headers_mut().insert("origin", server.url.parse().unwrap());
    let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
    let mut stopped = matching();
    stopped[1]["state"] = json!("exited");
    report(&mut agent, &project, &stopped).await;
    let pushed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))
                    if t.contains("shop-staging-web-1 not running") =>
                {
                    return t.to_string();
                }
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the runtime panel was pushed");
    assert!(pushed.contains(&format!("id=\"runtime-{env}\"")), "{pushed}");
    assert!(
        pushed.contains(&format!("action=\"/deployments/{release_id}/redeploy\"")),
        "{pushed}"
    );
    assert!(
        pushed.contains("badge exited") || pushed.contains(">exited<"),
        "{pushed}"
    );

    // The live panel's buttons follow the role on the project (issue 16): a global viewer who
    // is a deployer of it gets Re-converge pushed, a plain viewer does not.
    let dee = server.user(&mut admin, "dee", "viewer").await;
    let (s, v) = api
        .put(
            &format!("/api/projects/{pid}/members/3"),
            json!({"role": "deployer"}),
        )
        .await;
    assert_eq!((s, v["username"].clone()), (200, json!("dee")), "{v}");
    for (who, client, shown) in [("dee", &dee, true), ("vic", &viewer, false)] {
        let url = format!(
            "{}/ws/dashboard?project={pid}",
            server.url.replacen("http", "ws", 1)
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("cookie", client.cookie_header().parse().unwrap());
        req.headers_mut().insert("origin", server.url.parse().unwrap());
        let mut ws = tokio_tungstenite::connect_async(req).await.unwrap().0;
        let mut other = matching();
        other[1]["state"] = json!("exited");
        other[1]["restarts"] = json!(if shown { 3 } else { 4 });
        report(&mut agent, &project, &other).await;
        let pushed = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))
                        if t.contains(&format!("id=\"runtime-{env}\"")) =>
                    {
                        return t.to_string();
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("socket ended: {other:?}"),
                }
            }
        })
        .await
        .expect("the runtime panel was pushed");
        assert_eq!(
            pushed.contains(&format!("reconverge-{env}")),
            shown,
            "{who}: {pushed}"
        );
    }

    // The page: a member sees Re-converge; a viewer sees the drift but no button.
    let (_, page) = admin.get(&format!("/projects/{pid}")).await;
    assert!(page.contains(&format!("reconverge-{env}")), "{page}");
    let (_, page) = viewer.get(&format!("/projects/{pid}")).await;
    assert!(page.contains("shop-staging-web-1 not running"), "{page}");
    assert!(!page.contains(&format!("reconverge-{env}")), "{page}");

    // The dashboard: a drift badge for the environment, apart from the last deploy's outcome.
    let (_, dash) = viewer.get("/").await;
    assert!(dash.contains("badge drift"), "{dash}");
    assert!(dash.contains("badge success"), "{dash}");
    report(&mut agent, &project, &matching()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, dash) = viewer.get("/").await;
        if dash.contains("badge in-sync") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard never showed in sync: {dash}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_deployment_does_to_the_containers_while_it_runs_is_not_drift() {
    let server = TestServer::start().await;
    let api = server.api.clone();
    let (pid, env, token) = setup(&server).await;
    let (mut agent, project) = connect_watching(&api, &token).await;
    deploy_release(&server, &mut agent, pid, &release()).await;
    report(&mut agent, &project, &matching()).await;

    // A second deployment runs: compose renames the old web container and creates a new one.
    let body = api.ok(&format!("/api/deploy/{pid}"), json!({}), 202).await;
    let id = body["deployment_id"].as_i64().unwrap();
    assert_eq!(agent.recv().await["type"], "DEPLOY");
    let mut midway = matching();
    midway[1]["state"] = json!("created");
    midway[1]["name"] = json!("0123abcd_shop-staging-web-1");
    report(&mut agent, &project, &midway).await;
    let rt = wait_for("the report during the deployment", WAIT, || async {
        let rt = runtime(&api, env).await;
        let web = rt["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "web")?
            .clone();
        (web["state"] == "created").then_some(rt)
    })
    .await;
    assert_eq!(rt["drift"], Value::Null, "in flux, not drift: {rt}");
    assert!(audited(&server, "drift.started").is_empty());

    // It ends with the containers still like that: now it is drift, once.
    agent
        .send(json!({"type": "STATUS", "deployment_id": id, "status": "FAIL",
            "services": [], "error": "web did not start", "applied": true}))
        .await;
    assert_eq!(agent.recv().await["type"], "ACK");
    let rt = wait_for("drift after the deployment ended", WAIT, || async {
        let rt = runtime(&api, env).await;
        (!rt["drift"].is_null()).then_some(rt)
    })
    .await;
    assert!(rt["drift"].to_string().contains("stopped"), "{rt}");
    assert_eq!(audited(&server, "drift.started").len(), 1);
}
