//! The deploy routine on a real Docker engine (no server): a two-service project from a local
//! git repository, hard secret values read back from inside the running containers byte for
//! byte, failing services, refusals before anything starts, and no override left behind.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagely_agent::LogLine;
use stagely_agent::compose::{Compose, project_name};
use stagely_agent::deploy::Deployer;
use stagely_agent::ephemeral::RuntimeDir;
use stagely_agent::override_file::OVERRIDE_FILE_NAME;
use stagely_agent::results::DeployResult;
use stagely_protocol::mask;
use stagely_protocol::{DeployOutcome, ProjectSpec, PullPolicy, SecretEntry};

use crate::agent_override::{for_service, global, hard_values};
use crate::agent_support::{ProjectDown, containers_of, find_named, git, require_engine, unique};

struct Env {
    work: tempfile::TempDir,
    base: tempfile::TempDir,
    deployer: Deployer,
}

fn env() -> Env {
    let work = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let runtime = RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
    let deployer = Deployer {
        compose: Compose::new("docker compose").unwrap(),
        work_dir: work.path().to_owned(),
        runtime,
        verify_wait: Duration::from_secs(2),
        health_timeout: Duration::from_secs(20),
        deploy_timeout: Duration::from_secs(300),
        policy: Default::default(),
    };
    Env { work, base, deployer }
}

impl Env {
    async fn deploy(
        &self,
        id: i64,
        project: &ProjectSpec,
        secrets: &[SecretEntry],
    ) -> (DeployResult, Vec<LogLine>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let result = self.deployer.run(id, project, secrets, &tx).await;
        drop(tx);
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        (result, lines)
    }

    /// No override (nor any other file) is left in the private dir or the work dir.
    fn assert_no_override_left(&self) {
        assert!(find_named(self.base.path(), OVERRIDE_FILE_NAME).is_empty());
        assert!(find_named(self.work.path(), OVERRIDE_FILE_NAME).is_empty());
        let private = self.deployer.runtime.path();
        assert_eq!(
            std::fs::read_dir(private).unwrap().count(),
            0,
            "{private:?} not empty"
        );
    }
}

fn spec(name: &str, repo_url: Option<String>, compose_path: &str, pull: PullPolicy) -> ProjectSpec {
    ProjectSpec {
        name: name.into(),
        environment: "staging".into(),
        repo_url,
        git_ref: "main".into(),
        compose_path: compose_path.into(),
        pull,
        compose_project: None,
        images: Default::default(),
    }
}

/// The environment of a running container's PID 1, as raw bytes.
fn container_env(container: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let out = Command::new("docker")
        .args(["exec", container, "cat", "/proc/1/environ"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker exec {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=').unwrap();
            (kv[..eq].to_vec(), kv[eq + 1..].to_vec())
        })
        .collect()
}

fn get<'a>(env: &'a BTreeMap<Vec<u8>, Vec<u8>>, key: &str) -> Option<&'a [u8]> {
    env.get(key.as_bytes()).map(Vec::as_slice)
}

const APP: &str = r#"services:
  web:
    image: stagely-test-busybox
    command: ["sleep", "3600"]
    environment:
      - REPLACED=from-base-list
      - KEPT=kept
  worker:
    build: ./worker
    environment:
      REPLACED: from-base-map
"#;

fn make_repo(dir: &Path, compose: &str) -> String {
    std::fs::create_dir_all(dir.join("deploy/worker")).unwrap();
    std::fs::write(dir.join("deploy/compose.yml"), compose).unwrap();
    std::fs::write(
        dir.join("deploy/worker/Dockerfile"),
        "FROM stagely-test-busybox\nCMD [\"sleep\", \"3600\"]\n",
    )
    .unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "first"]);
    git(dir, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn two_services_from_git_get_every_hard_value_byte_for_byte() {
    if !require_engine() {
        return;
    }
    let e = env();
    let repo = tempfile::tempdir().unwrap();
    let first = make_repo(repo.path(), APP);
    let name = unique("agtgit");
    let _down = ProjectDown(project_name(&name, "staging"));
    let project = spec(
        &name,
        Some(format!("file://{}", repo.path().display())),
        "deploy/compose.yml",
        PullPolicy::Never,
    );
    let values = hard_values();
    let mut secrets: Vec<SecretEntry> = values
        .iter()
        .enumerate()
        .map(|(i, v)| global(&format!("HARD_{i}"), v))
        .collect();
    secrets.push(global("SHARED", "global $ value"));
    secrets.push(for_service("web", "SHARED", "web's own \"value\""));
    secrets.push(for_service("web", "REPLACED", "replaced in list form"));
    secrets.push(for_service("worker", "REPLACED", "replaced in map form"));
    // The credential convention: for git only, never injected (file:// never asks for it).
    secrets.push(global("STAGELY_GIT_TOKEN", "git-token-canary"));

    let (result, lines) = e.deploy(1, &project, &secrets).await;
    assert_eq!(
        result.status,
        DeployOutcome::Success,
        "{:?}\n{lines:#?}",
        result.error
    );
    assert_eq!(result.commit.as_deref(), Some(first.as_str()));
    let names: Vec<&str> = result.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "worker"]);
    assert!(result.services.iter().all(|s| s.state == "running"));
    e.assert_no_override_left();

    let compose_project = project_name(&name, "staging");
    let web = container_env(&format!("{compose_project}-web-1"));
    let worker = container_env(&format!("{compose_project}-worker-1"));
    for (i, v) in values.iter().enumerate() {
        let key = format!("HARD_{i}");
        assert_eq!(get(&web, &key), Some(v.as_bytes()), "web {key}");
        assert_eq!(get(&worker, &key), Some(v.as_bytes()), "worker {key}");
    }
    assert_eq!(get(&web, "SHARED"), Some(&b"web's own \"value\""[..]));
    assert_eq!(get(&worker, "SHARED"), Some(&b"global $ value"[..]));
    assert_eq!(get(&web, "REPLACED"), Some(&b"replaced in list form"[..]));
    assert_eq!(get(&worker, "REPLACED"), Some(&b"replaced in map form"[..]));
    assert_eq!(get(&web, "KEPT"), Some(&b"kept"[..]));
    assert_eq!(get(&web, "STAGELY_GIT_TOKEN"), None);

    // Output was streamed, and no secret value (of 3+ characters) is in it.
    assert!(lines.iter().any(|l| l.line.contains("Started")), "{lines:#?}");
    let masker_values: Vec<&str> = secrets
        .iter()
        .flat_map(|s| s.value.split('\n'))
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.chars().count() >= mask::MIN_MASKED_CHARS)
        .collect();
    for l in &lines {
        for v in &masker_values {
            assert!(!l.line.contains(v), "a secret value is in the log: {:?}", l.line);
        }
    }

    // A new commit: fetched, checked out hard, deployed; the secrets are still exact.
    let compose2 = APP.replace("- KEPT=kept", "- KEPT=second commit");
    std::fs::write(repo.path().join("deploy/compose.yml"), compose2).unwrap();
    git(repo.path(), &["commit", "-q", "-am", "second"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    let (result, lines) = e.deploy(2, &project, &secrets).await;
    assert_eq!(
        result.status,
        DeployOutcome::Success,
        "{:?}\n{lines:#?}",
        result.error
    );
    assert_eq!(result.commit.as_deref(), Some(second.as_str()));
    let web = container_env(&format!("{compose_project}-web-1"));
    assert_eq!(get(&web, "KEPT"), Some(&b"second commit"[..]));
    let big = values.len() - 2;
    assert_eq!(get(&web, &format!("HARD_{big}")), Some(values[big].as_bytes()));
    e.assert_no_override_left();
}

const FAILING: &str = r#"services:
  web:
    image: stagely-test-busybox
    command: ["sleep", "3600"]
  once:
    image: stagely-test-busybox
    command: ["sh", "-c", "echo one-shot done"]
  job:
    image: stagely-test-busybox
    command: ["sh", "-c", "echo boom-line-1; echo \"secret is $$CANARY\"; exit 3"]
"#;

fn write_compose(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("compose.yml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn a_service_exiting_non_zero_fails_the_deploy_with_its_logs() {
    if !require_engine() {
        return;
    }
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let file = write_compose(dir.path(), FAILING);
    let name = unique("agtfail");
    let _down = ProjectDown(project_name(&name, "staging"));
    let project = spec(&name, None, file.to_str().unwrap(), PullPolicy::Missing);
    let secrets = vec![global("CANARY", "canary-secret-value")];
    let (result, lines) = e.deploy(3, &project, &secrets).await;

    assert_eq!(result.status, DeployOutcome::Fail);
    let error = result.error.unwrap_or_default();
    assert!(error.contains("service job: exited, exit code 3"), "{error}");
    assert!(error.contains("boom-line-1"), "its log lines are quoted: {error}");
    assert!(error.contains("secret is ***"), "{error}");
    assert!(
        !error.contains("service web") && !error.contains("service once"),
        "{error}"
    );
    let job = result.services.iter().find(|s| s.name == "job").unwrap();
    assert_eq!((job.state.as_str(), job.exit_code), ("exited", Some(3)));
    let once = result.services.iter().find(|s| s.name == "once").unwrap();
    assert_eq!(once.exit_code, Some(0), "a one-shot that exited 0 is fine");
    for l in &lines {
        assert!(!l.line.contains("canary-secret-value"), "{:?}", l.line);
    }
    e.assert_no_override_left();
}

#[tokio::test]
async fn refusals_happen_before_anything_starts() {
    if !require_engine() {
        return;
    }
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let good = write_compose(dir.path(), FAILING);
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, "services:\n  web:\n    image: [\n").unwrap();
    let name = unique("agtref");
    let _down = ProjectDown(project_name(&name, "staging"));

    let cases: Vec<(PathBuf, Vec<SecretEntry>, PullPolicy, &str)> = vec![
        (
            good.clone(),
            vec![for_service("wbe", "K", "v1")],
            PullPolicy::Never,
            "\"wbe\"",
        ),
        (
            broken,
            vec![global("K", "v2")],
            PullPolicy::Never,
            "the compose file is invalid: yaml",
        ),
        (
            good.clone(),
            vec![global("BAD KEY", "v3")],
            PullPolicy::Never,
            "BAD KEY",
        ),
        (
            dir.path().join("absent.yml"),
            vec![],
            PullPolicy::Never,
            "does not exist",
        ),
        // No registry is reachable: `always` must fail, naming the image it could not pull.
        (good, vec![], PullPolicy::Always, "stagely-test-busybox"),
    ];
    for (i, (file, secrets, pull, reason)) in cases.into_iter().enumerate() {
        let project = spec(&name, None, file.to_str().unwrap(), pull);
        let (result, _) = e.deploy(10 + i as i64, &project, &secrets).await;
        assert_eq!(result.status, DeployOutcome::Fail, "{reason}");
        let error = result.error.unwrap_or_default();
        assert!(error.contains(reason), "expected {reason:?} in {error}");
        assert!(
            containers_of(&project_name(&name, "staging")).is_empty(),
            "{reason}: something started"
        );
        e.assert_no_override_left();
    }
}

const HEALTH: &str = r#"services:
  fine:
    image: stagely-test-busybox
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      start_period: 0s
      retries: 1
  sick:
    image: stagely-test-busybox
    command: ["sh", "-c", "echo sick-service-output; sleep 3600"]
    healthcheck:
      test: ["CMD", "false"]
      interval: 1s
      start_period: 0s
      retries: 1
"#;

#[tokio::test]
async fn healthchecks_are_waited_for_and_an_unhealthy_service_fails() {
    if !require_engine() {
        return;
    }
    let e = env();
    let dir = tempfile::tempdir().unwrap();
    let file = write_compose(dir.path(), HEALTH);
    let name = unique("agthealth");
    let _down = ProjectDown(project_name(&name, "staging"));
    let project = spec(&name, None, file.to_str().unwrap(), PullPolicy::Never);
    let (result, lines) = e.deploy(20, &project, &[]).await;
    assert_eq!(result.status, DeployOutcome::Fail, "{lines:#?}");
    let error = result.error.unwrap_or_default();
    assert!(error.contains("service sick: running (unhealthy)"), "{error}");
    assert!(error.contains("sick-service-output"), "{error}");
    assert!(!error.contains("service fine"), "{error}");
    let fine = result.services.iter().find(|s| s.name == "fine").unwrap();
    assert_eq!(
        (fine.state.as_str(), fine.health.as_str()),
        ("running", "healthy")
    );
    e.assert_no_override_left();
}
