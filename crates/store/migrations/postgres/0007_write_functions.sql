-- Write procedures: each write of a completion or an engine save is one
-- function call, one round trip, where it was up to eight statements (BEGIN,
-- the run's counters, the task, SAVEPOINT, the run's version, the tasks, the
-- events, COMMIT), each a round trip. They take the same JSON documents as
-- SQLite's `proc_*` triggers (crates/store/src/doc.rs) and do what those do.
-- Every one takes the run's row lock before any task row, as every write
-- transaction of the store does. A refusal is an exception whose message
-- starts with `orch-assert:` (the store tells them apart by the rest); it
-- rolls back everything the call wrote.

-- The events of `doc` (`[[kind, task_id, message, data], ...]`), numbered up
-- to `last_seq`: the run's counter after the caller bumped it by their number
-- (holding the run's row lock, so numbers have no gaps).
CREATE FUNCTION orch_add_events(doc jsonb, last_seq bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
    SELECT doc ->> 'run_id', last_seq - jsonb_array_length(doc -> 'events') + e.ord,
           e.v ->> 0, e.v ->> 1, e.v ->> 2, e.v ->> 3, (doc ->> 'now')::bigint
    FROM jsonb_array_elements(doc -> 'events') WITH ORDINALITY AS e(v, ord);
END;
$$;

-- The new tasks of `doc` (`tasks`: one object per row, JSON columns as JSON
-- text), after the run's existing ones in creation order.
CREATE FUNCTION orch_add_tasks(doc jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_run  text := doc ->> 'run_id';
    v_base bigint;
BEGIN
    IF jsonb_array_length(doc -> 'tasks') = 0 THEN
        RETURN;
    END IF;
    SELECT COALESCE(MAX(position) + 1, 0) INTO v_base FROM tasks WHERE run_id = v_run;
    INSERT INTO tasks (run_id, id, position, role, title, instructions, needs, expected,
                       validation, gate, round, findings, status, attempt, max_attempts,
                       timeout_ms, dedupe_key, not_before, lease_owner, lease_expires_at,
                       last_error, retryable, result_summary, verdict, queued_at, started_at,
                       finished_at, cost_usd)
    SELECT v_run, t.id, v_base + e.ord - 1, t.role, t.title, t.instructions, t.needs,
           t.expected, t.validation, t.gate, t.round, t.findings, t.status, t.attempt,
           t.max_attempts, t.timeout_ms, t.dedupe_key, t.not_before, t.lease_owner,
           t.lease_expires_at, t.last_error, t.retryable, t.result_summary, t.verdict,
           t.queued_at, t.started_at, t.finished_at, t.cost_usd
    FROM jsonb_array_elements(doc -> 'tasks') WITH ORDINALITY AS e(v, ord),
         LATERAL jsonb_populate_record(NULL::tasks, e.v) AS t
    ORDER BY e.ord;
END;
$$;

-- The gates of `doc` (`gates`: one object per row), inserted or updated.
CREATE FUNCTION orch_put_gates(doc jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gates (run_id, kind, status, required, review_task, rework_rounds, reason,
                       findings, updated_at)
    SELECT doc ->> 'run_id', g.kind, g.status, g.required, g.review_task, g.rework_rounds,
           g.reason, g.findings, g.updated_at
    FROM jsonb_populate_recordset(NULL::gates, doc -> 'gates') AS g
    ON CONFLICT (run_id, kind) DO UPDATE
    SET status        = excluded.status,
        required      = excluded.required,
        review_task   = excluded.review_task,
        rework_rounds = excluded.rework_rounds,
        reason        = excluded.reason,
        findings      = excluded.findings,
        updated_at    = excluded.updated_at;
END;
$$;

-- A new run with its tasks, gates and creation events (SQLite:
-- proc_create_run). Its event counter starts at the number of those events.
-- A run that exists already is a unique violation.
CREATE FUNCTION orch_create_run(doc jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_events bigint := jsonb_array_length(doc -> 'events');
BEGIN
    INSERT INTO runs (id, goal, context, workflow, status, status_reason, success_criteria,
                      settings, provider, iterations, cost_usd, tokens_in, tokens_out, version,
                      last_seq, created_at, updated_at, finished_at)
    VALUES (doc ->> 'run_id', doc ->> 'goal', doc ->> 'context', doc ->> 'workflow',
            doc ->> 'status', doc ->> 'status_reason', doc ->> 'success_criteria',
            doc ->> 'settings', doc ->> 'provider', (doc ->> 'iterations')::bigint,
            (doc ->> 'cost_usd')::float8, (doc ->> 'tokens_in')::bigint,
            (doc ->> 'tokens_out')::bigint, (doc ->> 'version')::bigint, v_events,
            (doc ->> 'created_at')::bigint, (doc ->> 'updated_at')::bigint,
            (doc ->> 'finished_at')::bigint);
    PERFORM orch_add_tasks(doc);
    PERFORM orch_put_gates(doc);
    PERFORM orch_add_events(doc, v_events);
END;
$$;

-- Append the events of `doc` to an existing run (SQLite: proc_append_events).
-- Returns the run's last event number after them; NULL, with nothing
-- written, if the run does not exist.
CREATE FUNCTION orch_append_events(doc jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    UPDATE runs
    SET last_seq = last_seq + jsonb_array_length(doc -> 'events')
    WHERE id = doc ->> 'run_id'
    RETURNING last_seq INTO v_seq;
    IF FOUND THEN
        PERFORM orch_add_events(doc, v_seq);
    END IF;
    RETURN v_seq;
END;
$$;

-- Fenced completion (SQLite: proc_complete_task). Only the holder of the
-- attempt's unexpired lease may commit; anyone else is refused
-- (`orch-assert:lease_held`) and nothing is written. Then the usage added to
-- the run's totals, the artifacts (`arts`: [[name, kind, path, content,
-- metadata, n], ...], n counting earlier entries of the same name and path in
-- the list), versioned from 1 per (name, path), the events and the journal
-- records of the attempt's LLM calls (one already journaled for the same
-- run, task, attempt and step is kept).
CREATE FUNCTION orch_complete_task(doc jsonb, arts jsonb) RETURNS void
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
        PERFORM orch_add_events(doc, v_seq);
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
END;
$$;

-- An engine save (SQLite: proc_save_run). The run row is compare-and-set on
-- its version, which every save bumps (even one that changes no run field)
-- so that engines serialize; cost, token totals belong to the workers and
-- are not written. Each changed task is compare-and-set on the status and
-- attempt the engine loaded, so a concurrent claim or completion wins; while
-- a task stays RUNNING at the same attempt its lease is the worker's
-- (heartbeats) and is kept, and a task's cost is never written here.
-- Refused: `orch-assert:run_version` (the run is gone or moved on),
-- `orch-assert:tasks_unchanged` (a changed task moved). `relaxed`: commit
-- without waiting for the WAL flush (`Durability::Derived`). Returns the
-- run's new version.
CREATE FUNCTION orch_save_run(doc jsonb, relaxed boolean) RETURNS bigint
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
        PERFORM orch_add_events(doc, v_seq);
    END IF;
    RETURN v_version;
END;
$$;

-- A completion and, in the same transaction, the engine step that follows
-- from it (SQLite: proc_complete_step): `step` is orch_save_run's document
-- with `in_flight` ([[task id, attempt], ...] of the other tasks the step saw
-- QUEUED or RUNNING). A refused completion rolls everything back. The step is
-- saved only if it applies with the completion in: the run at its expected
-- version, each changed task at its expected status and attempt, none of its
-- new tasks there yet (checked first, under the run's row lock that the
-- completion took, so the save cannot be refused after; no subtransaction).
-- If not, the completion commits alone and `saved_version` is NULL.
-- `still_current`: the step was saved and every task it saw in flight still
-- is (a task that ends after this read waits for the run's row lock and then
-- finds its own step refused).
CREATE FUNCTION orch_complete_step(doc jsonb, arts jsonb, step jsonb,
                                   OUT saved_version bigint, OUT still_current boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_run text := step ->> 'run_id';
BEGIN
    still_current := false;
    PERFORM orch_complete_task(doc, arts);
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
