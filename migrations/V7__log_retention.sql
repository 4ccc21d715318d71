-- Stagely schema v7: log retention (issue 12). A deployment whose log lines were deleted by the
-- retention pruner keeps its row and says when its log went.
ALTER TABLE deployments ADD COLUMN log_pruned_at INTEGER;

-- The pruner looks only at deployments that still have a log.
CREATE INDEX deployments_log_kept ON deployments(id) WHERE log_pruned_at IS NULL;
