SELECT id
FROM runs
WHERE status IN ('PENDING', 'PLANNING', 'RUNNING')
ORDER BY created_at, id;
