-- Fewer statements per completion. Inside a function each statement is
-- planned once but started and finished by the executor every time, and
-- that start-up was the largest single cost of a completion with its step
-- (a profile of the S3 benchmark: ExecutorStart ~10% of the server's time).
-- A completion that hands a task over ran 19 statements; it now runs 12,
-- doing the same writes in the same order:
-- - a call whose value is assigned (`v := f(...)`) is evaluated as a plain
--   expression, where `PERFORM f(...)` and `SELECT ... FROM f(...)` are
--   statements of their own: the functions called on this path return a
--   value and are assigned;
-- - the events are inserted by the statement itself rather than by a call
--   of orch_add_events (a statement to call it and the insert inside);
-- - the reads after a hand-off are one statement.
-- Behaviour, refusals and results are those of migrations 0007 and 0011.

DROP FUNCTION orch_complete_step_reading(jsonb, jsonb, jsonb);
DROP FUNCTION orch_complete_step(jsonb, jsonb, jsonb);
DROP FUNCTION orch_complete_task(jsonb, jsonb);

-- A fenced completion (see 0007). Returns the run's event counter after it.
CREATE FUNCTION orch_complete_task(doc jsonb, arts jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_run  text   := doc ->> 'run_id';
    v_task text   := doc ->> 'task_id';
    v_now  bigint := (doc ->> 'now')::bigint;
    v_seq  bigint;
    -- A variable, not a literal, in the fence below: see claim_task.sql (a
    -- literal lets the cached plan use the partial index tasks_running_by_lease).
    v_running text := 'RUNNING';
BEGIN
    UPDATE runs
    SET last_seq   = last_seq + jsonb_array_length(doc -> 'events'),
        cost_usd   = cost_usd + (doc ->> 'cost_usd')::float8,
        tokens_in  = tokens_in + (doc ->> 'input_tokens')::bigint,
        tokens_out = tokens_out + (doc ->> 'output_tokens')::bigint
    WHERE id = v_run
    RETURNING last_seq INTO v_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'orch-assert:lease_held';
    END IF;
    UPDATE tasks
    SET status           = doc ->> 'status',
        result_summary   = doc ->> 'summary',
        verdict          = doc ->> 'verdict',
        last_error       = doc ->> 'error',
        retryable        = (doc ->> 'retryable')::boolean,
        finished_at      = v_now,
        lease_owner      = NULL,
        lease_expires_at = NULL,
        cost_usd         = cost_usd + (doc ->> 'cost_usd')::float8
    WHERE run_id = v_run AND id = v_task AND status = v_running
      AND attempt = (doc ->> 'attempt')::bigint AND lease_owner = doc ->> 'owner'
      AND lease_expires_at >= v_now;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'orch-assert:lease_held';
    END IF;
    IF jsonb_array_length(arts) > 0 THEN
        INSERT INTO artifacts (run_id, name, version, kind, path, task_id, attempt, content,
                               metadata, created_at)
        SELECT v_run, a.v ->> 0,
               COALESCE((SELECT MAX(b.version) FROM artifacts b
                         WHERE b.run_id = v_run AND b.name = a.v ->> 0
                           AND COALESCE(b.path, '') = COALESCE(a.v ->> 2, '')), 0)
                 + 1 + (a.v ->> 5)::bigint,
               a.v ->> 1, a.v ->> 2, v_task, (doc ->> 'attempt')::bigint, a.v ->> 3, a.v ->> 4,
               v_now
        FROM jsonb_array_elements(arts) WITH ORDINALITY AS a(v, ord)
        ORDER BY a.ord;
    END IF;
    IF jsonb_array_length(doc -> 'events') > 0 THEN
        -- As orch_add_events(doc, v_seq), without a statement to call it.
        INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
        SELECT v_run, v_seq - jsonb_array_length(doc -> 'events') + e.ord,
               e.v ->> 0, e.v ->> 1, e.v ->> 2, e.v ->> 3, v_now
        FROM jsonb_array_elements(doc -> 'events') WITH ORDINALITY AS e(v, ord);
    END IF;
    IF jsonb_array_length(doc -> 'llm_calls') > 0 THEN
        INSERT INTO llm_calls (run_id, task_id, attempt, step, request_hash, provider, model,
                               request, response, input_tokens, output_tokens, cache_read_tokens,
                               cache_write_tokens, latency_ms, cost_usd, created_at)
        SELECT c.run_id, c.task_id, c.attempt, c.step, c.request_hash, c.provider, c.model,
               c.request, c.response, c.input_tokens, c.output_tokens, c.cache_read_tokens,
               c.cache_write_tokens, c.latency_ms, c.cost_usd, c.created_at
        FROM jsonb_populate_recordset(NULL::llm_calls, doc -> 'llm_calls') AS c
        ON CONFLICT (run_id, task_id, attempt, step) DO NOTHING;
    END IF;
    RETURN v_seq;
END;
$$;

-- An engine save (see 0007), its events inserted by the statement itself.
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

-- A completion and the step that follows from it (see 0007).
CREATE FUNCTION orch_complete_step(doc jsonb, arts jsonb, step jsonb,
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
           WHERE t.status = c.v ->> 'expected_status'
             AND t.attempt = (c.v ->> 'expected_attempt')::bigint)
          <> jsonb_array_length(step -> 'changed')
       OR EXISTS (SELECT 1
                  FROM jsonb_array_elements(step -> 'tasks') AS n(v)
                  JOIN tasks AS t ON t.run_id = v_run AND t.id = n.v ->> 'id')
    THEN
        RETURN;
    END IF;
    saved_version := orch_save_run(step, false);
    SELECT count(*) = jsonb_array_length(step -> 'in_flight') INTO still_current
    FROM jsonb_array_elements(step -> 'in_flight') AS f(v)
    JOIN tasks AS t ON t.run_id = v_run AND t.id = f.v ->> 0
    WHERE t.attempt = (f.v ->> 1)::bigint AND t.status IN ('QUEUED', 'RUNNING');
END;
$$;

-- A completion with its step and, once the step is saved, what the worker it
-- hands a task to reads (see 0011), in one statement.
CREATE FUNCTION orch_complete_step_reading(doc jsonb, arts jsonb, step jsonb,
                                           OUT saved_version bigint, OUT still_current boolean,
                                           OUT messages text, OUT upstream text)
LANGUAGE plpgsql AS $$
DECLARE
    v_run  text := doc ->> 'run_id';
    v_step record;
BEGIN
    v_step := orch_complete_step(doc, arts, step);
    saved_version := v_step.saved_version;
    still_current := v_step.still_current;
    IF saved_version IS NULL THEN
        RETURN;
    END IF;
    SELECT (SELECT json_agg(m ORDER BY m.seq)::text
            FROM (SELECT run_id, seq, kind, task_id, message, data, created_at
                  FROM events
                  WHERE run_id = v_run AND kind = 'channel_message') AS m),
           (SELECT json_agg(u ORDER BY u.created_at, u.name, u.version, u.id)::text
            FROM (SELECT a.id, a.run_id, a.name, a.version, a.kind, a.path, a.task_id,
                         a.attempt, a.content, a.metadata, a.created_at
                  FROM artifacts a
                  WHERE a.run_id = v_run
                    AND a.name IN (SELECT jsonb_array_elements_text(doc -> 'upstream'))
                    AND a.task_id IN (SELECT jsonb_array_elements_text(doc -> 'upstream_tasks'))
                    AND a.version = (SELECT MAX(b.version) FROM artifacts b
                                     WHERE b.run_id = a.run_id AND b.name = a.name
                                       AND COALESCE(b.path, '') = COALESCE(a.path, '')
                                       AND b.task_id IN (SELECT jsonb_array_elements_text(
                                                             doc -> 'upstream_tasks')))) AS u)
    INTO messages, upstream;
END;
$$;
