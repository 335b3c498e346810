-- proc_complete_task(doc, artifacts): fenced completion. Only the holder of
-- this attempt's unexpired lease may commit; anyone else is refused and
-- nothing is written. Then the artifacts, versioned from 1 per (name, path):
-- one code artifact is several files, each with its own history
-- (artifacts: [[name, kind, path, content, metadata, n], ...] where n counts
-- earlier entries of the same name and path in this list), the usage added to the
-- run's totals (workers own those columns), and doc's events.
CREATE TEMP VIEW proc_complete_task (doc, artifacts) AS SELECT NULL, NULL WHERE 0;
CREATE TEMP TRIGGER proc_complete_task INSTEAD OF INSERT ON proc_complete_task
BEGIN
    UPDATE tasks
    SET status           = NEW.doc ->> 'status',
        result_summary   = NEW.doc ->> 'summary',
        verdict          = NEW.doc ->> 'verdict',
        last_error       = NEW.doc ->> 'error',
        retryable        = NEW.doc ->> 'retryable',
        finished_at      = NEW.doc ->> 'now',
        lease_owner      = NULL,
        lease_expires_at = NULL,
        cost_usd         = cost_usd + (NEW.doc ->> 'cost_usd')
    WHERE run_id = NEW.doc ->> 'run_id' AND id = NEW.doc ->> 'task_id' AND status = 'RUNNING'
      AND attempt = NEW.doc ->> 'attempt' AND lease_owner = NEW.doc ->> 'owner'
      AND lease_expires_at >= NEW.doc ->> 'now';
    SELECT RAISE(ROLLBACK, 'orch-assert:lease_held') WHERE changes() <> 1;
    INSERT INTO artifacts (run_id, name, version, kind, path, task_id, attempt, content,
                           metadata, created_at)
    SELECT NEW.doc ->> 'run_id', a.value ->> 0,
           (SELECT COALESCE(MAX(version), 0) FROM artifacts
            WHERE run_id = NEW.doc ->> 'run_id' AND name = a.value ->> 0
              AND path IS (a.value ->> 2)) + 1 + (a.value ->> 5),
           a.value ->> 1, a.value ->> 2, NEW.doc ->> 'task_id', NEW.doc ->> 'attempt',
           a.value ->> 3, a.value ->> 4, NEW.doc ->> 'now'
    FROM jsonb_each(NEW.artifacts) AS a;
    UPDATE runs
    SET cost_usd   = cost_usd + (NEW.doc ->> 'cost_usd'),
        tokens_in  = tokens_in + (NEW.doc ->> 'input_tokens'),
        tokens_out = tokens_out + (NEW.doc ->> 'output_tokens')
    WHERE id = NEW.doc ->> 'run_id';
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
END;
