//! Operations: backup while serving, restore into a fresh data dir, deploy with the same
//! secrets; the container image running the appliance with a real agent deploying through it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::{Api, ServerProcess, TestAgent, admin_token, wait_for};
use crate::prereq;

const VALUE: &str = "restored-secret \"value\"\nwith $dollar and 🚀";

fn stagely(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stagely"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_and_deploys_the_same_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // SQLite only: `stagely backup` is VACUUM INTO of the SQLite file (on PostgreSQL it answers
    // BackupError::OnPostgres: pg_dump is the backup there), and `restore` writes a SQLite file.
    crate::common::store::sqlite_only(&data);
    crate::common::store::sqlite_only(&dir.path().join("restored"));
    let log = dir.path().join("server.log");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &log).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (pid, envs) = api.project("backed-up", &["prod"]).await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "K", "value": VALUE, "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, token) = api.agent(envs[0], "a").await;

    // By default the key stays out (issue 12), and the output says so and which key it is.
    let archive = dir.path().join("backup.tar");
    let out = stagely(&["backup", "--out", archive.to_str().unwrap()], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("the signing key are NOT included"), "{said}");
    let recipient = said
        .split("public key ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .to_owned();
    assert!(recipient.starts_with("age1"), "{said}");
    assert!(!file_holds(&archive, "AGE-SECRET-KEY"), "no key in the archive");
    // The old flag is still accepted.
    let no_key = dir.path().join("no-key.tar");
    let out = stagely(&["backup", "--no-key", "--out", no_key.to_str().unwrap()], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!file_holds(&no_key, "AGE-SECRET-KEY"));
    server.terminate().await;

    // Restore into a fresh dir says which key it needs; with the key file in place it works.
    let restored = dir.path().join("restored");
    let out = stagely(&["restore", archive.to_str().unwrap()], &restored);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&recipient) && err.contains("master.key"),
        "names the key file and its public key: {err}"
    );
    // The keys were kept apart (as docs/operations.md says): both are put back by hand.
    std::fs::copy(data.join("master.key"), restored.join("master.key")).unwrap();
    std::fs::copy(data.join("signing.key"), restored.join("signing.key")).unwrap();
    let out = stagely(&["restore", archive.to_str().unwrap()], &restored);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // With --include-key the archive carries the key, and says so.
    let with_key = dir.path().join("with-key.tar");
    let out = stagely(
        &["backup", "--include-key", "--out", with_key.to_str().unwrap()],
        &restored,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the signing key are included"));
    assert!(file_holds(&with_key, "AGE-SECRET-KEY"));
    let out = stagely(&["restore", archive.to_str().unwrap()], &restored);
    assert!(
        !out.status.success(),
        "a second restore without --force is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    // The signing key came back with the master key: the agent's pinned fingerprint (in its
    // token) is still the appliance's, and TestAgent checks every frame is signed by it.
    let out = stagely(&["admin", "signing-key"], &restored);
    let restored_fp = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        stagely_protocol::signing::split_token(&token).1.as_deref(),
        Some(restored_fp.as_str())
    );
    let server = ServerProcess::spawn(&restored, "127.0.0.1:0", &[], &log).await;
    let api = Api::new(&server.url, &api.token);
    let mut agent = TestAgent::connect(&api.url, &token, None).await;
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let deploy = agent.recv().await;
    assert_eq!(
        agent.secrets(&deploy)[0]["value"],
        VALUE,
        "the secret arrives intact after restore"
    );
    server.terminate().await;
}

fn file_holds(path: &Path, needle: &str) -> bool {
    crate::common::file_contains(path, needle)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the container when the test ends, whatever happens.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", "-v", &self.0]).output();
    }
}

/// The image this test built: removed afterwards, so runs do not pile images up.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_image_serves_and_a_real_agent_deploys_through_it() {
    if !prereq::docker() || !prereq::dist_built() {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("stagely-test:{}", std::process::id());
    let out = Command::new(repo.join("packaging/container/build-image.sh"))
        .arg(&tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _image = Image(tag.clone());
    let user = docker(&["image", "inspect", "-f", "{{.Config.User}}", &tag]);
    assert_eq!(user, "10001:10001", "runs unprivileged");

    let id = docker(&["run", "-d", "-p", "127.0.0.1::8080", &tag]);
    let _container = Container(id.clone());
    let port = docker(&["port", &id, "8080/tcp"]);
    let url = format!("http://{}", port.lines().next().unwrap());
    // Docker's port proxy accepts before the server listens: a reset means "not yet".
    let probe = reqwest::Client::new();
    wait_for("the container to be ready", Duration::from_secs(30), || {
        let req = probe.get(format!("{url}/readyz")).send();
        async move { req.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    let health = docker(&["exec", &id, "/stagely", "healthcheck"]);
    assert_eq!(health, "ready");
    let token = docker(&["exec", &id, "/stagely", "admin", "create-token", "--name", "t"]);
    let api = Api::new(&url, &token);

    // A compose project on this machine, deployed by a real agent on this machine.
    let dir = tempfile::tempdir().unwrap();
    let compose = dir.path().join("compose.yaml");
    let name = format!("container-{}", std::process::id());
    std::fs::write(
        &compose,
        "services:\n  app:\n    image: stagely-test-busybox:latest\n    command: [\"sleep\", \"3600\"]\n",
    )
    .unwrap();
    let (status, p) = api
        .post(
            "/api/projects",
            json!({"name": name, "compose_path": compose.to_str().unwrap(), "pull": "never"}),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    let pid = p["id"].as_i64().unwrap();
    let env = api
        .ok(
            &format!("/api/projects/{pid}/environments"),
            json!({"name": "prod"}),
            201,
        )
        .await;
    api.ok(
        &format!("/api/projects/{pid}/secrets"),
        json!({"key": "FROM_CONTAINER", "value": "yes it works", "scope": "global"}),
        201,
    )
    .await;
    let (agent_id, agent_token) = api.agent(env["id"].as_i64().unwrap(), "host").await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, agent_token).unwrap();

    // An aarch64 agent, when built, is served too and runs (under qemu here).
    let arm = prereq::dist().join("stagely-agent-linux-aarch64");
    if arm.exists() {
        let (status, sum) = Api::new(&url, "")
            .get("/agent/download/linux-aarch64/sha256")
            .await;
        assert_eq!(status, 200);
        let local = Command::new("sha256sum").arg(&arm).output().unwrap();
        assert!(
            String::from_utf8_lossy(&local.stdout)
                .starts_with(sum.as_str().unwrap().split(' ').next().unwrap())
        );
        if prereq::tool("qemu-aarch64-static") {
            let out = Command::new("qemu-aarch64-static")
                .arg(&arm)
                .arg("--version")
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("stagely-agent "),
                "{out:?}"
            );
        }
    }

    // The agent served by the container itself.
    let bin = dir.path().join("stagely-agent");
    let (status, _) = Api::new(&url, "")
        .get("/agent/download/linux-x86_64/sha256")
        .await;
    assert_eq!(status, 200);
    let out = Command::new("curl")
        .args(["-fsSL", "-o"])
        .arg(&bin)
        .arg(format!("{url}/agent/download/linux-x86_64"))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut agent = tokio::process::Command::new(&bin)
        .args(["run", "--server", &url, "--token-file"])
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .args(["--verify-wait-secs", "1"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    api.wait_online(agent_id).await;
    let (status, body) = api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let d = api
        .wait_finished(body["deployment_id"].as_i64().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(d["status"], "success", "{d}");
    let project = format!("{name}-prod");
    let cid = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    let env = docker(&["exec", &cid, "env"]);
    assert!(env.contains("FROM_CONTAINER=yes it works"), "{env}");
    agent.kill().await.unwrap();
    let _ = Command::new("docker")
        .args(["compose", "-p", &project, "down", "-t", "0"])
        .output();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
}
