-- New tasks of run $1 (one array per column, $2..$27), after the run's
-- existing ones in creation order. The existing maximum position is read once
-- (an InitPlan); new tasks are only added under the run's row lock.
INSERT INTO tasks (run_id, id, position, role, title, instructions, needs, expected, validation,
                   gate, round, findings, status, attempt, max_attempts, timeout_ms, dedupe_key,
                   not_before, lease_owner, lease_expires_at, last_error, retryable,
                   result_summary, verdict, queued_at, started_at, finished_at, cost_usd)
SELECT $1, t.id,
       (SELECT COALESCE(MAX(position) + 1, 0) FROM tasks WHERE run_id = $1) + t.ord - 1,
       t.role, t.title, t.instructions, t.needs, t.expected, t.validation, t.gate, t.round,
       t.findings, t.status, t.attempt, t.max_attempts, t.timeout_ms, t.dedupe_key,
       t.not_before, t.lease_owner, t.lease_expires_at, t.last_error, t.retryable,
       t.result_summary, t.verdict, t.queued_at, t.started_at, t.finished_at, t.cost_usd
FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[], $14::bigint[],
            $15::bigint[], $16::text[], $17::bigint[], $18::text[], $19::bigint[], $20::text[],
            $21::boolean[], $22::text[], $23::text[], $24::bigint[], $25::bigint[],
            $26::bigint[], $27::float8[])
     WITH ORDINALITY
     AS t(id, role, title, instructions, needs, expected, validation, gate, round, findings,
          status, attempt, max_attempts, timeout_ms, dedupe_key, not_before, lease_owner,
          lease_expires_at, last_error, retryable, result_summary, verdict, queued_at,
          started_at, finished_at, cost_usd, ord)
ORDER BY t.ord;
