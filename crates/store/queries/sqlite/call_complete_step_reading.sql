-- call_complete_step.sql for a step that saves a task claimed, followed by
-- attempt_inputs.sql: ?1 is the small document of what to read (run_id,
-- upstream, upstream_tasks), the completion's documents follow. The reads
-- take their own document rather than the completion's, which carries the
-- attempt's prompts and responses: a small document is quicker to look into.
INSERT INTO proc_complete_step (doc, artifacts, step) VALUES (?2, ?3, ?4);
SELECT 'stepped' AS part, version, current FROM proc_stepped;
