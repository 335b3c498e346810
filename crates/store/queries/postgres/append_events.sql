-- Append events to run $1, created at $2 (kinds $3, task ids $4, messages $5,
-- data $6), in one statement (its own transaction): the UPDATE allocates
-- their sequence numbers and row-locks the run until commit, so concurrent
-- appends to one run serialize and seqs have no gaps. No row (and nothing
-- inserted) if the run does not exist.
WITH allocated AS (
    UPDATE runs
    SET last_seq = last_seq + cardinality($3::text[])
    WHERE id = $1
    RETURNING last_seq
)
INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
SELECT $1, a.last_seq - cardinality($3::text[]) + e.ord, e.kind, e.task_id, e.message, e.data, $2
FROM allocated a,
     UNNEST($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY
     AS e(kind, task_id, message, data, ord)
RETURNING seq;
