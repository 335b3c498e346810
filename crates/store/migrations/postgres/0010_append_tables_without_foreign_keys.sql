-- The append-only tables written with every task (about eight events, an
-- artifact and a journal row per task) no longer check their run_id against
-- runs row by row: each check is a query of its own (a trigger) and they
-- were ~7% of the server's work in the S3 benchmark. Every path that writes
-- them makes the same guarantee first: the write procedures lock or update
-- the run's row before inserting (and insert nothing when there is none),
-- and record_llm_call.sql inserts only for an existing run. Runs are never
-- deleted; a future deletion must delete these rows explicitly. Tasks,
-- gates and dead letters keep theirs (a task's key is checked once, when
-- it is created).
ALTER TABLE events DROP CONSTRAINT events_run_id_fkey;
ALTER TABLE artifacts DROP CONSTRAINT artifacts_run_id_fkey;
ALTER TABLE llm_calls DROP CONSTRAINT llm_calls_run_id_fkey;
