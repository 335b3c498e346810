-- A completion and the step that follows (proc_complete_step), then the run's
-- new version and whether the step was current (no row if it did not apply;
-- `part` tells it from the rows of attempt_inputs.sql, which may follow).
INSERT INTO proc_complete_step (doc, artifacts, step) VALUES (?1, ?2, ?3);
SELECT 'stepped' AS part, version, current FROM proc_stepped;
