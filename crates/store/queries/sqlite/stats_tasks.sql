-- Tasks per role and status (from the index tasks_by_role_status). Part of stats.
SELECT 'tasks' AS part, role, status, COUNT(*) AS n
FROM tasks
GROUP BY role, status
ORDER BY role, status;
