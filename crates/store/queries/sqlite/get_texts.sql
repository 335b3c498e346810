-- Prompt texts by hash: ?1 is a JSON array of hashes.
SELECT hash, text FROM prompt_texts WHERE hash IN (SELECT value FROM json_each(?1));
