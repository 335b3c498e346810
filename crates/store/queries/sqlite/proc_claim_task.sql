-- proc_claim_task(doc): QUEUED -> RUNNING for exactly this attempt, taking
-- the lease, with doc's task_started event; refused (nothing written) if the
-- task is not QUEUED at that attempt.
CREATE TEMP VIEW proc_claim_task (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_claim_task INSTEAD OF INSERT ON proc_claim_task
BEGIN
    UPDATE tasks
    SET status           = 'RUNNING',
        lease_owner      = NEW.doc ->> 'owner',
        lease_expires_at = NEW.doc ->> 'lease_until',
        started_at       = NEW.doc ->> 'now',
        finished_at      = NULL
    WHERE run_id = NEW.doc ->> 'run_id' AND id = NEW.doc ->> 'task_id' AND status = 'QUEUED'
      AND attempt = NEW.doc ->> 'attempt';
    SELECT RAISE(ABORT, 'orch-assert:claimed') WHERE changes() <> 1;
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
END;
