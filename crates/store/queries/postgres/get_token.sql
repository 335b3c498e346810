-- The token $1, revoked or not.
SELECT id, name, scopes, secret_hash, created_at, revoked_at
FROM api_tokens
WHERE id = $1;
