-- The first statement of a completion: allocate $2 event sequence numbers on
-- run $1 (taking its row lock for the rest of the transaction) and add the
-- attempt's usage to the run's totals (cost $3, input tokens $4, output
-- tokens $5). Rolled back with the rest if the fence does not hold.
UPDATE runs
SET last_seq   = last_seq + $2,
    cost_usd   = cost_usd + $3,
    tokens_in  = tokens_in + $4,
    tokens_out = tokens_out + $5
WHERE id = $1
RETURNING last_seq;
