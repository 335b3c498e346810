-- Newest first; of one run ($1) or all; replayed ones only if $2.
SELECT id, run_id, task_id, role, attempts, error, created_at, replayed_at
FROM dead_letters
WHERE ($1::text IS NULL OR run_id = $1::text) AND ($2 OR replayed_at IS NULL)
ORDER BY created_at DESC, id DESC;
