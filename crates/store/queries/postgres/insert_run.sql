-- A new run. Its event counter starts at the number of creation events
-- ($15), which insert_events numbers 1..n in the same transaction: the row is
-- new, so no one else can append in between.
INSERT INTO runs (id, goal, context, workflow, status, status_reason, success_criteria, settings,
                  provider, iterations, cost_usd, tokens_in, tokens_out, version, last_seq,
                  created_at, updated_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18);
