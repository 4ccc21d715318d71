//! What a test needs from the machine. `scripts/test.sh` installs all of it; when something is
#![allow(dead_code)]
//! missing anyway, a test fails in CI (`CI=true`) and skips loudly elsewhere.

use std::path::PathBuf;
use std::process::Command;

/// Report a missing prerequisite: panics in CI, otherwise prints a loud SKIP. Returns false.
pub fn missing(what: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is required in CI but missing (scripts/test.sh installs it)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {what} is missing; run scripts/test.sh to install it !!!!!!!!\n");
    false
}

/// True when `name` runs (`name --version` or `name --help` succeeds).
pub fn tool(name: &str) -> bool {
    let ok = ["--version", "--help"].iter().any(|arg| {
        Command::new(name)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    ok || missing(name)
}

/// A Docker engine that answers, with Compose v2 and the local test image.
pub fn docker() -> bool {
    let ok = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok(&["info"]) {
        return missing("a running Docker engine");
    }
    if !ok(&["compose", "version"]) {
        return missing("Docker Compose v2");
    }
    ok(&["image", "inspect", "stagely-test-busybox:latest"])
        || missing("the image stagely-test-busybox:latest")
}

/// The release binaries from `packaging/build.sh`.
pub fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dist")
}

pub fn dist_built() -> bool {
    let d = dist();
    (d.join("stagely").is_file() && d.join("stagely-agent-linux-x86_64").is_file())
        || missing("dist/ release binaries (packaging/build.sh)")
}
