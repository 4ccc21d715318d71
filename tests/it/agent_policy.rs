//! The agent's compose policy on a real engine: each default refusal fails the deployment with a
//! message naming the service, the key, the value and the setting, and leaves nothing behind (no
//! container, network or volume of the project); a narrow allowance lets exactly that through;
//! compose files and env files symlinked out of the checkout are refused before compose reads
//! them. And the transport rule, on the real binary: `ws://` to a host that is not loopback is
//! refused before any dial, and `--insecure-transport` dials with a warning; `install.sh` the same
//! for `http://`.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stagely_agent::compose::{Compose, project_name};
use stagely_agent::deploy::Deployer;
use stagely_agent::ephemeral::RuntimeDir;
use stagely_agent::policy::PolicyConfig;
use stagely_agent::results::DeployResult;
use stagely_protocol::{DeployOutcome, ProjectSpec, PullPolicy, SecretEntry};

use crate::agent_override::global;
use crate::agent_support::{ProjectDown, containers_of, git, require_engine, unique};

const CANARY: &str = "policy-secret-canary";

struct Env {
    _work: tempfile::TempDir,
    _base: tempfile::TempDir,
    deployer: Deployer,
}

fn env(policy: &str) -> Env {
    let work = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let runtime = RuntimeDir::prepare(work.path(), Some(base.path())).unwrap();
    let policy: PolicyConfig = toml::from_str(policy).unwrap();
    policy.validate().unwrap();
    let deployer = Deployer {
        compose: Compose::new("docker compose").unwrap(),
        work_dir: work.path().to_owned(),
        runtime,
        verify_wait: Duration::from_millis(500),
        health_timeout: Duration::from_secs(20),
        deploy_timeout: Duration::from_secs(120),
        policy,
    };
    Env {
        _work: work,
        _base: base,
        deployer,
    }
}

fn spec(name: &str, repo_url: Option<String>, compose_path: &str) -> ProjectSpec {
    ProjectSpec {
        name: name.into(),
        environment: "staging".into(),
        repo_url,
        git_ref: "main".into(),
        compose_path: compose_path.into(),
        pull: PullPolicy::Never,
        compose_project: None,
        images: Default::default(),
    }
}

async fn deploy(e: &Env, project: &ProjectSpec, secrets: &[SecretEntry]) -> (DeployResult, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = e.deployer.run(1, project, secrets, &tx).await;
    drop(tx);
    let mut lines = String::new();
    while let Some(l) = rx.recv().await {
        lines.push_str(&l.line);
        lines.push('\n');
    }
    (result, lines)
}

fn labelled(kind: &str, project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([kind, "ls", "-q", "--filter"])
        .arg(format!("label=com.docker.compose.project={project}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// No container, network or volume of the compose project exists.
fn assert_nothing_created(project: &str, what: &str) {
    assert!(
        containers_of(project).is_empty(),
        "{what}: a container was created"
    );
    assert!(
        labelled("network", project).is_empty(),
        "{what}: a network was created"
    );
    assert!(
        labelled("volume", project).is_empty(),
        "{what}: a volume was created"
    );
}

/// A project with a named volume and its own network (so "nothing created" means something),
/// one harmless service and `web`, which gets `extra`.
fn compose_with(extra: &str) -> String {
    format!(
        "services:\n  \
           fine:\n    image: stagely-test-busybox\n    command: [\"sleep\", \"3600\"]\n    \
             volumes: [\"data:/data\"]\n    networks: [inner]\n  \
           web:\n    image: stagely-test-busybox\n    command: [\"sleep\", \"3600\"]\n{extra}\
         volumes:\n  data: {{}}\n\
         networks:\n  inner: {{}}\n"
    )
}

#[tokio::test]
async fn each_default_refusal_fails_before_anything_is_created() {
    if !require_engine() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let outside_dir = std::fs::canonicalize(outside.path()).unwrap();
    std::fs::write(outside.path().join("x.env"), "LEAK=outside-file-canary\n").unwrap();
    std::fs::write(
        outside.path().join("other.yml"),
        "services:\n  extra:\n    image: stagely-test-busybox\n",
    )
    .unwrap();
    std::fs::write(outside.path().join("Dockerfile"), "FROM stagely-test-busybox\n").unwrap();
    let od = outside_dir.display().to_string();
    let e = env("");
    // (what the web service adds, or a whole file; key; value; setting)
    let cases: Vec<(String, &str, String, String)> = vec![
        (
            "    privileged: true\n".into(),
            "privileged",
            "true".into(),
            "allow_privileged = true".into(),
        ),
        (
            "    cap_add: [SYS_ADMIN]\n".into(),
            "cap_add",
            "SYS_ADMIN".into(),
            r#"allow_cap_add = ["SYS_ADMIN"]"#.into(),
        ),
        (
            "    devices: [\"/dev/null:/dev/xnull\"]\n".into(),
            "devices",
            "/dev/null".into(),
            r#"allow_devices = ["/dev/null"]"#.into(),
        ),
        (
            "    pid: host\n".into(),
            "pid",
            "host".into(),
            r#"allow_shared_namespaces = ["pid"]"#.into(),
        ),
        (
            "    ipc: host\n".into(),
            "ipc",
            "host".into(),
            r#"allow_shared_namespaces = ["ipc"]"#.into(),
        ),
        (
            "    network_mode: host\n".into(),
            "network_mode",
            "host".into(),
            r#"allow_shared_namespaces = ["network"]"#.into(),
        ),
        (
            "    userns_mode: host\n".into(),
            "userns_mode",
            "host".into(),
            r#"allow_shared_namespaces = ["userns"]"#.into(),
        ),
        (
            "    network_mode: \"container:some-other-container\"\n".into(),
            "network_mode",
            "container:some-other-container".into(),
            r#"allow_shared_namespaces = ["network"]"#.into(),
        ),
        (
            "    security_opt: [\"seccomp:unconfined\"]\n".into(),
            "security_opt",
            "seccomp:unconfined".into(),
            r#"allow_security_opt = ["seccomp=unconfined"]"#.into(),
        ),
        (
            "    security_opt: [\"apparmor=unconfined\"]\n".into(),
            "security_opt",
            "apparmor=unconfined".into(),
            r#"allow_security_opt = ["apparmor=unconfined"]"#.into(),
        ),
        (
            "    security_opt: [\"label=disable\"]\n".into(),
            "security_opt",
            "label=disable".into(),
            r#"allow_security_opt = ["label=disable"]"#.into(),
        ),
        (
            "    volumes: [\"/:/host\"]\n".into(),
            "volumes",
            "/".into(),
            "cannot be allowed: the whole host is never mounted".into(),
        ),
        (
            "    volumes: [\"/etc:/x\"]\n".into(),
            "volumes",
            "/etc".into(),
            r#"allow_bind = ["/etc"]"#.into(),
        ),
        (
            "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n".into(),
            "volumes",
            "/var/run/docker.sock".into(),
            "allow_bind = [\"/".into(),
        ),
        (
            format!("    volumes: [\"{od}:/x\"]\n"),
            "volumes",
            od.clone(),
            format!("allow_bind = [\"{od}\"]"),
        ),
        (
            format!("    build: {od}\n"),
            "build.context",
            od.clone(),
            format!("allow_read = [\"{od}\"]"),
        ),
        (
            format!("    env_file: {od}/x.env\n"),
            "env_file",
            format!("{od}/x.env"),
            format!("allow_read = [\"{od}/x.env\"]"),
        ),
        (
            format!("    extends: {{file: {od}/other.yml, service: extra}}\n"),
            "extends.file",
            format!("{od}/other.yml"),
            format!("allow_read = [\"{od}/other.yml\"]"),
        ),
        (
            "    secrets: [s]\nsecrets:\n  s:\n    file: /etc/hostname\n".into(),
            "file",
            "/etc/hostname".into(),
            r#"allow_bind = ["/etc/hostname"]"#.into(),
        ),
    ];
    for (i, (extra, key, value, setting)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yml");
        std::fs::write(&file, compose_with(&extra)).unwrap();
        let name = unique(&format!("pol{i}x"));
        let compose_project = project_name(&name, "staging");
        let _down = ProjectDown(compose_project.clone());
        let project = spec(&name, None, file.to_str().unwrap());
        let (result, lines) = deploy(&e, &project, &[global("TOKEN", CANARY)]).await;
        assert_eq!(result.status, DeployOutcome::Fail, "{key}: {value}");
        let error = result.error.unwrap_or_default();
        assert!(error.contains("compose policy"), "{key}: {error}");
        let subject = if key == "file" { "secret s" } else { "service web" };
        assert!(error.contains(subject), "{key}: {error}");
        assert!(error.contains(&format!("`{key}: {value}")), "{key}: {error}");
        assert!(error.contains(&setting), "{key}: expected {setting:?} in {error}");
        if !setting.starts_with("cannot be allowed") {
            assert!(error.contains(&format!("[policy.project.{name:?}]")), "{error}");
        }
        for text in [&error, &lines] {
            assert!(!text.contains(CANARY), "a secret value was echoed: {text}");
            assert!(
                !text.contains("outside-file-canary"),
                "an outside file was read: {text}"
            );
        }
        assert_nothing_created(&compose_project, key);
    }
}

#[tokio::test]
async fn a_narrow_allowance_lets_exactly_that_through() {
    if !require_engine() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let shared_dir = std::fs::canonicalize(shared.path()).unwrap();
    std::fs::write(shared.path().join("hello"), "from-the-host\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    let web = format!(
        "    cap_add: [NET_ADMIN]\n    volumes: [\"{}:/shared:ro\"]\n",
        shared_dir.display()
    );
    std::fs::write(&file, compose_with(&web)).unwrap();
    let name = unique("polok");
    let compose_project = project_name(&name, "staging");
    let _down = ProjectDown(compose_project.clone());
    let project = spec(&name, None, file.to_str().unwrap());
    let allowance = format!(
        "[project.{name:?}]\nallow_cap_add = [\"NET_ADMIN\"]\nallow_bind = [\"{}\"]\n",
        shared_dir.display()
    );

    // The allowance for another project, or only half of what is needed, is not enough.
    let other = env(&allowance.replace(&name, "someone-else"));
    let (result, _) = deploy(&other, &project, &[]).await;
    assert_eq!(result.status, DeployOutcome::Fail);
    assert_nothing_created(&compose_project, "another project's allowance");
    let half = env(&format!("[project.{name:?}]\nallow_cap_add = [\"NET_ADMIN\"]\n"));
    let (result, _) = deploy(&half, &project, &[]).await;
    let error = result.error.unwrap_or_default();
    assert!(
        error.contains("`volumes: ") && !error.contains("cap_add"),
        "{error}"
    );
    assert_nothing_created(&compose_project, "half an allowance");

    let e = env(&allowance);
    let (result, lines) = deploy(&e, &project, &[]).await;
    assert_eq!(
        result.status,
        DeployOutcome::Success,
        "{:?}\n{lines}",
        result.error
    );
    let out = Command::new("docker")
        .args([
            "compose",
            "-p",
            &compose_project,
            "exec",
            "-T",
            "web",
            "cat",
            "/shared/hello",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-host\n");

    // Exactly that: the same allowance does not let SYS_ADMIN or another path through.
    let wider = web.replace("[NET_ADMIN]", "[NET_ADMIN, SYS_ADMIN]");
    std::fs::write(&file, compose_with(&wider)).unwrap();
    let (result, _) = deploy(&e, &project, &[]).await;
    let error = result.error.unwrap_or_default();
    assert!(error.contains("`cap_add: SYS_ADMIN`"), "{error}");
    assert!(!error.contains("NET_ADMIN`"), "{error}");
}

#[tokio::test]
async fn compose_and_env_files_symlinked_out_of_the_checkout_are_refused() {
    if !require_engine() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let evil = outside.path().join("evil.yml");
    std::fs::write(&evil, compose_with("    privileged: false\n")).unwrap();
    let secret_env = outside.path().join("host.env");
    std::fs::write(&secret_env, "STOLEN=outside-file-canary\n").unwrap();
    let e = env("");

    // A project without a repository: its directory is the checkout.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("compose.yml");
    std::os::unix::fs::symlink(&evil, &link).unwrap();
    let name = unique("polsym");
    let _down = ProjectDown(project_name(&name, "staging"));
    let (result, _) = deploy(&e, &spec(&name, None, link.to_str().unwrap()), &[]).await;
    let error = result.error.unwrap_or_default();
    assert!(
        error.contains("`compose_path: ") && error.contains("allow_read"),
        "{error}"
    );
    assert_nothing_created(&project_name(&name, "staging"), "symlinked compose file");

    // From git: a committed symlink to a file outside the repository, then an env file that is one.
    let repo = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&evil, repo.path().join("compose.yml")).unwrap();
    std::fs::write(
        repo.path().join("env.yml"),
        compose_with("    env_file: app.env\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret_env, repo.path().join("app.env")).unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "links"]);
    let url = Some(repo.path().to_string_lossy().into_owned());
    for (file, key) in [("compose.yml", "compose_path"), ("env.yml", "env_file")] {
        let name = unique("polgit");
        let _down = ProjectDown(project_name(&name, "staging"));
        let (result, lines) = deploy(&e, &spec(&name, url.clone(), file), &[]).await;
        assert_eq!(result.status, DeployOutcome::Fail, "{file}");
        let error = result.error.unwrap_or_default();
        assert!(error.contains(&format!("`{key}: ")), "{file}: {error}");
        assert!(error.contains("resolves to"), "{file}: {error}");
        assert!(!error.contains("outside-file-canary") && !lines.contains("outside-file-canary"));
        assert_nothing_created(&project_name(&name, "staging"), file);
    }
}

/// An address of this machine that is not loopback (the route to a public address, else any).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    if udp.connect("192.0.2.1:9").is_ok()
        && let Ok(addr) = udp.local_addr()
        && !addr.ip().is_loopback()
        && !addr.ip().is_unspecified()
    {
        return Some(addr.ip());
    }
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

async fn run_agent(server: &str, dir: &Path, extra: &[&str]) -> tokio::process::Child {
    let token_file: PathBuf = dir.join("token");
    std::fs::write(&token_file, "agt_transport_canary\n").unwrap();
    tokio::process::Command::new(crate::bins::agent())
        .arg("run")
        .args(["--server", server])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .args(["--compose-command", "docker compose"])
        .args(extra)
        .env_remove("STAGELY_AGENT_INSECURE_TRANSPORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn ws_to_a_host_off_this_machine_is_refused_before_any_dial() {
    let Some(ip) = non_loopback_ip() else {
        crate::prereq::missing("a non-loopback address on this machine");
        return;
    };
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();

    let child = run_agent(&server, dir.path(), &[]).await;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the agent did not exit")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to connect") && stderr.contains("--insecure-transport"),
        "{stderr}"
    );
    assert!(!stderr.contains("agt_transport_canary"), "{stderr}");
    // Nothing dialed: no connection is waiting on the listener.
    let pending = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(pending.is_err(), "the agent connected although it was refused");

    // With the flag it dials, and says at the connect that it is insecure.
    let mut child = run_agent(&server, dir.path(), &["--insecure-transport"]).await;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
        .await
        .expect("--insecure-transport: the agent did not dial")
        .unwrap();
    drop(tcp);
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--insecure-transport: connecting without encryption"),
        "{stderr}"
    );
}

#[tokio::test]
async fn install_sh_refuses_http_off_loopback_before_fetching() {
    if !crate::prereq::tool("curl") {
        return;
    }
    let Some(ip) = non_loopback_ip() else {
        crate::prereq::missing("a non-loopback address on this machine");
        return;
    };
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "stga_install_canary\n").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/agent/install.sh");
    let install = |insecure: bool| {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg(script)
            .args(["--server", &server, "--no-start", "--root"])
            .arg(dir.path().join("root"))
            .arg("--token-file")
            .arg(&token)
            .env_remove("STAGELY_INSECURE_TRANSPORT")
            .kill_on_drop(true);
        if insecure {
            cmd.env("STAGELY_INSECURE_TRANSPORT", "1");
        }
        cmd.output()
    };
    let out = install(false).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing") && stderr.contains("--insecure-transport"),
        "{stderr}"
    );
    let pending = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(pending.is_err(), "install.sh fetched although it refused");

    // Opted in: it warns and fetches (this listener answers nothing, so the fetch then fails).
    let accept = tokio::spawn(async move {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .expect("install.sh did not fetch")
            .unwrap();
        drop(tcp);
    });
    let out = install(true).await.unwrap();
    accept.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARNING: --insecure-transport"), "{stderr}");
}

#[tokio::test]
async fn the_appliance_warns_at_start_about_an_http_public_url_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let warning = "public_url is http:// and not loopback";
    for (public, warned) in [
        ("http://stagely.example.com", true),
        ("https://stagely.example.com", false),
        ("", false), // derived from the loopback listen address
    ] {
        let data = dir.path().join(format!("data{}", public.len()));
        let log = dir.path().join(format!("server{}.log", public.len()));
        let server = crate::common::ServerProcess::spawn(
            &data,
            "127.0.0.1:0",
            &[("STAGELY_PUBLIC_URL", public)],
            &log,
        )
        .await;
        server.terminate().await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.contains(warning), warned, "{public:?}: {text}");
    }
}
