-- Stagely schema v1. Timestamps are unix milliseconds (UTC). Secret values exist here only as
-- age ciphertext; deployments record which secret *versions* they used, never values.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    github_login  TEXT UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id_hash     BLOB PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    user_id      INTEGER REFERENCES users(id) ON DELETE CASCADE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE TABLE projects (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    repo_url     TEXT,
    git_ref      TEXT NOT NULL,
    compose_path TEXT NOT NULL,
    pull         TEXT NOT NULL CHECK (pull IN ('always', 'missing', 'never')),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE environments (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    git_ref     TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
) STRICT;

CREATE TABLE agents (
    id              INTEGER PRIMARY KEY,
    environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    token_hash      BLOB NOT NULL UNIQUE,
    online          INTEGER NOT NULL DEFAULT 0,
    last_heartbeat  INTEGER,
    agent_version   TEXT,
    hostname        TEXT,
    docker_version  TEXT,
    compose_version TEXT,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
) STRICT;
CREATE INDEX agents_environment ON agents(environment_id);

CREATE TABLE secrets (
    id               INTEGER PRIMARY KEY,
    project_id       INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id   INTEGER REFERENCES environments(id) ON DELETE CASCADE,
    key              TEXT NOT NULL,
    scope            TEXT NOT NULL CHECK (scope IN ('global', 'service')),
    service          TEXT,
    encrypted_value  BLOB NOT NULL,
    version          INTEGER NOT NULL DEFAULT 1,
    updated_by       TEXT NOT NULL,
    updated_at       INTEGER NOT NULL,
    CHECK ((scope = 'service') = (service IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX secrets_unique
    ON secrets(project_id, IFNULL(environment_id, 0), scope, IFNULL(service, ''), key);

CREATE TABLE deployments (
    id              INTEGER PRIMARY KEY,
    project_id      INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id  INTEGER NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    agent_id        INTEGER REFERENCES agents(id) ON DELETE SET NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'success', 'failed')),
    git_ref         TEXT NOT NULL,
    commit_sha      TEXT,
    error           TEXT,
    services        TEXT,
    triggered_by    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
) STRICT;
CREATE INDEX deployments_environment ON deployments(environment_id, id);
-- One deploy at a time per environment, enforced by the database itself.
CREATE UNIQUE INDEX deployments_one_active
    ON deployments(environment_id) WHERE status IN ('queued', 'running');

CREATE TABLE deployment_secrets (
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    secret_id      INTEGER NOT NULL,
    key            TEXT NOT NULL,
    scope          TEXT NOT NULL,
    service        TEXT,
    version        INTEGER NOT NULL
) STRICT;
CREATE INDEX deployment_secrets_deployment ON deployment_secrets(deployment_id);

CREATE TABLE deployment_logs (
    deployment_id  INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    stream         TEXT NOT NULL,
    line           TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   INTEGER,
    detail      TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX audit_log_at ON audit_log(at);
