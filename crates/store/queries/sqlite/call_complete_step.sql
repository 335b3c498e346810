-- A completion and the step that follows (proc_complete_step), then the run's
-- new version if the step was saved (no row if not).
INSERT INTO proc_complete_step (doc, artifacts, step) VALUES (jsonb(?1), jsonb(?2), jsonb(?3));
SELECT version FROM proc_stepped;
