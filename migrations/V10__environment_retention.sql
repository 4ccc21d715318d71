-- Stagely schema v10: per-environment log retention (issue 12). NULL keeps the appliance's
-- default (`deploys.log_keep_deployments` / `deploys.log_keep_days`); a number overrides it for
-- this environment. The API bounds them; the CHECKs keep a hand edit from storing nonsense.
ALTER TABLE environments ADD COLUMN log_keep_deployments INTEGER
    CHECK (log_keep_deployments IS NULL OR log_keep_deployments BETWEEN 0 AND 1000000);
ALTER TABLE environments ADD COLUMN log_keep_days INTEGER
    CHECK (log_keep_days IS NULL OR log_keep_days BETWEEN 0 AND 36500);
