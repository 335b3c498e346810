-- list_events with a kind ($4): the run's events in order (the primary key),
-- those of the kind kept (channel messages have an index of their own,
-- events_channel_messages, when the plan knows the kind). $3 NULL
-- means no limit. As list_events.sql: no row if the run does not exist, one
-- row with NULL event columns if it has no such events.
SELECT e.run_id, e.seq, e.kind, e.task_id, e.message, e.data, e.created_at
FROM runs AS r
LEFT JOIN LATERAL (
    SELECT run_id, seq, kind, task_id, message, data, created_at
    FROM events
    WHERE run_id = r.id AND kind = $4 AND seq > $2
    ORDER BY seq
    LIMIT $3
) AS e ON true
WHERE r.id = $1
ORDER BY e.seq;
