-- Stagely schema v18: protected environments and deploy approvals (issue 16).
--
-- An environment can be protected: only admins, the people it names and the people whose role
-- on its project is at or above a role it names may deploy it (`environment_deployers`, one row
-- per entry). With `require_approval` a permitted deploy is recorded `awaiting_approval` until
-- another permitted person approves it (it then waits in the queue as `waiting`); one nobody
-- approves within `deploys.approval_ttl_secs` ends `expired`. So `deployments` is rebuilt for
-- its status CHECK, as in V16 (foreign keys are OFF while migrations run; the guard refuses to
-- run otherwise): every row, index and trigger kept. New columns: who triggered it as a person
-- (`triggered_by_user`, for the self-approval rule) and who approved it, when.
--
-- Existing environments whose name looks like production (`projects::pages::is_production`:
-- starts with "prod", is "live" or contains "production") become protected with the deployers
-- ["maintainer"] and no approval: today's members (maintainers on every project) keep deploying,
-- a project's deployers and viewers do not. New ones get the same at creation. An admin can
-- change it. tests: db.rs `v18_*`, tests/it/protected_envs.rs.

CREATE TEMP TABLE v18_guard (foreign_keys_must_be_off INTEGER CHECK (foreign_keys_must_be_off = 0));
INSERT INTO v18_guard SELECT foreign_keys FROM pragma_foreign_keys;
DROP TABLE v18_guard;

ALTER TABLE environments ADD COLUMN protected INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1));
ALTER TABLE environments ADD COLUMN require_approval INTEGER NOT NULL DEFAULT 0 CHECK (require_approval IN (0, 1));

CREATE TABLE environment_deployers (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('role', 'user')),
    role            TEXT CHECK (role IS NULL OR role IN ('deployer', 'maintainer')),
    user_id         INTEGER REFERENCES users(id) ON DELETE CASCADE,
    CHECK ((kind = 'role' AND role IS NOT NULL AND user_id IS NULL)
        OR (kind = 'user' AND user_id IS NOT NULL AND role IS NULL))
) STRICT;
CREATE INDEX environment_deployers_environment ON environment_deployers(environment_id, id);
CREATE UNIQUE INDEX environment_deployers_role ON environment_deployers(environment_id, role) WHERE kind = 'role';
CREATE UNIQUE INDEX environment_deployers_user ON environment_deployers(environment_id, user_id) WHERE kind = 'user';

UPDATE environments SET protected = 1
    WHERE lower(name) LIKE 'prod%' OR lower(name) = 'live' OR lower(name) LIKE '%production%';
INSERT INTO environment_deployers (environment_id, kind, role)
    SELECT id, 'role', 'maintainer' FROM environments WHERE protected = 1;

-- deployments (its metric triggers go with the old table and are created again below; its
-- AUTOINCREMENT sequence is kept, so an id is never given again) -------------------------------
CREATE TEMP TABLE v18_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'deployments';
CREATE TABLE deployments_v18 (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id        INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id    INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    agent_id          INTEGER REFERENCES agents(id) ON DELETE SET NULL,
    status            TEXT NOT NULL CHECK (status IN
                          ('awaiting_approval', 'waiting', 'queued', 'running', 'success', 'failed',
                           'superseded', 'cancelled', 'expired')),
    git_ref           TEXT NOT NULL,
    commit_sha        TEXT,
    error             TEXT,
    services          TEXT,
    triggered_by      TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    log_pruned_at     INTEGER,
    superseded_by     INTEGER REFERENCES deployments_v18(id) ON DELETE SET NULL,
    queued_at         INTEGER,
    redeploy_of       INTEGER REFERENCES deployments_v18(id) ON DELETE SET NULL,
    rollback_of       INTEGER REFERENCES deployments_v18(id) ON DELETE SET NULL,
    triggered_by_user INTEGER REFERENCES users(id) ON DELETE SET NULL,
    approved_by       TEXT,
    approved_by_user  INTEGER REFERENCES users(id) ON DELETE SET NULL,
    approved_at       INTEGER
) STRICT;
INSERT INTO deployments_v18 (id, project_id, environment_id, agent_id, status, git_ref, commit_sha, error, services,
        triggered_by, created_at, finished_at, log_pruned_at, superseded_by, queued_at, redeploy_of, rollback_of)
    SELECT id, project_id, environment_id, agent_id, status, git_ref, commit_sha, error, services,
        triggered_by, created_at, finished_at, log_pruned_at, superseded_by, queued_at, redeploy_of, rollback_of
    FROM deployments;
DROP TABLE deployments;
ALTER TABLE deployments_v18 RENAME TO deployments;
DELETE FROM sqlite_sequence WHERE name = 'deployments';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'deployments', MAX(IFNULL((SELECT MAX(id) FROM deployments), 0), IFNULL((SELECT MAX(seq) FROM v18_sequence), 0));
DROP TABLE v18_sequence;
CREATE INDEX deployments_environment ON deployments(environment_id, id);
CREATE UNIQUE INDEX deployments_one_active
    ON deployments(environment_id) WHERE status IN ('queued', 'running');
CREATE INDEX deployments_log_kept ON deployments(id) WHERE log_pruned_at IS NULL;
CREATE INDEX deployments_waiting ON deployments(environment_id, id) WHERE status = 'waiting';
CREATE INDEX deployments_awaiting ON deployments(id) WHERE status = 'awaiting_approval';

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
