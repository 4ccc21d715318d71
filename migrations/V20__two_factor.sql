-- Stagely schema v20: two-factor authentication (TOTP, RFC 6238) for local accounts (issue 16).
--
-- two_factor: one row per person who started enrolment. The TOTP secret is a vault value (age,
-- like every secret; `stagely rotate-key` re-encrypts it). enabled_at NULL: enrolment pending
-- (the secret was shown, no code confirmed it yet). last_step: the last accepted time step (a
-- code is accepted once: a step at or below it is a replay).
CREATE TABLE two_factor (
    user_id           INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret_encrypted  BLOB NOT NULL,
    created_at        INTEGER NOT NULL,
    enabled_at        INTEGER,
    last_step         INTEGER
) STRICT;

-- One-time recovery codes, stored only as SHA-256 hashes; used_at set when one is spent.
CREATE TABLE recovery_codes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER
) STRICT;
CREATE INDEX recovery_codes_user ON recovery_codes(user_id);

-- How a session was opened: 1 when by a password (sign-in form, setup, invitation or reset link),
-- 0 by GitHub. auth.require_admin_2fa confines an admin's password session until they enrol.
ALTER TABLE sessions ADD COLUMN via_password INTEGER NOT NULL DEFAULT 0;
