-- What workers change of the tasks of run ?1 (and the attempt, to check a
-- cached plan against), in creation order. Part of load_run_from.
SELECT 'progress' AS part, id, attempt, status, lease_owner, lease_expires_at, last_error,
       retryable, result_summary, verdict, started_at, finished_at, cost_usd
FROM tasks
WHERE run_id = ?1
ORDER BY position;
