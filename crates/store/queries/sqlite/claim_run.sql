-- The run row, read on the write connection in the claim's round trip (it
-- follows call_claim_task.sql; only reached if the claim succeeded), before
-- attempt_inputs.sql. `part` tells the rows apart.
SELECT 'run' AS part, id, goal, context, workflow, status, status_reason, success_criteria,
       settings, provider, iterations, cost_usd, tokens_in, tokens_out, version, created_at,
       updated_at, finished_at
FROM runs
WHERE id = ?1 ->> 'run_id';
