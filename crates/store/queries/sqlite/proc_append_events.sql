-- proc_append_events(doc): append events to an existing run and note the
-- run's last sequence number in temp.proc_appended (this connection's own
-- table: read right after, it cannot see another writer's append).
CREATE TEMP TABLE proc_appended (last_seq INTEGER NOT NULL);
CREATE TEMP VIEW proc_append_events (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_append_events INSTEAD OF INSERT ON proc_append_events
BEGIN
    SELECT RAISE(ABORT, 'orch-assert:run_exists')
    WHERE NOT EXISTS (SELECT 1 FROM runs WHERE id = NEW.doc ->> 'run_id');
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
    DELETE FROM proc_appended;
    INSERT INTO proc_appended (last_seq)
    SELECT last_seq FROM runs WHERE id = NEW.doc ->> 'run_id';
END;
