-- An engine save ($1: the document of proc_save_run; $2: commit without
-- waiting for the WAL flush). The run's new version; refusals raise.
SELECT orch_save_run($1::jsonb, $2) AS version;
