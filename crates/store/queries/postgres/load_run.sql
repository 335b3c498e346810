-- load_run in one round trip and one snapshot: run $1's row (columns
-- prefixed r_), its gates as a JSON array of rows (r_gates), then its tasks
-- in creation order, one per row (a run without tasks: one row of NULL task
-- columns; an unknown run: no row).
SELECT r.id AS r_id, r.goal AS r_goal, r.context AS r_context, r.workflow AS r_workflow,
       r.status AS r_status, r.status_reason AS r_status_reason,
       r.success_criteria AS r_success_criteria, r.settings AS r_settings,
       r.provider AS r_provider, r.iterations AS r_iterations, r.cost_usd AS r_cost_usd,
       r.tokens_in AS r_tokens_in, r.tokens_out AS r_tokens_out, r.version AS r_version,
       r.created_at AS r_created_at, r.updated_at AS r_updated_at,
       r.finished_at AS r_finished_at, g.r_gates,
       t.run_id, t.id, t.role, t.title, t.instructions, t.needs, t.expected, t.validation, t.gate,
       t.round, t.findings, t.status, t.attempt, t.max_attempts, t.timeout_ms, t.dedupe_key,
       t.not_before, t.lease_owner, t.lease_expires_at, t.last_error, t.retryable,
       t.result_summary, t.verdict, t.queued_at, t.started_at, t.finished_at, t.cost_usd
FROM runs AS r
CROSS JOIN LATERAL (SELECT COALESCE(json_agg(x), '[]')::text AS r_gates
                    FROM gates AS x WHERE x.run_id = r.id) AS g
LEFT JOIN tasks AS t ON t.run_id = r.id
WHERE r.id = $1
ORDER BY t.position;
