-- Dead letters of run $1 created at $2 (task ids $3, roles $4, attempts $5,
-- errors $6), their ids ascending in list order.
INSERT INTO dead_letters (run_id, task_id, role, attempts, error, created_at)
SELECT $1, d.task_id, d.role, d.attempts, d.error, $2
FROM UNNEST($3::text[], $4::text[], $5::bigint[], $6::text[]) WITH ORDINALITY
     AS d(task_id, role, attempts, error, ord)
ORDER BY d.ord;
