-- Schema of the orchestrator's PostgreSQL store: the same tables and meaning
-- as the SQLite schema (`migrations/sqlite`).
--
-- Times are BIGINT milliseconds since the Unix epoch. Integers are BIGINT
-- throughout (as SQLite's INTEGER). JSON values are TEXT: the store never
-- queries inside them, and TEXT gives back exactly what was written (jsonb
-- would re-encode it and parse it on every write). Enum values are stored in
-- their text forms (RUNNING, backend_engineer, task_started, code_review).
-- Every table of a run references `runs`.

CREATE TABLE runs (
    id               TEXT             NOT NULL PRIMARY KEY,
    goal             TEXT             NOT NULL,
    context          TEXT             NOT NULL,   -- JSON
    workflow         TEXT             NOT NULL,
    status           TEXT             NOT NULL,
    status_reason    TEXT,
    success_criteria TEXT             NOT NULL,   -- JSON array of strings
    settings         TEXT             NOT NULL,   -- JSON RunSettings
    provider         TEXT             NOT NULL,
    iterations       BIGINT           NOT NULL DEFAULT 0,
    -- Totals: only workers add to these (fenced completion).
    cost_usd         DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_in        BIGINT           NOT NULL DEFAULT 0,
    tokens_out       BIGINT           NOT NULL DEFAULT 0,
    -- Optimistic concurrency: bumped by every engine save.
    version          BIGINT           NOT NULL DEFAULT 0,
    -- Sequence number of the run's last event. Bumped (row-locked) by every
    -- transaction that appends events: the lock serializes appends per run.
    last_seq         BIGINT           NOT NULL DEFAULT 0,
    created_at       BIGINT           NOT NULL,
    updated_at       BIGINT           NOT NULL,
    finished_at      BIGINT
);

CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_by_status ON runs (status, created_at);

CREATE TABLE tasks (
    run_id           TEXT             NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    id               TEXT             NOT NULL,
    -- Creation order within the run (0, 1, 2, ...): the plan order.
    position         BIGINT           NOT NULL,
    role             TEXT             NOT NULL,
    title            TEXT             NOT NULL,
    instructions     TEXT             NOT NULL,
    needs            TEXT             NOT NULL,   -- JSON array of task ids
    expected         TEXT             NOT NULL,   -- JSON array of ExpectedArtifact
    validation       TEXT             NOT NULL,   -- JSON array of ValidationRule
    gate             TEXT,
    round            BIGINT           NOT NULL DEFAULT 0,
    findings         TEXT             NOT NULL,   -- JSON array of strings
    status           TEXT             NOT NULL,
    attempt          BIGINT           NOT NULL DEFAULT 0,
    max_attempts     BIGINT           NOT NULL,
    timeout_ms       BIGINT           NOT NULL,
    dedupe_key       TEXT             NOT NULL,
    not_before       BIGINT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    retryable        BOOLEAN          NOT NULL DEFAULT TRUE,
    result_summary   TEXT,
    verdict          TEXT,                        -- JSON Verdict
    queued_at        BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    cost_usd         DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, id)
);

CREATE INDEX tasks_by_position ON tasks (run_id, position);
-- The sweeper: expired leases and RUNNING tasks, stale QUEUED tasks.
CREATE INDEX tasks_by_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_by_queued ON tasks (status, queued_at);

CREATE TABLE gates (
    run_id        TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    required      BOOLEAN NOT NULL,
    review_task   TEXT,
    rework_rounds BIGINT  NOT NULL DEFAULT 0,
    reason        TEXT,
    findings      TEXT    NOT NULL,               -- JSON array of strings
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (run_id, kind)
);

CREATE TABLE events (
    run_id     TEXT   NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    task_id    TEXT,
    message    TEXT   NOT NULL,
    data       TEXT   NOT NULL,                   -- JSON
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE artifacts (
    -- Insertion order (SQLite's rowid): breaks ties between equal times.
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     TEXT   NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    path       TEXT,
    task_id    TEXT   NOT NULL,
    attempt    BIGINT NOT NULL,
    content    TEXT   NOT NULL,
    metadata   TEXT   NOT NULL,                   -- JSON
    created_at BIGINT NOT NULL
);

-- Versions count per (name, path): a code artifact is several files.
CREATE UNIQUE INDEX artifacts_identity ON artifacts (run_id, name, COALESCE(path, ''), version);

CREATE TABLE dead_letters (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      TEXT   NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id     TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    error       TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    replayed_at BIGINT
);

CREATE INDEX dead_letters_by_run ON dead_letters (run_id, created_at);
CREATE INDEX dead_letters_by_created ON dead_letters (created_at DESC, id DESC);

-- The LLM call journal: one row per task attempt and agent step, so that a
-- retried attempt (or `orchestrator replay`) reuses responses already paid for.
CREATE TABLE llm_calls (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             TEXT             NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id            TEXT             NOT NULL,
    attempt            BIGINT           NOT NULL,
    step               BIGINT           NOT NULL,
    request_hash       TEXT             NOT NULL,
    provider           TEXT             NOT NULL,
    model              TEXT             NOT NULL,
    request            TEXT             NOT NULL, -- JSON
    response           TEXT             NOT NULL, -- JSON
    input_tokens       BIGINT           NOT NULL DEFAULT 0,
    output_tokens      BIGINT           NOT NULL DEFAULT 0,
    cache_read_tokens  BIGINT           NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT           NOT NULL DEFAULT 0,
    latency_ms         BIGINT           NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at         BIGINT           NOT NULL,
    UNIQUE (run_id, task_id, attempt, step)
);

CREATE INDEX llm_calls_by_hash ON llm_calls (request_hash);
