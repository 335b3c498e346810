-- RUNNING tasks whose lease expired before $1. $2 NULL means no limit.
SELECT run_id, id, role, attempt, lease_owner
FROM tasks
WHERE status = 'RUNNING' AND lease_expires_at < $1
ORDER BY lease_expires_at
LIMIT $2;
