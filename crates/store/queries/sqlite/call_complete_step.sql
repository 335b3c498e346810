-- A completion and the step that follows (proc_complete_step), then the run's
-- new version and whether the step was current (no row if it did not apply).
INSERT INTO proc_complete_step (doc, artifacts, step) VALUES (jsonb(?1), jsonb(?2), jsonb(?3));
SELECT version, current FROM proc_stepped;
