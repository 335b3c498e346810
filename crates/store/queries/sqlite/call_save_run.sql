INSERT INTO proc_save_run (doc) VALUES (?1);
