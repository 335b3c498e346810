-- Migration 0014 left the event's other text columns EXTENDED, and
-- PostgreSQL shrinks a row over 2 kB by moving its EXTENDED values out of
-- line before it compresses a MAIN one: each llm_request event then wrote
-- its message and run id as two TOAST rows (and two TOAST index entries)
-- of a few dozen bytes. With every text column MAIN, the prompt is
-- compressed in the row and nothing goes out of line unless the row would
-- not fit a page. New rows only.
ALTER TABLE events ALTER COLUMN run_id SET STORAGE MAIN,
                   ALTER COLUMN kind SET STORAGE MAIN,
                   ALTER COLUMN task_id SET STORAGE MAIN,
                   ALTER COLUMN message SET STORAGE MAIN;
