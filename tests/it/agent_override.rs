//! The Config Merger against real `docker compose config`: for tricky compose files and values,
//! the merged model must equal the base model with exactly the secrets set (byte for byte, with
//! `$` shown as `$$` as compose prints it) and nothing else changed.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use stagely_agent::compose::Compose;
use stagely_agent::override_file::{self, OVERRIDE_FILE_NAME};
use stagely_protocol::{Scope, SecretEntry};

use crate::agent_support::require_compose;

pub fn hard_values() -> Vec<String> {
    // Shared with the unit tests: tests/fixtures/hard-values.json (short values), plus big ones.
    let mut v: Vec<String> = serde_json::from_str(include_str!("../fixtures/hard-values.json"))
        .expect("hard-values.json is a JSON array of strings");
    v.push("x".repeat(64 * 1024));
    v.push("$\"\\\n".repeat(4000));
    v
}

pub fn global(key: &str, value: &str) -> SecretEntry {
    SecretEntry {
        key: key.into(),
        value: value.into(),
        scope: Scope::Global,
        service: None,
    }
}

pub fn for_service(service: &str, key: &str, value: &str) -> SecretEntry {
    SecretEntry {
        key: key.into(),
        value: value.into(),
        scope: Scope::Service,
        service: Some(service.into()),
    }
}

fn config_json(dir: &Path, files: &[&Path]) -> Value {
    let mut cmd = Command::new("docker");
    cmd.arg("compose").current_dir(dir);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd
        .args(["--profile", "*", "config", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_files(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.join(files[0].0)
}

/// Render, merge with compose, and compare with the expected model.
async fn check(files: &[(&str, &str)], secrets: &[SecretEntry]) {
    let dir = tempfile::tempdir().unwrap();
    let main = write_files(dir.path(), files);
    let compose = Compose::new("docker compose").unwrap();
    // Where the agent reads the services from the file itself, compose must agree.
    if let Some(read) = stagely_agent::compose::services_in_file(&main) {
        assert_eq!(read, compose.services(&main, true).await.unwrap());
    }
    let text = override_file::render_for_file(&compose, &main, secrets)
        .await
        .unwrap();
    // Elsewhere, as in real use (a tmpfs dir): relative paths must still resolve from the base.
    let other = tempfile::tempdir().unwrap();
    let ovr = other.path().join(OVERRIDE_FILE_NAME);
    std::fs::write(&ovr, &text).unwrap();

    let base = config_json(dir.path(), &[&main]);
    let merged = config_json(dir.path(), &[&main, &ovr]);
    let mut expected = base.clone();
    let services: Vec<String> = base["services"].as_object().unwrap().keys().cloned().collect();
    for svc in &services {
        let mut env: Vec<(&str, &str)> = secrets
            .iter()
            .filter(|s| s.scope == Scope::Global && !override_file::is_agent_only(&s.key))
            .map(|s| (s.key.as_str(), s.value.as_str()))
            .collect();
        env.extend(
            secrets
                .iter()
                .filter(|s| s.scope == Scope::Service && s.service.as_deref() == Some(svc))
                .map(|s| (s.key.as_str(), s.value.as_str())),
        );
        if env.is_empty() {
            continue;
        }
        let service = expected["services"][svc].as_object_mut().unwrap();
        let target = service
            .entry("environment")
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()
            .unwrap();
        for (k, v) in env {
            // compose prints a literal `$` as `$$` (its model stays loadable); the container
            // gets `$` (checked on the engine in agent_engine.rs).
            target.insert(k.into(), Value::String(v.replace('$', "$$")));
        }
    }
    for svc in &services {
        let (got, want) = (&merged["services"][svc], &expected["services"][svc]);
        if got != want {
            let (g, w) = (&got["environment"], &want["environment"]);
            for (k, wv) in w.as_object().into_iter().flatten() {
                assert_eq!(g.get(k), Some(wv), "service {svc}, variable {k}");
            }
            panic!("service {svc} changed beyond its environment:\n got {got:.2000}\nwant {want:.2000}");
        }
    }
    assert_eq!(merged, expected, "the models differ outside the services");
}

const LIST_AND_MAP: &str = r#"
services:
  web:
    image: stagely-test-busybox
    environment:
      - SHARED=from-base-list
      - KEEP=kept $$ dollar
      - PASSED_THROUGH
  db:
    image: stagely-test-busybox
    environment:
      SHARED: from-base-map
      KEEP_MAP: "yes"
      NULLED:
    command: ["sleep", "1"]
"#;

#[tokio::test]
async fn hard_values_replace_list_and_map_variables() {
    if !require_compose() {
        return;
    }
    let mut secrets: Vec<SecretEntry> = hard_values()
        .iter()
        .enumerate()
        .map(|(i, v)| global(&format!("HARD_{i}"), v))
        .collect();
    secrets.push(global("SHARED", "global $ecret\nline"));
    secrets.push(for_service("db", "SHARED", "db's own \"value\""));
    secrets.push(for_service("db", "NULLED", "now set"));
    secrets.push(for_service("web", "PASSED_THROUGH", ""));
    secrets.push(global("STAGELY_GIT_TOKEN", "never injected"));
    check(&[("compose.yml", LIST_AND_MAP)], &secrets).await;
}

const INCLUDED: &str = "services:\n  db:\n    image: stagely-test-busybox\n    environment:\n      - A=1\n";
const INCLUDE_EXTENDS_PROFILES: &str = r#"
include:
  - inc/db.yml
x-common: &common
  image: stagely-test-busybox
  environment:
    X: base
services:
  web:
    <<: *common
  worker:
    extends:
      service: web
  debug:
    image: stagely-test-busybox
    profiles: [debug]
  base-file:
    extends:
      file: more.yml
      service: tmpl
"#;
const MORE: &str =
    "services:\n  tmpl:\n    image: stagely-test-busybox\n    environment:\n      FROM_TMPL: t\n";

#[tokio::test]
async fn include_extends_anchors_and_profiles_count_as_compose_counts_them() {
    if !require_compose() {
        return;
    }
    let secrets = vec![
        global("G", "to every service, even profiled ones"),
        for_service("db", "A", "included service's variable replaced"),
        for_service("worker", "X", "extended"),
        for_service("debug", "D", "profiled"),
        for_service("base-file", "FROM_TMPL", "over the template"),
    ];
    let files = [
        ("compose.yml", INCLUDE_EXTENDS_PROFILES),
        ("inc/db.yml", INCLUDED),
        ("more.yml", MORE),
    ];
    check(&files, &secrets).await;
    // The include'd and profiled services are known, so naming them is no error; a typo is.
    let dir = tempfile::tempdir().unwrap();
    let main = write_files(dir.path(), &files);
    let compose = Compose::new("docker compose").unwrap();
    let err = override_file::render_for_file(&compose, &main, &[for_service("dbb", "A", "v")])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"dbb\"") && err.contains("debug"), "{err}");
}

const ODD: &str = r#"
x-base: &base
  image: "stagely-test-busybox:${STAGELY_TEST_UNSET_TAG:-latest}"
services:
  "on":
    <<: *base
    env_file: [web.env]
  "123":
    build: ./ctx
    environment:
      FROM_FILE: in-base
  a.b-c_d:
    <<: *base
    command: ["sh", "-c", "echo $$HOME ${STAGELY_TEST_UNSET:-dflt}"]
    labels:
      x: "$$not-interpolated"
"#;

#[tokio::test]
async fn env_files_builds_odd_names_and_interpolation_are_untouched() {
    if !require_compose() {
        return;
    }
    let secrets = vec![
        global("FROM_FILE", "secret beats env_file"),
        for_service("on", "OTHER", "0123"),
        for_service("123", "N", "1e3"),
        for_service("a.b-c_d", "E", "~"),
    ];
    let files = [
        ("compose.yml", ODD),
        ("web.env", "FROM_FILE=file\nOTHER=keep\n"),
        ("ctx/Dockerfile", "FROM stagely-test-busybox\n"),
    ];
    check(&files, &secrets).await;
}

#[tokio::test]
async fn no_secrets_changes_nothing() {
    if !require_compose() {
        return;
    }
    check(&[("compose.yml", LIST_AND_MAP)], &[]).await;
    check(
        &[("compose.yml", LIST_AND_MAP)],
        &[global("STAGELY_GIT_TOKEN", "t")],
    )
    .await;
}

fn cli(compose: &Path, secrets: &Path) -> std::process::Output {
    Command::new(crate::bins::agent())
        .args(["render-override", "--compose-file"])
        .arg(compose)
        .arg("--secrets-file")
        .arg(secrets)
        .env("STAGELY_AGENT_COMPOSE_COMMAND", "docker compose")
        .output()
        .unwrap()
}

#[tokio::test]
async fn render_override_cli_prints_the_override_or_refuses_with_a_reason() {
    if !require_compose() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let main = write_files(
        dir.path(),
        &[("compose.yml", LIST_AND_MAP), ("broken.yml", "services: [\n")],
    );
    let secrets_file = dir.path().join("secrets.json");
    let write = |s: &[SecretEntry]| std::fs::write(&secrets_file, serde_json::to_string(s).unwrap()).unwrap();

    let good = vec![global("A", "v$1 \"x\"\n😀"), for_service("db", "B", "")];
    write(&good);
    let out = cli(&main, &secrets_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compose = Compose::new("docker compose").unwrap();
    let expected = override_file::render_for_file(&compose, &main, &good)
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);

    let canary = "canary-do-not-print";
    let refusals: Vec<(PathBuf, Vec<SecretEntry>, &str)> = vec![
        (main.clone(), vec![for_service("nope", "A", canary)], "\"nope\""),
        (dir.path().join("broken.yml"), vec![global("A", canary)], "yaml"),
        (main.clone(), vec![global("BAD-KEY", canary)], "BAD-KEY"),
        (main.clone(), vec![global("A", &format!("{canary}\0"))], "NUL"),
        (
            dir.path().join("absent.yml"),
            vec![global("A", canary)],
            "does not exist",
        ),
    ];
    for (file, secrets, reason) in refusals {
        write(&secrets);
        let out = cli(&file, &secrets_file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{reason}: accepted");
        assert!(out.stdout.is_empty(), "{reason}: printed to stdout");
        assert!(stderr.contains(reason), "{reason}: {stderr}");
        assert!(!stderr.contains(canary), "{reason}: value leaked: {stderr}");
    }
    std::fs::write(
        &secrets_file,
        format!("[{{\"key\":\"A\",\"value\":\"{canary}\",\"scope\":\"every\"}}]"),
    )
    .unwrap();
    let out = cli(&main, &secrets_file);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(!String::from_utf8_lossy(&out.stderr).contains(canary));
}

/// The agent's own reading of `services` (which saves a compose start) never disagrees with
/// compose: on files with YAML tags or a top-level merge key it must hand over to compose.
#[tokio::test]
async fn the_service_list_shortcut_agrees_with_compose_on_tags_and_merge_keys() {
    if !require_compose() {
        return;
    }
    let files: &[(&str, &[(&str, &str)])] = &[
        (
            "reset",
            &[(
                "compose.yml",
                "services:\n  web: {image: stagely-test-busybox}\n  db: !reset null\n",
            )],
        ),
        (
            "reset-in-override",
            &[(
                "compose.yml",
                "services:\n  web: !override {image: stagely-test-busybox}\n  db: !reset {}\n",
            )],
        ),
        (
            "merge-key-include",
            &[
                (
                    "compose.yml",
                    "x-inc: &inc\n  include: [inc/db.yml]\n<<: *inc\nservices:\n  web: {image: stagely-test-busybox}\n",
                ),
                ("inc/db.yml", INCLUDED),
            ],
        ),
        (
            "core-tag",
            &[(
                "compose.yml",
                "services:\n  web: {image: !!str stagely-test-busybox}\n  db: {image: stagely-test-busybox}\n",
            )],
        ),
        (
            "plain",
            &[(
                "compose.yml",
                "services:\n  web: {image: stagely-test-busybox, command: \"echo hi!\"}\n",
            )],
        ),
    ];
    let compose = Compose::new("docker compose").unwrap();
    for (name, files) in files {
        let dir = tempfile::tempdir().unwrap();
        let main = write_files(dir.path(), files);
        let asked = compose.services(&main, true).await.unwrap();
        let listed = compose.all_services(&main).await.unwrap();
        assert_eq!(listed, asked, "{name}: the agent's list differs from compose's");
        let read = stagely_agent::compose::services_in_file(&main);
        if *name == "plain" {
            assert_eq!(
                read.as_ref(),
                Some(&asked),
                "{name}: a plain file is read directly"
            );
        } else {
            assert_eq!(read, None, "{name}: a tag or merge key must be left to compose");
        }
    }
}
