-- Allocate $2 event sequence numbers on run $1, taking its row lock for the
-- rest of the transaction (every write transaction locks the run row before
-- any task row). Returns the new last_seq; no row if the run does not exist.
-- A claim's first statement: $3 true commits the transaction without waiting
-- for the WAL flush. A claim lost in a crash leaves its task QUEUED: the
-- sweeper publishes it again, and the worker that held the lost claim is
-- refused at completion by the fence, so nothing runs twice to effect. Set
-- here to save a round trip.
UPDATE runs
SET last_seq = last_seq + $2
WHERE id = $1
RETURNING last_seq,
          CASE WHEN $3 THEN set_config('synchronous_commit', 'off', true) END AS relaxed;
