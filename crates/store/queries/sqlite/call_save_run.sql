INSERT INTO proc_save_run (doc) VALUES (jsonb(?1));
