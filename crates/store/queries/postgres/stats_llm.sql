-- Journaled LLM calls per provider and model. Part of stats.
SELECT provider, model, COUNT(*) AS n,
       SUM(input_tokens)::BIGINT AS input_tokens, SUM(output_tokens)::BIGINT AS output_tokens,
       SUM(cache_read_tokens)::BIGINT AS cache_read_tokens,
       SUM(cache_write_tokens)::BIGINT AS cache_write_tokens,
       SUM(cost_usd) AS cost_usd
FROM llm_calls
GROUP BY provider, model
ORDER BY provider COLLATE "C", model COLLATE "C";
