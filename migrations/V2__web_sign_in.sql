-- Stagely schema v2: one-time links for the web UI. Tokens are stored only as SHA-256 hashes.
--   kind 'setup':  the first-admin link printed to the log on a start with no users (1 hour).
--   kind 'invite': an admin's invitation, bound to a role.
CREATE TABLE signup_links (
    id          INTEGER PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('setup', 'invite')),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     INTEGER REFERENCES users(id) ON DELETE SET NULL
) STRICT;

CREATE INDEX sessions_expires ON sessions(expires_at);
