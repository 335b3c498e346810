-- Append the events of $1 to an existing run, in one statement (its own
-- transaction). The run's last event number after them; NULL (nothing
-- written) if the run does not exist.
SELECT orch_append_events($1::jsonb) AS last_seq;
