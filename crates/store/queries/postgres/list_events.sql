-- Events of run $1 after sequence number $2. $3 NULL means no limit.
SELECT run_id, seq, kind, task_id, message, data, created_at
FROM events
WHERE run_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3;
