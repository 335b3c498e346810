-- Tasks of run $1 in creation order.
SELECT run_id, id, role, title, instructions, needs, expected, validation, gate, round, findings,
       status, attempt, max_attempts, timeout_ms, dedupe_key, not_before, lease_owner,
       lease_expires_at, last_error, retryable, result_summary, verdict, queued_at, started_at,
       finished_at, cost_usd
FROM tasks
WHERE run_id = $1
ORDER BY position;
