-- call_complete_step.sql for a step that saves a task claimed, followed by
-- attempt_inputs.sql: ?1 is the small document of what to read (run_id,
-- upstream, upstream_tasks), the completion's documents follow. The reads
-- take their own document rather than the completion's, which carries the
-- attempt's prompts and responses: each statement that looks into a JSON
-- text parses it again.
INSERT INTO proc_complete_step (doc, artifacts, step) VALUES (jsonb(?2), jsonb(?3), jsonb(?4));
SELECT 'stepped' AS part, version, current FROM proc_stepped;
