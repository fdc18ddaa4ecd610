-- 0004: the claim's second and third keys (issues 16 and 11), as in LMDB's by_card sub-db and reversal hold.
--
-- card_key: the HMAC of one card transaction (cloudlayer.cardkey; never the PAN), unique per client, so that
-- the claim's one INSERT ... ON CONFLICT DO NOTHING refuses the same tap under another transactionId in the
-- same statement as the transactionId claim (a concurrent second insert waits for the first to commit).
-- Deleted with its row by retention. reversed_by: the REVERSAL holding or having reversed this transaction,
-- written in the transaction that claims (hold) or completes (settle) that reversal (store/reversals.py).

ALTER TABLE transactions
    ADD COLUMN card_key    bytea CHECK (card_key IS NULL OR length(card_key) = 32),
    ADD COLUMN reversed_by text  NOT NULL DEFAULT '';

CREATE UNIQUE INDEX transactions_card_key ON transactions (client_id, card_key) WHERE card_key IS NOT NULL;
