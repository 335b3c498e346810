INSERT INTO proc_append_events (doc) VALUES (jsonb(?1));
SELECT last_seq FROM proc_appended;
