//! Helpers for the agent's engine tests: skip (or fail under CI) when Docker/Compose are missing,
//! unique names, cleanup of compose projects.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const TEST_IMAGE: &str = "stagely-test-busybox:latest";

use crate::prereq::missing;

fn ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker compose` (v2) answers: enough for `config` tests (no engine needed).
pub fn require_compose() -> bool {
    ok("docker", &["compose", "version"]) || missing("Compose v2 (`docker compose`)")
}

/// A running engine, Compose v2, git and the local test image.
pub fn require_engine() -> bool {
    if !require_compose() {
        return false;
    }
    if !ok("docker", &["info"]) {
        return missing("a running Docker engine");
    }
    if !ok("docker", &["image", "inspect", TEST_IMAGE]) {
        return missing(TEST_IMAGE);
    }
    ok("git", &["--version"]) || missing("git")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}x{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    )
}

/// `docker compose -p NAME down` when dropped, whatever the test did.
pub struct ProjectDown(pub String);

impl Drop for ProjectDown {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args([
                "compose",
                "-p",
                &self.0,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "0",
                "--rmi",
                "local",
            ])
            .output();
    }
}

/// Containers (any state) of a compose project.
pub fn containers_of(project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=com.docker.compose.project={project}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Run git in `dir`, panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every file under `dir` whose name is `name` (to prove no override is left anywhere).
pub fn find_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find_named(&p, name));
        } else if e.file_name() == name {
            found.push(p);
        }
    }
    found
}
