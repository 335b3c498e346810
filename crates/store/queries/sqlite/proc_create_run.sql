-- proc_create_run(doc): a new run with its tasks, gates and events. Its event
-- counter starts at 0; the events are appended after.
CREATE TEMP VIEW proc_create_run (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_create_run INSTEAD OF INSERT ON proc_create_run
BEGIN
    INSERT INTO runs (id, goal, context, workflow, status, status_reason, success_criteria,
                      settings, provider, iterations, cost_usd, tokens_in, tokens_out, version,
                      last_seq, created_at, updated_at, finished_at)
    VALUES (NEW.doc ->> 'run_id', NEW.doc ->> 'goal', NEW.doc ->> 'context',
            NEW.doc ->> 'workflow', NEW.doc ->> 'status', NEW.doc ->> 'status_reason',
            NEW.doc ->> 'success_criteria', NEW.doc ->> 'settings', NEW.doc ->> 'provider',
            NEW.doc ->> 'iterations', NEW.doc ->> 'cost_usd', NEW.doc ->> 'tokens_in',
            NEW.doc ->> 'tokens_out', NEW.doc ->> 'version', 0, NEW.doc ->> 'created_at',
            NEW.doc ->> 'updated_at', NEW.doc ->> 'finished_at');
    INSERT INTO proc_add_tasks (doc) VALUES (NEW.doc);
    INSERT INTO proc_put_gates (doc) VALUES (NEW.doc);
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
END;
