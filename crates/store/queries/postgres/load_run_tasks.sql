-- load_run_from in one round trip and one snapshot: run $1's version, the
-- run columns workers change (and updated_at: a save that changes no run
-- field keeps the stored one), then its tasks in creation order. Gates and
-- the other run columns change only in engine saves, which bump the version.
-- One row with NULL task columns for a run without tasks.
SELECT r.version, r.updated_at AS run_updated_at, r.cost_usd AS run_cost_usd, r.tokens_in,
       r.tokens_out,
       t.run_id, t.id, t.role, t.title, t.instructions, t.needs, t.expected, t.validation, t.gate,
       t.round, t.findings, t.status, t.attempt, t.max_attempts, t.timeout_ms, t.dedupe_key,
       t.not_before, t.lease_owner, t.lease_expires_at, t.last_error, t.retryable,
       t.result_summary, t.verdict, t.queued_at, t.started_at, t.finished_at, t.cost_usd
FROM runs AS r
LEFT JOIN tasks AS t ON t.run_id = r.id
WHERE r.id = $1
ORDER BY t.position;
