-- The run row (?1: run id). Also part of load_run (`part` tells rows apart).
SELECT 'run' AS part, id, goal, context, workflow, status, status_reason, success_criteria,
       settings, provider, iterations, cost_usd, tokens_in, tokens_out, version, created_at,
       updated_at, finished_at
FROM runs
WHERE id = ?1;
