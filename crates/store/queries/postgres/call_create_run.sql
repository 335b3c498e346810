-- A new run with its tasks, gates and creation events ($1: the document of
-- proc_create_run, crates/store/src/doc.rs).
SELECT orch_create_run($1::jsonb);
