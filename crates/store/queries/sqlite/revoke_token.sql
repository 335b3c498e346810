-- Revoke token ?1 at ?2; a token revoked already keeps its first time. No
-- row: no such token.
UPDATE api_tokens
SET revoked_at = COALESCE(revoked_at, ?2)
WHERE id = ?1
RETURNING id, name, scopes, secret_hash, created_at, revoked_at;
