-- Events of run $1 created at $3 (kinds $4, task ids $5, messages $6, data
-- $7), numbered up to $2: the run's last_seq after the caller's transaction
-- bumped it by their number (which also holds the run's row lock until
-- commit, so appends are serialized per run and seqs have no gaps).
INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
SELECT $1, $2 - cardinality($4::text[]) + e.ord, e.kind, e.task_id, e.message, e.data, $3
FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY
     AS e(kind, task_id, message, data, ord);
