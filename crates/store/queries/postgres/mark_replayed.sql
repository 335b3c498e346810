UPDATE dead_letters
SET replayed_at = $2
WHERE id = $1
RETURNING id, run_id, task_id, role, attempts, error, created_at, replayed_at;
