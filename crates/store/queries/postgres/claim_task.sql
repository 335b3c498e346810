-- QUEUED -> RUNNING for exactly attempt $3 of task $2 of run $1, taking the
-- lease (owner $4 until $5, now $6), with the task_started event (seq $7,
-- kind $8, message $9, data $10). Returns the claimed row; none (and no
-- event) if the task is not QUEUED at that attempt. Concurrent claims of one
-- task: the losers find the row changed once the winner commits (READ
-- COMMITTED re-checks the WHERE clause on the new row version) and match
-- nothing. The caller holds the run's row lock (lock_run).
WITH claimed AS (
    UPDATE tasks
    SET status           = 'RUNNING',
        lease_owner      = $4,
        lease_expires_at = $5,
        started_at       = $6,
        finished_at      = NULL
    WHERE run_id = $1 AND id = $2 AND status = 'QUEUED' AND attempt = $3
    RETURNING run_id, id, role, title, instructions, needs, expected, validation, gate, round,
              findings, status, attempt, max_attempts, timeout_ms, dedupe_key, not_before,
              lease_owner, lease_expires_at, last_error, retryable, result_summary, verdict,
              queued_at, started_at, finished_at, cost_usd
), started AS (
    INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
    SELECT $1, $7, $8, $2, $9, $10, $6
    FROM claimed
)
SELECT * FROM claimed;
