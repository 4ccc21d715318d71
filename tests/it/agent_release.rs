//! Issue 14 on the agent's side, on a real engine: the release a successful deployment reports
//! (the image id the container runs), a deployment pinned by image id running that image after
//! the tag was moved to another one, and the real agent binary reporting RUNTIME for the project
//! named in WATCH after `docker stop`, its `docker events` child gone when it stops.

// Test helpers outside #[test] fns: clippy does not count them as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use stagely_agent::compose::{Compose, project_name};
use stagely_agent::deploy::Deployer;
use stagely_agent::ephemeral::RuntimeDir;
use stagely_agent::results::DeployResult;
use stagely_protocol::release::{CAP_RELEASES, CAP_RUNTIME};
use stagely_protocol::{AgentMessage, DeployOutcome, ProjectSpec, PullPolicy, ServerMessage};
use tokio::net::TcpListener;

use crate::agent_override::global;
use crate::agent_run::{accept, deploy_msg, recv, send, start_agent_with, token};
use crate::agent_support::{ProjectDown, TEST_IMAGE, require_engine, unique};

const CANARY: &str = "canary-release-secret-q7";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "--format", "{{.Id}}", reference])
}

/// The image id the project's container of `service` runs.
fn running_image(project: &str, service: &str) -> String {
    let id = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ]);
    assert!(!id.is_empty(), "no container of {service} in {project}");
    docker(&["inspect", "--format", "{{.Image}}", id.lines().next().unwrap()])
}

/// Removes these image tags when dropped (the images stay while another tag holds them).
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("docker").args(["image", "rm", t]).output();
        }
    }
}

struct Env {
    _work: tempfile::TempDir,
    _base: tempfile::TempDir,
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
        verify_wait: Duration::from_millis(500),
        health_timeout: Duration::from_secs(20),
        deploy_timeout: Duration::from_secs(300),
        policy: Default::default(),
    };
    Env {
        _work: work,
        _base: base,
        deployer,
    }
}

fn spec(name: &str, compose: &Path) -> ProjectSpec {
    ProjectSpec {
        name: name.into(),
        environment: "staging".into(),
        repo_url: None,
        git_ref: "main".into(),
        compose_path: compose.to_string_lossy().into_owned(),
        pull: PullPolicy::Never,
        compose_project: None,
        images: Default::default(),
    }
}

async fn deploy(env: &Env, id: i64, project: &ProjectSpec) -> DeployResult {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = env
        .deployer
        .run(id, project, &[global("CANARY", CANARY)], &tx)
        .await;
    drop(tx);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l.line);
    }
    assert_eq!(
        result.status,
        DeployOutcome::Success,
        "{:?}\n{lines:#?}",
        result.error
    );
    assert!(lines.iter().all(|l| !l.contains(CANARY)));
    result
}

fn write_compose(dir: &Path, image: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("compose.yml");
    std::fs::write(
        &file,
        format!("services:\n  web:\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    file
}

#[tokio::test]
async fn a_deployment_reports_the_image_id_its_service_runs() {
    if !require_engine() {
        return;
    }
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let compose = write_compose(&dir.path().join("p"), TEST_IMAGE);
    let name = unique("agtrel");
    let _down = ProjectDown(project_name(&name, "staging"));
    let result = deploy(&env, 1, &spec(&name, &compose)).await;
    assert!(result.applied);
    let release = result
        .release
        .expect("a successful deployment reports its release");
    assert_eq!(release.compose_hash.len(), 64, "{release:?}");
    assert!(release.compose_hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(release.services.len(), 1, "{release:?}");
    let web = &release.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.image, TEST_IMAGE);
    assert_eq!(web.image_id, image_id(TEST_IMAGE));
    // Built or loaded here: no registry digest, so a redeploy pins the image id.
    assert_eq!(web.repo_digest, None);
    assert_eq!(web.pin(), web.image_id);
    assert_eq!(web.config_hash.len(), 64, "{web:?}");
    let json = serde_json::to_string(&release).unwrap();
    assert!(!json.contains(CANARY), "{json}");
    // The STATUS carries both; the same file deployed again hashes alike.
    let again = deploy(&env, 2, &spec(&name, &compose)).await;
    let AgentMessage::Status {
        applied, release: r, ..
    } = again.to_status(2)
    else {
        unreachable!()
    };
    assert_eq!(applied, Some(true));
    assert_eq!(r.unwrap().compose_hash, release.compose_hash);
}

#[tokio::test]
async fn a_pin_by_image_id_runs_that_image_after_the_tag_moved() {
    if !require_engine() {
        return;
    }
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}:v", unique("stagely-pin-"));
    let other = format!("{}:b", unique("stagely-pin-"));
    let _tags = Tags(vec![tag.clone(), other.clone()]);
    docker(&["tag", TEST_IMAGE, &tag]);
    let compose = write_compose(&dir.path().join("p"), &tag);
    let name = unique("agtpin");
    let project = project_name(&name, "staging");
    let _down = ProjectDown(project.clone());

    let first = deploy(&env, 1, &spec(&name, &compose)).await;
    let release = first.release.unwrap();
    let pinned = release.services[0].pin().to_owned();
    assert_eq!(pinned, image_id(TEST_IMAGE));

    // Another image, and the tag moved to it: an unpinned deploy now runs the other image.
    let build = Command::new("docker")
        .args(["build", "-q", "-t", &other, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = build.stdin.as_ref().unwrap();
        writeln!(stdin, "FROM {TEST_IMAGE}\nLABEL stagely.test={name}").unwrap();
    }
    let out = build.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    docker(&["tag", &other, &tag]);
    let moved = image_id(&tag);
    assert_ne!(moved, pinned);
    let second = deploy(&env, 2, &spec(&name, &compose)).await;
    assert_eq!(running_image(&project, "web"), moved);
    assert_eq!(second.release.unwrap().services[0].image_id, moved);

    // The redeploy of the first release, pinned by image id: the first image comes back.
    let mut redeploy = spec(&name, &compose);
    redeploy.images.insert("web".into(), pinned.clone());
    let third = deploy(&env, 3, &redeploy).await;
    assert_eq!(running_image(&project, "web"), pinned);
    let back = third.release.unwrap();
    assert_eq!(back.services[0].image_id, pinned);
    // The compose hash is of the project's own file: the pin does not change it.
    assert_eq!(back.compose_hash, release.compose_hash);

    // A pin for a service the file does not define fails before anything runs.
    let mut stray = spec(&name, &compose);
    stray.images.insert("wbe".into(), pinned.clone());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let refused = env.deployer.run(4, &stray, &[], &tx).await;
    assert_eq!(refused.status, DeployOutcome::Fail);
    assert!(!refused.applied);
    let error = refused.error.unwrap();
    assert!(error.contains("\"wbe\""), "{error}");
    assert_eq!(running_image(&project, "web"), pinned, "nothing changed");
}

/// `docker events` processes watching `project`.
fn events_children(project: &str) -> Vec<i32> {
    let needle = format!("label=com.docker.compose.project={project}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "events") && args.contains(&needle) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_watched_project_reports_runtime_after_docker_stop() {
    if !require_engine() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let compose = write_compose(&dir.path().join("p"), TEST_IMAGE);
    let name = unique("agtwatch");
    let project = project_name(&name, "staging");
    let _down = ProjectDown(project.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = start_agent_with(
        listener.local_addr().unwrap(),
        dir.path(),
        &token(),
        "docker compose",
    );
    let (mut ws, _, _) = accept(&listener).await;
    let AgentMessage::Hello {
        recipient: Some(recipient),
        capabilities,
        ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first")
    };
    assert_eq!(
        capabilities,
        [CAP_RELEASES, CAP_RUNTIME, stagely_protocol::operate::CAP_OPERATE]
    );

    send(
        &mut ws,
        &deploy_msg(&recipient, 1, &name, &compose, vec![global("CANARY", CANARY)]),
    )
    .await;
    let (status, release) = loop {
        if let AgentMessage::Status {
            deployment_id: 1,
            status,
            release,
            applied,
            ..
        } = recv(&mut ws).await
        {
            assert_eq!(applied, Some(true));
            break (status, release);
        }
    };
    assert_eq!(status, DeployOutcome::Success);
    assert_eq!(release.unwrap().services[0].image_id, image_id(TEST_IMAGE));
    send(&mut ws, &ServerMessage::Ack { deployment_id: 1 }).await;

    // WATCH: the project's state at once.
    send(
        &mut ws,
        &ServerMessage::Watch {
            project: project.clone(),
        },
    )
    .await;
    let runtime = |msg: AgentMessage| match msg {
        AgentMessage::Runtime {
            project: p,
            containers,
            truncated,
        } => {
            assert_eq!(p, project);
            assert!(!truncated);
            Some(containers)
        }
        _ => None,
    };
    let first = loop {
        if let Some(c) = runtime(recv(&mut ws).await) {
            break c;
        }
    };
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        (first[0].service.as_str(), first[0].state.as_str()),
        ("web", "running")
    );
    assert_eq!(first[0].image_id, image_id(TEST_IMAGE));
    assert!(first[0].started_at.is_some());
    assert_eq!(events_children(&project).len(), 1, "one docker events child");

    // Stopped by hand: the engine's events bring a RUNTIME saying so (no polling to wait for).
    docker(&["stop", "-t", "0", &first[0].name]);
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(c) = runtime(recv(&mut ws).await)
                && c.first().is_some_and(|c| c.state != "running")
            {
                break c;
            }
        }
    })
    .await
    .expect("no RUNTIME within 30 s of docker stop");
    assert_eq!(stopped[0].state, "exited", "{stopped:?}");

    agent.signal("-TERM", false);
    let status = agent.wait().await;
    assert!(status.success(), "{status:?}");
    // The events child went with the agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !events_children(&project).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        events_children(&project),
        Vec::<i32>::new(),
        "docker events outlived the agent"
    );
    assert!(!agent.log().contains(CANARY));
}

fn proc_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 (index 11 and 12 after the state).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn proc_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Benchmark (BENCHMARKS.md, "agent idle with runtime reporting on"): the real agent connected,
/// its project deployed and WATCH'd, then left alone for a window: its own RSS and CPU, and,
/// apart, its `docker events` child's. Asserts only that nothing is read while nothing happens
/// (no RUNTIME, the same events child). Run with:
/// `STAGELY_BENCH_AGENT=<binary> STAGELY_BENCH_WINDOW_SECS=60 cargo test --test it
/// agent_release::bench_idle_with_runtime_reporting -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark: run by hand (see BENCHMARKS.md)"]
async fn bench_idle_with_runtime_reporting() {
    use futures_util::StreamExt;
    if !require_engine() {
        return;
    }
    let window = Duration::from_secs(
        std::env::var("STAGELY_BENCH_WINDOW_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let binary = std::env::var("STAGELY_BENCH_AGENT").unwrap_or_else(|_| crate::bins::agent().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let compose = write_compose(&dir.path().join("p"), TEST_IMAGE);
    let name = unique("agtbench");
    let project = project_name(&name, "staging");
    let _down = ProjectDown(project.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", token())).unwrap();
    let mut child = tokio::process::Command::new(&binary)
        .arg("run")
        .arg("--server")
        .arg(format!("http://{}", listener.local_addr().unwrap()))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .args(["--verify-wait-secs", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let (mut ws, _, _) = accept(&listener).await;
    let AgentMessage::Hello {
        recipient: Some(recipient),
        ..
    } = recv(&mut ws).await
    else {
        panic!("HELLO first")
    };
    send(&mut ws, &deploy_msg(&recipient, 1, &name, &compose, vec![])).await;
    loop {
        if let AgentMessage::Status { status, .. } = recv(&mut ws).await {
            assert_eq!(status, DeployOutcome::Success);
            break;
        }
    }
    send(&mut ws, &ServerMessage::Ack { deployment_id: 1 }).await;
    // STAGELY_BENCH_NO_WATCH=1: the same agent without runtime reporting, for the baseline.
    let watch = std::env::var("STAGELY_BENCH_NO_WATCH").is_err();
    let events = if watch {
        send(
            &mut ws,
            &ServerMessage::Watch {
                project: project.clone(),
            },
        )
        .await;
        loop {
            if matches!(recv(&mut ws).await, AgentMessage::Runtime { .. }) {
                break;
            }
        }
        let events = events_children(&project);
        assert_eq!(events.len(), 1, "one docker events child");
        Some(events[0] as u32)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Keep the connection served (pongs) and count what the agent sends meanwhile.
    let (agent0, events0) = (proc_ticks(pid), events.map(proc_ticks).unwrap_or(0));
    let started = std::time::Instant::now();
    let mut runtime_frames = 0;
    let _ = tokio::time::timeout(window, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
                && t.as_str().contains("\"RUNTIME\"")
            {
                runtime_frames += 1;
            }
        }
    })
    .await;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let tick_ms = 10.0; // CLK_TCK 100 on Linux
    let (agent_ms, events_ms) = (
        (proc_ticks(pid) - agent0) as f64 * tick_ms / minutes,
        events.map_or(0.0, |e| (proc_ticks(e) - events0) as f64 * tick_ms / minutes),
    );
    let (agent_rss, events_rss) = (proc_rss_kb(pid), events.map_or(0, proc_rss_kb));
    println!(
        "BENCH agent idle, runtime reporting {} ({binary}, window {window:?}): agent RSS {:.2} MB, CPU {agent_ms:.1} ms/min; \
         docker events child RSS {:.2} MB, CPU {events_ms:.1} ms/min; RUNTIME frames while idle: {runtime_frames}",
        if watch { "on" } else { "off" },
        agent_rss as f64 / 1024.0,
        events_rss as f64 / 1024.0,
    );
    assert_eq!(runtime_frames, 0, "nothing changed, so nothing is sent");
    if let Some(events) = events {
        assert_eq!(
            events_children(&project),
            vec![events as i32],
            "the same events child"
        );
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
