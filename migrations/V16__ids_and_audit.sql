-- Stagely schema v16: ids are never reused, and the audit log keeps the names (issue 15).
--
-- A table whose key is a plain `INTEGER PRIMARY KEY` hands out MAX(id) + 1, so deleting the
-- newest project and creating another gave the new one the old one's id, and the audit log's
-- "project #3" named two objects. Every table whose id a user sees or the audit log names is
-- rebuilt with AUTOINCREMENT, every row, id, index, trigger and CHECK kept, and its
-- `sqlite_sequence` starts past the highest id it ever had: its own rows and the ids only the
-- audit log still remembers (an object deleted before this upgrade).
--
-- Unlike V11 and V14, this runs with foreign keys OFF: `Db::open` switches them off before
-- refinery's transaction (the pragma is a no-op inside one), runs the migrations, runs
-- `PRAGMA foreign_key_check` (start fails if it finds anything) and switches them on again,
-- the procedure SQLite documents for schema changes (create new, copy, drop old, rename). So
-- dropping a parent here cascades nowhere. The guard below refuses to run with them on.
-- tests: db.rs `v16_*`.

CREATE TEMP TABLE v16_guard (foreign_keys_must_be_off INTEGER CHECK (foreign_keys_must_be_off = 0));
INSERT INTO v16_guard SELECT foreign_keys FROM pragma_foreign_keys;
DROP TABLE v16_guard;

-- users ------------------------------------------------------------------------------------------
CREATE TABLE users_v16 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    github_login  TEXT UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    github_id     INTEGER
) STRICT;
INSERT INTO users_v16 (id, username, display_name, password_hash, github_login, role, disabled, created_at, github_id)
    SELECT id, username, display_name, password_hash, github_login, role, disabled, created_at, github_id FROM users;
DROP TABLE users;
ALTER TABLE users_v16 RENAME TO users;
CREATE UNIQUE INDEX users_github_id ON users(github_id);

-- api_tokens -------------------------------------------------------------------------------------
CREATE TABLE api_tokens_v16 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    user_id      INTEGER REFERENCES users(id) ON DELETE CASCADE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
INSERT INTO api_tokens_v16 (id, name, token_hash, user_id, role, created_at, last_used_at, revoked_at)
    SELECT id, name, token_hash, user_id, role, created_at, last_used_at, revoked_at FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_v16 RENAME TO api_tokens;

-- signup_links (setup and invite links) ----------------------------------------------------------
CREATE TABLE signup_links_v16 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash      BLOB NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('setup', 'invite')),
    role            TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_by      TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    used_at         INTEGER,
    used_by         INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_by_user INTEGER REFERENCES users(id) ON DELETE SET NULL
) STRICT;
INSERT INTO signup_links_v16 (id, token_hash, kind, role, created_by, created_at, expires_at, used_at, used_by, created_by_user)
    SELECT id, token_hash, kind, role, created_by, created_at, expires_at, used_at, used_by, created_by_user FROM signup_links;
DROP TABLE signup_links;
ALTER TABLE signup_links_v16 RENAME TO signup_links;

-- projects ---------------------------------------------------------------------------------------
CREATE TABLE projects_v16 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL UNIQUE,
    repo_url     TEXT,
    git_ref      TEXT NOT NULL,
    compose_path TEXT NOT NULL,
    pull         TEXT NOT NULL CHECK (pull IN ('always', 'missing', 'never')),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;
INSERT INTO projects_v16 (id, name, repo_url, git_ref, compose_path, pull, created_at, updated_at)
    SELECT id, name, repo_url, git_ref, compose_path, pull, created_at, updated_at FROM projects;
DROP TABLE projects;
ALTER TABLE projects_v16 RENAME TO projects;

-- environments -----------------------------------------------------------------------------------
CREATE TABLE environments_v16 (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id            INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    git_ref               TEXT,
    created_at            INTEGER NOT NULL,
    compose_project       TEXT,
    log_keep_deployments  INTEGER
        CHECK (log_keep_deployments IS NULL OR log_keep_deployments BETWEEN 0 AND 1000000),
    log_keep_days         INTEGER
        CHECK (log_keep_days IS NULL OR log_keep_days BETWEEN 0 AND 36500),
    deploy_on_push        INTEGER NOT NULL DEFAULT 0 CHECK (deploy_on_push IN (0, 1)),
    deploy_on_tag         TEXT
        CHECK (deploy_on_tag IS NULL OR length(deploy_on_tag) BETWEEN 1 AND 100),
    auto_rollback         INTEGER NOT NULL DEFAULT 0 CHECK (auto_rollback IN (0, 1)),
    UNIQUE (project_id, name)
) STRICT;
INSERT INTO environments_v16 (id, project_id, name, git_ref, created_at, compose_project, log_keep_deployments,
        log_keep_days, deploy_on_push, deploy_on_tag, auto_rollback)
    SELECT id, project_id, name, git_ref, created_at, compose_project, log_keep_deployments,
        log_keep_days, deploy_on_push, deploy_on_tag, auto_rollback FROM environments;
DROP TABLE environments;
ALTER TABLE environments_v16 RENAME TO environments;
CREATE UNIQUE INDEX environments_compose_project ON environments (compose_project);

-- agents -----------------------------------------------------------------------------------------
CREATE TABLE agents_v16 (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    environment_id       INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name                 TEXT NOT NULL,
    token_hash           BLOB NOT NULL UNIQUE,
    online               INTEGER NOT NULL DEFAULT 0,
    last_heartbeat       INTEGER,
    agent_version        TEXT,
    hostname             TEXT,
    docker_version       TEXT,
    compose_version      TEXT,
    created_at           INTEGER NOT NULL,
    revoked_at           INTEGER,
    recipient            TEXT,
    recipient_pinned_at  INTEGER,
    identity_mismatch_at INTEGER,
    identity_mismatch    TEXT,
    second_connection_at INTEGER,
    second_connection    TEXT,
    last_address         TEXT,
    capabilities         TEXT NOT NULL DEFAULT ''
) STRICT;
INSERT INTO agents_v16 (id, environment_id, name, token_hash, online, last_heartbeat, agent_version, hostname,
        docker_version, compose_version, created_at, revoked_at, recipient, recipient_pinned_at,
        identity_mismatch_at, identity_mismatch, second_connection_at, second_connection, last_address, capabilities)
    SELECT id, environment_id, name, token_hash, online, last_heartbeat, agent_version, hostname,
        docker_version, compose_version, created_at, revoked_at, recipient, recipient_pinned_at,
        identity_mismatch_at, identity_mismatch, second_connection_at, second_connection, last_address, capabilities
    FROM agents;
DROP TABLE agents;
ALTER TABLE agents_v16 RENAME TO agents;
CREATE INDEX agents_environment ON agents(environment_id);
CREATE UNIQUE INDEX agents_environment_name ON agents(environment_id, name);

-- deployments (its V15 metric triggers go with the old table and are created again below) -------
CREATE TABLE deployments_v16 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    superseded_by   INTEGER REFERENCES deployments_v16(id) ON DELETE SET NULL,
    queued_at       INTEGER,
    redeploy_of     INTEGER REFERENCES deployments_v16(id) ON DELETE SET NULL,
    rollback_of     INTEGER REFERENCES deployments_v16(id) ON DELETE SET NULL
) STRICT;
INSERT INTO deployments_v16 (id, project_id, environment_id, agent_id, status, git_ref, commit_sha, error, services,
        triggered_by, created_at, finished_at, log_pruned_at, superseded_by, queued_at, redeploy_of, rollback_of)
    SELECT id, project_id, environment_id, agent_id, status, git_ref, commit_sha, error, services,
        triggered_by, created_at, finished_at, log_pruned_at, superseded_by, queued_at, redeploy_of, rollback_of
    FROM deployments;
DROP TABLE deployments;
ALTER TABLE deployments_v16 RENAME TO deployments;
CREATE INDEX deployments_environment ON deployments(environment_id, id);
CREATE UNIQUE INDEX deployments_one_active
    ON deployments(environment_id) WHERE status IN ('queued', 'running');
CREATE INDEX deployments_log_kept ON deployments(id) WHERE log_pruned_at IS NULL;
CREATE INDEX deployments_waiting ON deployments(environment_id, id) WHERE status = 'waiting';

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

-- webhook_deliveries (not STRICT, as in V12; its V15 metric triggers are created again) ----------
CREATE TABLE webhook_deliveries_v16 (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id     INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    provider       TEXT NOT NULL CHECK (provider IN ('github', 'gitlab', 'gitea')),
    delivery_id    TEXT,
    event          TEXT NOT NULL,
    result         TEXT NOT NULL
        CHECK (result IN ('processing', 'deployed', 'ignored', 'duplicate', 'rejected', 'error')),
    detail         TEXT NOT NULL DEFAULT '',
    deployment_ids TEXT NOT NULL DEFAULT '[]',
    at             INTEGER NOT NULL
);
INSERT INTO webhook_deliveries_v16 (id, project_id, provider, delivery_id, event, result, detail, deployment_ids, at)
    SELECT id, project_id, provider, delivery_id, event, result, detail, deployment_ids, at FROM webhook_deliveries;
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_v16 RENAME TO webhook_deliveries;
CREATE UNIQUE INDEX webhook_deliveries_once
    ON webhook_deliveries (project_id, provider, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (project_id, id);
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

-- notify_channels and notify_outbox --------------------------------------------------------------
CREATE TABLE notify_channels_v16 (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id         INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind               TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'discord', 'email')),
    name               TEXT NOT NULL,
    -- Comma-separated event names (deploy.succeeded, deploy.failed, agent.offline, webhook.rejected).
    events             TEXT NOT NULL,
    offline_minutes    REAL NOT NULL DEFAULT 5,
    target_hint        TEXT NOT NULL,
    encrypted_target   BLOB NOT NULL,
    -- Generic webhooks only: the HMAC key of X-Stagely-Signature.
    encrypted_signing  BLOB,
    created_by         TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    UNIQUE (project_id, name)
) STRICT;
INSERT INTO notify_channels_v16 (id, project_id, kind, name, events, offline_minutes, target_hint, encrypted_target,
        encrypted_signing, created_by, created_at)
    SELECT id, project_id, kind, name, events, offline_minutes, target_hint, encrypted_target,
        encrypted_signing, created_by, created_at FROM notify_channels;
DROP TABLE notify_channels;
ALTER TABLE notify_channels_v16 RENAME TO notify_channels;

CREATE TABLE notify_outbox_v16 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id       INTEGER NOT NULL REFERENCES notify_channels(id) ON DELETE CASCADE,
    event            TEXT NOT NULL,
    subject          TEXT NOT NULL,
    -- The notice as JSON (already masked; never a secret value).
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (channel_id, event, subject)
) STRICT;
INSERT INTO notify_outbox_v16 (id, channel_id, event, subject, payload, status, attempts, last_error,
        next_attempt_at, created_at, updated_at)
    SELECT id, channel_id, event, subject, payload, status, attempts, last_error,
        next_attempt_at, created_at, updated_at FROM notify_outbox;
DROP TABLE notify_outbox;
ALTER TABLE notify_outbox_v16 RENAME TO notify_outbox;
CREATE INDEX notify_outbox_due ON notify_outbox(next_attempt_at) WHERE status = 'pending';
CREATE INDEX notify_outbox_channel ON notify_outbox(channel_id, id);

-- audit_log: the object's name as it was and its project (no foreign key: history outlives
-- deletes). Old entries have neither; the pages fall back to the type and id. ---------------------
CREATE TABLE audit_log_v16 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   INTEGER,
    detail      TEXT NOT NULL DEFAULT '',
    target_name TEXT,
    project_id  INTEGER
) STRICT;
INSERT INTO audit_log_v16 (id, at, actor, action, target_type, target_id, detail)
    SELECT id, at, actor, action, target_type, target_id, detail FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_v16 RENAME TO audit_log;
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_project ON audit_log(project_id, id) WHERE project_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log(actor, id);
-- Old entries whose object is a project get its id as their project (the filter finds them).
UPDATE audit_log SET project_id = target_id WHERE target_type = 'project';

-- The sequences: past every id each table has had, its own and those the audit log names. ------
DELETE FROM sqlite_sequence WHERE name IN ('users', 'api_tokens', 'signup_links', 'projects', 'environments',
    'agents', 'deployments', 'webhook_deliveries', 'notify_channels', 'notify_outbox', 'audit_log');
INSERT INTO sqlite_sequence (name, seq)
    SELECT t.name, MAX(IFNULL(t.own, 0), IFNULL((SELECT MAX(target_id) FROM audit_log a WHERE a.target_type = t.audited), 0))
    FROM (
        SELECT 'users' AS name, (SELECT MAX(id) FROM users) AS own, 'user' AS audited
        UNION ALL SELECT 'api_tokens', (SELECT MAX(id) FROM api_tokens), 'api_token'
        UNION ALL SELECT 'signup_links', (SELECT MAX(id) FROM signup_links), 'invite'
        UNION ALL SELECT 'projects', (SELECT MAX(id) FROM projects), 'project'
        UNION ALL SELECT 'environments', (SELECT MAX(id) FROM environments), 'environment'
        UNION ALL SELECT 'agents', (SELECT MAX(id) FROM agents), 'agent'
        UNION ALL SELECT 'deployments', (SELECT MAX(id) FROM deployments), 'deployment'
        UNION ALL SELECT 'webhook_deliveries', (SELECT MAX(id) FROM webhook_deliveries), NULL
        UNION ALL SELECT 'notify_channels', (SELECT MAX(id) FROM notify_channels), 'notification'
        UNION ALL SELECT 'notify_outbox', (SELECT MAX(id) FROM notify_outbox), NULL
        UNION ALL SELECT 'audit_log', (SELECT MAX(id) FROM audit_log), NULL
    ) AS t;
