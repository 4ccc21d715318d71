//! Shipping: the .deb on this machine, the served install.sh into a temporary root.
//! Needs `packaging/build.sh` to have filled `dist/` (scripts/test.sh does that).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Api, ServerProcess, admin_token};
use crate::prereq;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_installs_serves_keeps_data_on_remove_and_purges() {
    if !prereq::dist_built() || !prereq::tool("dpkg-deb") {
        return;
    }
    let deb = run(&mut Command::new(repo().join("packaging/deb/build-deb.sh")));
    let deb = repo().join(deb.trim());
    assert!(deb.exists(), "{deb:?}");
    let _ = Command::new("dpkg").args(["--purge", "stagely"]).output();
    run(Command::new("dpkg").arg("-i").arg(&deb));

    assert!(Path::new("/usr/bin/stagely").exists());
    assert!(Path::new("/usr/lib/stagely/agents/stagely-agent-linux-x86_64").exists());
    let conf = Path::new("/etc/stagely/stagely.toml");
    assert_eq!(mode(conf), 0o640);
    let owner = run(Command::new("stat").args(["-c", "%U:%G"]).arg(conf));
    assert_eq!(owner.trim(), "root:stagely");
    assert!(run(Command::new("getent").args(["passwd", "stagely"])).contains("/var/lib/stagely"));
    let conffiles = run(Command::new("dpkg-query").args(["--showformat=${Conffiles}", "--show", "stagely"]));
    assert!(conffiles.contains("/etc/stagely/stagely.toml"));
    if prereq::tool("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .args(["verify", "/lib/systemd/system/stagely.service"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("stagely.service:"), "unit problems: {text}");
    }

    // No systemd here: start it as the stagely user with the installed config, as the unit would.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    // setpriv execs (runuser would stay as a parent), so the child is the server itself.
    let mut child = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=stagely",
            "--regid=stagely",
            "--init-groups",
            "--",
            "/usr/bin/stagely",
            "serve",
        ])
        .args(["--config", "/etc/stagely/stagely.toml", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = crate::common::read_listen_line(child.stdout.take().unwrap(), &log).await;
    let (status, body) = Api::new(&url, "").get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let pid = child.id().unwrap().to_string();
    run(Command::new("kill").args(["-TERM", &pid]));
    let status = child.wait().await.unwrap();
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(Path::new("/var/lib/stagely/stagely.db").exists());
    assert_eq!(mode(Path::new("/var/lib/stagely/master.key")), 0o600);

    run(Command::new("dpkg").args(["-r", "stagely"]));
    assert!(!Path::new("/usr/bin/stagely").exists());
    assert!(
        Path::new("/var/lib/stagely/stagely.db").exists(),
        "remove keeps the data"
    );
    run(Command::new("dpkg").args(["--purge", "stagely"]));
    assert!(!Path::new("/var/lib/stagely").exists(), "purge drops the data");
    assert!(!Path::new("/etc/stagely").exists());
    assert!(
        Command::new("getent")
            .args(["passwd", "stagely"])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_installer_checks_the_binary_and_keeps_the_token_out_of_argv() {
    if !prereq::tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &[], &dir.path().join("server.log")).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (_, envs) = api.project("installed", &["prod"]).await;
    let (agent_id, token) = api.agent(envs[0], "via-install-sh").await;

    // The checksum served matches the binary served.
    let (status, sum) = api.get("/agent/download/linux-x86_64/sha256").await;
    assert_eq!(status, 200);
    let sum = sum
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(api.get("/agent/download/linux-riscv128").await.0, 404);

    let root = dir.path().join("root");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let script = format!(
        "curl -fsSL {}/agent/install.sh | sh -s -- --root {} --token-file {}",
        server.url,
        root.display(),
        token_file.display()
    );
    let out = run(Command::new("sh").args(["-c", &script]));
    assert!(out.contains("Start it with"), "{out}");
    let bin = root.join("usr/local/bin/stagely-agent");
    let installed = run(Command::new("sha256sum").arg(&bin));
    assert!(
        installed.starts_with(&sum),
        "installed binary matches the served checksum"
    );
    let token_path = root.join("etc/stagely-agent/token");
    assert_eq!(mode(&token_path), 0o600);
    assert_eq!(std::fs::read_to_string(&token_path).unwrap().trim(), token);
    let toml = std::fs::read_to_string(root.join("etc/stagely-agent/agent.toml")).unwrap();
    assert!(toml.contains(&server.url) && !toml.contains(&token), "{toml}");
    assert!(root.join("etc/systemd/system/stagely-agent.service").exists());

    // A token on the command line is refused outright.
    let refused = Command::new("sh")
        .args([
            "-c",
            &format!(
                "curl -fsSL {}/agent/install.sh | sh -s -- --root {} --token {token}",
                server.url,
                root.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("visible to every user"));

    // The installed agent starts and shows online.
    let mut agent = tokio::process::Command::new(&bin)
        .args(["run", "--server", &server.url, "--token-file"])
        .arg(&token_path)
        .arg("--work-dir")
        .arg(root.join("var/lib/stagely-agent"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    api.wait_online(agent_id).await;
    agent.kill().await.unwrap();
    server.terminate().await;
}

fn openssl3() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("OpenSSL 3"));
    ok || prereq::missing("openssl 3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_verifies_the_signed_download_and_refuses_a_tampered_binary() {
    if !prereq::tool("curl") || !openssl3() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The appliance serves (and signs, at start) a copy of the agent we can then tamper with.
    let bins = dir.path().join("agents");
    std::fs::create_dir_all(&bins).unwrap();
    let target = format!("linux-{}", std::env::consts::ARCH);
    let served = bins.join(format!("stagely-agent-{target}"));
    std::fs::copy(crate::bins::agent(), &served).unwrap();
    let data = dir.path().join("data");
    let env = [("STAGELY_AGENT_BINARIES_DIR", bins.to_str().unwrap())];
    let server = ServerProcess::spawn(&data, "127.0.0.1:0", &env, &dir.path().join("server.log")).await;
    let api = Api::new(&server.url, &admin_token(&data));
    let (_, envs) = api.project("signed-install", &["prod"]).await;
    let (_, token) = api.agent(envs[0], "signed").await;
    let (_, fingerprint) = stagely_protocol::signing::split_token(&token);
    let fingerprint = fingerprint.expect("new tokens carry the signing key's fingerprint");
    let install = |root: &Path, token: &str| {
        let token_file = root.with_extension("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let script = format!(
            "curl -fsSL {}/agent/install.sh | sh -s -- --root {} --token-file {}",
            server.url,
            root.display(),
            token_file.display()
        );
        Command::new("sh").args(["-c", &script]).output().unwrap()
    };

    let root = dir.path().join("root");
    let out = install(&root, &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = run(Command::new("sha256sum").arg(&served));
    let sum = sum.split_whitespace().next().unwrap();
    assert!(
        stdout.contains(&format!("sha256 of the downloaded agent: {sum}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Signature verified: signed by {fingerprint}")),
        "{stdout}"
    );
    let pin = std::fs::read_to_string(root.join("var/lib/stagely-agent/appliance-key.pin")).unwrap();
    assert!(
        pin.contains(&fingerprint),
        "install.sh pins the token's key: {pin}"
    );
    // The agents page shows the same hash and the fingerprint.
    let (status, page) = api.get("/agents").await;
    assert_eq!(status, 200);
    let page = page.as_str().unwrap_or_default().to_owned();
    assert!(
        page.contains(sum) && page.contains(&fingerprint),
        "agents page lacks the hash or key"
    );

    // Someone swaps the binary (and so the checksum served beside it): the signature made at
    // start no longer matches, and nothing is installed.
    let mut bytes = std::fs::read(&served).unwrap();
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&served, bytes).unwrap();
    let root = dir.path().join("tampered");
    let out = install(&root, &token);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered binary was installed");
    assert!(stderr.contains("signature check failed"), "{stderr}");
    assert!(!root.join("usr/local/bin/stagely-agent").exists());

    // A token naming another key than the appliance's: refused before anything is installed.
    let other = stagely_protocol::signing::SigningKey::from_bytes(&[5; 32]);
    let (secret, _) = stagely_protocol::signing::split_token(&token);
    let foreign = stagely_protocol::signing::token_with_fingerprint(
        secret,
        &stagely_protocol::signing::fingerprint(&other.verifying_key()),
    );
    let root = dir.path().join("foreign");
    let out = install(&root, &foreign);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not the one the token names"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join("usr/local/bin/stagely-agent").exists());
    server.terminate().await;
}

#[test]
fn the_agent_binary_carries_no_server_code() {
    if !prereq::dist_built() {
        return;
    }
    // The agent never sees the master key, the database or a password: none of that code is
    // linked in. (It links age for its own identity, so age's own strings are no marker.)
    let agent = std::fs::read(prereq::dist().join("stagely-agent-linux-x86_64")).unwrap();
    let appliance = std::fs::read(prereq::dist().join("stagely")).unwrap();
    let has = |bin: &[u8], s: &str| bin.windows(s.len()).any(|w| w == s.as_bytes());
    for marker in [
        "sqlite_master",
        "refinery_schema_history",
        "the master key file",
        "argon2id",
    ] {
        assert!(
            has(&appliance, marker),
            "marker {marker} must be found in the appliance (else this test proves nothing)"
        );
        assert!(!has(&agent, marker), "the agent binary contains {marker}");
    }
}

#[test]
fn the_units_and_the_compose_file_raise_descriptors_and_forbid_core_dumps() {
    // Issue 12: 1,024 descriptors capped the fleet near a thousand agents, and a core dump of
    // either process would hold secrets. The agent unit is also what install.sh installs
    // (src/agents/download.rs embeds this file).
    for unit in [
        "packaging/systemd/stagely.service",
        "packaging/systemd/stagely-agent.service",
    ] {
        let text = std::fs::read_to_string(repo().join(unit)).unwrap();
        let service: Vec<&str> = text
            .split("[Service]")
            .nth(1)
            .and_then(|s| s.split("\n[").next())
            .unwrap()
            .lines()
            .map(str::trim)
            .collect();
        for line in ["LimitNOFILE=65536", "LimitCORE=0"] {
            assert!(service.contains(&line), "{unit} [Service] lacks {line}");
        }
    }
    let compose = std::fs::read_to_string(repo().join("packaging/compose.yaml")).unwrap();
    let ulimits = compose
        .split("ulimits:")
        .nth(1)
        .expect("compose.yaml sets ulimits");
    let lines: Vec<&str> = ulimits.lines().map(str::trim).take(3).collect();
    assert!(
        lines.contains(&"nofile: 65536") && lines.contains(&"core: 0"),
        "{lines:?}"
    );
}
