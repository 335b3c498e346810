-- Fewer index entries to maintain on every task status change, the writes
-- each task makes three of (queued, claimed, finished). The sweeper's two
-- look-ups (RUNNING tasks by lease expiry, QUEUED tasks by queue time) only
-- ever ask for one status, so each index holds only the rows of that status:
-- a task enters one when it reaches the status and leaves it when it moves
-- on, instead of every status change rewriting its entry in both.
-- llm_calls_by_hash served no query (look-ups go by run, task and hash:
-- llm_calls_by_task_hash).
DROP INDEX tasks_by_lease;
DROP INDEX tasks_by_queued;
DROP INDEX llm_calls_by_hash;
CREATE INDEX tasks_running_by_lease ON tasks (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX tasks_queued_by_time ON tasks (queued_at) WHERE status = 'QUEUED';
