-- An llm_request event's data (the task's whole prompt) compresses to 3-4
-- kB, over the 2 kB past which PostgreSQL moves a value out of line: each
-- such event was also two rows of the TOAST table and two entries of its
-- index, written with every task and read back by every `events -v`.
-- Storage MAIN keeps the compressed value in the row unless the row would
-- not fit a page; only values that large go out of line. New rows only.
ALTER TABLE events ALTER COLUMN data SET STORAGE MAIN;
