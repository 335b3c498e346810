-- Journal look-ups of a task's calls by request hash (retries, replays).
CREATE INDEX llm_calls_by_task_hash ON llm_calls (run_id, task_id, request_hash);
