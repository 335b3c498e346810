-- Extend the lease of the holder of attempt $3 (owner $4) to $5 ($6:
-- 'RUNNING', bound so that the primary key serves it, see claim_task.sql). Touches the
-- task row only: it waits for no other lock while holding this one.
UPDATE tasks
SET lease_expires_at = $5
WHERE run_id = $1 AND id = $2 AND status = $6 AND attempt = $3 AND lease_owner = $4;
