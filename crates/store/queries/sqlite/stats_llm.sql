-- Journaled LLM calls per provider and model. Part of stats.
SELECT 'llm' AS part, provider, model, COUNT(*) AS n,
       SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
       SUM(cache_read_tokens) AS cache_read_tokens, SUM(cache_write_tokens) AS cache_write_tokens,
       TOTAL(cost_usd) AS cost_usd
FROM llm_calls
GROUP BY provider, model
ORDER BY provider, model;
