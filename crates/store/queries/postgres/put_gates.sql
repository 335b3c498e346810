-- Insert or update gates of run $1 (one array per column, $2..$9).
INSERT INTO gates (run_id, kind, status, required, review_task, rework_rounds, reason, findings,
                   updated_at)
SELECT $1, g.kind, g.status, g.required, g.review_task, g.rework_rounds, g.reason, g.findings,
       g.updated_at
FROM UNNEST($2::text[], $3::text[], $4::boolean[], $5::text[], $6::bigint[], $7::text[],
            $8::text[], $9::bigint[])
     AS g(kind, status, required, review_task, rework_rounds, reason, findings, updated_at)
ON CONFLICT (run_id, kind) DO UPDATE
SET status        = excluded.status,
    required      = excluded.required,
    review_task   = excluded.review_task,
    rework_rounds = excluded.rework_rounds,
    reason        = excluded.reason,
    findings      = excluded.findings,
    updated_at    = excluded.updated_at;
