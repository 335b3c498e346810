-- Runs per status. Part of stats.
SELECT status, COUNT(*) AS n
FROM runs
GROUP BY status
ORDER BY status COLLATE "C";
