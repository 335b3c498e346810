-- Newest first, optionally of one status ($1). $2 NULL means no limit.
SELECT id, goal, context, workflow, status, status_reason, success_criteria, settings, provider,
       iterations, cost_usd, tokens_in, tokens_out, version, created_at, updated_at, finished_at
FROM runs
WHERE ($1::text IS NULL OR status = $1::text)
ORDER BY created_at DESC, id DESC
LIMIT $2 OFFSET $3;
