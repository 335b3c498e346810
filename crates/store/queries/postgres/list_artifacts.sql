-- Every version, or ($2) only the latest version of each (name, path): a code
-- artifact is several files that share a name.
SELECT a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt, a.content, a.metadata,
       a.created_at
FROM artifacts a
WHERE a.run_id = $1
  AND (NOT $2 OR a.version = (SELECT MAX(b.version) FROM artifacts b
                              WHERE b.run_id = a.run_id AND b.name = a.name
                                AND COALESCE(b.path, '') = COALESCE(a.path, '')))
ORDER BY a.created_at, a.name, a.version, a.id;
