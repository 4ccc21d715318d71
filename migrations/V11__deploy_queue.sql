-- Stagely schema v11: a queue per environment (issue 13). New states: `waiting` (recorded, not
-- sent: another deployment of the environment is queued or running), `superseded` (never ran: a
-- newer waiting one replaced it, `superseded_by`) and `cancelled`. `queued_at` is when a
-- deployment was handed to its agent (the run's timeout counts from there, not from the trigger).
--
-- SQLite cannot change a CHECK in place, so `deployments` is rebuilt. Refinery runs this in a
-- transaction on a connection with foreign_keys=ON, where the pragma cannot be switched off and
-- dropping `deployments` would cascade into its children. So the children are copied aside
-- first, dropped, and rebuilt after the parent (same columns, same rowids, same indexes).
-- tests: db.rs `v11_keeps_every_row_and_passes_the_foreign_key_check`.

CREATE TABLE v11_deployment_secrets AS SELECT rowid AS rid, * FROM deployment_secrets;
CREATE TABLE v11_deployment_logs AS SELECT * FROM deployment_logs;
DROP TABLE deployment_logs;
DROP TABLE deployment_secrets;

CREATE TABLE deployments_v11 (
    id              INTEGER PRIMARY KEY,
    project_id      INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    agent_id        INTEGER REFERENCES agents(id) ON DELETE SET NULL,
    status          TEXT NOT NULL CHECK (status IN
                        ('waiting', 'queued', 'running', 'success', 'failed', 'superseded', 'cancelled')),
    git_ref         TEXT NOT NULL,
    commit_sha      TEXT,
    error           TEXT,
    services        TEXT,
    triggered_by    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    log_pruned_at   INTEGER,
    superseded_by   INTEGER REFERENCES deployments_v11(id) ON DELETE SET NULL,
    queued_at       INTEGER
) STRICT;
INSERT INTO deployments_v11 (id, project_id, environment_id, agent_id, status, git_ref, commit_sha,
        error, services, triggered_by, created_at, finished_at, log_pruned_at, queued_at)
    SELECT id, project_id, environment_id, agent_id, status, git_ref, commit_sha,
        error, services, triggered_by, created_at, finished_at, log_pruned_at, created_at
    FROM deployments;
DROP TABLE deployments;
ALTER TABLE deployments_v11 RENAME TO deployments;

CREATE INDEX deployments_environment ON deployments(environment_id, id);
-- Still one deploy at a time per environment, enforced by the database itself: `waiting` rows
-- are outside the index, so any number may wait.
CREATE UNIQUE INDEX deployments_one_active
    ON deployments(environment_id) WHERE status IN ('queued', 'running');
CREATE INDEX deployments_log_kept ON deployments(id) WHERE log_pruned_at IS NULL;
-- The queue: the waiting deployments of one environment, newest first.
CREATE INDEX deployments_waiting ON deployments(environment_id, id) WHERE status = 'waiting';

CREATE TABLE deployment_secrets (
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    secret_id      INTEGER NOT NULL,
    key            TEXT NOT NULL,
    scope          TEXT NOT NULL,
    service        TEXT,
    version        INTEGER NOT NULL
) STRICT;
INSERT INTO deployment_secrets (rowid, deployment_id, secret_id, key, scope, service, version)
    SELECT rid, deployment_id, secret_id, key, scope, service, version FROM v11_deployment_secrets;
CREATE INDEX deployment_secrets_deployment ON deployment_secrets(deployment_id);

CREATE TABLE deployment_logs (
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    stream         TEXT NOT NULL,
    line           TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) STRICT, WITHOUT ROWID;
INSERT INTO deployment_logs SELECT deployment_id, seq, stream, line, at FROM v11_deployment_logs;

DROP TABLE v11_deployment_secrets;
DROP TABLE v11_deployment_logs;
