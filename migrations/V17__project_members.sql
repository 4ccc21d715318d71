-- Stagely schema v17: a person's role on one project (issue 16).
--
-- Besides the global role (users.role), a person can hold a role on one project: viewer,
-- deployer (may deploy and roll back) or maintainer (may change settings and secrets). The
-- effective role on a project is the higher of the two (src/access/mod.rs). `source` says who
-- granted it: 'manual' (an admin, by the API or the project's page) or 'oidc:<provider>' (a
-- group mapping, rewritten at each sign-in through that provider, so a person removed from the
-- group loses the role at their next sign-in). One row per (project, person, source): a manual
-- grant and a group grant live side by side and the higher one counts.

CREATE TABLE project_members (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'deployer', 'maintainer')),
    source      TEXT NOT NULL DEFAULT 'manual',
    created_at  INTEGER NOT NULL,
    granted_by  TEXT NOT NULL,
    UNIQUE (project_id, user_id, source)
) STRICT;
CREATE INDEX project_members_user ON project_members(user_id);
