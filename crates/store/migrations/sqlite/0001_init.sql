-- Schema of the orchestrator's SQLite store.
--
-- Times are INTEGER milliseconds since the Unix epoch. JSON values are TEXT.
-- Enum values are stored in their text forms (RUNNING, backend_engineer,
-- task_started, code_review). Every table of a run references `runs`.

CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,
    goal             TEXT    NOT NULL,
    context          TEXT    NOT NULL,            -- JSON
    workflow         TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    status_reason    TEXT,
    success_criteria TEXT    NOT NULL,            -- JSON array of strings
    settings         TEXT    NOT NULL,            -- JSON RunSettings
    provider         TEXT    NOT NULL,
    iterations       INTEGER NOT NULL DEFAULT 0,
    -- Totals: only workers add to these (fenced completion).
    cost_usd         REAL    NOT NULL DEFAULT 0,
    tokens_in        INTEGER NOT NULL DEFAULT 0,
    tokens_out       INTEGER NOT NULL DEFAULT 0,
    -- Optimistic concurrency: bumped by every engine save.
    version          INTEGER NOT NULL DEFAULT 0,
    -- Sequence number of the run's last event.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);

CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at);

CREATE TABLE tasks (
    run_id           TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    id               TEXT    NOT NULL,
    -- Creation order within the run (0, 1, 2, ...): the plan order.
    position         INTEGER NOT NULL,
    role             TEXT    NOT NULL,
    title            TEXT    NOT NULL,
    instructions     TEXT    NOT NULL,
    needs            TEXT    NOT NULL,            -- JSON array of task ids
    expected         TEXT    NOT NULL,            -- JSON array of ExpectedArtifact
    validation       TEXT    NOT NULL,            -- JSON array of ValidationRule
    gate             TEXT,
    round            INTEGER NOT NULL DEFAULT 0,
    findings         TEXT    NOT NULL,            -- JSON array of strings
    status           TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    dedupe_key       TEXT    NOT NULL,
    not_before       INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    retryable        INTEGER NOT NULL DEFAULT 1,
    result_summary   TEXT,
    verdict          TEXT,                        -- JSON Verdict
    queued_at        INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    cost_usd         REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, id)
);

-- The sweeper: expired leases and RUNNING tasks, stale QUEUED tasks.
CREATE INDEX tasks_by_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_by_queued ON tasks (status, queued_at);

CREATE TABLE gates (
    run_id        TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    required      INTEGER NOT NULL,
    review_task   TEXT,
    rework_rounds INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    findings      TEXT    NOT NULL,               -- JSON array of strings
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind)
);

CREATE TABLE events (
    run_id     TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    task_id    TEXT,
    message    TEXT    NOT NULL,
    data       TEXT    NOT NULL,                  -- JSON
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE artifacts (
    run_id     TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    path       TEXT,
    task_id    TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    content    TEXT    NOT NULL,
    metadata   TEXT    NOT NULL,                  -- JSON
    created_at INTEGER NOT NULL
);

-- Versions count per (name, path): a code artifact is several files.
CREATE UNIQUE INDEX artifacts_identity ON artifacts (run_id, name, COALESCE(path, ''), version);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id     TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    replayed_at INTEGER
);

CREATE INDEX dead_letters_by_run ON dead_letters (run_id, created_at);

-- The LLM call journal: one row per task attempt and agent step, so that a
-- retried attempt (or `orchestrator replay`) reuses responses already paid for.
CREATE TABLE llm_calls (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
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

CREATE INDEX llm_calls_by_hash ON llm_calls (request_hash);

