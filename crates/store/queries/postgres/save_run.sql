-- An engine save's first statement: compare-and-set on the run's version
-- ($2), which every save bumps (even one that changes no run field) so that
-- engines serialize, and the allocation of the save's $9 events. Takes the
-- run's row lock for the rest of the transaction. Cost, token totals belong
-- to the workers and are not written. No row if the run is gone or no longer
-- at version $2. $11 true: commit this transaction without waiting for the
-- WAL flush (a derived step, `Durability::Derived`); set here to save a round trip.
UPDATE runs
SET status        = $3,
    status_reason = $4,
    iterations    = $5,
    settings      = $6,
    finished_at   = $7,
    updated_at    = CASE WHEN $8 THEN $10 ELSE updated_at END,
    version       = version + 1,
    last_seq      = last_seq + $9
WHERE id = $1 AND version = $2
RETURNING version, last_seq,
          CASE WHEN $11 THEN set_config('synchronous_commit', 'off', true) END AS relaxed;
