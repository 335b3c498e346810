-- Runs per status. Part of stats.
SELECT 'runs' AS part, status, COUNT(*) AS n
FROM runs
GROUP BY status
ORDER BY status;
