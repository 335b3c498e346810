-- proc_add_events(doc): append doc's events to the log of its run. Every
-- procedure that writes events calls this one: the one place sequence numbers
-- are allocated. The run row's counter is bumped by the number of events,
-- then the events are inserted numbered up to it (1, 2, 3, ... per run, no
-- gaps).
--   doc ->> 'run_id', doc ->> 'now', doc -> 'events': [[kind, task_id, message, data], ...]
CREATE TEMP VIEW proc_add_events (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_add_events INSTEAD OF INSERT ON proc_add_events
WHEN json_array_length(NEW.doc, '$.events') > 0
BEGIN
    UPDATE runs
    SET last_seq = last_seq + json_array_length(NEW.doc, '$.events')
    WHERE id = NEW.doc ->> 'run_id';
    INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
    SELECT r.id, r.last_seq - json_array_length(NEW.doc, '$.events') + 1 + e.key,
           e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, NEW.doc ->> 'now'
    FROM runs AS r, jsonb_each(NEW.doc, '$.events') AS e
    WHERE r.id = NEW.doc ->> 'run_id';
END;
