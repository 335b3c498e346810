-- Dead letters not yet replayed (always one row). Part of stats.
SELECT COUNT(*) AS n
FROM dead_letters
WHERE replayed_at IS NULL;
