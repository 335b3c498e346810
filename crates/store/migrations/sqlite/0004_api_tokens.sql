-- Bearer tokens of the HTTP API. Only a hash of each secret is kept: a token
-- (`orch_<id>_<secret>`) is checked by looking up its id and comparing the
-- SHA-256 of its secret. Revoked tokens stay, for the record.
CREATE TABLE api_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    scopes      TEXT    NOT NULL,                 -- JSON array of scope names
    secret_hash TEXT    NOT NULL,                 -- SHA-256 of the secret, lowercase hex
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
