-- Gates per kind and status. Part of stats.
SELECT kind, status, COUNT(*) AS n
FROM gates
GROUP BY kind, status
ORDER BY kind COLLATE "C", status COLLATE "C";
