SELECT 1 FROM runs WHERE id = ?1;
