-- proc_complete_task(doc, artifacts): fenced completion. Only the holder of
-- this attempt's unexpired lease may commit; anyone else is refused and
-- nothing is written. Then the artifacts, versioned from 1 per (name, path):
-- one code artifact is several files, each with its own history
-- (artifacts: [[name, kind, path, content, metadata, n], ...] where n counts
-- earlier entries of the same name and path in this list), the usage added to the
-- run's totals (workers own those columns), doc's events, and doc's journal
-- records of LLM calls (doc -> 'llm_calls': [{run_id, task_id, ...}, ...]; one
-- already journaled for the same run, task, attempt and step is kept).
CREATE TEMP VIEW proc_complete_task (doc, artifacts) AS SELECT NULL, NULL WHERE 0;
CREATE TEMP TRIGGER proc_complete_task INSTEAD OF INSERT ON proc_complete_task
BEGIN
    UPDATE tasks
    SET status           = NEW.doc ->> 'status',
        result_summary   = NEW.doc ->> 'summary',
        verdict          = NEW.doc ->> 'verdict',
        last_error       = NEW.doc ->> 'error',
        retryable        = NEW.doc ->> 'retryable',
        finished_at      = NEW.doc ->> 'now',
        lease_owner      = NULL,
        lease_expires_at = NULL,
        cost_usd         = cost_usd + (NEW.doc ->> 'cost_usd')
    WHERE run_id = NEW.doc ->> 'run_id' AND id = NEW.doc ->> 'task_id' AND status = 'RUNNING'
      AND attempt = NEW.doc ->> 'attempt' AND lease_owner = NEW.doc ->> 'owner'
      AND lease_expires_at >= NEW.doc ->> 'now';
    SELECT RAISE(ABORT, 'orch-assert:lease_held') WHERE changes() <> 1;
    INSERT INTO artifacts (run_id, name, version, kind, path, task_id, attempt, content,
                           metadata, created_at)
    SELECT NEW.doc ->> 'run_id', a.value ->> 0,
           (SELECT COALESCE(MAX(version), 0) FROM artifacts
            WHERE run_id = NEW.doc ->> 'run_id' AND name = a.value ->> 0
              AND path IS (a.value ->> 2)) + 1 + (a.value ->> 5),
           a.value ->> 1, a.value ->> 2, NEW.doc ->> 'task_id', NEW.doc ->> 'attempt',
           a.value ->> 3, a.value ->> 4, NEW.doc ->> 'now'
    FROM jsonb_each(NEW.artifacts) AS a;
    UPDATE runs
    SET cost_usd   = cost_usd + (NEW.doc ->> 'cost_usd'),
        tokens_in  = tokens_in + (NEW.doc ->> 'input_tokens'),
        tokens_out = tokens_out + (NEW.doc ->> 'output_tokens')
    WHERE id = NEW.doc ->> 'run_id';
    INSERT INTO proc_add_events (doc) VALUES (NEW.doc);
    INSERT INTO llm_calls (run_id, task_id, attempt, step, request_hash, provider, model, request,
                           response, input_tokens, output_tokens, cache_read_tokens,
                           cache_write_tokens, latency_ms, cost_usd, created_at)
    SELECT c.value ->> 'run_id', c.value ->> 'task_id', c.value ->> 'attempt', c.value ->> 'step',
           c.value ->> 'request_hash', c.value ->> 'provider', c.value ->> 'model',
           c.value ->> 'request', c.value ->> 'response', c.value ->> 'input_tokens',
           c.value ->> 'output_tokens', c.value ->> 'cache_read_tokens',
           c.value ->> 'cache_write_tokens', c.value ->> 'latency_ms', c.value ->> 'cost_usd',
           c.value ->> 'created_at'
    FROM jsonb_each(NEW.doc, '$.llm_calls') AS c
    WHERE true
    ON CONFLICT (run_id, task_id, attempt, step) DO NOTHING;
END;
