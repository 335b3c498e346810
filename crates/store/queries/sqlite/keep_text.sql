-- Keep a prompt text by its hash (migration 0008); kept already is fine.
INSERT INTO prompt_texts (hash, text, created_at) VALUES (?1, ?2, ?3)
ON CONFLICT (hash) DO NOTHING;
