-- 0005: OAuth shared by every host (issue 12): the client registry and the signing key set.
--
-- oauth_clients: one row per client, as oauth/clients.py's LMDB record. The secret is never here: only
-- HMAC-SHA-256(pepper, secret), the pepper being a file every host holds (oauth.pepper_file), not in the database.
-- oauth_signing_keys: the private JWK of each key only sealed (AES-256-GCM with the hosts' sealing key ring,
-- associated data naming the row's kid and alg, so a blob moved to another row does not open); the public JWK in
-- clear for the JWKS. At most one active key (a partial unique index).
-- oauth_settings: 'pepper_check' = HMAC(pepper, a constant), so that a host with another pepper refuses to start
-- instead of refusing every client.
-- Every change NOTIFYs `cloudlayer_oauth` (statement trigger, delivered on commit): hosts reload their in-memory
-- copy (oauth/pg_sync.py).

CREATE TABLE oauth_clients (
    client_id    text PRIMARY KEY CHECK (length(client_id) BETWEEN 1 AND 128),
    name         text NOT NULL,
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes       text[] NOT NULL,
    auth_methods text[] NOT NULL,
    grant_types  text[] NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    created_at   double precision NOT NULL,
    updated_at   double precision NOT NULL
);

CREATE TABLE oauth_signing_keys (
    kid            text PRIMARY KEY,
    alg            text NOT NULL CHECK (alg IN ('ES256', 'Ed25519')),
    sealed_private bytea NOT NULL,
    public_jwk     text NOT NULL,
    active         boolean NOT NULL DEFAULT false,
    created_at     double precision NOT NULL,
    retired_at     double precision,
    verify_until   double precision
);
CREATE UNIQUE INDEX oauth_signing_keys_one_active ON oauth_signing_keys (active) WHERE active;

CREATE TABLE oauth_settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE FUNCTION cloudlayer_oauth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cloudlayer_oauth', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER oauth_clients_changed AFTER INSERT OR UPDATE OR DELETE ON oauth_clients
    FOR EACH STATEMENT EXECUTE FUNCTION cloudlayer_oauth_changed();
CREATE TRIGGER oauth_signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON oauth_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION cloudlayer_oauth_changed();
