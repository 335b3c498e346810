-- The run row ($1: run id).
SELECT id, goal, context, workflow, status, status_reason, success_criteria, settings, provider,
       iterations, cost_usd, tokens_in, tokens_out, version, created_at, updated_at, finished_at
FROM runs
WHERE id = $1;
