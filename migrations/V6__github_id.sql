-- Stagely schema v6: a GitHub-linked account is matched by GitHub's numeric user id, which
-- never changes, instead of the login, which can be renamed and then registered by someone else
-- (issue 11). Once `github_id` is set, `github_login` is only what the pages show (updated at
-- each sign-in).
--
-- Existing links have no id yet: each binds it at the account's next GitHub sign-in, and only if
-- the login still matches and the account is not disabled (see CHANGELOG, upgrade notes).
ALTER TABLE users ADD COLUMN github_id INTEGER;
CREATE UNIQUE INDEX users_github_id ON users(github_id);
