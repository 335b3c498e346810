-- proc_put_gates(doc): insert or update doc's gates.
--   doc ->> 'run_id', doc -> 'gates': [{kind, status, ...}, ...]
CREATE TEMP VIEW proc_put_gates (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_put_gates INSTEAD OF INSERT ON proc_put_gates
WHEN json_array_length(NEW.doc, '$.gates') > 0
BEGIN
    INSERT INTO gates (run_id, kind, status, required, review_task, rework_rounds, reason,
                       findings, updated_at)
    SELECT NEW.doc ->> 'run_id', g.value ->> 'kind', g.value ->> 'status',
           g.value ->> 'required', g.value ->> 'review_task', g.value ->> 'rework_rounds',
           g.value ->> 'reason', g.value ->> 'findings', g.value ->> 'updated_at'
    FROM jsonb_each(NEW.doc, '$.gates') AS g
    WHERE true
    ON CONFLICT (run_id, kind) DO UPDATE
    SET status        = excluded.status,
        required      = excluded.required,
        review_task   = excluded.review_task,
        rework_rounds = excluded.rework_rounds,
        reason        = excluded.reason,
        findings      = excluded.findings,
        updated_at    = excluded.updated_at;
END;
