-- Journal one LLM call; idempotent on (run, task, attempt, step). Nothing
-- is written for a run that does not exist (the caller tells that case from
-- a call journaled already).
INSERT INTO llm_calls (run_id, task_id, attempt, step, request_hash, provider, model, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, cost_usd, created_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16
WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1)
ON CONFLICT (run_id, task_id, attempt, step) DO NOTHING;
