-- What the worker reads to run an attempt it holds, on the write connection
-- in the same call as the write that gave it the attempt: after a claim
-- (call_claim_task.sql, claim_run.sql; only reached if the claim succeeded)
-- or after a completion whose step saved the task claimed
-- (call_complete_step_reading.sql, Step::inputs_of; rows even if the step
-- was not saved, which the store then ignores). The writer's page cache is
-- warm, where a reader's starts cold after every commit. ?1 is the claim's
-- document or the completion's reads: the run's channel messages (the
-- partial index events_channel_messages), and the latest version
-- of each (name, path) of the upstream artifacts whose names are in
-- ?1 -> 'upstream', among those written by the tasks in
-- ?1 -> 'upstream_tasks' (see list_latest_artifacts_named.sql), except the
-- versions ?1 -> 'held' names ([name, path, version]: those the worker read
-- for the attempt it completes, which the store adds back; a claim's
-- document names none). `part` tells the rows apart.
SELECT 'message' AS part, run_id, seq, kind, task_id, message, data, created_at
FROM events
WHERE run_id = ?1 ->> 'run_id' AND kind = 'channel_message'
ORDER BY seq;
SELECT 'artifact' AS part, a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt,
       a.content, a.metadata, a.created_at
FROM artifacts a
WHERE a.run_id = ?1 ->> 'run_id'
  AND a.name IN (SELECT value FROM json_each(?1 -> 'upstream'))
  AND a.task_id IN (SELECT value FROM json_each(?1 -> 'upstream_tasks'))
  AND (a.name, COALESCE(a.path, ''), a.version) NOT IN
      (SELECT h.value ->> 0, COALESCE(h.value ->> 1, ''), h.value ->> 2
       FROM json_each(?1 -> 'held') AS h)
  AND a.version = (SELECT MAX(b.version) FROM artifacts b
                   WHERE b.run_id = a.run_id AND b.name = a.name
                     AND COALESCE(b.path, '') = COALESCE(a.path, '')
                     AND b.task_id IN (SELECT value FROM json_each(?1 -> 'upstream_tasks')))
ORDER BY a.created_at, a.name, a.version;
