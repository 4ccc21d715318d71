//! The benchmark harness in quick mode: it runs end to end against a real `stagely serve` and
//! reports every metric of BENCHMARKS.md, each with a value or an explicit "not measured:
//! reason". Speeds are never asserted here: this test keeps the harness from rotting.

use std::process::Command;

use serde_json::Value;

/// Every metric the table asks for (crates/loadgen/src/report.rs `CATALOGUE`).
const METRICS: &[&str] = &[
    "appliance_idle_rss",
    "agent_idle_rss",
    "runtime_rss_added",
    "runtime_rss_per_env",
    "agent_idle_cpu",
    "agent_idle_wakeups",
    "agent_binary",
    "idle_rss_added",
    "idle_rss_per_agent",
    "idle_heartbeat_cpu",
    "dispatch_p50",
    "dispatch_p99",
    "dispatch_api_p50",
    "dispatch_floor_p50",
    "log_lines_per_sec",
    "log_commits_per_100ms",
    "log_live_push",
    "slow_subscriber",
    "storm_30s",
    "storm_90s",
    "storm_t99",
    "storm_503",
    "storm_healthz_p99",
    "storm_healthz_max",
    "deploy_overhead",
    "sqlite_deploys_per_sec",
    "flood_agents_online",
    "flood_dispatch_p99",
    "halfopen_healthz_p99",
    "signin_peak_rss",
    "signin_rss_added",
    "signin_busy_share",
    "history_db_mb_off",
    "history_dashboard_p99_off",
    "history_deployments_html_p99_off",
    "history_deployments_api_p99_off",
    "history_logs_html_p99_off",
    "history_logs_api_first_p99_off",
    "history_logs_api_deep_p99_off",
    "history_prune_secs",
    "history_dashboard_p99_on",
    "history_deployments_html_p99_on",
    "history_deployments_api_p99_on",
    "history_logs_html_p99_on",
    "history_logs_api_first_p99_on",
    "history_logs_api_deep_p99_on",
    "history_db_mb_pruned",
    "history_db_mb_vacuum",
    "webhook_deploy_p50",
    "webhook_deploy_p99",
    "webhook_burst_ran",
    "webhook_burst_newest",
    "replicas_dispatch_p50",
    "replicas_dispatch_p99",
    "replicas_local_p50",
    "replicas_local_p99",
    "replicas_idle_rss_per_agent",
    "replicas_idle_cpu",
    "replicas_idle_pg_cpu",
    "replicas_storm_30s",
    "replicas_storm_90s",
    "replicas_storm_t99",
    "replicas_storm_503",
    "replicas_storm_healthz_p99",
    "replicas_storm_healthz_max",
    "replicas_storm_a_dropped",
    "replicas_storm_online",
];

#[test]
fn quick_bench_reports_every_metric() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let run = Command::new(crate::bins::loadgen())
        .args([
            "bench",
            "--quick",
            "--runs",
            "1",
            "--stagely",
            env!("CARGO_BIN_EXE_stagely"),
        ])
        .args(["--agent", crate::bins::agent()])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(&out)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "loadgen failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let report: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["mode"], "quick");
    assert!(report["machine"]["nproc"].as_u64().unwrap() > 0);
    let rows = report["metrics"].as_array().unwrap();
    for key in METRICS {
        let row = rows
            .iter()
            .find(|r| r["key"] == *key)
            .unwrap_or_else(|| panic!("metric {key} missing from the report\n{stdout}"));
        let value = row["median"].as_f64();
        let why = row["not_measured"].as_str().unwrap_or_default();
        assert!(
            value.is_some_and(f64::is_finite) == why.is_empty(),
            "{key} must have exactly one of a value or a reason: {row}\nstderr:\n{stderr}"
        );
        assert!(
            stdout.contains(row["metric"].as_str().unwrap()),
            "{key} is not in the printed table"
        );
    }
    // What the core control plane has must be measured, not skipped.
    for key in [
        "appliance_idle_rss",
        "idle_rss_added",
        "idle_heartbeat_cpu",
        "dispatch_p50",
        "dispatch_p99",
        "log_lines_per_sec",
        "log_commits_per_100ms",
        "log_live_push",
        "slow_subscriber",
        "storm_30s",
        "storm_90s",
        "storm_healthz_p99",
        "sqlite_deploys_per_sec",
        "history_db_mb_off",
        "history_logs_api_deep_p99_off",
        "history_prune_secs",
        "history_deployments_html_p99_on",
        "history_db_mb_vacuum",
    ] {
        let row = rows.iter().find(|r| r["key"] == key).unwrap();
        assert!(
            row["median"].is_number(),
            "{key} was not measured: {row}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(rows.len(), METRICS.len(), "a metric without a test entry");
}
