INSERT INTO proc_create_run (doc) VALUES (jsonb(?1));
