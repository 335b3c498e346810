-- A completion whose step hands a task to the completing worker reads that
-- task's upstream without the artifact versions the worker holds already
-- (the completion's document names them, `held`: [name, path, version]);
-- the store adds them back (orch_store::InputsOf::held). Along a chain each
-- task read every earlier artifact again. As 0013 otherwise.
CREATE OR REPLACE FUNCTION orch_complete_step_reading(doc jsonb, arts jsonb, step jsonb,
                                                      OUT saved_version bigint,
                                                      OUT still_current boolean,
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
                    AND (a.name, COALESCE(a.path, ''), a.version) NOT IN
                        (SELECT h.v ->> 0, COALESCE(h.v ->> 1, ''), (h.v ->> 2)::bigint
                         FROM jsonb_array_elements(COALESCE(doc -> 'held', '[]'::jsonb)) AS h(v))
                    AND a.version = (SELECT MAX(b.version) FROM artifacts b
                                     WHERE b.run_id = a.run_id AND b.name = a.name
                                       AND COALESCE(b.path, '') = COALESCE(a.path, '')
                                       AND b.task_id IN (SELECT jsonb_array_elements_text(
                                                             doc -> 'upstream_tasks')))) AS u)
    INTO messages, upstream;
END;
$$;
