-- list_events with a kind ($4): an indexed read (events_by_kind). $3 NULL
-- means no limit.
SELECT run_id, seq, kind, task_id, message, data, created_at
FROM events
WHERE run_id = $1 AND kind = $4 AND seq > $2
ORDER BY seq
LIMIT $3;
