-- ?3 = -1 means no limit; ?4, when not NULL, keeps one kind of event.
SELECT run_id, seq, kind, task_id, message, data, created_at
FROM events
WHERE run_id = ?1 AND seq > ?2 AND (?4 IS NULL OR kind = ?4)
ORDER BY seq
LIMIT ?3;
