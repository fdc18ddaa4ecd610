-- 0003: the store-and-forward reversal queue (store/pg/saf.py), shared by every host.
--
-- One row per reversal still owed to the acquirer, keyed like the LMDB queue (terminal:stan:mti:field 7).
-- The reversal request holds the PAN: it is stored only sealed (AES-256-GCM with the key the hosts hold,
-- associated data = the key), erased when the acquirer acknowledges. A host leases due rows with
-- SELECT ... FOR UPDATE SKIP LOCKED and `leased_until = now() + lease`: liveness is the database's clock, so a
-- row leased by a host that died is due again for any host once its lease has passed.

CREATE TABLE saf_entries (
    key          text        PRIMARY KEY,
    sealed       bytea       NOT NULL,
    reason       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt timestamptz NOT NULL DEFAULT now(),
    lease_owner  text        NOT NULL DEFAULT '',
    leased_until timestamptz,
    -- Non-secret summary for operators (`cloudlayer saf list`).
    terminal_id  text        NOT NULL DEFAULT '',
    stan         text        NOT NULL DEFAULT '',
    rrn          text        NOT NULL DEFAULT '',
    amount       bigint      NOT NULL DEFAULT 0,
    original_mti text        NOT NULL DEFAULT '',
    last_error   text        NOT NULL DEFAULT '',
    CHECK ((lease_owner = '') = (leased_until IS NULL))
);

CREATE INDEX saf_entries_due ON saf_entries (next_attempt);

-- Acknowledged reversals: key and time only (no card data), kept so that recovery can tell it was reversed.
CREATE TABLE saf_done (
    key     text        PRIMARY KEY,
    done_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX saf_done_at ON saf_done (done_at);
