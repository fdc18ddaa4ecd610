-- 0007: a completion notifies only when someone waits for it, and never from inside its own commit (issue 12).
--
-- Migration 0002's trigger called pg_notify in every completing transaction. Such a transaction takes
-- PostgreSQL's database-wide notify lock before it commits and holds it through its WAL flush, so completions
-- could not share a group flush (bench/README.md: 2.6-2.8x for the store alone). Now a waiter sets `awaited`
-- on the PENDING row before it waits (store/pg/rows.py mark_awaited), the completing UPDATE returns it, and
-- only then does the store send pg_notify, in a transaction of its own after the completion has committed: it
-- writes nothing, so it has no flush to wait for while it holds the lock. The row lock orders the two UPDATEs:
-- either the waiter's mark commits first and the completion sees it, or the completion does and the waiter's
-- mark finds the row COMPLETED (its next read says so). Waiters still poll (store/pg/store.py wait_completed):
-- a host of an older build, which neither marks nor notifies, costs latency, never correctness.

ALTER TABLE transactions ADD COLUMN awaited boolean NOT NULL DEFAULT false;

DROP TRIGGER transactions_completed_notify ON transactions;
DROP FUNCTION cl_notify_completed();
