-- Newest first, optionally of one status (?1). ?2 = -1 means no limit.
SELECT 'run' AS part, id, goal, context, workflow, status, status_reason, success_criteria,
       settings, provider, iterations, cost_usd, tokens_in, tokens_out, version, created_at,
       updated_at, finished_at
FROM runs
WHERE (?1 IS NULL OR status = ?1)
ORDER BY created_at DESC, id DESC
LIMIT ?2 OFFSET ?3;
