-- A fenced completion ($1: the outcome's document, $2: its artifacts); the
-- fence's refusal raises `orch-assert:lease_held`.
SELECT orch_complete_task($1::jsonb, $2::jsonb);
