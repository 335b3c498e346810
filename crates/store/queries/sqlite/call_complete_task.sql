INSERT INTO proc_complete_task (doc, artifacts) VALUES (jsonb(?1), jsonb(?2));
