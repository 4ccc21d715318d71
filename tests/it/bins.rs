//! The workspace's other binaries. Cargo only gives a test `CARGO_BIN_EXE_*` for its own
//! package's binaries (`stagely`); the agent and the load generator are packages of their own
//! (`crates/agent`, `crates/loadgen`), so they are built here, once per test process, into the
//! same target directory. `cargo build` is a no-op when `scripts/test.sh` built them already.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `stagely-agent` binary of this checkout, built if it is missing or stale.
pub fn agent() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| build("stagely-agent", "stagely-agent"))
}

/// The `stagely-loadgen` binary (benchmarks), built if it is missing or stale.
pub fn loadgen() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| build("stagely-loadgen", "stagely-loadgen"))
}

fn build(package: &str, bin: &str) -> String {
    // target/<profile>/deps/it-<hash> → target/<profile>/
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo build -p {package} failed");
    let path: PathBuf = profile_dir.join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    path.to_string_lossy().into_owned()
}
