-- A new API token; an existing id is a unique violation (Error::Conflict).
INSERT INTO api_tokens (id, name, scopes, secret_hash, created_at, revoked_at)
VALUES ($1, $2, $3, $4, $5, $6);
