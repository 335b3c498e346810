-- load_run_from in one round trip and one snapshot: run $1's version and the
-- run columns workers change, then per task (in creation order) its id and
-- attempt (to check the known plan against) and what workers change of it
-- (updated_at too: a save that changes no run field keeps the stored one).
-- Gates and the other run columns change only in engine saves, which bump
-- the version. One row with NULL task columns for a run without tasks.
SELECT r.version, r.updated_at, r.cost_usd AS run_cost_usd, r.tokens_in, r.tokens_out,
       t.id, t.attempt, t.status, t.lease_owner, t.lease_expires_at, t.last_error, t.retryable,
       t.result_summary, t.verdict, t.started_at, t.finished_at, t.cost_usd
FROM runs AS r
LEFT JOIN tasks AS t ON t.run_id = r.id
WHERE r.id = $1
ORDER BY t.position;
