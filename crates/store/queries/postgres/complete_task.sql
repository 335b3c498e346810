-- Fenced completion of attempt $3 of task $2 of run $1 by owner $4 at $5:
-- only the holder of the attempt's unexpired lease matches. Sets the outcome
-- (status $6, summary $7, verdict $8, error $9, retryable $10, cost $11
-- added), then, only if the fence held, inserts the artifacts (names $12,
-- kinds $13, paths $14, contents $15, metadata $16), versioned from 1 per
-- (name, path): one code artifact is several files, each with its own
-- history; and the events (numbered up to $17: kinds $18, task ids $19,
-- messages $20, data $21), and the journal records of the attempt's LLM calls
-- ($22..$37, one array per llm_calls column; one already journaled for the
-- same run, task, attempt and step is kept). Returns the number of tasks completed (0 or 1);
-- the caller rolls back on 0. The caller holds the run's row lock, so no
-- other completion of this run can version the same artifact meanwhile (and
-- the statement's snapshot includes every earlier completion).
WITH done AS (
    UPDATE tasks
    SET status           = $6,
        result_summary   = $7,
        verdict          = $8,
        last_error       = $9,
        retryable        = $10,
        finished_at      = $5,
        lease_owner      = NULL,
        lease_expires_at = NULL,
        cost_usd         = cost_usd + $11
    WHERE run_id = $1 AND id = $2 AND status = 'RUNNING' AND attempt = $3 AND lease_owner = $4
      AND lease_expires_at >= $5
    RETURNING id
), written AS (
    INSERT INTO artifacts (run_id, name, version, kind, path, task_id, attempt, content, metadata,
                           created_at)
    SELECT $1, a.name,
           COALESCE((SELECT MAX(b.version) FROM artifacts b
                     WHERE b.run_id = $1 AND b.name = a.name
                       AND COALESCE(b.path, '') = COALESCE(a.path, '')), 0)
             + row_number() OVER (PARTITION BY a.name, COALESCE(a.path, '') ORDER BY a.ord),
           a.kind, a.path, $2, $3, a.content, a.metadata, $5
    FROM done,
         UNNEST($12::text[], $13::text[], $14::text[], $15::text[], $16::text[]) WITH ORDINALITY
         AS a(name, kind, path, content, metadata, ord)
    ORDER BY a.ord
), logged AS (
    INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
    SELECT $1, $17 - cardinality($18::text[]) + e.ord, e.kind, e.task_id, e.message, e.data, $5
    FROM done,
         UNNEST($18::text[], $19::text[], $20::text[], $21::text[]) WITH ORDINALITY
         AS e(kind, task_id, message, data, ord)
), journaled AS (
    INSERT INTO llm_calls (run_id, task_id, attempt, step, request_hash, provider, model, request,
                           response, input_tokens, output_tokens, cache_read_tokens,
                           cache_write_tokens, latency_ms, cost_usd, created_at)
    SELECT c.run_id, c.task_id, c.attempt, c.step, c.request_hash, c.provider, c.model,
           c.request, c.response, c.input_tokens, c.output_tokens, c.cache_read_tokens,
           c.cache_write_tokens, c.latency_ms, c.cost_usd, c.created_at
    FROM done,
         UNNEST($22::text[], $23::text[], $24::int8[], $25::int8[], $26::text[], $27::text[],
                $28::text[], $29::text[], $30::text[], $31::int8[], $32::int8[], $33::int8[],
                $34::int8[], $35::int8[], $36::float8[], $37::int8[])
         AS c(run_id, task_id, attempt, step, request_hash, provider, model, request, response,
              input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, latency_ms,
              cost_usd, created_at)
    ON CONFLICT (run_id, task_id, attempt, step) DO NOTHING
)
SELECT count(*) AS completed FROM done;
