-- The latest version of each (name, path) of the artifacts of run ?1 whose
-- name is in the JSON array ?2, among those written by the tasks in the JSON
-- array ?3 (a task's upstream: a task running beside it may be writing a
-- newer version, which it must not see, or its prompt would depend on
-- timing): an indexed read of those names only.
SELECT a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt, a.content, a.metadata,
       a.created_at
FROM artifacts a
WHERE a.run_id = ?1
  AND a.name IN (SELECT value FROM json_each(?2))
  AND a.task_id IN (SELECT value FROM json_each(?3))
  AND a.version = (SELECT MAX(b.version) FROM artifacts b
                   WHERE b.run_id = a.run_id AND b.name = a.name
                     AND COALESCE(b.path, '') = COALESCE(a.path, '')
                     AND b.task_id IN (SELECT value FROM json_each(?3)))
ORDER BY a.created_at, a.name, a.version;
