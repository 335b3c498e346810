-- Allocate $2 event sequence numbers on run $1, taking its row lock for the
-- rest of the transaction (every write transaction locks the run row before
-- any task row). Returns the new last_seq; no row if the run does not exist.
UPDATE runs
SET last_seq = last_seq + $2
WHERE id = $1
RETURNING last_seq;
