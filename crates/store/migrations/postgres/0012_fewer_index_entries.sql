-- Fewer index entries written per task (about seven events and a journal
-- row each). Events of a kind: the only kind read on a hot path is the
-- channel messages (every attempt reads its run's), which keep an index of
-- their own; a read of another kind (`events --kind`) goes through the
-- run's events in order, which the primary key already has. The journal is
-- looked up by run, task and request hash: the unique key (run_id, task_id,
-- attempt, step) finds a task's few calls, among which the hash is compared.
DROP INDEX events_by_kind;
CREATE INDEX events_channel_messages ON events (run_id, seq) WHERE kind = 'channel_message';
DROP INDEX llm_calls_by_task_hash;
