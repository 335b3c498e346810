-- The journaled calls of run ?1, in recording order.
SELECT run_id, task_id, attempt, step, request_hash, provider, model, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, latency_ms, cost_usd, created_at
FROM llm_calls
WHERE run_id = ?1
ORDER BY id;
