-- Events of run $1 after sequence number $2. $3 NULL means no limit; $4, when not NULL,
-- keeps one kind of event. The run row comes first: no row at all if the run
-- does not exist, one row with NULL event columns if it has no such events
-- (one round trip either way).
SELECT e.run_id, e.seq, e.kind, e.task_id, e.message, e.data, e.created_at
FROM runs AS r
LEFT JOIN LATERAL (
    SELECT run_id, seq, kind, task_id, message, data, created_at
    FROM events
    WHERE run_id = r.id AND seq > $2 AND ($4 IS NULL OR kind = $4)
    ORDER BY seq
    LIMIT $3
) AS e ON true
WHERE r.id = $1
ORDER BY e.seq;
