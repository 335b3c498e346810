INSERT INTO proc_create_run (doc) VALUES (?1);
