-- Fenced completion of attempt $3 of task $2 of run $1 by owner $4 at $5:
-- only the holder of the attempt's unexpired lease matches. Sets the outcome
-- (status $6, summary $7, verdict $8, error $9, retryable $10, cost $11
-- added), then, only if the fence held, inserts the artifacts (names $12,
-- kinds $13, paths $14, contents $15, metadata $16), versioned from 1 per
-- (name, path): one code artifact is several files, each with its own
-- history; and the events (numbered up to $17: kinds $18, task ids $19,
-- messages $20, data $21). Returns the number of tasks completed (0 or 1);
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
)
SELECT count(*) AS completed FROM done;
