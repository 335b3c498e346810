-- Fewer pages written per task. Each commit writes every page it changed to
-- the WAL, and a task's completion changed about 24 of them; these three
-- were rewritten with every task and served reads that do without them.
--
-- Events of a kind: the only kind read on a hot path is the channel
-- messages (every attempt reads its run's); the index of every event by
-- kind put a task's six or seven events, each of another kind, on as many
-- places of the index (three leaf pages a commit). The channel messages
-- keep an index of their own; a read of another kind (`events --kind`) goes
-- through the run's events in order, which the primary key already has.
DROP INDEX events_by_kind;
CREATE INDEX events_channel_messages ON events (run_id, seq) WHERE kind = 'channel_message';

-- The journal is looked up by run, task and request hash: the unique key
-- (run_id, task_id, attempt, step) finds a task's few calls, among which
-- the hash is compared. The table is rebuilt without AUTOINCREMENT, whose
-- counter (sqlite_sequence) was a page of its own rewritten with every
-- call: rows are never deleted, so a plain rowid still only grows.
CREATE TABLE llm_calls_new (
    id                 INTEGER PRIMARY KEY,
    run_id             TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id            TEXT    NOT NULL,
    attempt            INTEGER NOT NULL,
    step               INTEGER NOT NULL,
    request_hash       TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    request            TEXT    NOT NULL,          -- JSON
    response           TEXT    NOT NULL,          -- JSON
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    latency_ms         INTEGER NOT NULL DEFAULT 0,
    cost_usd           REAL    NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    UNIQUE (run_id, task_id, attempt, step)
);
INSERT INTO llm_calls_new SELECT * FROM llm_calls ORDER BY id;
DROP TABLE llm_calls;
ALTER TABLE llm_calls_new RENAME TO llm_calls;
