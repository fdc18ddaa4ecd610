-- 0002: what changes after a claim gets columns of its own, so that complete, add_events and take_over are each
-- ONE statement (no read-modify-write of the record): `record` keeps the claim-time fields only (msgpack, no
-- sealed request, no events, no answer); the read path overlays these columns on it (store/pg/rows.py).

ALTER TABLE transactions
    ADD COLUMN sealed_request     bytea,                          -- AES-256-GCM ciphertext, only while PENDING
    ADD COLUMN response_status    integer  NOT NULL DEFAULT 0,
    ADD COLUMN response_body      bytea    NOT NULL DEFAULT '',   -- the exact bytes answered (and replayed)
    ADD COLUMN response_code      text     NOT NULL DEFAULT '',
    ADD COLUMN approved           boolean  NOT NULL DEFAULT false,
    ADD COLUMN authorisation_code text,
    ADD COLUMN outcome            text     NOT NULL DEFAULT '',
    ADD COLUMN replays            integer  NOT NULL DEFAULT 0,
    ADD COLUMN events             bytea[]  NOT NULL DEFAULT '{}', -- one msgpack Event each, oldest first
    ADD CONSTRAINT completed_holds_no_card_data CHECK (state = 'PENDING' OR sealed_request IS NULL);

-- A timeline stays bounded (a record replayed for ever): the first and the latest `keep / 2` events survive.
CREATE FUNCTION cl_trim_events(ev bytea[], keep integer) RETURNS bytea[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN cardinality(ev) <= keep THEN ev
                ELSE ev[1:keep / 2] || ev[cardinality(ev) - keep / 2 + 1:cardinality(ev)] END
$$;

-- Duplicates waiting on another host are woken by this notification (store/pg/listener.py), sent on commit.
-- Payload: client_id US transaction_id (ids are printable: never a US, 0x1f).
CREATE FUNCTION cl_notify_completed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cloudlayer_completed', NEW.client_id || chr(31) || NEW.transaction_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_completed_notify
    AFTER UPDATE OF state ON transactions
    FOR EACH ROW WHEN (OLD.state = 'PENDING' AND NEW.state = 'COMPLETED')
    EXECUTE FUNCTION cl_notify_completed();
