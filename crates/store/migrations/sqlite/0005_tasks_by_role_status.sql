-- Monitoring (`stats`): tasks counted by role and status, and the durations
-- of finished tasks per role, read from this index alone (it covers both
-- queries) instead of the whole table.
CREATE INDEX tasks_by_role_status ON tasks (role, status, started_at, finished_at);
