-- Long texts that many prompt events share (each role's system prompt), kept
-- once by their SHA-256 (`sha256:<hex>`). An llm_request event names its
-- system prompt here (`data.system_text`) instead of holding it; reading
-- events puts it back (orch_core::elision). Never updated or deleted: a
-- text is the same for every event that names it.
CREATE TABLE prompt_texts (
    hash       TEXT    NOT NULL PRIMARY KEY,
    text       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
