UPDATE tasks
SET lease_expires_at = ?5
WHERE run_id = ?1 AND id = ?2 AND status = 'RUNNING' AND attempt = ?3 AND lease_owner = ?4;
