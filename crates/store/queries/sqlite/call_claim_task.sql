-- The claim, then the claimed task (only reached if the claim succeeded).
INSERT INTO proc_claim_task (doc) VALUES (?1);
SELECT 'task' AS part, run_id, id, role, title, instructions, needs, expected, validation, gate, round, findings,
       status, attempt, max_attempts, timeout_ms, dedupe_key, not_before, lease_owner,
       lease_expires_at, last_error, retryable, result_summary, verdict, queued_at, started_at,
       finished_at, cost_usd
FROM tasks
WHERE run_id = ?1 ->> 'run_id' AND id = ?1 ->> 'task_id';
