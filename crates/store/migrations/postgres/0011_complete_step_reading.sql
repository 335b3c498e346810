-- A completion with its step, and, once the step is saved, what the worker
-- it hands a task to reads (Step::inputs_of): the task is saved claimed by
-- the step (RUNNING under that worker's lease), so there is no claim of its
-- own to read them with. The completion's document names them as a claim's
-- names them (`upstream`: artifact names, `upstream_tasks`: the tasks whose
-- versions count). `messages` and `upstream` are JSON arrays of rows as
-- claim_task.sql returns them (`r_messages`, `r_upstream`; NULL for none),
-- read after the step's writes (a statement of this function sees them; the
-- caller's own statement would not) and only if it was saved.
CREATE FUNCTION orch_complete_step_reading(doc jsonb, arts jsonb, step jsonb,
                                           OUT saved_version bigint, OUT still_current boolean,
                                           OUT messages text, OUT upstream text)
LANGUAGE plpgsql AS $$
DECLARE
    v_run   text := doc ->> 'run_id';
    v_names text[];
    v_tasks text[];
BEGIN
    SELECT s.saved_version, s.still_current INTO saved_version, still_current
    FROM orch_complete_step(doc, arts, step) AS s;
    IF saved_version IS NULL THEN
        RETURN;
    END IF;
    v_names := ARRAY(SELECT jsonb_array_elements_text(doc -> 'upstream'));
    v_tasks := ARRAY(SELECT jsonb_array_elements_text(doc -> 'upstream_tasks'));
    SELECT json_agg(m ORDER BY m.seq)::text INTO messages
    FROM (SELECT run_id, seq, kind, task_id, message, data, created_at
          FROM events
          WHERE run_id = v_run AND kind = 'channel_message') AS m;
    SELECT json_agg(u ORDER BY u.created_at, u.name, u.version, u.id)::text INTO upstream
    FROM (SELECT a.id, a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt,
                 a.content, a.metadata, a.created_at
          FROM artifacts a
          WHERE a.run_id = v_run
            AND a.name = ANY(v_names)
            AND a.task_id = ANY(v_tasks)
            AND a.version = (SELECT MAX(b.version) FROM artifacts b
                             WHERE b.run_id = a.run_id AND b.name = a.name
                               AND COALESCE(b.path, '') = COALESCE(a.path, '')
                               AND b.task_id = ANY(v_tasks))) AS u;
END;
$$;
