-- A fenced completion ($1, $2 as in call_complete_task.sql) and the step that
-- follows ($3: proc_save_run's document with `in_flight`), in one statement.
SELECT saved_version, still_current FROM orch_complete_step($1::jsonb, $2::jsonb, $3::jsonb);
