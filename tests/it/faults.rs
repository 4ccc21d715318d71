//! The fault suite (issue 12): real `stagely serve` and `stagely-agent run` processes on the real
//! engine, the agent dialing through a [`FaultProxy`], and one fault per run injected at a
//! random point of the deploy sequence (a seeded random delay after the deploy is requested):
//!
//! - `appliance_kill`: SIGKILL the appliance, start it again on the same data dir and port;
//! - `agent_kill`: SIGKILL the agent, start it again with the same work dir;
//! - `blackhole`: the link stops moving bytes both ways, both sockets open, for a while;
//! - `cut`: both sides of the link closed.
//!
//! After every run the invariants of issue 12 are checked (each violation names the run, the
//! seed and the fault) and the run goes on, so a soak reports every violation it met, not the
//! first. Knobs (environment):
//!
//! | variable | default | |
//! | --- | --- | --- |
//! | `STAGELY_FAULT_RUNS` | 4 | runs; the kinds take turns, so 4 is one of each |
//! | `STAGELY_FAULT_SEED` | from the clock | printed at the start: set it to repeat a run |
//! | `STAGELY_FAULT_BLACKHOLE_MIN` / `_MAX` | 5 / 5 | seconds a blackhole lasts (uniform) |
//! | `STAGELY_FAULT_WINDOW_MS` | 7000 | the fault lands uniformly in this long after the request |
//! | `STAGELY_FAULT_KINDS` | all | comma-separated subset, e.g. `cut,blackhole` |
//!
//! `scripts/soak.sh` runs this with ≥ 200 runs and blackholes of 5–60 s.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine_support::{Dial, OVERRIDE_NAME, Stack, StackOptions, compose_processes};
use crate::prereq;

/// Set every run, never to be seen in a log, a stored line, the database or on disk.
const CANARY: &str = "fault-canary-3f9a27c1e8";
/// The appliance fails a deployment whose agent stayed away this long (test setting).
const AGENT_LOST_SECS: u64 = 20;
/// The services; `worker` starts once `web` is healthy, so `up` spans a few seconds and prints
/// lines while it waits. SIGKILL as stop signal: `sleep` as PID 1 ignores SIGTERM, and each
/// recreate would otherwise wait out compose's 10 s.
const COMPOSE: &str = r#"
services:
  web:
    image: stagely-test-busybox:latest
    command: ["sh", "-c", "echo web up; sleep 2; touch /tmp/ready; exec sleep 3600"]
    stop_signal: SIGKILL
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 30
  worker:
    image: stagely-test-busybox:latest
    command: ["sleep", "3600"]
    stop_signal: SIGKILL
    depends_on:
      web:
        condition: service_healthy
"#;
const SERVICES: [&str; 2] = ["web", "worker"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    ApplianceKill,
    AgentKill,
    Blackhole,
    Cut,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::ApplianceKill,
        Fault::AgentKill,
        Fault::Blackhole,
        Fault::Cut,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::ApplianceKill => "appliance_kill",
            Fault::AgentKill => "agent_kill",
            Fault::Blackhole => "blackhole",
            Fault::Cut => "cut",
        }
    }
}

/// SplitMix64: a few lines, the same sequence for a seed on every machine and crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }
}

struct Knobs {
    runs: usize,
    seed: u64,
    blackhole: (u64, u64),
    window_ms: u64,
    kinds: Vec<Fault>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let seed = match std::env::var("STAGELY_FAULT_SEED") {
            Ok(v) => {
                let v = v.trim();
                let hex = v.strip_prefix("0x").unwrap_or(v);
                u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("STAGELY_FAULT_SEED={v:?} is not hex"))
            }
            Err(_) => clock.as_nanos() as u64 ^ u64::from(std::process::id()),
        };
        let min = env_u64("STAGELY_FAULT_BLACKHOLE_MIN", 5);
        let max = env_u64("STAGELY_FAULT_BLACKHOLE_MAX", min.max(5));
        assert!(min <= max, "STAGELY_FAULT_BLACKHOLE_MIN > _MAX");
        let kinds = match std::env::var("STAGELY_FAULT_KINDS") {
            Ok(list) => list
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| {
                    *Fault::ALL
                        .iter()
                        .find(|f| f.name() == k)
                        .unwrap_or_else(|| panic!("unknown fault kind {k:?}"))
                })
                .collect(),
            Err(_) => Fault::ALL.to_vec(),
        };
        assert!(!kinds.is_empty(), "STAGELY_FAULT_KINDS names no fault");
        Knobs {
            runs: usize::try_from(env_u64("STAGELY_FAULT_RUNS", 4)).unwrap(),
            seed,
            blackhole: (min, max),
            window_ms: env_u64("STAGELY_FAULT_WINDOW_MS", 7000),
            kinds,
        }
    }
}

#[derive(Default)]
struct KindCount {
    runs: u64,
    successes: u64,
    explained_failures: u64,
}

#[derive(Default)]
struct Tally {
    kinds: BTreeMap<Fault, KindCount>,
    violations: Vec<String>,
    /// Deployments whose stored log had gaps or duplicates, per fault kind (also violations).
    incomplete_logs: BTreeMap<Fault, u64>,
}

/// Seconds since the suite started, for progress lines.
fn t() -> String {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    format!(
        "[{:6.1}s]",
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    )
}

/// One run's context, for messages.
struct Run<'a> {
    n: usize,
    seed: u64,
    fault: Fault,
    what: String,
    tally: &'a mut Tally,
}

impl Run<'_> {
    fn violation(&mut self, msg: impl std::fmt::Display) {
        let line = format!(
            "run {} (STAGELY_FAULT_SEED={:x}, fault {}: {}): {msg}",
            self.n,
            self.seed,
            self.fault.name(),
            self.what
        );
        eprintln!("VIOLATION {line}");
        self.tally.violations.push(line);
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.violation(msg());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_kills_blackholes_and_cuts_every_deployment_ends_true_and_nothing_leaks() {
    if !prereq::docker() {
        return;
    }
    let knobs = Knobs::from_env();
    eprintln!(
        "fault suite: {} runs, seed {:x} (STAGELY_FAULT_SEED={:x} repeats it), blackholes {}-{} s, \
         faults within {} ms of the request, kinds {:?}",
        knobs.runs,
        knobs.seed,
        knobs.seed,
        knobs.blackhole.0,
        knobs.blackhole.1,
        knobs.window_ms,
        knobs.kinds.iter().map(|k| k.name()).collect::<Vec<_>>()
    );
    let started = Instant::now();
    eprintln!("{} starting the stack", t());
    let lost = AGENT_LOST_SECS.to_string();
    let options = StackOptions {
        server_env: vec![
            ("STAGELY_AGENTS__PING_INTERVAL_SECS".into(), "1".into()),
            ("STAGELY_AGENTS__OFFLINE_AFTER_SECS".into(), "3".into()),
            ("STAGELY_DEPLOYS__AGENT_LOST_TIMEOUT_SECS".into(), lost),
            ("STAGELY_DEPLOYS__MAX_DURATION_SECS".into(), "300".into()),
        ],
        agent_args: [
            "--reconnect-max-secs",
            "2",
            "--health-timeout-secs",
            "30",
            "--deploy-timeout-secs",
            "120",
        ]
        .map(String::from)
        .to_vec(),
        dial: Dial::Faults,
    };
    let mut stack = Stack::start_with("faults", COMPOSE, "staging", options).await;
    stack
        .secret(json!({"key": "CANARY", "value": CANARY, "scope": "global"}))
        .await;
    let run_token = stack
        .secret(json!({"key": "RUN_TOKEN", "value": "initial", "scope": "global"}))
        .await["id"]
        .as_i64()
        .unwrap();

    // A deploy without faults first: the ground the runs stand on.
    eprintln!("{} stack up; the fault-free deploy", t());
    let first = stack.deploy().await;
    let d = stack.api.wait_finished(first, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "success", "the fault-free deploy: {d}");

    let mut rng = Rng(knobs.seed);
    let mut tally = Tally::default();
    for n in 0..knobs.runs {
        let fault = knobs.kinds[n % knobs.kinds.len()];
        let value = format!("run{n}-{:016x}", rng.next());
        let mut run = Run {
            n,
            seed: knobs.seed,
            fault,
            what: String::new(),
            tally: &mut tally,
        };
        one_run(&mut stack, &mut rng, &knobs, run_token, &value, &mut run).await;
    }

    let elapsed = started.elapsed();
    let mut summary = format!(
        "fault suite summary (seed {:x}, {} runs, {:.0} s):\n",
        knobs.seed,
        knobs.runs,
        elapsed.as_secs_f64()
    );
    let (mut runs, mut ok, mut explained) = (0, 0, 0);
    for (kind, c) in &tally.kinds {
        summary.push_str(&format!(
            "  {:<15} runs {:>4}  successes {:>4}  explained failures {:>4}  incomplete logs {:>3}\n",
            kind.name(),
            c.runs,
            c.successes,
            c.explained_failures,
            tally.incomplete_logs.get(kind).copied().unwrap_or(0)
        ));
        runs += c.runs;
        ok += c.successes;
        explained += c.explained_failures;
    }
    summary.push_str(&format!(
        "  total           runs {runs:>4}  successes {ok:>4}  explained failures {explained:>4}\n  \
         invariant violations: {}\n",
        tally.violations.len()
    ));
    eprintln!("{summary}");
    keep_logs(&stack, &summary, &tally.violations);
    assert!(
        tally.violations.is_empty(),
        "{} invariant violation(s):\n{}\n{summary}",
        tally.violations.len(),
        tally.violations.join("\n")
    );
}

async fn one_run(
    stack: &mut Stack,
    rng: &mut Rng,
    knobs: &Knobs,
    run_token: i64,
    value: &str,
    run: &mut Run<'_>,
) {
    let (status, body) = stack
        .api
        .put(&format!("/api/secrets/{run_token}"), json!({"value": value}))
        .await;
    assert_eq!(status, 200, "the run's secret: {body}");
    let id = match request_deploy(stack).await {
        Ok(id) => id,
        Err(e) => {
            run.violation(format!("the deploy was not accepted: {e}"));
            return;
        }
    };
    let delay = rng.between(0, knobs.window_ms);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let status_then = stack.api.get(&format!("/api/deployments/{id}")).await.1["status"].clone();
    let mut outlived = Vec::new();
    match run.fault {
        Fault::ApplianceKill => {
            let down = rng.between(0, 3000);
            run.what = format!("deployment {id}, {delay} ms in ({status_then}), down {down} ms");
            stack.restart_server(Duration::from_millis(down)).await;
        }
        Fault::AgentKill => {
            let before = compose_processes(&stack.compose_project(), None);
            run.what = format!(
                "deployment {id}, {delay} ms in ({status_then}), {} compose processes running",
                before.len()
            );
            for p in &before {
                eprintln!("{} run {}: before the kill: {}", t(), run.n, p.describe());
            }
            stack.kill_agent().await;
            stack.start_agent().await;
            // `start_agent` returns once the new agent is online: its predecessor's compose
            // processes must be gone by then.
            outlived = before.into_iter().filter(|p| p.alive()).collect();
        }
        Fault::Blackhole => {
            let secs = rng.between(knobs.blackhole.0, knobs.blackhole.1);
            run.what = format!("deployment {id}, {delay} ms in ({status_then}), {secs} s");
            let proxy = stack.faults.as_ref().unwrap();
            proxy.blackhole();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            proxy.restore();
        }
        Fault::Cut => {
            run.what = format!("deployment {id}, {delay} ms in ({status_then})");
            stack.faults.as_ref().unwrap().cut();
        }
    }
    eprintln!("{} run {} ({}): {}", t(), run.n, run.fault.name(), run.what);
    let count = run.tally.kinds.entry(run.fault).or_default();
    count.runs += 1;
    run.check(outlived.is_empty(), || {
        let described: Vec<String> = outlived.iter().map(|p| p.describe()).collect();
        let groups: Vec<String> = std::fs::read_to_string(stack.root.join("agent.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("process group"))
            .map(str::to_owned)
            .collect();
        format!("compose processes of the killed agent outlived it: {described:?}; the agent's process group lines: {groups:?}")
    });

    // No deployment is left non-terminal past its timeout: the agent's health wait and the
    // appliance's agent_lost timeout (plus a reaper sweep) bound it.
    let deadline = Duration::from_secs(60 + AGENT_LOST_SECS + 10);
    let Some(d) = wait_terminal(stack, id, deadline).await else {
        run.violation(format!(
            "deployment {id} still not finished {} s after the fault",
            deadline.as_secs()
        ));
        return;
    };
    eprintln!(
        "{} run {}: deployment {id} {} {}",
        t(),
        run.n,
        d["status"],
        d["error"]
    );
    check_outcome(stack, run, &d, value, "the faulted deployment");

    // The next deploy, without a fault, succeeds.
    let online = wait_online(stack, Duration::from_secs(60)).await;
    run.check(online, || {
        "the agent is not back online 60 s after the fault".into()
    });
    let next = match request_deploy(stack).await {
        Ok(next) => next,
        Err(e) => {
            run.violation(format!("the next deploy was not accepted: {e}"));
            return;
        }
    };
    eprintln!("{} run {}: next deploy {next}", t(), run.n);
    match wait_terminal(stack, next, Duration::from_secs(90)).await {
        None => run.violation(format!("the next deployment {next} did not finish in 90 s")),
        Some(n) => {
            run.check(n["status"] == "success", || {
                format!("the next deployment {next} did not succeed: {n}")
            });
            check_outcome(stack, run, &n, value, "the next deployment");
        }
    }

    // Both deployments are over and the agent is idle: nothing of the run may be left around.
    for deployment in [id, next] {
        check_log(stack, run, deployment).await;
    }
    check_traces(stack, run, value, &[id, next]).await;
    eprintln!("{} run {}: checked", t(), run.n);
}

/// Success: the containers hold exactly this run's values. Failure: it says why.
fn check_outcome(stack: &Stack, run: &mut Run<'_>, d: &Value, value: &str, which: &str) {
    let id = &d["id"];
    let is_next = which == "the next deployment";
    match d["status"].as_str() {
        Some("success") => {
            if !is_next {
                run.tally.kinds.entry(run.fault).or_default().successes += 1;
            }
            for service in SERVICES {
                let Some(_) = stack.container_id(service) else {
                    run.violation(format!(
                        "{which} {id} succeeded but {service} has no running container"
                    ));
                    continue;
                };
                let env = stack.container_env(service);
                run.check(env.get("RUN_TOKEN").map(String::as_str) == Some(value), || {
                    format!(
                        "{which} {id} succeeded but {service} holds RUN_TOKEN={:?}, not {value:?}",
                        env.get("RUN_TOKEN")
                    )
                });
                run.check(env.get("CANARY").map(String::as_str) == Some(CANARY), || {
                    format!("{which} {id} succeeded but {service} lacks the canary")
                });
            }
        }
        Some("failed") => {
            let error = d["error"].as_str().unwrap_or("").trim();
            if !error.is_empty() && !is_next {
                run.tally.kinds.entry(run.fault).or_default().explained_failures += 1;
            }
            run.check(!error.is_empty(), || {
                format!("{which} {id} failed without an error: {d}")
            });
        }
        other => run.violation(format!("{which} {id} ended {other:?}: {d}")),
    }
}

/// Every stored line of the deployment, through the paginated API.
async fn stored_log(stack: &Stack, id: i64) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut after = -1i64;
    loop {
        let (status, page) = stack
            .api
            .get(&format!(
                "/api/deployments/{id}/logs?after_seq={after}&limit=5000"
            ))
            .await;
        assert_eq!(status, 200, "logs of {id}: {page}");
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_i64().unwrap();
        lines.extend(page);
    }
    lines
}

/// The line the agent ends every successful deployment's log with (crates/agent/src/deploy.rs):
/// a success whose log does not end with it lost its last lines.
const LAST_LINE_OF_A_SUCCESS: &str = "all services are up";

/// The seqs missing from `0..=last` and those seen twice (or out of order), in stored order.
fn log_gaps(seqs: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let mut missing = Vec::new();
    let mut duplicates = Vec::new();
    let mut expect = 0i64;
    for &s in seqs {
        if s < expect {
            duplicates.push(s);
            continue;
        }
        missing.extend(expect..s);
        expect = s + 1;
    }
    (missing, duplicates)
}

#[test]
fn the_log_check_sees_gaps_duplicates_and_a_missing_start() {
    assert_eq!(log_gaps(&[]), (vec![], vec![]));
    assert_eq!(log_gaps(&[0, 1, 2]), (vec![], vec![]));
    assert_eq!(log_gaps(&[0, 2, 5]), (vec![1, 3, 4], vec![]));
    assert_eq!(log_gaps(&[1, 2]), (vec![0], vec![]), "a log starts at seq 0");
    assert_eq!(log_gaps(&[0, 1, 1, 2, 0]), (vec![], vec![1, 0]));
}

/// The stored log is complete (seq 0, 1, … up to its last line, none twice; a success's ends
/// with the agent's closing line) and masked.
async fn check_log(stack: &Stack, run: &mut Run<'_>, id: i64) {
    let lines = stored_log(stack, id).await;
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l["seq"].as_i64()).collect();
    let (missing, duplicates) = log_gaps(&seqs);
    let (_, d) = stack.api.get(&format!("/api/deployments/{id}")).await;
    let last = lines.last().and_then(|l| l["line"].as_str()).unwrap_or("");
    let cut_short = d["status"] == "success" && last != LAST_LINE_OF_A_SUCCESS;
    if !missing.is_empty() || !duplicates.is_empty() || cut_short {
        *run.tally.incomplete_logs.entry(run.fault).or_default() += 1;
        run.violation(format!(
            "the stored log of deployment {id} ({}) is not complete: {} lines up to seq {}, \
             missing {missing:?}, duplicated {duplicates:?}, last line {last:?}",
            d["status"],
            seqs.len(),
            seqs.last().copied().unwrap_or(-1),
        ));
    }
    let text = Value::Array(lines).to_string();
    run.check(!text.contains(CANARY), || {
        format!("the canary is in the stored log of deployment {id}")
    });
}

/// No trace of the run's values where they must not be: override or secret-bearing files on
/// disk (work dir, checkout, runtime dir), process logs, stored logs, the database file.
async fn check_traces(stack: &Stack, run: &mut Run<'_>, value: &str, deployments: &[i64]) {
    let overrides = stack.leftover_overrides();
    run.check(overrides.is_empty(), || {
        format!("override files left behind: {overrides:?}")
    });
    for needle in [CANARY, value] {
        let files = files_holding(&stack.work_dir(), needle);
        run.check(files.is_empty(), || {
            format!("{needle:?} is on disk in the agent's work dir: {files:?}")
        });
        let shm = files_holding(&stack.runtime, needle);
        run.check(shm.is_empty(), || {
            format!("{needle:?} is left in the runtime dir after the deploy: {shm:?}")
        });
        for log in ["server.log", "agent.log"] {
            run.check(
                !crate::common::file_contains(&stack.root.join(log), needle),
                || format!("{needle:?} is in {log}"),
            );
        }
        run.check(
            !crate::common::store_contains(&stack.root.join("data"), needle),
            || format!("{needle:?} is in the bytes of the store"),
        );
    }
    for &id in deployments {
        let (_, d) = stack.api.get(&format!("/api/deployments/{id}")).await;
        let shown = d.to_string();
        run.check(!shown.contains(CANARY) && !shown.contains(value), || {
            format!("a secret value is in deployment {id} as the API shows it: {shown}")
        });
    }
}

/// Files under `dir` whose bytes hold `needle`, and files named like an override.
fn files_holding(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            found.extend(files_holding(&p, needle));
        } else if t.is_file() && (e.file_name() == OVERRIDE_NAME || crate::common::file_contains(&p, needle))
        {
            found.push(p);
        }
    }
    found
}

/// The process logs and the summary into `$STAGELY_TEST_ARTIFACTS/faults/` (default
/// `artifacts/`), for a failing run to be read after the temp dir is gone.
fn keep_logs(stack: &Stack, summary: &str, violations: &[String]) {
    let base = std::env::var("STAGELY_TEST_ARTIFACTS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts").to_owned());
    let dir = Path::new(&base).join("faults");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for log in ["server.log", "agent.log"] {
        let _ = std::fs::copy(stack.root.join(log), dir.join(log));
    }
    let _ = std::fs::write(
        dir.join("summary.txt"),
        format!("{summary}\n{}\n", violations.join("\n")),
    );
}

async fn request_deploy(stack: &Stack) -> Result<i64, String> {
    let pid = stack.project_id().await;
    let (status, body) = stack.api.post(&format!("/api/deploy/{pid}"), json!({})).await;
    match (status, body["deployment_id"].as_i64()) {
        (202, Some(id)) => Ok(id),
        _ => Err(format!("{status} {body}")),
    }
}

/// The deployment once it is `success` or `failed`; `None` if it is not by `timeout`.
async fn wait_terminal(stack: &Stack, id: i64, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, d) = stack.api.get(&format!("/api/deployments/{id}")).await;
        if matches!(d["status"].as_str(), Some("success" | "failed")) {
            return Some(d);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_online(stack: &Stack, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, agents) = stack.api.get("/api/agents").await;
        if agents
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["online"] == true))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
