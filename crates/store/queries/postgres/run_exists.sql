SELECT 1 AS one FROM runs WHERE id = $1;
