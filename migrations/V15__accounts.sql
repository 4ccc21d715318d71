-- Issue 15: password-reset links, and the counters `/metrics` reads instead of scanning tables.

-- One-time password-reset links an admin issues for a local account. Like invitations: the
-- token is random, only its SHA-256 is stored, it expires, works once and can be withdrawn.
-- AUTOINCREMENT: an id is never reused (the audit log names links by id).
CREATE TABLE password_resets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  BLOB NOT NULL UNIQUE,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX password_resets_user ON password_resets(user_id);

-- Counters for `/metrics`, kept by the triggers below so a scrape reads a few rows instead of
-- counting big tables (deployment_logs above all). `metric` names the series, `label` its one
-- label value. NOTE: a later migration that rebuilds `deployments`, `deployment_logs` or
-- `webhook_deliveries` (create new, copy, drop, rename) drops these triggers with the old table:
-- it must create them again (a unit test in src/metrics/store.rs checks they exist).
CREATE TABLE metric_counts (
    metric  TEXT NOT NULL,
    label   TEXT NOT NULL,
    value   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (metric, label)
) STRICT, WITHOUT ROWID;

-- Deploy durations (seconds, from queued to finished, success and failed only): a cumulative
-- histogram with the buckets `/metrics` exposes. `le` is the upper bound (+Inf as 1e308).
CREATE TABLE metric_deploy_duration (
    le     REAL NOT NULL PRIMARY KEY,
    count  INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO metric_deploy_duration (le) VALUES (1), (5), (10), (30), (60), (120), (300), (600), (1e308);
INSERT INTO metric_counts (metric, label, value) VALUES ('deploy_duration_sum_ms', '', 0);

-- Stored deployments per status (a gauge).
INSERT INTO metric_counts (metric, label, value)
    SELECT 'deployments', status, count(*) FROM deployments GROUP BY status;
CREATE TRIGGER metric_deployments_insert AFTER INSERT ON deployments BEGIN
    INSERT INTO metric_counts (metric, label, value) VALUES ('deployments', NEW.status, 1)
        ON CONFLICT (metric, label) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER metric_deployments_status AFTER UPDATE OF status ON deployments
    WHEN OLD.status != NEW.status BEGIN
    UPDATE metric_counts SET value = value - 1 WHERE metric = 'deployments' AND label = OLD.status;
    INSERT INTO metric_counts (metric, label, value) VALUES ('deployments', NEW.status, 1)
        ON CONFLICT (metric, label) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER metric_deployments_delete AFTER DELETE ON deployments BEGIN
    UPDATE metric_counts SET value = value - 1 WHERE metric = 'deployments' AND label = OLD.status;
END;

-- A deployment counts in the histogram once, when it is both finished (success or failed) and
-- has its finished_at, in whichever order the two are written. Deleting it later does not
-- un-count it (a histogram only grows).
UPDATE metric_deploy_duration SET count = (
    SELECT count(*) FROM deployments
    WHERE status IN ('success', 'failed') AND finished_at IS NOT NULL
      AND (finished_at - COALESCE(queued_at, created_at)) / 1000.0 <= metric_deploy_duration.le
);
UPDATE metric_counts SET value = (
    SELECT IFNULL(sum(max(finished_at - COALESCE(queued_at, created_at), 0)), 0) FROM deployments
    WHERE status IN ('success', 'failed') AND finished_at IS NOT NULL
) WHERE metric = 'deploy_duration_sum_ms';
CREATE TRIGGER metric_deploy_finished AFTER UPDATE OF status, finished_at ON deployments
    WHEN NEW.status IN ('success', 'failed') AND NEW.finished_at IS NOT NULL
     AND NOT (OLD.status IN ('success', 'failed') AND OLD.finished_at IS NOT NULL) BEGIN
    UPDATE metric_deploy_duration SET count = count + 1
        WHERE le >= (NEW.finished_at - COALESCE(NEW.queued_at, NEW.created_at)) / 1000.0;
    UPDATE metric_counts SET value = value + max(NEW.finished_at - COALESCE(NEW.queued_at, NEW.created_at), 0)
        WHERE metric = 'deploy_duration_sum_ms';
END;

CREATE TRIGGER metric_deploy_finished_insert AFTER INSERT ON deployments
    WHEN NEW.status IN ('success', 'failed') AND NEW.finished_at IS NOT NULL BEGIN
    UPDATE metric_deploy_duration SET count = count + 1
        WHERE le >= (NEW.finished_at - COALESCE(NEW.queued_at, NEW.created_at)) / 1000.0;
    UPDATE metric_counts SET value = value + max(NEW.finished_at - COALESCE(NEW.queued_at, NEW.created_at), 0)
        WHERE metric = 'deploy_duration_sum_ms';
END;

-- Stored log lines (a gauge).
INSERT INTO metric_counts (metric, label, value)
    SELECT 'log_lines', '', count(*) FROM deployment_logs;
CREATE TRIGGER metric_log_lines_insert AFTER INSERT ON deployment_logs BEGIN
    UPDATE metric_counts SET value = value + 1 WHERE metric = 'log_lines' AND label = '';
END;
CREATE TRIGGER metric_log_lines_delete AFTER DELETE ON deployment_logs BEGIN
    UPDATE metric_counts SET value = value - 1 WHERE metric = 'log_lines' AND label = '';
END;

-- Push-webhook deliveries by final result (a counter: pruning old deliveries does not lower it).
INSERT INTO metric_counts (metric, label, value)
    SELECT 'webhook_deliveries', result, count(*) FROM webhook_deliveries
    WHERE result != 'processing' GROUP BY result;
CREATE TRIGGER metric_webhook_insert AFTER INSERT ON webhook_deliveries
    WHEN NEW.result != 'processing' BEGIN
    INSERT INTO metric_counts (metric, label, value) VALUES ('webhook_deliveries', NEW.result, 1)
        ON CONFLICT (metric, label) DO UPDATE SET value = value + 1;
END;
CREATE TRIGGER metric_webhook_result AFTER UPDATE OF result ON webhook_deliveries
    WHEN OLD.result = 'processing' AND NEW.result != 'processing' BEGIN
    INSERT INTO metric_counts (metric, label, value) VALUES ('webhook_deliveries', NEW.result, 1)
        ON CONFLICT (metric, label) DO UPDATE SET value = value + 1;
END;
