-- call_complete_step.sql, then what the worker handed a task by the step
-- reads ($4: {"run_id", "upstream", "upstream_tasks"}), in one statement.
SELECT saved_version, still_current, messages AS r_messages, upstream AS r_upstream
FROM orch_complete_step_reading($1::jsonb, $2::jsonb, $3::jsonb, $4::jsonb);
