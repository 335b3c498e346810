-- A run's tasks are read through the primary key (run_id, id) and sorted by
-- position (a run has tens of tasks); an index of its own for that order
-- cost an entry on every task update (a status change is never a HOT
-- update) and, while the table was small, tied in the planner's costs with
-- the primary key for single-task lookups, so that a claim's cached plan
-- could walk all of a run's tasks to find one.
DROP INDEX tasks_by_position;
