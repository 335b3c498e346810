-- $1 NULL means no limit.
SELECT run_id, id, role, attempt, lease_owner
FROM tasks
WHERE status = 'RUNNING'
ORDER BY lease_expires_at
LIMIT $1;
