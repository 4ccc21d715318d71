//! The metrics the issue asks for, their targets, per-run values, medians, and the table.
//!
//! Every metric in [`CATALOGUE`] ends up in the report either with a median of its runs or with an
//! explicit "not measured: <reason>". Nothing is ever filled in with a made-up number.

use std::collections::BTreeMap;

use serde::Serialize;

/// How a measured value is judged against its target.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
    /// Reported for context; no target of its own.
    Info,
}

/// One metric of the table.
pub struct Spec {
    pub key: &'static str,
    /// Which benchmark produces it (`--only <group>` reruns just that one).
    pub group: &'static str,
    pub label: &'static str,
    pub target: &'static str,
    pub unit: &'static str,
    pub goal: Goal,
}

const fn spec(
    key: &'static str,
    group: &'static str,
    label: &'static str,
    target: &'static str,
    unit: &'static str,
    goal: Goal,
) -> Spec {
    Spec {
        key,
        group,
        label,
        target,
        unit,
        goal,
    }
}

/// Every benchmark group, in the order they run.
pub const GROUPS: &[&str] = &[
    "appliance",
    "agent",
    "idle",
    "dispatch",
    "logs",
    "slow",
    "storm",
    "overhead",
    "sqlite",
    "abuse",
    "signin",
    "history",
    "webhooks",
    "runtime",
    "replicas",
    "replicas_fleet",
];

pub const CATALOGUE: &[Spec] = &[
    spec(
        "appliance_idle_rss",
        "appliance",
        "appliance idle RSS, no agents, after start",
        "≤ 15 MB",
        "MB",
        Goal::AtMost(15.0),
    ),
    spec(
        "agent_idle_rss",
        "agent",
        "agent idle RSS, connected, no deploy",
        "≤ 5 MB",
        "MB",
        Goal::AtMost(5.0),
    ),
    spec(
        "agent_idle_cpu",
        "agent",
        "agent CPU while idle and connected (heartbeats included)",
        "no CPU between heartbeats (≤ 1 tick/min)",
        "ms/min",
        Goal::AtMost(10.0),
    ),
    spec(
        "agent_idle_wakeups",
        "agent",
        "agent thread wakeups while idle",
        "(context: a ping/pong costs a few)",
        "/min",
        Goal::Info,
    ),
    spec(
        "agent_binary",
        "agent",
        "agent binary (static, stripped)",
        "≤ 6 MB",
        "MB",
        Goal::AtMost(6.0),
    ),
    spec(
        "idle_rss_added",
        "idle",
        "idle agents connected: RSS added to the appliance",
        "≤ 50 MB for 10,000",
        "MB",
        Goal::AtMost(50.0),
    ),
    spec(
        "idle_rss_per_agent",
        "idle",
        "idle agents connected: RSS per agent",
        "≤ 5 KB",
        "KB",
        Goal::AtMost(5.0),
    ),
    spec(
        "idle_heartbeat_cpu",
        "idle",
        "idle agents connected: appliance CPU (heartbeats)",
        "≤ 3 % of one core",
        "%",
        Goal::AtMost(3.0),
    ),
    spec(
        "dispatch_p50",
        "dispatch",
        "dispatch latency p50 (POST sent → agent holds DEPLOY)",
        "≤ 1 ms",
        "ms",
        Goal::AtMost(1.0),
    ),
    spec(
        "dispatch_p99",
        "dispatch",
        "dispatch latency p99",
        "≤ 5 ms",
        "ms",
        Goal::AtMost(5.0),
    ),
    spec(
        "dispatch_api_p50",
        "dispatch",
        "POST /api/deploy answered (202) p50",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "dispatch_floor_p50",
        "dispatch",
        "GET /api/projects/{id} answered p50, same load (the floor)",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "log_lines_per_sec",
        "logs",
        "log throughput, one deploy, stored in SQLite",
        "≥ 100,000 lines/s",
        "lines/s",
        Goal::AtLeast(100_000.0),
    ),
    spec(
        "log_commits_per_100ms",
        "logs",
        "log batching: commits per deploy per 100 ms (max)",
        "≤ 1",
        "commits",
        Goal::AtMost(1.0),
    ),
    spec(
        "log_live_push",
        "logs",
        "log lines pushed to a live browser subscriber",
        "≥ 100,000 lines/s",
        "lines/s",
        Goal::AtLeast(100_000.0),
    ),
    spec(
        "slow_subscriber",
        "slow",
        "slow subscriber: appliance RSS a browser that stops reading costs",
        "bounded (dropped or lags)",
        "MB",
        Goal::Info,
    ),
    spec(
        "storm_30s",
        "storm",
        "reconnect storm: reconnected within 30 s of the kill",
        "≥ 99 %",
        "%",
        Goal::AtLeast(99.0),
    ),
    spec(
        "storm_90s",
        "storm",
        "reconnect storm: reconnected within 90 s of the kill",
        "100 %",
        "%",
        Goal::AtLeast(100.0),
    ),
    spec(
        "storm_t99",
        "storm",
        "reconnect storm: time until 99 % reconnected",
        "(context)",
        "s",
        Goal::Info,
    ),
    spec(
        "storm_503",
        "storm",
        "reconnect storm: handshakes refused with 503",
        "(context)",
        "count",
        Goal::Info,
    ),
    spec(
        "storm_healthz_p99",
        "storm",
        "/healthz latency p99 during the storm",
        "responsive: ≤ 100 ms",
        "ms",
        Goal::AtMost(100.0),
    ),
    spec(
        "storm_healthz_max",
        "storm",
        "/healthz latency max during the storm",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "deploy_overhead",
        "overhead",
        "deploy overhead: POST → agent starts `docker compose up`",
        "≤ 50 ms",
        "ms",
        Goal::AtMost(50.0),
    ),
    spec(
        "sqlite_deploys_per_sec",
        "sqlite",
        "SQLite: deployment records/s (full cycles)",
        "≥ 1,000/s",
        "records/s",
        Goal::AtLeast(1_000.0),
    ),
    spec(
        "flood_agents_online",
        "abuse",
        "agents back online within 30 s during a tokenless handshake flood",
        "100 %",
        "%",
        Goal::AtLeast(100.0),
    ),
    spec(
        "flood_dispatch_p99",
        "abuse",
        "dispatch p99 during a tokenless handshake flood",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "halfopen_healthz_p99",
        "abuse",
        "/healthz p99 (another address) with 1,000 half-open connections from one",
        "answered",
        "ms",
        Goal::Info,
    ),
    spec(
        "signin_peak_rss",
        "signin",
        "appliance peak RSS, 200 concurrent sign-ins (wrong passwords, each client its own address)",
        "bounded (≤ 100 MB)",
        "MB",
        Goal::AtMost(100.0),
    ),
    spec(
        "signin_rss_added",
        "signin",
        "RSS added by the sign-in flood (peak − before)",
        "(context)",
        "MB",
        Goal::Info,
    ),
    spec(
        "signin_busy_share",
        "signin",
        "share of flood sign-ins answered 429 at once (password threads busy)",
        "(context)",
        "%",
        Goal::Info,
    ),
    spec(
        "history_db_mb_off",
        "history",
        "history: database size, retention off (file + WAL)",
        "(context)",
        "MB",
        Goal::Info,
    ),
    spec(
        "history_dashboard_p99_off",
        "history",
        "history: dashboard `/` p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_deployments_html_p99_off",
        "history",
        "history: deployments page (project, HTML) p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_deployments_api_p99_off",
        "history",
        "history: deployments API list (50, one environment) p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_html_p99_off",
        "history",
        "history: logs page (HTML, newest 5,000 lines of the big log) p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_api_first_p99_off",
        "history",
        "history: logs API first page (1,000 lines) p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_api_deep_p99_off",
        "history",
        "history: logs API deep page (1,000 lines at 90 % of the big log) p99, retention off",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_prune_secs",
        "history",
        "history: retention, defaults: the pruner's first pass",
        "(context)",
        "s",
        Goal::Info,
    ),
    spec(
        "history_dashboard_p99_on",
        "history",
        "history: dashboard `/` p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_deployments_html_p99_on",
        "history",
        "history: deployments page (project, HTML) p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_deployments_api_p99_on",
        "history",
        "history: deployments API list p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_html_p99_on",
        "history",
        "history: logs page (HTML) p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_api_first_p99_on",
        "history",
        "history: logs API first page p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_logs_api_deep_p99_on",
        "history",
        "history: logs API deep page p99, after the pruner",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "history_db_mb_pruned",
        "history",
        "history: database size after the pruner (appliance stopped)",
        "(context)",
        "MB",
        Goal::Info,
    ),
    spec(
        "history_db_mb_vacuum",
        "history",
        "history: database size after VACUUM",
        "(context)",
        "MB",
        Goal::Info,
    ),
    spec(
        "webhook_deploy_p50",
        "webhooks",
        "verified push webhook → DEPLOY frame at the agent, p50",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "webhook_deploy_p99",
        "webhooks",
        "verified push webhook → DEPLOY frame at the agent, p99",
        "≤ 20 ms",
        "ms",
        Goal::AtMost(20.0),
    ),
    spec(
        "webhook_burst_ran",
        "webhooks",
        "pushes in a burst to one environment: deployments that ran",
        "(context)",
        "",
        Goal::Info,
    ),
    spec(
        "webhook_burst_newest",
        "webhooks",
        "the last deployment of the burst is of the newest commit (1 = yes)",
        "1",
        "",
        Goal::AtLeast(1.0),
    ),
    spec(
        "runtime_rss_added",
        "runtime",
        "runtime state of every environment: RSS added to the appliance",
        "(context: 10,000 environments, one report each)",
        "MB",
        Goal::Info,
    ),
    spec(
        "runtime_rss_per_env",
        "runtime",
        "runtime state: RSS per environment",
        "(context)",
        "KB",
        Goal::Info,
    ),
    spec(
        "replicas_dispatch_p50",
        "replicas",
        "dispatch p50 across replicas (POST to A → agent on B holds DEPLOY), PostgreSQL",
        "(context: against dispatch_p50, one appliance on SQLite)",
        "ms",
        Goal::Info,
    ),
    spec(
        "replicas_dispatch_p99",
        "replicas",
        "dispatch p99 across replicas",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "replicas_local_p50",
        "replicas",
        "dispatch p50, POST to the agent's own replica, PostgreSQL",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "replicas_local_p99",
        "replicas",
        "dispatch p99, POST to the agent's own replica",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "replicas_idle_rss_per_agent",
        "replicas_fleet",
        "two replicas, each holding the same count of idle agents: RSS per agent",
        "(context: against idle_rss_per_agent, one appliance)",
        "KB",
        Goal::Info,
    ),
    spec(
        "replicas_idle_cpu",
        "replicas_fleet",
        "two replicas with idle agents: CPU of each replica (heartbeats, lease renewals)",
        "(context: against idle_heartbeat_cpu)",
        "%",
        Goal::Info,
    ),
    spec(
        "replicas_idle_pg_cpu",
        "replicas_fleet",
        "two replicas with idle agents: CPU of the PostgreSQL server",
        "(context)",
        "%",
        Goal::Info,
    ),
    spec(
        "replicas_storm_30s",
        "replicas_fleet",
        "one of two replicas SIGKILLed: its agents on the other within 30 s",
        "≥ 99 %",
        "%",
        Goal::AtLeast(99.0),
    ),
    spec(
        "replicas_storm_90s",
        "replicas_fleet",
        "one of two replicas SIGKILLed: its agents on the other within 90 s",
        "100 %",
        "%",
        Goal::AtLeast(100.0),
    ),
    spec(
        "replicas_storm_t99",
        "replicas_fleet",
        "replica storm: time until 99 % moved",
        "(context)",
        "s",
        Goal::Info,
    ),
    spec(
        "replicas_storm_503",
        "replicas_fleet",
        "replica storm: handshakes refused with 503",
        "(context)",
        "count",
        Goal::Info,
    ),
    spec(
        "replicas_storm_healthz_p99",
        "replicas_fleet",
        "/healthz p99 of the surviving replica during the storm",
        "responsive: ≤ 100 ms",
        "ms",
        Goal::AtMost(100.0),
    ),
    spec(
        "replicas_storm_healthz_max",
        "replicas_fleet",
        "/healthz max of the surviving replica during the storm",
        "(context)",
        "ms",
        Goal::Info,
    ),
    spec(
        "replicas_storm_a_dropped",
        "replicas_fleet",
        "replica storm: the surviving replica's own agents that lost their connection",
        "0",
        "count",
        Goal::AtMost(0.0),
    ),
    spec(
        "replicas_storm_online",
        "replicas_fleet",
        "replica storm: agents online on the survivor's API once the dead one's leases ran out",
        "100 %",
        "%",
        Goal::AtLeast(100.0),
    ),
];

/// A metric's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub group: &'static str,
    pub metric: &'static str,
    pub target: &'static str,
    pub unit: &'static str,
    pub runs: Vec<f64>,
    pub median: Option<f64>,
    pub verdict: &'static str,
    pub not_measured: Option<String>,
    pub notes: Vec<String>,
}

/// Values gathered per metric across runs.
#[derive(Default)]
pub struct Results {
    values: BTreeMap<&'static str, Vec<f64>>,
    skipped: BTreeMap<&'static str, String>,
    notes: BTreeMap<&'static str, Vec<String>>,
}

impl Results {
    pub fn add(&mut self, key: &'static str, value: f64) {
        self.values.entry(key).or_default().push(value);
    }

    pub fn not_measured(&mut self, key: &'static str, reason: impl Into<String>) {
        self.skipped.entry(key).or_insert_with(|| reason.into());
    }

    /// Mark every metric of a group not measured (unless it already has values).
    pub fn group_not_measured(&mut self, group: &str, reason: &str) {
        for s in CATALOGUE.iter().filter(|s| s.group == group) {
            self.not_measured(s.key, reason);
        }
    }

    pub fn note(&mut self, key: &'static str, note: impl Into<String>) {
        let note = note.into();
        let notes = self.notes.entry(key).or_default();
        if !notes.contains(&note) {
            notes.push(note);
        }
    }

    pub fn rows(&self, groups: &[&str]) -> Vec<Row> {
        CATALOGUE
            .iter()
            .filter(|s| groups.contains(&s.group))
            .map(|s| {
                let runs = self.values.get(s.key).cloned().unwrap_or_default();
                let median = median(&runs);
                let not_measured = match median {
                    Some(_) => None,
                    None => Some(
                        self.skipped
                            .get(s.key)
                            .cloned()
                            .unwrap_or_else(|| "no run produced a value".into()),
                    ),
                };
                let verdict = match (median, s.goal) {
                    (None, _) => "not measured",
                    (Some(_), Goal::Info) => "info",
                    (Some(v), Goal::AtMost(t)) if v <= t => "pass",
                    (Some(v), Goal::AtLeast(t)) if v >= t => "pass",
                    (Some(_), _) => "MISS",
                };
                Row {
                    key: s.key,
                    group: s.group,
                    metric: s.label,
                    target: s.target,
                    unit: s.unit,
                    runs,
                    median,
                    verdict,
                    not_measured,
                    notes: self.notes.get(s.key).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Median (mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `q`-quantile (0..=1) of a sample, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

pub fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A Markdown table of the rows, for the terminal and BENCHMARKS.md.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | target | measured (median) | runs | verdict |\n| --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let measured = match (r.median, &r.not_measured) {
            (Some(v), _) => format!("{} {}", fmt_value(v), r.unit),
            (None, Some(why)) => format!("not measured: {why}"),
            (None, None) => "not measured".into(),
        };
        let runs = r
            .runs
            .iter()
            .map(|v| fmt_value(*v))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.metric, r.target, measured, runs, r.verdict
        ));
    }
    out
}

/// What the machine is, for the report.
pub fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_mb": mem_kb / 1024,
        "cpu": cpu,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        // The machine may be shared: the load it carried is part of the result.
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}
