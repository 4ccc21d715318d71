//! Secret history (issue 14) as people and operators meet it: the secrets page lists versions
//! with who and when (never a value), the deployment page shows its release and redeploys it,
//! the environment's settings form turns auto_rollback on, and a master-key rotation keeps old
//! versions readable, so a release from before the rotation still redeploys exactly (from a
//! restored backup too).

use serde_json::json;

use crate::common::{Api, ServerProcess, admin_token, cli_token};
use crate::releases::{COMMIT_A, DIGEST_A, ID_DB, connect, deploy, next_deploy, release, report};
use crate::web_support::{WebServer, location};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_versions_and_the_release_and_redeploy_it_never_a_value() {
    let server = WebServer::start().await;
    let mut web = server.admin("root").await;
    let api = Api::new(&server.url, &cli_token(&server.data_dir(), "t", "admin"));
    let (pid, envs) = api.project("pages", &["prod"]).await;
    let sid = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "API_KEY", "value": "canary-page-1", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let (agent_id, token) = api.agent(envs[0], "prod-1").await;
    let mut agent = connect(&api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(&api, pid).await;
    next_deploy(&mut agent).await;
    report(
        &mut agent,
        a,
        "SUCCESS",
        json!({"commit": COMMIT_A, "release": release("1")}),
    )
    .await;
    for v in ["canary-page-2", "canary-page-3"] {
        let (status, body) = api.put(&format!("/api/secrets/{sid}"), json!({"value": v})).await;
        assert_eq!(status, 200, "{body}");
    }

    let (status, page) = web.get(&format!("/projects/{pid}/secrets")).await;
    assert_eq!(status, 200);
    assert!(page.contains("3 versions kept"), "{page}");
    assert!(page.contains("(current)"), "{page}");
    let (status, page) = web.get(&format!("/projects/{pid}")).await;
    assert_eq!(status, 200);
    // History: commit, release link and the Redeploy button.
    assert!(page.contains(&COMMIT_A[..12]), "{page}");
    assert!(page.contains(&format!("/deployments/{a}#release")), "{page}");
    assert!(page.contains(&format!("/deployments/{a}/redeploy")), "{page}");

    let (status, page) = web.get(&format!("/deployments/{a}")).await;
    assert_eq!(status, 200);
    for shown in ["Release", "prod-1", COMMIT_A, DIGEST_A, ID_DB, "API_KEY", "v1"] {
        assert!(page.contains(shown), "{shown}: {page}");
    }

    let csrf = web.csrf.clone();
    let (status, _, headers) = web
        .request(
            reqwest::Method::POST,
            &format!("/deployments/{a}/redeploy"),
            Some(&[("_csrf", csrf.as_str())]),
            &[],
        )
        .await;
    assert_eq!(status, 303);
    let (b, frame) = next_deploy(&mut agent).await;
    assert_eq!(location(&headers), format!("/deployments/{b}"));
    assert_eq!(agent.secrets(&frame)[0]["value"], "canary-page-1");
    let (_, page) = web.get(&format!("/deployments/{b}")).await;
    assert!(
        page.contains(&format!("href=\"/deployments/{a}\"")),
        "links its release: {page}"
    );

    // The settings form.
    let (status, _) = web
        .post_form(
            &format!("/environments/{}/rollback", envs[0]),
            &[("auto_rollback", "on")],
        )
        .await;
    assert_eq!(status, 303);
    let (_, e) = api.get(&format!("/api/environments/{}", envs[0])).await;
    assert_eq!(e["auto_rollback"], true, "{e}");

    for path in [
        format!("/projects/{pid}"),
        format!("/deployments/{a}"),
        format!("/deployments/{b}"),
    ] {
        let (_, page) = web.get(&path).await;
        assert!(!page.contains("canary-page"), "{path}: {page}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_old_versions_readable_for_a_redeploy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // SQLite only: it ends with `stagely backup` and `restore` (VACUUM INTO of the SQLite file;
    // BackupError::OnPostgres on PostgreSQL). rotate-key on PostgreSQL: two_factor, lifecycle.
    crate::common::store::sqlite_only(&data);
    crate::common::store::sqlite_only(&dir.path().join("restored"));
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("rotated", &["prod"]).await;
    let sid = api
        .ok(
            &format!("/api/projects/{pid}/secrets"),
            json!({"key": "K", "value": "canary-rot-old", "scope": "global"}),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let (agent_id, token) = api.agent(envs[0], "a").await;
    let mut agent = connect(&api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    let a = deploy(&api, pid).await;
    next_deploy(&mut agent).await;
    report(&mut agent, a, "SUCCESS", json!({"release": release("1")})).await;
    let (status, _) = api
        .put(&format!("/api/secrets/{sid}"), json!({"value": "canary-rot-new"}))
        .await;
    assert_eq!(status, 200);

    let port = server.port();
    assert!(server.terminate().await.success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args(["admin", "rotate-key", "--data-dir"])
        .arg(&data)
        .envs(crate::common::store_env(&data))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let server = ServerProcess::spawn(&data, &format!("127.0.0.1:{port}"), &[], &log).await;
    let mut agent = connect(&api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    api.ok(&format!("/api/deployments/{a}/redeploy"), json!({}), 201)
        .await;
    let (b, frame) = next_deploy(&mut agent).await;
    assert_eq!(agent.secrets(&frame)[0]["value"], "canary-rot-old");
    report(&mut agent, b, "SUCCESS", json!({"release": release("1")})).await;

    // A backup taken while serving carries the history: restored elsewhere, A still redeploys.
    let archive = dir.path().join("backup.tar");
    let cli = |args: &[&str], data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stagely"))
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap()
    };
    let out = cli(
        &["backup", "--include-key", "--out", archive.to_str().unwrap()],
        &data,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.terminate().await.success());
    let restored = dir.path().join("restored");
    let out = cli(&["restore", archive.to_str().unwrap()], &restored);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = ServerProcess::spawn(&restored, &format!("127.0.0.1:{port}"), &[], &log).await;
    let mut agent = connect(&api, &token, &["releases"]).await;
    api.wait_online(agent_id).await;
    api.ok(&format!("/api/deployments/{a}/redeploy"), json!({}), 201)
        .await;
    let (_, frame) = next_deploy(&mut agent).await;
    assert_eq!(agent.secrets(&frame)[0]["value"], "canary-rot-old");
    server.terminate().await;
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!server_log.contains("canary-rot"), "{server_log}");
}
