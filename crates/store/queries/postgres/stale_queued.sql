-- QUEUED tasks queued before $1. $2 NULL means no limit.
SELECT run_id, id, role, attempt, lease_owner
FROM tasks
WHERE status = 'QUEUED' AND queued_at < $1
ORDER BY queued_at
LIMIT $2;
