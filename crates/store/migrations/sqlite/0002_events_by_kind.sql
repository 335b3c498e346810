-- Events of one kind in a run (channel messages for an agent's inbox)
-- without reading the whole log.
CREATE INDEX events_by_kind ON events (run_id, kind, seq);
