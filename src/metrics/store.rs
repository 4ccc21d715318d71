//! SQL for `/metrics`: the counters the V15 triggers keep (a few rows, never a table scan).

use crate::db::{Backend, Conn};

use crate::db::DbError;

/// The stored counters as read in one go.
pub struct Counts {
    /// (metric, label, value) rows of `metric_counts`.
    pub counts: Vec<(String, String, i64)>,
    /// The deploy-duration histogram: (upper bound in seconds, cumulative count), ascending.
    pub buckets: Vec<(f64, i64)>,
}

pub fn read(c: &Conn<'_>) -> Result<Counts, DbError> {
    let counts = c
        .prepare_cached("SELECT metric, label, value FROM metric_counts")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let buckets = c
        .prepare_cached("SELECT le, count FROM metric_deploy_duration ORDER BY le")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Counts { counts, buckets })
}

/// The triggers that keep the counters (a migration that rebuilds one of their tables must
/// create them again; the tests check they all exist).
pub const TRIGGERS: [&str; 10] = [
    "metric_deployments_insert",
    "metric_deployments_status",
    "metric_deployments_delete",
    "metric_deploy_finished",
    "metric_deploy_finished_insert",
    "metric_log_lines_insert",
    "metric_log_lines_delete",
    "metric_webhook_insert",
    "metric_webhook_result",
    // Not a trigger but the same promise: the histogram's rows.
    "metric_deploy_duration",
];

/// PostgreSQL's triggers that keep the counters: one per table, each calling a function for
/// every kind of change (migrations/postgres/baseline.sql), plus the histogram table.
pub const PG_TRIGGERS: [&str; 4] = [
    "metric_deployments",
    "metric_log_lines",
    "metric_webhook",
    "metric_deploy_duration",
];

/// Which of the store's triggers (and the histogram table) are missing from the schema:
/// [`TRIGGERS`] in SQLite's catalog, [`PG_TRIGGERS`] in PostgreSQL's.
pub fn missing_triggers(c: &Conn<'_>) -> Result<Vec<&'static str>, DbError> {
    let (names, sql): (&[&'static str], &str) = match c.backend() {
        Backend::Sqlite => (
            &TRIGGERS,
            "SELECT count(*) FROM sqlite_master WHERE name = ?1 AND type IN ('trigger', 'table')",
        ),
        Backend::Postgres => (
            &PG_TRIGGERS,
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = CAST(?1 AS TEXT) AND NOT tgisinternal)
                  + (SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = CAST(?1 AS TEXT))",
        ),
    };
    let mut missing = Vec::new();
    for &name in names {
        let found: i64 = c.query_row(sql, [name], |r| r.get(0))?;
        if found == 0 {
            missing.push(name);
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn the_counters_follow_inserts_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        assert!(db.read_blocking(missing_triggers).unwrap().is_empty());
        db.write_blocking(|tx| {
            tx.execute_batch(
                "INSERT INTO projects VALUES (1, 'shop', NULL, 'main', 'compose.yaml', 'never', 0, 0);
                 INSERT INTO environments (id, project_id, name, created_at, compose_project) VALUES (1, 1, 'prod', 0, 'shop-prod');
                 INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at, queued_at)
                     VALUES (1, 1, 1, 'queued', 'main', 't', 0, 1000);
                 UPDATE deployments SET status = 'running' WHERE id = 1;
                 UPDATE deployments SET status = 'success', finished_at = 8000 WHERE id = 1;
                 INSERT INTO deployment_logs VALUES (1, 0, 'stdout', 'a', 1), (1, 1, 'stdout', 'b', 2);
                 INSERT INTO deployments (id, project_id, environment_id, status, git_ref, triggered_by, created_at)
                     VALUES (2, 1, 1, 'queued', 'main', 't', 0);
                 DELETE FROM deployments WHERE id = 2;",
            )?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        let counts = db.read_blocking(read).unwrap();
        let get = |m: &str, l: &str| {
            counts
                .counts
                .iter()
                .find(|(a, b, _)| a == m && b == l)
                .map_or(0, |r| r.2)
        };
        assert_eq!(get("deployments", "success"), 1);
        assert_eq!(get("deployments", "queued"), 0);
        assert_eq!(get("deployments", "running"), 0);
        assert_eq!(get("log_lines", ""), 2);
        assert_eq!(get("deploy_duration_sum_ms", ""), 7000);
        // 7 s: not in the 1 s or 5 s buckets, in every one from 10 s up.
        let buckets: Vec<i64> = counts.buckets.iter().map(|b| b.1).collect();
        assert_eq!(buckets, vec![0, 0, 1, 1, 1, 1, 1, 1, 1]);
        // The cascade from a project's deletion lowers the gauges too.
        db.write_blocking(|tx| {
            tx.execute("DELETE FROM projects WHERE id = 1", [])
                .map_err(DbError::from)
        })
        .unwrap();
        let counts = db.read_blocking(read).unwrap();
        let after = |m: &str, l: &str| {
            counts
                .counts
                .iter()
                .find(|(a, b, _)| a == m && b == l)
                .map_or(0, |r| r.2)
        };
        assert_eq!(after("deployments", "success"), 0);
        assert_eq!(after("log_lines", ""), 0);
    }
}
