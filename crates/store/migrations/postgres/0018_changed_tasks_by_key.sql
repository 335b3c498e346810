-- The changed tasks of a save found by their primary key. The update of
-- `changed` (0013) joined the run's tasks with the document's entries on the
-- record jsonb_populate_record made of each, so its cached plan read every
-- task of the run (a bitmap scan of the primary key on run_id), hashed them,
-- and built the record once per task of the run, not once per change: in the
-- S1 benchmark (40 tasks a run, one change a step) 0.28 ms a save, 0.10 ms
-- with the keys given to the index (pg_stat_statements, track = all). The
-- checks of orch_complete_step joined the same way (a hash of every task of
-- the run) and are given the keys too. Both functions are 0013's but for
-- those lines.
CREATE OR REPLACE FUNCTION orch_save_run(doc jsonb, relaxed boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_run     text   := doc ->> 'run_id';
    v_now     bigint := (doc ->> 'now')::bigint;
    v_version bigint;
    v_seq     bigint;
    v_changed bigint := jsonb_array_length(doc -> 'changed');
    v_updated bigint;
BEGIN
    IF relaxed THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    UPDATE runs
    SET status        = doc ->> 'status',
        status_reason = doc ->> 'status_reason',
        iterations    = (doc ->> 'iterations')::bigint,
        settings      = doc ->> 'settings',
        finished_at   = (doc ->> 'finished_at')::bigint,
        updated_at    = CASE WHEN (doc ->> 'run_changed')::boolean THEN v_now
                             ELSE updated_at END,
        version       = version + 1,
        last_seq      = last_seq + jsonb_array_length(doc -> 'events')
    WHERE id = v_run AND version = (doc ->> 'expected_version')::bigint
    RETURNING version, last_seq INTO v_version, v_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'orch-assert:run_version';
    END IF;
    IF v_changed > 0 THEN
        UPDATE tasks
        SET role             = c.role,
            title            = c.title,
            instructions     = c.instructions,
            needs            = c.needs,
            expected         = c.expected,
            validation       = c.validation,
            gate             = c.gate,
            round            = c.round,
            findings         = c.findings,
            status           = c.status,
            attempt          = c.attempt,
            max_attempts     = c.max_attempts,
            timeout_ms       = c.timeout_ms,
            dedupe_key       = c.dedupe_key,
            not_before       = c.not_before,
            lease_owner      = CASE WHEN c.status = 'RUNNING' AND tasks.status = 'RUNNING'
                                     AND c.attempt = tasks.attempt
                                    THEN tasks.lease_owner ELSE c.lease_owner END,
            lease_expires_at = CASE WHEN c.status = 'RUNNING' AND tasks.status = 'RUNNING'
                                     AND c.attempt = tasks.attempt
                                    THEN tasks.lease_expires_at ELSE c.lease_expires_at END,
            last_error       = c.last_error,
            retryable        = c.retryable,
            result_summary   = c.result_summary,
            verdict          = c.verdict,
            queued_at        = c.queued_at,
            started_at       = c.started_at,
            finished_at      = c.finished_at
        FROM jsonb_array_elements(doc -> 'changed') AS e(v),
             LATERAL jsonb_populate_record(NULL::tasks, e.v) AS c
        WHERE tasks.run_id = v_run
          AND tasks.id = ANY (ARRAY(SELECT k.v ->> 'id'
                                    FROM jsonb_array_elements(doc -> 'changed') AS k(v)))
          AND tasks.id = c.id
          AND tasks.status = e.v ->> 'expected_status'
          AND tasks.attempt = (e.v ->> 'expected_attempt')::bigint;
        GET DIAGNOSTICS v_updated = ROW_COUNT;
        IF v_updated <> v_changed THEN
            RAISE EXCEPTION 'orch-assert:tasks_unchanged';
        END IF;
    END IF;
    -- Each part only if there is one: a nested statement costs even with no rows.
    IF jsonb_array_length(doc -> 'tasks') > 0 THEN
        PERFORM orch_add_tasks(doc);
    END IF;
    IF jsonb_array_length(doc -> 'gates') > 0 THEN
        PERFORM orch_put_gates(doc);
    END IF;
    IF jsonb_array_length(doc -> 'dead') > 0 THEN
        INSERT INTO dead_letters (run_id, task_id, role, attempts, error, created_at)
        SELECT v_run, d.v ->> 0, d.v ->> 1, (d.v ->> 2)::bigint, d.v ->> 3, v_now
        FROM jsonb_array_elements(doc -> 'dead') WITH ORDINALITY AS d(v, ord)
        ORDER BY d.ord;
    END IF;
    IF jsonb_array_length(doc -> 'events') > 0 THEN
        -- As orch_add_events(doc, v_seq), without a statement to call it.
        INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
        SELECT v_run, v_seq - jsonb_array_length(doc -> 'events') + e.ord,
               e.v ->> 0, e.v ->> 1, e.v ->> 2, e.v ->> 3, v_now
        FROM jsonb_array_elements(doc -> 'events') WITH ORDINALITY AS e(v, ord);
    END IF;
    RETURN v_version;
END;
$$;

CREATE OR REPLACE FUNCTION orch_complete_step(doc jsonb, arts jsonb, step jsonb,
                                   OUT saved_version bigint, OUT still_current boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := step ->> 'run_id';
    v_seq bigint;
BEGIN
    still_current := false;
    v_seq := orch_complete_task(doc, arts);
    IF NOT EXISTS (SELECT 1 FROM runs
                   WHERE id = v_run AND version = (step ->> 'expected_version')::bigint)
       OR (SELECT count(*)
           FROM jsonb_array_elements(step -> 'changed') AS c(v)
           JOIN tasks AS t ON t.run_id = v_run AND t.id = c.v ->> 'id'
                AND t.id = ANY (ARRAY(SELECT k.v ->> 'id'
                                      FROM jsonb_array_elements(step -> 'changed') AS k(v)))
           WHERE t.status = c.v ->> 'expected_status'
             AND t.attempt = (c.v ->> 'expected_attempt')::bigint)
          <> jsonb_array_length(step -> 'changed')
       OR EXISTS (SELECT 1
                  FROM jsonb_array_elements(step -> 'tasks') AS n(v)
                  JOIN tasks AS t ON t.run_id = v_run AND t.id = n.v ->> 'id'
                       AND t.id = ANY (ARRAY(SELECT k.v ->> 'id'
                                             FROM jsonb_array_elements(step -> 'tasks') AS k(v))))
    THEN
        RETURN;
    END IF;
    saved_version := orch_save_run(step, false);
    SELECT count(*) = jsonb_array_length(step -> 'in_flight') INTO still_current
    FROM jsonb_array_elements(step -> 'in_flight') AS f(v)
    JOIN tasks AS t ON t.run_id = v_run AND t.id = f.v ->> 0
         AND t.id = ANY (ARRAY(SELECT k.v ->> 0
                               FROM jsonb_array_elements(step -> 'in_flight') AS k(v)))
    WHERE t.attempt = (f.v ->> 1)::bigint AND t.status IN ('QUEUED', 'RUNNING');
END;
$$;
