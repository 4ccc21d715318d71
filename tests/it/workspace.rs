//! The workspace's boundaries, checked from cargo's own resolved dependency graph: the agent
//! (and the protocol it shares with the appliance) can link nothing of the control plane.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Crates that belong to the appliance only: storage, HTTP server, passwords, pages, GitHub
/// sign-in. None of them may reach the agent binary.
const SERVER_ONLY: &[&str] = &[
    "rusqlite", "refinery", "axum", "argon2", "maud", "oauth2", "reqwest", "stagely",
];

/// `age` was server-only (the vault) until DEPLOY secrets were sealed end to end: the agent now
/// holds an age identity and opens them (issue 11, the wire). The protocol crate stays free of
/// it: the wire types carry the ciphertext as text and know no key.
const PROTOCOL_ALSO_WITHOUT: &[&str] = &["age"];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Every package `root` needs to build and run (normal and build dependencies, transitively;
/// dev-dependencies are the tests' business), by name.
fn closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let packages = meta["packages"].as_array().expect("packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let root_id = packages
        .iter()
        .find(|p| p["name"] == root)
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("package {root} is in the workspace"));
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let not_dev_only = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap();
            if not_dev_only && seen.insert(name_of[dep_id].to_owned()) {
                todo.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn the_agent_depends_on_no_server_crate() {
    let meta = metadata();
    for package in ["stagely-agent", "stagely-protocol"] {
        let deps = closure(&meta, package);
        // The check must be able to fail: the agent does pull in tokio and the protocol crate.
        assert!(
            deps.contains("tokio") || package == "stagely-protocol",
            "{package}: {deps:?}"
        );
        let extra = if package == "stagely-protocol" {
            PROTOCOL_ALSO_WITHOUT
        } else {
            &[]
        };
        let found: Vec<&str> = SERVER_ONLY
            .iter()
            .chain(extra)
            .copied()
            .filter(|c| deps.contains(*c))
            .collect();
        assert!(found.is_empty(), "{package} depends on server crates {found:?}");
    }
    assert!(
        closure(&meta, "stagely-agent").contains("age"),
        "the agent opens sealed DEPLOY secrets with age"
    );
    let appliance = closure(&meta, "stagely");
    for c in ["rusqlite", "axum", "age", "stagely-protocol"] {
        assert!(
            appliance.contains(c),
            "the appliance's graph lacks {c}: the check proves nothing"
        );
    }
    assert!(
        !appliance.contains("stagely-agent"),
        "the appliance links the agent library"
    );
}
