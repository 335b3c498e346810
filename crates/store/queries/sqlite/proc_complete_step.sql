-- proc_complete_step(doc, artifacts, step): a completion (proc_complete_task's
-- doc and artifacts) and, in the same transaction, the engine step that
-- follows from it (proc_save_run's doc, with `in_flight`: [[task id,
-- attempt], ...] of the other tasks it saw QUEUED or RUNNING). The step
-- applies if, with the completion in, the run is at its expected version,
-- each changed task at its expected status and attempt, and none of its new
-- tasks there yet; it is then saved, even with nothing to change, so that
-- the version moves past any engine's view without this completion. If not,
-- the completion commits alone (a refused completion rolls everything back).
-- proc_stepped then holds the run's new version and whether each in-flight
-- task is still QUEUED or RUNNING at its attempt; no row if the step did not
-- apply.
--
-- Each document's entries are the outer loop and the task their key in the
-- primary key (`CROSS JOIN` fixes that order in SQLite): left to itself the
-- planner read every task of the run and scanned the document once per task.
CREATE TEMP TABLE proc_stepped (version INTEGER NOT NULL, current INTEGER NOT NULL);
CREATE TEMP VIEW proc_complete_step (doc, artifacts, step) AS SELECT NULL, NULL, NULL WHERE 0;
CREATE TEMP TRIGGER proc_complete_step INSTEAD OF INSERT ON proc_complete_step
BEGIN
    DELETE FROM proc_stepped;
    INSERT INTO proc_complete_task (doc, artifacts) VALUES (NEW.doc, NEW.artifacts);
    INSERT INTO proc_stepped (version, current)
    SELECT version + 1,
           (SELECT count(*)
            FROM jsonb_each(NEW.step, '$.in_flight') AS f
            CROSS JOIN tasks AS t ON t.run_id = NEW.step ->> 'run_id' AND t.id = f.value ->> 0
            WHERE t.attempt = f.value ->> 1 AND t.status IN ('QUEUED', 'RUNNING'))
           = json_array_length(NEW.step, '$.in_flight')
    FROM runs
    WHERE id = NEW.step ->> 'run_id' AND version = NEW.step ->> 'expected_version'
      AND (SELECT count(*)
           FROM jsonb_each(NEW.step, '$.changed') AS c
           CROSS JOIN tasks AS t ON t.run_id = NEW.step ->> 'run_id' AND t.id = c.value ->> 'id'
           WHERE t.status = c.value ->> 'expected_status'
             AND t.attempt = c.value ->> 'expected_attempt')
          = json_array_length(NEW.step, '$.changed')
      AND NOT EXISTS (SELECT 1
                      FROM jsonb_each(NEW.step, '$.tasks') AS n
                      CROSS JOIN tasks AS t ON t.run_id = NEW.step ->> 'run_id' AND t.id = n.value ->> 'id');
    INSERT INTO proc_save_run (doc) SELECT NEW.step FROM proc_stepped;
END;
