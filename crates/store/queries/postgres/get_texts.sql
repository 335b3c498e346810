-- Prompt texts by hash.
SELECT hash, text FROM prompt_texts WHERE hash = ANY($1);
