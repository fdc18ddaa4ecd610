"""The PostgreSQL store backend (`store.backend = "postgres"`): several hosts share one database.

  settings.py    the `store.postgres_*` keys, checked, and the password read from its file
  database.py    psycopg 3 + psycopg_pool from trio worker threads, every call with a deadline
  migrate.py     versioned schema migrations (migrations/NNNN_*.sql), `cloudlayer db migrate|status`
  store.py       `TransactionStore` on PostgreSQL (sibling of store/lmdb_store.py)
  saf.py         `SafStore` on PostgreSQL: the reversal queue leased per host (sibling of acquirer/saf.py)

What is shared across hosts and what is not yet: docs/postgres.md.
"""
