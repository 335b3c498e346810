-- call_complete_step.sql, then what the task the step saved claimed reads
-- (named in the completion's document $1: `upstream`, `upstream_tasks`), in
-- one statement.
SELECT saved_version, still_current, messages AS r_messages, upstream AS r_upstream
FROM orch_complete_step_reading($1::jsonb, $2::jsonb, $3::jsonb);
