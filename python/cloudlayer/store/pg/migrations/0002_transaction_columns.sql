-- 0002: reserved for the transaction store's columns (branch `pg`); this placeholder keeps 0003 numbered
-- without a gap on its own branch. When merging, take the `pg` branch's file.
SELECT 1;
