-- Durations (finished_at - started_at) of tasks in a terminal status
-- (TaskStatus::is_terminal), per role and histogram bucket: the index of the
-- first bound of TASK_DURATION_BUCKETS_MS the duration does not exceed, 12
-- (+Inf) above them all. Part of stats.
SELECT 'durations' AS part, role,
       CASE
           WHEN duration <= 10 THEN 0
           WHEN duration <= 50 THEN 1
           WHEN duration <= 100 THEN 2
           WHEN duration <= 500 THEN 3
           WHEN duration <= 1000 THEN 4
           WHEN duration <= 5000 THEN 5
           WHEN duration <= 10000 THEN 6
           WHEN duration <= 30000 THEN 7
           WHEN duration <= 60000 THEN 8
           WHEN duration <= 300000 THEN 9
           WHEN duration <= 900000 THEN 10
           WHEN duration <= 3600000 THEN 11
           ELSE 12
       END AS bucket,
       COUNT(*) AS n, SUM(duration) AS sum_ms
FROM (
    SELECT role, finished_at - started_at AS duration
    FROM tasks
    WHERE status IN ('SUCCEEDED', 'DEAD', 'SKIPPED', 'CANCELLED')
      AND started_at IS NOT NULL AND finished_at IS NOT NULL
)
GROUP BY role, bucket
ORDER BY role, bucket;
