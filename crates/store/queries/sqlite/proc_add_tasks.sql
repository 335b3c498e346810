-- proc_add_tasks(doc): insert doc's new tasks after the run's existing ones
-- (creation order). SQLite computes the SELECT before inserting (it reads
-- `tasks`), so the existing maximum position is taken once.
--   doc ->> 'run_id', doc -> 'tasks': [{id, role, title, ...}, ...]
CREATE TEMP VIEW proc_add_tasks (doc) AS SELECT NULL WHERE 0;
CREATE TEMP TRIGGER proc_add_tasks INSTEAD OF INSERT ON proc_add_tasks
WHEN json_array_length(NEW.doc, '$.tasks') > 0
BEGIN
    INSERT INTO tasks (run_id, id, position, role, title, instructions, needs, expected,
                       validation, gate, round, findings, status, attempt, max_attempts,
                       timeout_ms, dedupe_key, not_before, lease_owner, lease_expires_at,
                       last_error, retryable, result_summary, verdict, queued_at, started_at,
                       finished_at, cost_usd)
    SELECT NEW.doc ->> 'run_id', t.value ->> 'id',
           (SELECT COALESCE(MAX(position) + 1, 0) FROM tasks
            WHERE run_id = NEW.doc ->> 'run_id') + t.key,
           t.value ->> 'role', t.value ->> 'title', t.value ->> 'instructions',
           t.value ->> 'needs', t.value ->> 'expected', t.value ->> 'validation',
           t.value ->> 'gate', t.value ->> 'round', t.value ->> 'findings',
           t.value ->> 'status', t.value ->> 'attempt', t.value ->> 'max_attempts',
           t.value ->> 'timeout_ms', t.value ->> 'dedupe_key', t.value ->> 'not_before',
           t.value ->> 'lease_owner', t.value ->> 'lease_expires_at', t.value ->> 'last_error',
           t.value ->> 'retryable', t.value ->> 'result_summary', t.value ->> 'verdict',
           t.value ->> 'queued_at', t.value ->> 'started_at', t.value ->> 'finished_at',
           t.value ->> 'cost_usd'
    FROM jsonb_each(NEW.doc, '$.tasks') AS t;
END;
