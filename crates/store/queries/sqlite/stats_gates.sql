-- Gates per kind and status. Part of stats.
SELECT 'gates' AS part, kind, status, COUNT(*) AS n
FROM gates
GROUP BY kind, status
ORDER BY kind, status;
