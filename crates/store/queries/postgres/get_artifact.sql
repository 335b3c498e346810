-- One version ($3), or the latest when $3 is NULL (of a multi-file artifact:
-- the most recently written file).
SELECT run_id, name, version, kind, path, task_id, attempt, content, metadata, created_at
FROM artifacts
WHERE run_id = $1 AND name = $2 AND ($3::bigint IS NULL OR version = $3::bigint)
ORDER BY version DESC, created_at DESC, id DESC
LIMIT 1;
