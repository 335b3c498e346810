-- The latest journaled call of a task ($2 of run $1) with request hash $3.
SELECT run_id, task_id, attempt, step, request_hash, provider, model, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, cost_usd, created_at
FROM llm_calls
WHERE run_id = $1 AND task_id = $2 AND request_hash = $3
ORDER BY id DESC
LIMIT 1;
