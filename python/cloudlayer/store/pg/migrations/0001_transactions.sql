-- 0001: the transaction store (store/pg/store.py), its owners' heartbeats and the STAN/RRN block sequence.
--
-- One row per (client_id, transaction_id): the primary key is the exactly-once claim. The columns are what
-- decisions and lookups use; `record` is the whole TransactionRecord as msgpack (store/codec.py), rewritten
-- with the columns in the same statement. Card data only ever appears sealed (AES-256-GCM with the key the
-- hosts hold) in record.sealed_request, erased on completion; PANs are masked 6+4.

CREATE TABLE transactions (
    client_id      text             NOT NULL,
    transaction_id text             NOT NULL,
    fingerprint    bytea            NOT NULL CHECK (length(fingerprint) = 32),
    state          text             NOT NULL CHECK (state IN ('PENDING', 'COMPLETED')),
    owner          text             NOT NULL,
    -- +1 on every take-over: the fencing token a later lease step checks (docs/postgres.md).
    epoch          bigint           NOT NULL DEFAULT 0,
    rrn            text             NOT NULL DEFAULT '',
    terminal_id    text             NOT NULL DEFAULT '',
    stan           text             NOT NULL DEFAULT '',
    created_at     double precision NOT NULL,  -- unix seconds, as in the record
    completed_at   double precision,
    record         bytea            NOT NULL,
    PRIMARY KEY (client_id, transaction_id),
    CHECK ((state = 'COMPLETED') = (completed_at IS NOT NULL))
);

CREATE INDEX transactions_rrn ON transactions (rrn) WHERE rrn <> '';
CREATE INDEX transactions_terminal_stan ON transactions (terminal_id, stan) WHERE stan <> '';
CREATE INDEX transactions_created ON transactions (created_at);
CREATE INDEX transactions_completed ON transactions (completed_at) WHERE state = 'COMPLETED';
CREATE INDEX transactions_transaction_id ON transactions (transaction_id);

-- Each worker's heartbeat, stamped with the database's clock (never a host's).
CREATE TABLE owners (
    owner     text        PRIMARY KEY,
    last_seen timestamptz NOT NULL DEFAULT now()
);

-- STAN/RRN: each worker takes block N = nextval() and hands out (N-1)*1000+1 .. N*1000 (store/ids.py BLOCK).
CREATE SEQUENCE id_blocks START 1 NO CYCLE;
