-- The artifact versions of run ?1 that ?2 names ([[name, path, version], ...]):
-- what prompt events quote (orch_core::elision), read by key rather than the
-- run's every artifact.
SELECT a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt, a.content, a.metadata,
       a.created_at
FROM artifacts a
WHERE a.run_id = ?1
  AND (a.name, COALESCE(a.path, ''), a.version) IN
      (SELECT k.value ->> 0, COALESCE(k.value ->> 1, ''), k.value ->> 2 FROM json_each(?2) AS k);
