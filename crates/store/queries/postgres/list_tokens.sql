-- Oldest first; revoked ones only if $1.
SELECT id, name, scopes, secret_hash, created_at, revoked_at
FROM api_tokens
WHERE $1 OR revoked_at IS NULL
ORDER BY created_at, id COLLATE "C";
