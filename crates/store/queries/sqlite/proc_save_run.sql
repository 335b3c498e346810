-- proc_save_run(doc): an engine save.
--
-- The run row is compare-and-set on its version, which every save bumps (even
-- one that changes no run field) so that engines serialize; cost, token
-- totals and the event counter belong to others and are not written. Each
-- changed task is compare-and-set on the status and attempt the engine
-- loaded, so a concurrent claim or completion wins. While a task stays
-- RUNNING at the same attempt its lease is the worker's (heartbeats) and is
-- kept; a task's cost is the workers' and is never written here. Any failed
-- check rolls everything back. The changed tasks are found by their keys
-- (the `IN` list): without it the planner read every task of the run and
-- scanned `changed` once per task.
CREATE TEMP VIEW proc_save_run (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_save_run INSTEAD OF INSERT ON proc_save_run
BEGIN
    SELECT RAISE(ABORT, 'orch-assert:run_exists')
    WHERE NOT EXISTS (SELECT 1 FROM runs WHERE id = NEW.doc ->> 'run_id');
    UPDATE runs
    SET status_reason = NEW.doc ->> 'status_reason',
        iterations    = NEW.doc ->> 'iterations',
        settings      = NEW.doc ->> 'settings',
        finished_at   = NEW.doc ->> 'finished_at',
        updated_at    = CASE WHEN NEW.doc ->> 'run_changed' THEN NEW.doc ->> 'now'
                             ELSE updated_at END,
        version       = version + 1
    WHERE id = NEW.doc ->> 'run_id' AND version = NEW.doc ->> 'expected_version';
    SELECT RAISE(ABORT, 'orch-assert:run_version') WHERE changes() <> 1;
    -- Apart, and only when it changes: an update that sets an indexed
    -- column rewrites its index entry (runs_by_status) even to the same
    -- value, a page written with nearly every step for nothing.
    UPDATE runs
    SET status = NEW.doc ->> 'status'
    WHERE id = NEW.doc ->> 'run_id' AND status IS NOT NEW.doc ->> 'status';
    UPDATE tasks
    SET role             = c.value ->> 'role',
        title            = c.value ->> 'title',
        instructions     = c.value ->> 'instructions',
        needs            = c.value ->> 'needs',
        expected         = c.value ->> 'expected',
        validation       = c.value ->> 'validation',
        gate             = c.value ->> 'gate',
        round            = c.value ->> 'round',
        findings         = c.value ->> 'findings',
        status           = c.value ->> 'status',
        attempt          = c.value ->> 'attempt',
        max_attempts     = c.value ->> 'max_attempts',
        timeout_ms       = c.value ->> 'timeout_ms',
        dedupe_key       = c.value ->> 'dedupe_key',
        not_before       = c.value ->> 'not_before',
        lease_owner      = CASE WHEN c.value ->> 'status' = 'RUNNING' AND tasks.status = 'RUNNING'
                                 AND c.value ->> 'attempt' = tasks.attempt
                                THEN tasks.lease_owner ELSE c.value ->> 'lease_owner' END,
        lease_expires_at = CASE WHEN c.value ->> 'status' = 'RUNNING' AND tasks.status = 'RUNNING'
                                 AND c.value ->> 'attempt' = tasks.attempt
                                THEN tasks.lease_expires_at
                                ELSE c.value ->> 'lease_expires_at' END,
        last_error       = c.value ->> 'last_error',
        retryable        = c.value ->> 'retryable',
        result_summary   = c.value ->> 'result_summary',
        verdict          = c.value ->> 'verdict',
        queued_at        = c.value ->> 'queued_at',
        started_at       = c.value ->> 'started_at',
        finished_at      = c.value ->> 'finished_at'
    FROM jsonb_each(NEW.doc, '$.changed') AS c
    WHERE tasks.run_id = NEW.doc ->> 'run_id'
      AND tasks.id IN (SELECT k.value ->> 'id' FROM jsonb_each(NEW.doc, '$.changed') AS k)
      AND tasks.id = c.value ->> 'id'
      AND tasks.status = c.value ->> 'expected_status'
      AND tasks.attempt = c.value ->> 'expected_attempt';
    SELECT RAISE(ABORT, 'orch-assert:tasks_unchanged')
    WHERE changes() <> json_array_length(NEW.doc, '$.changed');
    INSERT INTO dead_letters (run_id, task_id, role, attempts, error, created_at)
    SELECT NEW.doc ->> 'run_id', d.value ->> 0, d.value ->> 1, d.value ->> 2, d.value ->> 3,
           NEW.doc ->> 'now'
    FROM jsonb_each(NEW.doc, '$.dead') AS d
    ORDER BY d.key;
    INSERT INTO proc_add_tasks (doc) VALUES (NEW.doc);
    INSERT INTO proc_put_gates (doc) VALUES (NEW.doc);
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
END;
