"""Which sealing keys the PostgreSQL tables still use (`keys retire-sealing` / `keys list`, sealing/usage.py).

Every sealed column of the schema: a PENDING transaction's request, a queued reversal, an OAuth signing key's
private JWK. The kid is read from each blob's head in SQL (sealing/sealer.py's format: MAGIC + kid + nonce +
ciphertext and tag; a blob without that head is from before rotation: the legacy key), so only one row per
key and column crosses the wire.
"""

from __future__ import annotations

from collections import Counter

from psycopg import sql

from ...sealing.ring import LEGACY_KID
from ...sealing.sealer import _HEAD, _NONCE, _TAG, MAGIC
from .database import Conn

# (table, column): a new sealed column in a migration must be added here, or its key could be dropped.
SEALED_COLUMNS = (
    ("transactions", "sealed_request"),
    ("saf_entries", "sealed"),
    ("oauth_signing_keys", "sealed_private"),
)

_BY_KID = sql.SQL(
    "SELECT CASE WHEN substring({col} FROM 1 FOR %(m)s) = %(magic)s AND length({col}) >= %(min)s"
    " THEN substring({col} FROM %(m)s + 1 FOR 8) END AS kid, count(*)"
    " FROM {table} WHERE {col} IS NOT NULL GROUP BY 1"
)


def query(table: str, col: str) -> sql.Composed:
    return _BY_KID.format(table=sql.Identifier(table), col=sql.Identifier(col))


def sealed_usage(conn: Conn) -> Counter[str]:
    """kid -> number of stored blobs sealed with it, over every sealed column (one consistent snapshot)."""
    usage: Counter[str] = Counter()
    params = {"m": len(MAGIC), "magic": MAGIC, "min": _HEAD + _NONCE + _TAG}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table, col in SEALED_COLUMNS:
            for kid, n in conn.execute(query(table, col), params).fetchall():
                usage[bytes(kid).hex() if kid is not None else LEGACY_KID] += int(n)
    return usage
