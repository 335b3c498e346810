INSERT INTO proc_append_events (doc) VALUES (?1);
SELECT last_seq FROM proc_appended;
