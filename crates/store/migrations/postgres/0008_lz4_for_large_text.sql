-- Prompts, responses and artifacts are the large values (an llm_request
-- event holds a task's whole prompt, upstream artifacts included). They are
-- compressed out of line (TOAST) by every insert; lz4 does it several times
-- faster than the default pglz, at a similar ratio for text. Only new values
-- use it. A server built without lz4 (or older than PostgreSQL 14) keeps
-- pglz: the store works the same either way.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN data SET COMPRESSION lz4;
    ALTER TABLE artifacts ALTER COLUMN content SET COMPRESSION lz4;
    ALTER TABLE llm_calls ALTER COLUMN request SET COMPRESSION lz4,
                          ALTER COLUMN response SET COMPRESSION lz4;
EXCEPTION
    WHEN feature_not_supported OR syntax_error THEN
        RAISE NOTICE 'lz4 compression is not available; large values stay pglz-compressed';
END;
$$;
