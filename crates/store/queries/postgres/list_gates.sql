-- Gates of run $1. Part of load_run.
SELECT run_id, kind, status, required, review_task, rework_rounds, reason, findings, updated_at
FROM gates
WHERE run_id = $1;
