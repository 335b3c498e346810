INSERT INTO proc_complete_task (doc, artifacts) VALUES (?1, ?2);
