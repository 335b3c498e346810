-- list_events with a kind (?4): the run's events in order (the primary key),
-- those of the kind kept (channel messages have an index of their own, which
-- the inbox reads use: attempt_inputs.sql); ?3 = -1
-- means no limit. The run row comes first: a run without such events gives
-- one row of NULL event columns (and an unknown run none), so no second read
-- is needed to tell them apart.
SELECT r.id AS run_id, e.seq, e.kind, e.task_id, e.message, e.data, e.created_at
FROM runs AS r
LEFT JOIN events AS e ON e.run_id = r.id AND e.kind = ?4 AND e.seq > ?2
WHERE r.id = ?1
ORDER BY e.seq
LIMIT ?3;
