//! History growth (issue 12): how the pages' cost and the database's size grow with stored
//! history, with retention off and after the pruner ran with the defaults.
//!
//! A fresh appliance makes its schema and the projects/environments through the API; then,
//! with it stopped, deployments and log lines are written straight into its SQLite file (big
//! transactions, prepared statements: making 100,000 deployments through real agents would take
//! hours and measure the agents). Deployments are spread over the last year, one per environment
//! in turn; the newest is one big log (the per-deployment cap, 100,000 lines), the others share
//! the remaining lines. Then `stagely serve` runs on it twice: retention off
//! (`deploys.log_prune_every_secs = 0`), and with the defaults (50 deployments / 30 days per
//! environment; the pruner's first pass starts at once). Each page is fetched sequentially on
//! one kept-alive connection; its p99 is over those requests. The data dir is removed at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, params};

use crate::bench::Bench;
use crate::http::Http;
use crate::report::{Results, quantile};
use crate::server::{Server, ServerSpec, admin_token};

/// The seeded history of one mode.
#[derive(Debug, Clone, Copy)]
pub struct HistorySize {
    pub deployments: usize,
    pub lines: usize,
    /// Lines of the newest deployment (the deep-page log).
    pub big_log: usize,
    pub projects: usize,
    pub environments_per_project: usize,
    /// Requests per page and phase.
    pub requests: usize,
}

impl HistorySize {
    pub fn quick() -> HistorySize {
        HistorySize {
            deployments: 1_000,
            lines: 100_000,
            big_log: 10_000,
            projects: 2,
            environments_per_project: 2,
            requests: 30,
        }
    }

    pub fn full() -> HistorySize {
        HistorySize {
            deployments: 100_000,
            lines: 10_000_000,
            big_log: 100_000,
            projects: 2,
            environments_per_project: 5,
            requests: 200,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Keys of the per-phase p99 metrics (`history_<page>_p99_<off|on>`).
fn key(page: &str, on: bool) -> &'static str {
    match (page, on) {
        ("dashboard", false) => "history_dashboard_p99_off",
        ("dashboard", true) => "history_dashboard_p99_on",
        ("deployments_html", false) => "history_deployments_html_p99_off",
        ("deployments_html", true) => "history_deployments_html_p99_on",
        ("deployments_api", false) => "history_deployments_api_p99_off",
        ("deployments_api", true) => "history_deployments_api_p99_on",
        ("logs_html", false) => "history_logs_html_p99_off",
        ("logs_html", true) => "history_logs_html_p99_on",
        ("logs_api_first", false) => "history_logs_api_first_p99_off",
        ("logs_api_first", true) => "history_logs_api_first_p99_on",
        ("logs_api_deep", false) => "history_logs_api_deep_p99_off",
        _ => "history_logs_api_deep_p99_on",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Bytes of the database file and its WAL.
fn db_bytes(data_dir: &Path) -> (u64, u64) {
    let size = |name: &str| std::fs::metadata(data_dir.join(name)).map_or(0, |m| m.len());
    (size("stagely.db"), size("stagely.db-wal"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// A log line of roughly what compose prints (~120 bytes), different on every line.
fn line_text(buf: &mut String, deployment: i64, seq: usize) {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(
        buf,
        "web-{}  | 2026-11-27T10:{:02}:{:02}.{:03}Z INFO request id={:016x} GET /api/items/{} status=200 took={}ms",
        deployment % 3 + 1,
        seq / 60 % 60,
        seq % 60,
        seq % 1000,
        (deployment as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq as u64,
        seq % 9973,
        seq % 97
    );
}

/// Write the history into the (migrated, stopped) appliance's database.
fn seed(db: &Path, envs: &[(i64, i64)], size: HistorySize) -> Result<Duration> {
    let started = Instant::now();
    let mut c = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    c.execute_batch("PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF;")?;
    let now = now_ms();
    let span = 365 * DAY_MS;
    let n = size.deployments.max(1);
    let small = size.lines.saturating_sub(size.big_log) / n.saturating_sub(1).max(1);
    let mut extra = size.lines.saturating_sub(size.big_log) - small * n.saturating_sub(1);
    let first_id: i64 = c.query_row("SELECT IFNULL(MAX(id), 0) + 1 FROM deployments", [], |r| r.get(0))?;
    let mut buf = String::with_capacity(160);
    let mut written = 0usize;
    let mut i = 0usize;
    while i < n {
        let tx = c.transaction()?;
        {
            let mut dep = tx.prepare(
                "INSERT INTO deployments (id, project_id, environment_id, agent_id, status, git_ref, commit_sha, error,
                     services, triggered_by, created_at, finished_at)
                 VALUES (?1, ?2, ?3, NULL, ?4, 'main', ?5, ?6, NULL, 'token:loadgen', ?7, ?8)",
            )?;
            let mut line = tx.prepare(
                "INSERT INTO deployment_logs (deployment_id, seq, stream, line, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // About a million lines per transaction.
            let mut in_tx = 0usize;
            while i < n && in_tx < 1_000_000 {
                let id = first_id + i as i64;
                let (project_id, environment_id) = envs[i % envs.len()];
                let created = now - span + (span - 3_600_000) * i as i64 / n as i64;
                let failed = i % 17 == 5;
                let lines = if i + 1 == n {
                    size.big_log
                } else if extra > 0 {
                    extra -= 1;
                    small + 1
                } else {
                    small
                };
                dep.execute(params![
                    id,
                    project_id,
                    environment_id,
                    if failed { "failed" } else { "success" },
                    format!("{:040x}", id as u128 * 0x1234_5678_9abc_def1),
                    failed.then_some("compose up failed: exit status 1"),
                    created,
                    created + 30_000
                ])?;
                for seq in 0..lines {
                    line_text(&mut buf, id, seq);
                    line.execute(params![
                        id,
                        seq as i64,
                        if seq % 10 == 9 { "stderr" } else { "stdout" },
                        buf,
                        created + seq as i64
                    ])?;
                }
                written += lines;
                in_tx += lines + 1;
                i += 1;
            }
        }
        tx.commit()?;
    }
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(c);
    if written != size.lines.max(size.big_log) {
        bail!("seeded {written} lines, meant {}", size.lines);
    }
    Ok(started.elapsed())
}

/// The ids the measured pages use.
struct Targets {
    project_id: i64,
    environment_id: i64,
    big: i64,
    big_lines: usize,
}

/// Each page `requests` times on one kept-alive connection; p99 in ms per page.
async fn measure(
    server: &Server,
    token: &str,
    t: &Targets,
    requests: usize,
) -> Result<Vec<(&'static str, f64, f64)>> {
    let mut http = Http::new(server.addr()?, Some(token));
    let deep = t.big_lines.saturating_sub(t.big_lines / 10) as i64;
    let paths = [
        ("dashboard", "/".to_owned()),
        ("deployments_html", format!("/projects/{}", t.project_id)),
        (
            "deployments_api",
            format!("/api/deployments?environment_id={}&limit=50", t.environment_id),
        ),
        ("logs_html", format!("/deployments/{}", t.big)),
        ("logs_api_first", format!("/api/deployments/{}/logs", t.big)),
        (
            "logs_api_deep",
            format!("/api/deployments/{}/logs?after_seq={deep}&limit=1000", t.big),
        ),
    ];
    let mut out = Vec::new();
    for (page, path) in paths {
        // One warm-up request: the first read of a page pulls its pages into the cache.
        let a = http.get(&path).await?;
        if a.status != 200 {
            bail!("GET {path} answered {}: {}", a.status, a.body);
        }
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let a = http.get(&path).await?;
            if a.status != 200 {
                bail!("GET {path} answered {}", a.status);
            }
            times.push((a.done_at - a.sent_at).as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let p50 = quantile(&times, 0.5).unwrap_or(f64::NAN);
        let p99 = quantile(&times, 0.99).unwrap_or(f64::NAN);
        out.push((page, p50, p99));
    }
    Ok(out)
}

/// Wait for the pruner's pass to end: it logs one line with what it removed.
async fn wait_pruned(log: &Path, before: usize, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text[before.min(text.len())..]
            .lines()
            .find(|l| l.contains("pruned deployment logs past retention"))
        {
            return Ok(line.to_owned());
        }
        if Instant::now() >= deadline {
            bail!(
                "the pruner did not finish a pass within {timeout:?} (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(b: &Bench, res: &mut Results) -> Result<()> {
    let size = b.history;
    let spec = b.fresh_server("history")?;
    let outcome = run_on(&spec, b, res, size).await;
    // 10 M lines are ~2 GB: never leave them behind.
    let _ = std::fs::remove_dir_all(&spec.data_dir);
    outcome
}

async fn run_on(spec: &ServerSpec, b: &Bench, res: &mut Results, size: HistorySize) -> Result<()> {
    let off = spec.with_env("STAGELY_DEPLOYS__LOG_PRUNE_EVERY_SECS", "0");
    // 1. Schema and the projects, through the appliance itself.
    let server = off.start().await?;
    server.wait_ready().await?;
    let token = admin_token(&b.stagely, &spec.data_dir)?;
    let mut http = Http::new(server.addr()?, Some(&token));
    let mut envs = Vec::new();
    for p in 0..size.projects {
        let project = http
            .post_ok(
                "/api/projects",
                &serde_json::json!({"name": format!("history-{p}"), "compose_path": format!("/srv/history-{p}/compose.yaml")}),
                201,
            )
            .await?;
        let pid = project["id"].as_i64().context("project id")?;
        for e in 0..size.environments_per_project {
            let env = http
                .post_ok(
                    &format!("/api/projects/{pid}/environments"),
                    &serde_json::json!({"name": format!("env-{e}")}),
                    201,
                )
                .await?;
            envs.push((pid, env["id"].as_i64().context("environment id")?));
        }
    }
    server.stop().await?;

    // 2. The history, straight into the file.
    let db = spec.data_dir.join("stagely.db");
    let took = seed(&db, &envs, size)?;
    let big = {
        let c = Connection::open(&db)?;
        c.query_row("SELECT MAX(id) FROM deployments", [], |r| r.get::<_, i64>(0))?
    };
    let big_env = envs[(size.deployments - 1) % envs.len()];
    let targets = Targets {
        project_id: big_env.0,
        environment_id: big_env.1,
        big,
        big_lines: size.big_log,
    };
    let (db_size, wal) = db_bytes(&spec.data_dir);
    res.add("history_db_mb_off", mb(db_size + wal));
    res.note(
        "history_db_mb_off",
        format!(
            "{} deployments in {} environments, {} log lines (the newest deployment {} of them), seeded in {:.1} s; \
             {:.1} MB ({:.0} B per line)",
            size.deployments,
            envs.len(),
            size.lines,
            size.big_log,
            took.as_secs_f64(),
            mb(db_size + wal),
            (db_size + wal) as f64 / size.lines.max(1) as f64
        ),
    );

    // 3. Retention off.
    let server = off.start().await?;
    server.wait_ready().await?;
    for (page, p50, p99) in measure(&server, &token, &targets, size.requests).await? {
        res.add(key(page, false), p99);
        res.note(
            key(page, false),
            format!("p50 {p50:.2} ms over {} requests", size.requests),
        );
    }
    server.stop().await?;

    // 4. Retention with the defaults: the pruner's first pass starts with the appliance.
    let log_len = std::fs::metadata(&spec.log).map_or(0, |m| m.len() as usize);
    let on = spec.clone();
    let started = Instant::now();
    let server = on.start().await?;
    server.wait_ready().await?;
    let line = wait_pruned(&spec.log, log_len, Duration::from_secs(3600)).await?;
    let prune_secs = started.elapsed().as_secs_f64();
    res.add("history_prune_secs", prune_secs);
    let (running_db, running_wal) = db_bytes(&spec.data_dir);
    res.note(
        "history_prune_secs",
        format!(
            "first pass with the defaults (50 deployments / 30 days per environment), from the appliance's start: {}; \
             file {:.1} MB + WAL {:.1} MB right after",
            line.split("pruned deployment logs past retention").nth(1).unwrap_or("").trim(),
            mb(running_db),
            mb(running_wal)
        ),
    );
    for (page, p50, p99) in measure(&server, &token, &targets, size.requests).await? {
        res.add(key(page, true), p99);
        res.note(
            key(page, true),
            format!("p50 {p50:.2} ms over {} requests", size.requests),
        );
    }
    server.stop().await?;
    let (db_size, wal) = db_bytes(&spec.data_dir);
    let (freelist, page_size, auto_vacuum, kept_lines): (i64, i64, i64, i64) = {
        let c = Connection::open(&db)?;
        (
            c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?,
            c.query_row("PRAGMA page_size", [], |r| r.get(0))?,
            c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?,
            c.query_row("SELECT COUNT(*) FROM deployment_logs", [], |r| r.get(0))?,
        )
    };
    res.add("history_db_mb_pruned", mb(db_size + wal));
    res.note(
        "history_db_mb_pruned",
        format!(
            "after the pass, the appliance stopped: {kept_lines} lines kept; the file does not shrink: \
             {:.1} MB of it are free pages (freelist {freelist} × {page_size} B; auto_vacuum = {auto_vacuum}), \
             reused by later writes",
            mb(u64::try_from(freelist * page_size).unwrap_or(0))
        ),
    );

    // 5. VACUUM (what docs/operations.md says returns the space, appliance stopped).
    let started = Instant::now();
    Connection::open(&db)?.execute_batch("VACUUM;")?;
    let vacuum_secs = started.elapsed().as_secs_f64();
    let (db_size, wal) = db_bytes(&spec.data_dir);
    res.add("history_db_mb_vacuum", mb(db_size + wal));
    res.note("history_db_mb_vacuum", format!("VACUUM took {vacuum_secs:.1} s"));
    Ok(())
}
