-- The engine's changed tasks of run $1 (columns $2..$27 as in insert_tasks,
-- then $28 expected status and $29 expected attempt), each compare-and-set on
-- the status and attempt the engine loaded: a task a worker claimed or
-- completed meanwhile is not matched, and the caller, counting the rows,
-- rolls back. While a task stays RUNNING at the same attempt its lease is the
-- worker's (heartbeats) and is kept. Cost ($27) is the workers' and is never
-- written here. The caller holds the run's row lock.
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
FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[], $14::bigint[],
            $15::bigint[], $16::text[], $17::bigint[], $18::text[], $19::bigint[], $20::text[],
            $21::boolean[], $22::text[], $23::text[], $24::bigint[], $25::bigint[],
            $26::bigint[], $27::float8[], $28::text[], $29::bigint[])
     AS c(id, role, title, instructions, needs, expected, validation, gate, round, findings,
          status, attempt, max_attempts, timeout_ms, dedupe_key, not_before, lease_owner,
          lease_expires_at, last_error, retryable, result_summary, verdict, queued_at,
          started_at, finished_at, cost_usd, expected_status, expected_attempt)
WHERE tasks.run_id = $1
  AND tasks.id = c.id
  AND tasks.status = c.expected_status
  AND tasks.attempt = c.expected_attempt;
