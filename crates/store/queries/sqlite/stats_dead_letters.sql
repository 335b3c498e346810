-- Dead letters not yet replayed (always one row). Part of stats.
SELECT 'dead_letters' AS part, COUNT(*) AS n
FROM dead_letters
WHERE replayed_at IS NULL;
