-- What the worker handed the task an engine step saved claimed reads
-- (Step::inputs_of), in the completion's transaction on the write
-- connection, after the step (it follows call_complete_step.sql; only rows
-- if the step was saved): the run's channel messages and the latest version
-- of each (name, path) of the upstream artifacts named in ?4 -> 'upstream'
-- among those the tasks in ?4 -> 'upstream_tasks' wrote, as
-- claim_context.sql reads them for a claim. `part` tells the rows apart.
SELECT 'message' AS part, run_id, seq, kind, task_id, message, data, created_at
FROM events
WHERE run_id = ?4 ->> 'run_id' AND kind = 'channel_message'
  AND EXISTS (SELECT 1 FROM proc_stepped)
ORDER BY seq;
SELECT 'artifact' AS part, a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt,
       a.content, a.metadata, a.created_at
FROM artifacts a
WHERE a.run_id = ?4 ->> 'run_id'
  AND EXISTS (SELECT 1 FROM proc_stepped)
  AND a.name IN (SELECT value FROM json_each(?4 -> 'upstream'))
  AND a.task_id IN (SELECT value FROM json_each(?4 -> 'upstream_tasks'))
  AND a.version = (SELECT MAX(b.version) FROM artifacts b
                   WHERE b.run_id = a.run_id AND b.name = a.name
                     AND COALESCE(b.path, '') = COALESCE(a.path, '')
                     AND b.task_id IN (SELECT value FROM json_each(?4 -> 'upstream_tasks')))
ORDER BY a.created_at, a.name, a.version;
