-- 0006: each owner's lease (issue 12, docs/postgres.md "Leases and fencing"), by the database's clock.
--
-- A worker registers with lease_until = now() + store.lease_ttl and renews it every store.lease_renew with
-- UPDATE ... WHERE owner = me AND lease_until > now(): an expired lease is never brought back to life. The lease
-- of an owners row is the lease of every PENDING claim that owner holds: another host takes a claim over only
-- once it has expired, and `transactions.epoch` (+1 per take-over) fences the old owner's late completion.
-- Rows written before this migration get an expired lease: stop every host of an older build before migrating.

ALTER TABLE owners ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now();
