-- A claim in one statement, its own transaction: QUEUED -> RUNNING for
-- exactly attempt $3 of task $2 of run $1, taking the lease (owner $4 until
-- $5, now $6), with the task_started event (kind $7, message $8, data $9) at
-- the run's next event number. Returns the claimed row with the run's row
-- (its columns prefixed `r_`, read under the lock: the claim changes none of
-- them), the run's channel messages (`r_messages`, oldest first) and the
-- latest version of each (name, path) of the upstream artifacts named in $11
-- among those the tasks in $12 wrote (`r_upstream`, as
-- list_latest_artifacts_named.sql), both as JSON arrays of rows (NULL for
-- none), and, if $13 and the run is not at version $14 (the caller's view of
-- it), its gates (`r_gates`: `[]` for a run without gates, NULL when not
-- asked for; the caller reads the run's tasks after this row); none (and
-- nothing written) if the run is gone or the task is not QUEUED at that
-- attempt. The dispatch of a task is published after the
-- commit that queued it, which follows its upstream's completions, so the
-- statement's snapshot holds what the task reads.
--
-- The run's row lock is taken first (`run`), as every write transaction
-- takes it before any task row: the task row is locked only when the
-- update writes it, after the join has read `run`. Concurrent claims of one
-- task queue on that lock; the losers then find the task row changed (READ
-- COMMITTED re-checks the WHERE clause on the new row version) and match
-- nothing, so no event number is taken either (`seq` runs only for a claim).
--
-- Committed without waiting for the WAL flush (`synchronous_commit` off for
-- this transaction only): a claim lost in a crash leaves its task QUEUED;
-- the sweeper publishes it again, and the worker that held the lost claim
-- is refused at completion by the fence, so nothing runs twice to effect.
-- One statement instead of BEGIN, lock, claim, COMMIT: one round trip.
--
-- $10 is 'QUEUED', bound rather than written: with the literal, the planner
-- may serve the statement from the partial index tasks_queued_by_time (its
-- predicate is implied), filtering every queued task and every dead entry
-- of one, where the primary key finds the row (the plan is made once, while
-- the table is small, and kept). A parameter implies no index predicate.
WITH run AS MATERIALIZED (
    SELECT id, goal, context, workflow, status, status_reason, success_criteria, settings,
           provider, iterations, cost_usd, tokens_in, tokens_out, version, created_at,
           updated_at, finished_at,
           set_config('synchronous_commit', 'off', true) AS relaxed
    FROM runs
    WHERE id = $1
    FOR UPDATE
), claimed AS (
    UPDATE tasks AS t
    SET status           = 'RUNNING',
        lease_owner      = $4,
        lease_expires_at = $5,
        started_at       = $6,
        finished_at      = NULL
    FROM run
    WHERE t.run_id = $1 AND t.id = $2 AND t.run_id = run.id AND t.status = $10
      AND t.attempt = $3
    RETURNING t.run_id, t.id, t.role, t.title, t.instructions, t.needs, t.expected,
              t.validation, t.gate, t.round, t.findings, t.status, t.attempt, t.max_attempts,
              t.timeout_ms, t.dedupe_key, t.not_before, t.lease_owner, t.lease_expires_at,
              t.last_error, t.retryable, t.result_summary, t.verdict, t.queued_at, t.started_at,
              t.finished_at, t.cost_usd
), seq AS (
    UPDATE runs
    SET last_seq = last_seq + 1
    WHERE id = $1 AND EXISTS (SELECT 1 FROM claimed)
    RETURNING last_seq
), started AS (
    INSERT INTO events (run_id, seq, kind, task_id, message, data, created_at)
    SELECT $1, seq.last_seq, $7, $2, $8, $9, $6
    FROM seq
)
SELECT claimed.*,
       run.id AS r_id, run.goal AS r_goal, run.context AS r_context, run.workflow AS r_workflow,
       run.status AS r_status, run.status_reason AS r_status_reason,
       run.success_criteria AS r_success_criteria, run.settings AS r_settings,
       run.provider AS r_provider, run.iterations AS r_iterations, run.cost_usd AS r_cost_usd,
       run.tokens_in AS r_tokens_in, run.tokens_out AS r_tokens_out,
       run.version AS r_version, run.created_at AS r_created_at,
       run.updated_at AS r_updated_at, run.finished_at AS r_finished_at,
       (SELECT json_agg(m ORDER BY m.seq)
        FROM (SELECT run_id, seq, kind, task_id, message, data, created_at
              FROM events
              WHERE run_id = $1 AND kind = 'channel_message') AS m)::text AS r_messages,
       (SELECT json_agg(u ORDER BY u.created_at, u.name, u.version, u.id)
        FROM (SELECT a.id, a.run_id, a.name, a.version, a.kind, a.path, a.task_id, a.attempt,
                     a.content, a.metadata, a.created_at
              FROM artifacts a
              WHERE a.run_id = $1
                AND a.name = ANY($11::text[])
                AND a.task_id = ANY($12::text[])
                AND a.version = (SELECT MAX(b.version) FROM artifacts b
                                 WHERE b.run_id = a.run_id AND b.name = a.name
                                   AND COALESCE(b.path, '') = COALESCE(a.path, '')
                                   AND b.task_id = ANY($12::text[]))) AS u)::text AS r_upstream,
       CASE WHEN $13 AND run.version IS DISTINCT FROM $14::bigint
            THEN (SELECT COALESCE(json_agg(g), '[]') FROM gates AS g WHERE g.run_id = $1)::text
       END AS r_gates
FROM claimed, run;
